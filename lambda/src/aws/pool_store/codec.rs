//! The items as the domain sees them: attribute maps to `PoolState`,
//! `InstanceRecord`, `ActivationRecord` and the directory's snapshot, and the items
//! the store puts, built from the domain's types. Pure: no AWS call.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use super::schema::*;
use crate::clock::EpochSecs;
use crate::error::VendError;
use crate::pool::state::{CurrentActivation, InstanceRecord, Lease, PoolState, RotationFailure};
use crate::secret::SealedCode;

/// What the table says about an activation the service created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationRecord {
    /// It became a pool's current activation, by the rotation `by`.
    Committed { by: String },
    /// The sweep condemned it: no commit can land any more.
    Tombstoned,
}

/// The pools' configs as some process last read them from Parameter Store, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorySnapshot {
    pub configs: BTreeMap<String, String>,
    pub read_at: EpochSecs,
}

pub(super) fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

pub(super) fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// A binary attribute's bytes; an empty one (which DynamoDB would refuse anyway) is none.
pub(super) fn get_b<'a>(item: &'a Item, name: &str) -> Option<&'a [u8]> {
    let bytes = item.get(name)?.as_b().ok()?.as_ref();
    (!bytes.is_empty()).then_some(bytes)
}

pub(super) fn b(value: &[u8]) -> AttributeValue {
    AttributeValue::B(Blob::new(value))
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

/// The pool as its item says; a pool without an item is a pool with nothing yet.
pub(super) fn pool_state(item: Option<&Item>) -> PoolState {
    let Some(item) = item else {
        return PoolState::default();
    };
    let activation = activation_at(item, &CURRENT, get_n(item, RESERVED).unwrap_or(0));
    let standby = activation_at(item, &STANDBY, 0);
    let lease = get_s(item, LEASE_OWNER).map(|owner| Lease {
        owner: owner.to_owned(),
        until: get_n(item, LEASE_UNTIL).unwrap_or(0),
    });
    let last_failure = get_n(item, FAILED_AT).map(|at| RotationFailure {
        at,
        error: get_s(item, FAILURE).unwrap_or_default().to_owned(),
    });
    PoolState {
        activation,
        standby,
        lease,
        checked_at: get_n(item, CHECKED_AT).unwrap_or(0),
        last_rotation_reason: get_s(item, ROTATION_REASON).map(str::to_owned),
        last_failure,
        unused_registrations: get_n(item, UNUSED_REGISTRATIONS).unwrap_or(0).max(0) as u64,
    }
}

fn activation_at(item: &Item, at: &Attributes, reserved: i64) -> Option<CurrentActivation> {
    let id = get_s(item, at.id)?;
    Some(CurrentActivation {
        id: id.to_owned(),
        expires_at: get_n(item, at.expires_at).unwrap_or(0),
        limit: get_n(item, at.limit).unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
        reserved: reserved.clamp(0, i64::from(u32::MAX)) as u32,
        parameter_version: get_n(item, at.parameter_version).unwrap_or(0),
        committed_at: get_n(item, at.committed_at).unwrap_or(0),
        fingerprint: get_s(item, at.fingerprint).unwrap_or_default().to_owned(),
        config_at: get_n(item, at.config_at).unwrap_or(0),
        sealed_code: get_b(item, at.sealed_code).map(SealedCode::new),
    })
}

/// A named instance's record; `None` when it lacks what a reuse needs.
pub(super) fn instance_record(item: &Item) -> Option<InstanceRecord> {
    Some(InstanceRecord {
        activation_id: get_s(item, ACTIVATION_ID)?.to_owned(),
        parameter_version: get_n(item, PARAMETER_VERSION)?,
        expires_at: get_n(item, EXPIRES_AT)?,
        machine_id: get_s(item, MACHINE_ID).map(str::to_owned),
        vended_at: get_n(item, VENDED_AT),
    })
}

/// The item that remembers what `instance` was given (it lives as long as the activation).
pub(super) fn instance_item(pool: &str, instance: &str, record: &InstanceRecord) -> Item {
    let machine = record.machine_id.as_deref().unwrap_or_default();
    let mut item = Item::from([
        (PK.to_owned(), instance_key(pool, instance)),
        (ACTIVATION_ID.to_owned(), s(&record.activation_id)),
        (PARAMETER_VERSION.to_owned(), n(record.parameter_version)),
        (EXPIRES_AT.to_owned(), n(record.expires_at)),
        (MACHINE_ID.to_owned(), s(machine)),
        (TTL.to_owned(), n(record.expires_at)),
    ]);
    if let Some(at) = record.vended_at {
        item.insert(VENDED_AT.to_owned(), n(at));
    }
    item
}

/// A confirmed registration (`POST /registrations`): which node a named machine of a
/// pool became, through which activation, and what it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub instance_id: String,
    pub pool: String,
    pub activation_id: String,
    /// The machine's digest (`X-Machine-Id`).
    pub machine_id: String,
    pub instance_name: String,
    /// SSM's `RegistrationDate`.
    pub registered_at: EpochSecs,
    pub confirmed_at: EpochSecs,
    /// The confirming caller's address, as the vend sees it ("" when unknown).
    pub source: String,
    /// The re-imaged machine's earlier nodes deregistered on this confirmation.
    pub replaced: Vec<String>,
}

