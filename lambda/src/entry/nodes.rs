//! `vending nodes`: the confirmed nodes (`node#<id>` records, `POST /registrations`)
//! with what SSM says of each now (its ping status), as a table or JSON.

use std::collections::{BTreeSet, HashMap};

use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use serde::Serialize;

use crate::aws::nodes::ManagedNodes;
use crate::aws::pool_store::{NodeRecord, PoolStore};
use crate::clock::EpochSecs;
use crate::error::VendError;

/// One confirmed node, as `vending nodes --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfirmedNode {
    pub instance_id: String,
    pub name: String,
    /// The machine's digest (`X-Machine-Id`).
    pub machine: String,
    pub pool: String,
    pub activation_id: String,
    /// SSM's `PingStatus` now; `null` when SSM no longer knows the node (deregistered).
    pub ping_status: Option<String>,
    pub registered_at: String,
    pub confirmed_at: String,
    pub source: String,
}

fn when(secs: EpochSecs) -> String {
    DateTime::from_secs(secs).fmt(Format::DateTime).unwrap_or_default()
}

/// The listing from the records and SSM's ping statuses (by node ID), `pool` only
/// when given, by pool, then name, then confirmation. Pure.
pub fn listing(records: Vec<NodeRecord>, pings: &HashMap<String, String>, pool: Option<&str>) -> Vec<ConfirmedNode> {
    let mut records: Vec<NodeRecord> = records
        .into_iter()
        .filter(|r| pool.is_none_or(|p| p == r.pool))
        .collect();
    records.sort_by(|a, b| {
        a.pool
            .cmp(&b.pool)
            .then_with(|| a.instance_name.cmp(&b.instance_name))
            .then_with(|| a.confirmed_at.cmp(&b.confirmed_at))
    });
    records
        .into_iter()
        .map(|r| ConfirmedNode {
            ping_status: pings.get(&r.instance_id).cloned(),
            instance_id: r.instance_id,
            name: r.instance_name,
            machine: r.machine_id,
            pool: r.pool,
            activation_id: r.activation_id,
            registered_at: when(r.registered_at),
            confirmed_at: when(r.confirmed_at),
            source: r.source,
        })
        .collect()
}

/// Reads the records (a Scan of the table) and each listed pool's nodes from SSM.
pub async fn read(
    store: &PoolStore,
    nodes: &ManagedNodes,
    pool: Option<&str>,
) -> Result<Vec<ConfirmedNode>, VendError> {
    let records = store.nodes().await?;
    let pools: BTreeSet<&str> = records
        .iter()
        .map(|r| r.pool.as_str())
        .filter(|p| pool.is_none_or(|only| only == *p))
        .collect();
    let mut pings = HashMap::new();
    for name in pools {
        for node in nodes.of_pool(name).await? {
            pings.insert(node.id, node.ping_status);
        }
    }
    Ok(listing(records, &pings, pool))
}

/// The table `vending nodes` prints without `--json`.
pub fn table(nodes: &[ConfirmedNode]) -> String {
    let mut out = format!(
        "{:<20} {:<30} {:<20} {:<16} {:<21} {:<21} {}\n",
        "INSTANCE", "NAME", "POOL", "PING", "REGISTERED", "CONFIRMED", "MACHINE"
    );
    for n in nodes {
        out.push_str(&format!(
            "{:<20} {:<30} {:<20} {:<16} {:<21} {:<21} {}\n",
            n.instance_id,
            n.name,
            n.pool,
            n.ping_status.as_deref().unwrap_or("deregistered"),
            n.registered_at,
            n.confirmed_at,
            n.machine.get(..12).unwrap_or(&n.machine)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, pool: &str, name: &str, confirmed_at: EpochSecs) -> NodeRecord {
        NodeRecord {
            instance_id: id.into(),
            pool: pool.into(),
            activation_id: "act-1".into(),
            machine_id: "ab".repeat(32),
            instance_name: name.into(),
            registered_at: confirmed_at - 5,
            confirmed_at,
            source: "10.0.0.7".into(),
            replaced: vec![],
        }
    }

    #[test]
    fn the_listing_is_by_pool_and_name_with_ssms_ping_status_or_none_once_deregistered() {
        let records = vec![
            record("mi-00000000000000003", "web", "web-02", 300),
            record("mi-00000000000000001", "db", "db-01", 100),
            record("mi-00000000000000002", "web", "web-01", 200),
        ];
        let pings = HashMap::from([("mi-00000000000000002".to_owned(), "Online".to_owned())]);
        let all = listing(records.clone(), &pings, None);
        let ids: Vec<&str> = all.iter().map(|n| n.instance_id.as_str()).collect();
        assert_eq!(
            ids,
            ["mi-00000000000000001", "mi-00000000000000002", "mi-00000000000000003"]
        );
        assert_eq!(all[1].ping_status.as_deref(), Some("Online"));
        assert_eq!(all[2].ping_status, None);
        assert_eq!(all[0].confirmed_at, "1970-01-01T00:01:40Z");
        let web = listing(records, &pings, Some("web"));
        assert_eq!(web.len(), 2);
        assert!(table(&web).contains("deregistered"));
    }
}
