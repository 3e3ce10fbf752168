//! Which of a pool's nodes are stale duplicates: left behind when a host was
//! re-imaged or re-registered and came back under the same name.

use std::collections::HashMap;

use serde::Serialize;

use crate::aws::nodes::Node;
use crate::clock::EpochSecs;

/// A node the clean-up deregisters, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleNode {
    pub instance_id: String,
    pub computer_name: String,
    pub reason: String,
}

/// Among `pool`'s nodes that report the same computer name, every registration
/// older than the newest one (by `RegistrationDate`, never by last ping) that has
/// been `ConnectionLost` for longer than `after_secs`. Never an online node, never
/// the newest registration of a name, never a node without the pool's tag.
/// Registrations of the same `RegistrationDate` are told apart by `newness`.
pub fn stale_duplicates(pool: &str, nodes: &[Node], now: EpochSecs, after_secs: i64) -> Vec<StaleNode> {
    let mut by_name: HashMap<String, Vec<&Node>> = HashMap::new();
    for node in nodes
        .iter()
        .filter(|n| n.pool.as_deref() == Some(pool) && !n.computer_name.is_empty())
    {
        by_name
            .entry(node.computer_name.to_ascii_lowercase())
            .or_default()
            .push(node);
    }
    let mut stale = Vec::new();
    for group in by_name.values() {
        let Some(newest) = group.iter().max_by_key(|n| newness(n)) else {
            continue;
        };
        for node in group {
            let lost_long_enough = node.ping_status == "ConnectionLost" && node.last_ping < now - after_secs;
            if node.id != newest.id && node.registered <= newest.registered && lost_long_enough {
                stale.push(StaleNode {
                    instance_id: node.id.clone(),
                    computer_name: node.computer_name.clone(),
                    reason: format!(
                        "an older registration of {} (newest: {}); ConnectionLost for {} s",
                        node.computer_name,
                        newest.id,
                        now - node.last_ping
                    ),
                });
            }
        }
    }
    stale.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    stale
}

/// The order of "newer" among one name's registrations: the later
/// `RegistrationDate`; on the same date an `Online` one, then the later
/// `LastPingDateTime` (then the ID, only so that the choice is stable).
fn newness(node: &Node) -> (EpochSecs, bool, EpochSecs, &str) {
    (
        node.registered,
        node.ping_status == "Online",
        node.last_ping,
        node.id.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: EpochSecs = 100 * DAY;

    fn node(
        id: &str,
        name: &str,
        status: &str,
        registered: EpochSecs,
        last_ping: EpochSecs,
        pool: Option<&str>,
    ) -> Node {
        Node {
            id: id.into(),
            computer_name: name.into(),
            ping_status: status.into(),
            last_ping,
            registered,
            pool: pool.map(str::to_owned),
            activation_id: String::new(),
        }
    }

    #[test]
    fn only_old_offline_duplicates_of_a_name_go() {
        let p = Some("web");
        let nodes = vec![
            // web-01: re-imaged twice; the two older registrations are long offline.
            node("mi-a", "web-01", "ConnectionLost", 10 * DAY, 20 * DAY, p),
            node("mi-b", "web-01", "ConnectionLost", 30 * DAY, 40 * DAY, p),
            node("mi-c", "web-01", "Online", 50 * DAY, NOW, p),
            // web-02: the older registration is still online: it stays.
            node("mi-d", "web-02", "Online", 10 * DAY, NOW, p),
            node("mi-e", "web-02", "Online", 60 * DAY, NOW, p),
            // web-03: the older one went offline only yesterday: not long enough.
            node("mi-f", "web-03", "ConnectionLost", 10 * DAY, NOW - DAY, p),
            node("mi-g", "web-03", "Online", 60 * DAY, NOW, p),
            // web-04: the newest registration is offline, and stays the newest.
            node("mi-h", "web-04", "ConnectionLost", 10 * DAY, 20 * DAY, p),
            node("mi-i", "WEB-04", "ConnectionLost", 60 * DAY, 61 * DAY, p),
            // A lone offline node: no duplicate, nothing to replace.
            node("mi-j", "db-01", "ConnectionLost", 10 * DAY, 20 * DAY, p),
            // Not ours: never touched.
            node("mi-k", "web-01", "ConnectionLost", 1, 2, None),
            node("mi-l", "web-01", "ConnectionLost", 1, 2, Some("other")),
        ];
        let stale: Vec<String> = stale_duplicates("web", &nodes, NOW, 7 * DAY)
            .into_iter()
            .map(|s| s.instance_id)
            .collect();
        assert_eq!(stale, vec!["mi-a", "mi-b", "mi-h"]);
    }

    #[test]
    fn order_is_by_registration_date_not_last_ping() {
        // The older registration pinged more recently than the newer one (clock skew,
        // a brief comeback): the newer registration still wins.
        let p = Some("web");
        let nodes = vec![
            node("mi-old", "web-01", "ConnectionLost", 10 * DAY, 80 * DAY, p),
            node("mi-new", "web-01", "ConnectionLost", 50 * DAY, 60 * DAY, p),
        ];
        let stale = stale_duplicates("web", &nodes, NOW, 7 * DAY);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].instance_id, "mi-old");
        assert!(stale[0].reason.contains("mi-new"));
    }

    #[test]
    fn on_the_same_registration_date_an_online_node_is_the_newer_then_the_later_ping() {
        let p = Some("web");
        // The offline registration's ID sorts after the online one's: it must not win.
        let nodes = vec![
            node("mi-a-online", "web-01", "Online", 50 * DAY, NOW, p),
            node("mi-z-offline", "web-01", "ConnectionLost", 50 * DAY, 60 * DAY, p),
        ];
        let stale = stale_duplicates("web", &nodes, NOW, 7 * DAY);
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].instance_id, "mi-z-offline");
        assert!(stale[0].reason.contains("mi-a-online"));
        // Both offline on the same date: the one that pinged later is the newer.
        let nodes = vec![
            node("mi-a-later", "web-01", "ConnectionLost", 50 * DAY, 70 * DAY, p),
            node("mi-z-earlier", "web-01", "ConnectionLost", 50 * DAY, 60 * DAY, p),
        ];
        let stale = stale_duplicates("web", &nodes, NOW, 7 * DAY);
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].instance_id, "mi-z-earlier");
    }
}