/// The node record's item; DynamoDB drops it `ttl_secs` after its confirmation.
pub(super) fn node_item(record: &NodeRecord, ttl_secs: i64) -> Item {
    let mut item = Item::from([
        (PK.to_owned(), node_key(&record.instance_id)),
        (POOL.to_owned(), s(&record.pool)),
        (ACTIVATION_ID.to_owned(), s(&record.activation_id)),
        (MACHINE_ID.to_owned(), s(&record.machine_id)),
        (INSTANCE_NAME.to_owned(), s(&record.instance_name)),
        (REGISTERED_AT.to_owned(), n(record.registered_at)),
        (CONFIRMED_AT.to_owned(), n(record.confirmed_at)),
        (SOURCE.to_owned(), s(&record.source)),
        (TTL.to_owned(), n(record.confirmed_at.saturating_add(ttl_secs))),
    ]);
    if !record.replaced.is_empty() {
        item.insert(REPLACED.to_owned(), AttributeValue::Ss(record.replaced.clone()));
    }
    item
}

/// A node record; `None` for an item that is not one.
pub(super) fn node_record(item: &Item) -> Option<NodeRecord> {
    let key = get_s(item, PK)?;
    Some(NodeRecord {
        instance_id: key.strip_prefix(NODE_KEY_PREFIX)?.to_owned(),
        pool: get_s(item, POOL)?.to_owned(),
        activation_id: get_s(item, ACTIVATION_ID)?.to_owned(),
        machine_id: get_s(item, MACHINE_ID)?.to_owned(),
        instance_name: get_s(item, INSTANCE_NAME)?.to_owned(),
        registered_at: get_n(item, REGISTERED_AT)?,
        confirmed_at: get_n(item, CONFIRMED_AT)?,
        source: get_s(item, SOURCE).unwrap_or_default().to_owned(),
        replaced: item
            .get(REPLACED)
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
    })
}

/// A tombstone wins over a commit record; an item with neither mark says nothing.
pub(super) fn activation_record(item: &Item) -> Option<ActivationRecord> {
    if item.contains_key(TOMBSTONED_AT) {
        Some(ActivationRecord::Tombstoned)
    } else if item.contains_key(COMMITTED_AT) {
        Some(ActivationRecord::Committed {
            by: get_s(item, COMMITTED_BY).unwrap_or_default().to_owned(),
        })
    } else {
        None
    }
}

/// The record a commit writes beside the pool item: `next` became `pool`'s by `owner`.
pub(super) fn commit_record_item(pool: &str, next: &CurrentActivation, owner: &str, now: EpochSecs) -> Item {
    Item::from([
        (PK.to_owned(), record_key(&next.id)),
        (POOL.to_owned(), s(pool)),
        (ACTIVATION_ID.to_owned(), s(&next.id)),
        (EXPIRES_AT.to_owned(), n(next.expires_at)),
        (COMMITTED_AT.to_owned(), n(now)),
        (COMMITTED_BY.to_owned(), s(owner)),
        (TTL.to_owned(), n(next.expires_at + RECORD_LINGER_SECS)),
    ])
}

