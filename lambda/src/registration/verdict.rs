//! The confirmation's decisions over plain data: whether a claim verifies
//! (`confirmable`), whether a node's earlier confirmation is this claim's
//! (`same_claim`), and which of a re-imaged machine's nodes go (`reimaged_to_replace`).
//! Pure: no AWS call.

use crate::aws::nodes::Node;
use crate::aws::pool_store::NodeRecord;
use crate::pool::state::InstanceRecord;

/// How much earlier than the vend record's `vended_at` (the service's clock) SSM's
/// `RegistrationDate` (SSM's clock) may say a node registered: the two clocks may
/// differ by the 2 s the clock check lets pass (`clock.rs`), and both are whole
/// seconds. A node that registered this little before the vend is still refused if it
/// registered through another activation; a forger would need one of this
/// activation's nodes registered within these seconds before the vend of the name.
pub const CLOCK_TOLERANCE_SECS: i64 = 5;

/// What a boot script claims, with the caller's machine digest from `X-Machine-Id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub pool: String,
    pub instance_id: String,
    pub activation_id: String,
    pub instance: String,
    /// `None`: the caller sent no `X-Machine-Id`, so no vend of it can be confirmed.
    pub machine_id: Option<String>,
}

/// Why a claim does not verify, for the caller and the log; `Ok(())` when it does.
/// `record` is the vend's record of the claimed pool and name; `node` is what SSM
/// says of the claimed node. The record lives in this deployment's table under the
/// pool's key, so an activation it names is this pool's and this deployment's: a
/// node registered through it belongs to both.
pub fn confirmable(claim: &Claim, record: Option<&InstanceRecord>, node: &Node) -> Result<(), String> {
    let Some(machine_id) = claim.machine_id.as_deref() else {
        return Err("only a vend that named an instance and sent X-Machine-Id can be confirmed".into());
    };
    let Some(record) = record else {
        return Err(format!(
            "pool `{}` has no vend record of the instance `{}`",
            claim.pool, claim.instance
        ));
    };
    if record.machine_id.as_deref() != Some(machine_id) {
        return Err(format!(
            "the instance `{}` was vended to another machine",
            claim.instance
        ));
    }
    if record.activation_id != claim.activation_id {
        return Err(format!(
            "the instance `{}` was vended another activation",
            claim.instance
        ));
    }
    if node.activation_id != claim.activation_id {
        return Err(format!(
            "the node `{}` registered through another activation",
            claim.instance_id
        ));
    }
    let Some(vended_at) = record.vended_at else {
        return Err("the vend record predates confirmations; vend again".into());
    };
    if node.registered + CLOCK_TOLERANCE_SECS < vended_at {
        return Err(format!(
            "the node `{}` registered before the vend of `{}`",
            claim.instance_id, claim.instance
        ));
    }
    Ok(())
}

/// Whether a node's earlier confirmation was this same claim (a repeat answers it
/// again and changes nothing); another machine's or name's is a refusal.
pub fn same_claim(claim: &Claim, earlier: &NodeRecord) -> bool {
    earlier.pool == claim.pool
        && earlier.activation_id == claim.activation_id
        && Some(earlier.machine_id.as_str()) == claim.machine_id.as_deref()
        && earlier.instance_name.eq_ignore_ascii_case(&claim.instance)
}

