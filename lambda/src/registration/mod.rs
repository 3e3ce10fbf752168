//! The confirmation of a registration (`POST /registrations`, DESIGN.md section
//! "Confirmed registrations"): a boot script says which node it became; the service
//! believes SSM and its own vend record, not the script, then names and tags the
//! node, clears a re-imaged machine's offline predecessors where the pool opts in,
//! records the node once and counts it.

pub mod verdict;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::aws::nodes::ManagedNodes;
use crate::aws::pool_store::{NodeRecord, PoolStore};
use crate::clock::{epoch_now, secs};
use crate::error::VendError;
use crate::metrics::{self, Metric};
use crate::pool::settings::{MACHINE_TAG, NAME_TAG};
use crate::registration::verdict::{confirmable, reimaged_to_replace, same_claim, Claim};
use crate::vend::Vendor;

/// What a confirmation answers: the node, the tags it carries from the service, and
/// the machine's earlier nodes deregistered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    pub instance_id: String,
    pub tags: BTreeMap<String, String>,
    pub replaced: Vec<String>,
    /// This request made the record (a repeat changes nothing and is not counted).
    pub first: bool,
}

pub struct Confirmer {
    vendor: Arc<Vendor>,
    store: PoolStore,
    nodes: ManagedNodes,
}

impl Confirmer {
    pub fn new(vendor: Arc<Vendor>, store: PoolStore, nodes: ManagedNodes) -> Self {
        Self { vendor, store, nodes }
    }

    /// Confirms `claim` for a caller at `source`. Nothing changes unless SSM and the
    /// vend record bear the claim out: `NodeNotFound` for a node SSM does not know,
    /// `NotConfirmable` for any other mismatch.
    pub async fn confirm(&self, claim: &Claim, source: Option<IpAddr>) -> Result<Confirmed, VendError> {
        let pool = self.vendor.admitted(&claim.pool, source).await?;
        let refuse = |why: String| {
            tracing::warn!(
                pool = %claim.pool,
                instance_id = %claim.instance_id,
                activation_id = %claim.activation_id,
                instance = %claim.instance,
                reason = %why,
                "registration not confirmed"
            );
            VendError::NotConfirmable(why)
        };
        let Some(machine_id) = claim.machine_id.as_deref() else {
            return Err(refuse(
                "only a vend that named an instance and sent X-Machine-Id can be confirmed".into(),
            ));
        };
        let tags = BTreeMap::from([
            (NAME_TAG.to_owned(), claim.instance.clone()),
            (MACHINE_TAG.to_owned(), machine_id.to_owned()),
        ]);
        // Confirmed before: answered from what was verified then, even once the vend's
        // record has moved on (a later vend of the name) or the node is gone.
        if let Some(earlier) = self.store.node(&claim.instance_id).await? {
            return self.again(claim, earlier, tags).map_err(refuse);
        }
        let record = self.store.instance(&pool.name, &claim.instance).await?;
        let Some(node) = self.nodes.node(&claim.instance_id).await? else {
            return Err(VendError::NodeNotFound(claim.instance_id.clone()));
        };
        confirmable(claim, record.as_ref(), &node).map_err(refuse)?;
        self.nodes
            .tag(
                &claim.instance_id,
                &[(NAME_TAG, &claim.instance), (MACHINE_TAG, machine_id)],
            )
            .await?;
        let replaced = if pool.settings.replace_reimaged_nodes {
            self.replace_reimaged(&claim.instance_id, machine_id).await?
        } else {
            Vec::new()
        };
        let now = epoch_now();
        let record = NodeRecord {
            instance_id: claim.instance_id.clone(),
            pool: pool.name.clone(),
            activation_id: claim.activation_id.clone(),
            machine_id: machine_id.to_owned(),
            instance_name: claim.instance.clone(),
            registered_at: node.registered,
            confirmed_at: now,
            source: source.map(|ip| ip.to_string()).unwrap_or_default(),
            replaced: replaced.clone(),
        };
        let ttl = secs(self.vendor.config().node_record_ttl);
        if let Some(earlier) = self.store.record_node(&record, ttl).await? {
            // A concurrent repeat of the same claim recorded it first.
            return self.again(claim, earlier, tags).map_err(refuse);
        }
        // The vend's record kept the slot for the machine's retries before it
        // registered; registered, a later vend of it (`--force`, a re-install) is a
        // new registration and takes a new slot, or SSM's count would outrun the pool's.
        self.store
            .forget_instance_of(&pool.name, &claim.instance, &claim.activation_id)
            .await?;
        let mut values = vec![(Metric::Registered, 1.0)];
        if !replaced.is_empty() {
            values.push((Metric::ReimagedNodesReplaced, replaced.len() as f64));
        }
        metrics::emit(Some(&pool.name), &values);
        tracing::info!(
            pool = %pool.name,
            instance_id = %claim.instance_id,
            activation_id = %claim.activation_id,
            instance = %claim.instance,
            machine_id,
            replaced = %replaced.join(","),
            "registration confirmed"
        );
        Ok(Confirmed {
            instance_id: claim.instance_id.clone(),
            tags,
            replaced,
            first: true,
        })
    }

    /// A node confirmed before: the same claim is answered as it was; another
    /// machine's or name's claim on it is refused.
    fn again(&self, claim: &Claim, earlier: NodeRecord, tags: BTreeMap<String, String>) -> Result<Confirmed, String> {
        if !same_claim(claim, &earlier) {
            return Err(format!(
                "the node `{}` is confirmed as another machine's or name's",
                claim.instance_id
            ));
        }
        Ok(Confirmed {
            instance_id: earlier.instance_id,
            tags,
            replaced: earlier.replaced,
            first: false,
        })
    }

    /// Deregisters the machine's nodes that are not `new_node` and not `Online`
    /// (`verdict::reimaged_to_replace`); their IDs, in registration order.
    async fn replace_reimaged(&self, new_node: &str, machine_id: &str) -> Result<Vec<String>, VendError> {
        let machine_nodes = self.nodes.of_machine(machine_id).await?;
        let mut replaced = Vec::new();
        for node in reimaged_to_replace(&machine_nodes, new_node) {
            self.nodes.deregister(&node.id).await?;
            tracing::info!(
                instance_id = %node.id,
                ping_status = %node.ping_status,
                replaced_by = new_node,
                "re-imaged machine's earlier node deregistered"
            );
            replaced.push(node.id.clone());
        }
        Ok(replaced)
    }
}