/// The sweep's tombstone for an activation no rotation committed.
pub(super) fn tombstone_item(activation_id: &str, now: EpochSecs) -> Item {
    Item::from([
        (PK.to_owned(), record_key(activation_id)),
        (ACTIVATION_ID.to_owned(), s(activation_id)),
        (TOMBSTONED_AT.to_owned(), n(now)),
        (TTL.to_owned(), n(now + RECORD_LINGER_SECS)),
    ])
}

/// The directory item's snapshot; `None` when it has none yet (or only a claim).
pub(super) fn directory_snapshot(item: &Item) -> Result<Option<DirectorySnapshot>, VendError> {
    let (Some(configs), Some(read_at)) = (get_s(item, CONFIGS), get_n(item, READ_AT)) else {
        return Ok(None);
    };
    let configs = serde_json::from_str(configs)
        .map_err(|e| VendError::Internal(format!("the pool directory item is not valid: {e}")))?;
    Ok(Some(DirectorySnapshot { configs, read_at }))
}

/// The configs as the directory item stores them (one JSON object).
pub(super) fn directory_configs(configs: &BTreeMap<String, String>) -> Result<String, VendError> {
    serde_json::to_string(configs).map_err(|e| VendError::Internal(format!("could not encode the pool directory: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    fn activation(id: &str) -> CurrentActivation {
        CurrentActivation {
            id: id.into(),
            expires_at: 2_000,
            limit: 50,
            reserved: 7,
            parameter_version: 3,
            committed_at: 1_000,
            fingerprint: "fp1".into(),
            config_at: 900,
            sealed_code: Some(SealedCode::new(format!("sealed {id}").into_bytes())),
        }
    }

    fn sealed(a: &CurrentActivation) -> AttributeValue {
        b(a.sealed_code.as_ref().expect("sealed").bytes())
    }

    fn pool_item(current: &CurrentActivation, standby: &CurrentActivation) -> Item {
        item(&[
            (PK, pool_key("p")),
            (ACTIVATION_ID, s(&current.id)),
            (EXPIRES_AT, n(current.expires_at)),
            (LIMIT, n(i64::from(current.limit))),
            (RESERVED, n(i64::from(current.reserved))),
            (PARAMETER_VERSION, n(current.parameter_version)),
            (ROTATED_AT, n(current.committed_at)),
            (CONFIG_FP, s(&current.fingerprint)),
            (CONFIG_AT, n(current.config_at)),
            (SEALED_CODE, sealed(current)),
            (STANDBY.id, s(&standby.id)),
            (STANDBY.expires_at, n(standby.expires_at)),
            (STANDBY.limit, n(i64::from(standby.limit))),
            (STANDBY.parameter_version, n(standby.parameter_version)),
            (STANDBY.committed_at, n(standby.committed_at)),
            (STANDBY.fingerprint, s(&standby.fingerprint)),
            (STANDBY.config_at, n(standby.config_at)),
            (STANDBY.sealed_code, sealed(standby)),
            (LEASE_OWNER, s("rotation-1")),
            (LEASE_UNTIL, n(1_030)),
            (ROTATION_REASON, s("exhausted")),
            (FAILED_AT, n(990)),
            (FAILURE, s("Throttled")),
            (UNUSED_REGISTRATIONS, n(12)),
        ])
    }

    #[test]
    fn a_pool_item_reads_back_as_the_state_written_into_it() {
        let current = activation("act-current");
        let standby = CurrentActivation {
            reserved: 0,
            ..activation("act-standby")
        };
        let state = pool_state(Some(&pool_item(&current, &standby)));
        assert_eq!(state.activation, Some(current));
        assert_eq!(state.standby, Some(standby));
        assert_eq!(
            state.lease,
            Some(Lease {
                owner: "rotation-1".into(),
                until: 1_030
            })
        );
        assert_eq!(state.last_rotation_reason.as_deref(), Some("exhausted"));
        let failure = state.last_failure.expect("the failure");
        assert_eq!((failure.at, failure.error.as_str()), (990, "Throttled"));
        assert_eq!(state.unused_registrations, 12);
    }

    #[test]
    fn each_activation_reads_back_with_its_own_sealed_code() {
        let state = pool_state(Some(&pool_item(&activation("a"), &activation("b"))));
        let sealed = |a: Option<CurrentActivation>| a.and_then(|a| a.sealed_code).map(|c| c.bytes().to_vec());
        assert_eq!(sealed(state.activation), Some(b"sealed a".to_vec()));
        assert_eq!(sealed(state.standby), Some(b"sealed b".to_vec()));
    }

    #[test]
    fn an_item_written_before_sealed_codes_or_holding_no_binary_there_has_none() {
        let mut item = pool_item(&activation("a"), &activation("b"));
        item.remove(SEALED_CODE);
        item.insert(STANDBY.sealed_code.into(), s("not binary"));
        let state = pool_state(Some(&item));
        assert_eq!(state.activation.expect("current").sealed_code, None);
        assert_eq!(state.standby.expect("standby").sealed_code, None);
        let mut item = pool_item(&activation("a"), &activation("b"));
        item.insert(SEALED_CODE.into(), b(b""));
        assert_eq!(pool_state(Some(&item)).activation.expect("current").sealed_code, None);
    }

    #[test]
    fn a_pool_without_an_item_has_nothing_yet() {
        assert_eq!(pool_state(None), PoolState::default());
    }

    #[test]
    fn the_standby_never_carries_the_current_activations_slots() {
        let state = pool_state(Some(&pool_item(&activation("a"), &activation("b"))));
        assert_eq!(state.standby.map(|s| s.reserved), Some(0));
        assert_eq!(state.activation.map(|a| a.reserved), Some(7));
    }

    #[test]
    fn a_pool_item_without_an_activation_id_has_no_activation_whatever_else_it_holds() {
        let mut item = pool_item(&activation("a"), &activation("b"));
        item.remove(ACTIVATION_ID);
        item.remove(STANDBY.id);
        let state = pool_state(Some(&item));
        assert_eq!((state.activation, state.standby), (None, None));
        assert!(state.lease.is_some());
    }

    #[test]
    fn malformed_numbers_read_as_zero_and_out_of_range_counts_are_clamped() {
        let item = item(&[
            (ACTIVATION_ID, s("a")),
            (EXPIRES_AT, s("not a number")),
            (LIMIT, n(i64::MAX)),
            (RESERVED, n(-5)),
            (UNUSED_REGISTRATIONS, n(-3)),
        ]);
        let state = pool_state(Some(&item));
        let activation = state.activation.expect("an activation");
        assert_eq!(activation.expires_at, 0, "an expiry that is no number is already past");
        assert_eq!(activation.limit, u32::MAX);
        assert_eq!(activation.reserved, 0);
        assert_eq!(activation.fingerprint, "", "no fingerprint matches no wanted one");
        assert_eq!(state.unused_registrations, 0);
    }

    #[test]
    fn an_instance_record_round_trips_through_its_item() {
        let record = InstanceRecord {
            activation_id: "act-1".into(),
            parameter_version: 4,
            expires_at: 5_000,
            machine_id: Some("0f3a".into()),
            vended_at: Some(1_000),
        };
        let item = instance_item("p", "Web-01", &record);
        assert_eq!(instance_record(&item), Some(record));
        assert_eq!(item[PK], s("instance#p#web-01"), "host names are case-insensitive");
        assert_eq!(item[TTL], n(5_000), "the record lives as long as its activation");
    }

    #[test]
    fn a_node_record_round_trips_and_expires_its_ttl_after_the_confirmation() {
        let record = NodeRecord {
            instance_id: "mi-0123456789abcdef0".into(),
            pool: "p".into(),
            activation_id: "act-1".into(),
            machine_id: "0f3a".into(),
            instance_name: "web-01".into(),
            registered_at: 900,
            confirmed_at: 1_000,
            source: "10.0.0.7".into(),
            replaced: vec!["mi-00000000000000001".into()],
        };
        let item = node_item(&record, 400 * 86_400);
        assert_eq!(item[PK], s("node#mi-0123456789abcdef0"));
        assert_eq!(item[TTL], n(1_000 + 400 * 86_400));
        assert_eq!(node_record(&item), Some(record.clone()));
        let none_replaced = NodeRecord {
            replaced: vec![],
            ..record
        };
        let item = node_item(&none_replaced, 1);
        assert!(!item.contains_key(REPLACED), "DynamoDB refuses an empty set");
        assert_eq!(node_record(&item), Some(none_replaced));
    }

    #[test]
    fn an_instance_record_without_a_machine_is_stored_with_an_empty_one() {
        let record = InstanceRecord {
            activation_id: "act-1".into(),
            parameter_version: 4,
            expires_at: 5_000,
            machine_id: None,
            vended_at: None,
        };
        let item = instance_item("p", "web-01", &record);
        assert_eq!(item[MACHINE_ID], s(""));
        assert_eq!(instance_record(&item).and_then(|r| r.machine_id), Some(String::new()));
    }

    #[test]
    fn an_instance_record_missing_what_a_reuse_needs_is_no_record() {
        let record = InstanceRecord {
            activation_id: "act-1".into(),
            parameter_version: 4,
            expires_at: 5_000,
            machine_id: None,
            vended_at: None,
        };
        for missing in [ACTIVATION_ID, PARAMETER_VERSION, EXPIRES_AT] {
            let mut item = instance_item("p", "web-01", &record);
            item.remove(missing);
            assert_eq!(instance_record(&item), None, "without {missing}");
        }
        let mut item = instance_item("p", "web-01", &record);
        item.insert(PARAMETER_VERSION.into(), s("4"));
        assert_eq!(instance_record(&item), None, "a version stored as a string");
    }

    #[test]
    fn a_commit_record_reads_back_as_committed_by_its_rotation() {
        let item = commit_record_item("p", &activation("act-1"), "rotation-7", 1_000);
        assert_eq!(
            activation_record(&item),
            Some(ActivationRecord::Committed {
                by: "rotation-7".into()
            })
        );
        assert_eq!(item[PK], s("activation#act-1"));
        assert_eq!(item[TTL], n(2_000 + RECORD_LINGER_SECS));
    }

    #[test]
    fn a_tombstone_wins_over_a_commit_mark_and_a_bare_item_says_nothing() {
        let tombstone = tombstone_item("act-1", 1_000);
        assert_eq!(activation_record(&tombstone), Some(ActivationRecord::Tombstoned));
        assert_eq!(tombstone[TTL], n(1_000 + RECORD_LINGER_SECS));
        let mut both = commit_record_item("p", &activation("act-1"), "rotation-7", 1_000);
        both.insert(TOMBSTONED_AT.into(), n(1_001));
        assert_eq!(activation_record(&both), Some(ActivationRecord::Tombstoned));
        assert_eq!(activation_record(&item(&[(PK, record_key("act-1"))])), None);
    }

    #[test]
    fn the_directory_snapshot_round_trips() {
        let configs = BTreeMap::from([("web".to_owned(), r#"{"iam_role":"r"}"#.to_owned())]);
        let stored = item(&[(CONFIGS, s(&directory_configs(&configs).unwrap())), (READ_AT, n(1_234))]);
        assert_eq!(
            directory_snapshot(&stored).unwrap(),
            Some(DirectorySnapshot {
                configs,
                read_at: 1_234
            })
        );
    }

    #[test]
    fn a_directory_item_with_only_a_claim_has_no_snapshot() {
        let claimed = item(&[(PK, directory_key()), (CLAIM_UNTIL, n(1_240))]);
        assert_eq!(directory_snapshot(&claimed).unwrap(), None);
        let no_time = item(&[(CONFIGS, s("{}"))]);
        assert_eq!(directory_snapshot(&no_time).unwrap(), None);
    }

    #[test]
    fn a_directory_item_that_is_not_json_is_an_internal_error() {
        let broken = item(&[(CONFIGS, s("{not json")), (READ_AT, n(1))]);
        assert!(matches!(directory_snapshot(&broken), Err(VendError::Internal(_))));
    }
}