/// The machine's other nodes a confirmation of `new_node` deregisters: every one
/// that is not the new node and not `Online`. `machine_nodes` are the nodes that
/// carry the machine's tag and this deployment's tag (SSM filtered them so), so a
/// node without the service's tags is never among them.
pub fn reimaged_to_replace<'a>(machine_nodes: &'a [Node], new_node: &str) -> Vec<&'a Node> {
    machine_nodes
        .iter()
        .filter(|n| n.id != new_node && n.ping_status != "Online")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: &str = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";

    fn claim() -> Claim {
        Claim {
            pool: "web".into(),
            instance_id: "mi-0123456789abcdef0".into(),
            activation_id: "act-1".into(),
            instance: "web-01".into(),
            machine_id: Some(MACHINE.into()),
        }
    }

    fn record() -> InstanceRecord {
        InstanceRecord {
            activation_id: "act-1".into(),
            parameter_version: 1,
            expires_at: 10_000,
            machine_id: Some(MACHINE.into()),
            vended_at: Some(1_000),
        }
    }

    fn node(id: &str, activation: &str, registered: i64, ping: &str) -> Node {
        Node {
            id: id.into(),
            computer_name: "web-01".into(),
            ping_status: ping.into(),
            last_ping: registered,
            registered,
            pool: None,
            activation_id: activation.into(),
        }
    }

    fn claimed_node() -> Node {
        node("mi-0123456789abcdef0", "act-1", 1_005, "Online")
    }

    #[test]
    fn a_node_registered_through_the_vended_activation_after_the_vend_is_confirmable() {
        assert_eq!(confirmable(&claim(), Some(&record()), &claimed_node()), Ok(()));
        let same_second = node("mi-0123456789abcdef0", "act-1", 1_000, "Online");
        assert_eq!(confirmable(&claim(), Some(&record()), &same_second), Ok(()));
        let skewed = node("mi-0123456789abcdef0", "act-1", 1_000 - CLOCK_TOLERANCE_SECS, "Online");
        assert_eq!(
            confirmable(&claim(), Some(&record()), &skewed),
            Ok(()),
            "SSM's clock a little behind ours"
        );
    }

    #[test]
    fn an_anonymous_vend_cannot_be_confirmed() {
        let anonymous = Claim {
            machine_id: None,
            ..claim()
        };
        assert!(confirmable(&anonymous, Some(&record()), &claimed_node()).is_err());
        assert!(
            confirmable(&claim(), None, &claimed_node()).is_err(),
            "no vend record of the name"
        );
    }

    #[test]
    fn another_machines_vend_of_the_name_is_not_confirmable() {
        let theirs = InstanceRecord {
            machine_id: Some("a".repeat(64)),
            ..record()
        };
        assert!(confirmable(&claim(), Some(&theirs), &claimed_node()).is_err());
        let legacy = InstanceRecord {
            machine_id: None,
            ..record()
        };
        assert!(confirmable(&claim(), Some(&legacy), &claimed_node()).is_err());
    }

    #[test]
    fn a_claim_of_an_activation_the_name_was_not_vended_is_not_confirmable() {
        let other = Claim {
            activation_id: "act-2".into(),
            ..claim()
        };
        let their_node = node("mi-0123456789abcdef0", "act-2", 1_005, "Online");
        assert!(confirmable(&other, Some(&record()), &their_node).is_err());
    }

    #[test]
    fn another_activations_node_is_not_confirmable() {
        let theirs = node("mi-0123456789abcdef0", "act-other-pool", 1_005, "Online");
        assert!(confirmable(&claim(), Some(&record()), &theirs).is_err());
    }

    #[test]
    fn a_node_registered_before_the_vend_is_not_confirmable() {
        let earlier = node("mi-0123456789abcdef0", "act-1", 999 - CLOCK_TOLERANCE_SECS, "Online");
        assert!(confirmable(&claim(), Some(&record()), &earlier).is_err());
        let undated = InstanceRecord {
            vended_at: None,
            ..record()
        };
        assert!(confirmable(&claim(), Some(&undated), &claimed_node()).is_err());
    }

    #[test]
    fn a_repeat_is_the_same_claim_and_another_name_or_machine_is_not() {
        let earlier = NodeRecord {
            instance_id: "mi-0123456789abcdef0".into(),
            pool: "web".into(),
            activation_id: "act-1".into(),
            machine_id: MACHINE.into(),
            instance_name: "web-01".into(),
            registered_at: 1_005,
            confirmed_at: 1_010,
            source: String::new(),
            replaced: vec![],
        };
        assert!(same_claim(&claim(), &earlier));
        let shouted = Claim {
            instance: "WEB-01".into(),
            ..claim()
        };
        assert!(same_claim(&shouted, &earlier), "host names are case-insensitive");
        let other_name = Claim {
            instance: "web-02".into(),
            ..claim()
        };
        assert!(!same_claim(&other_name, &earlier));
        let other_machine = Claim {
            machine_id: Some("a".repeat(64)),
            ..claim()
        };
        assert!(!same_claim(&other_machine, &earlier));
    }

    #[test]
    fn a_reimage_replaces_the_machines_offline_nodes_and_never_an_online_one_or_the_new_one() {
        let nodes = vec![
            node("mi-00000000000000001", "act-0", 100, "ConnectionLost"),
            node("mi-00000000000000002", "act-0", 200, "Online"),
            node("mi-00000000000000003", "act-0", 300, "Inactive"),
            node("mi-0123456789abcdef0", "act-1", 1_005, "ConnectionLost"),
        ];
        let ids: Vec<&str> = reimaged_to_replace(&nodes, "mi-0123456789abcdef0")
            .iter()
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(ids, ["mi-00000000000000001", "mi-00000000000000003"]);
    }
}
