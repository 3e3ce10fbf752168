//! The table's shape: attribute names, key spellings and the constants of its items.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) const PK: &str = "pk";
pub(super) const ACTIVATION_ID: &str = "activation_id";
pub(super) const EXPIRES_AT: &str = "expires_at";
pub(super) const LIMIT: &str = "reg_limit";
pub(super) const RESERVED: &str = "reserved";
pub(super) const PARAMETER_VERSION: &str = "param_version";
pub(super) const LEASE_OWNER: &str = "lease_owner";
pub(super) const LEASE_UNTIL: &str = "lease_until";
pub(super) const ROTATED_AT: &str = "rotated_at";
/// When SSM last said the current activation works, as a process that asked wrote it.
pub(super) const CHECKED_AT: &str = "checked_at";
pub(super) const TTL: &str = "ttl";
pub(super) const POOL: &str = "pool";
pub(super) const COMMITTED_AT: &str = "committed_at";
pub(super) const COMMITTED_BY: &str = "committed_by";
pub(super) const TOMBSTONED_AT: &str = "tombstoned_at";
pub(super) const MACHINE_ID: &str = "machine_id";
pub(super) const VENDED_AT: &str = "vended_at";
pub(super) const INSTANCE_NAME: &str = "instance_name";
pub(super) const REGISTERED_AT: &str = "registered_at";
pub(super) const CONFIRMED_AT: &str = "confirmed_at";
pub(super) const SOURCE: &str = "source";
pub(super) const REPLACED: &str = "replaced";
pub(super) const CONFIG_FP: &str = "config_fp";
pub(super) const CONFIG_AT: &str = "config_at";
pub(super) const CONFIGS: &str = "configs";
pub(super) const READ_AT: &str = "read_at";
pub(super) const CLAIM_UNTIL: &str = "claim_until";
pub(super) const ROTATION_REASON: &str = "rotation_reason";
pub(super) const FAILED_AT: &str = "rotation_failed_at";
pub(super) const FAILURE: &str = "rotation_failure";
pub(super) const UNUSED_REGISTRATIONS: &str = "unused_regs";
/// The current activation's code sealed with the codes' KMS key (B); never a plaintext code.
pub(super) const SEALED_CODE: &str = "sealed_code";
/// The standby activation's attributes on the pool item: the same as the current
/// one's, prefixed.
pub(super) const STANDBY: Attributes = Attributes {
    id: "sb_activation_id",
    expires_at: "sb_expires_at",
    limit: "sb_reg_limit",
    parameter_version: "sb_param_version",
    committed_at: "sb_committed_at",
    fingerprint: "sb_config_fp",
    config_at: "sb_config_at",
    reason: "sb_reason",
    sealed_code: "sb_sealed_code",
};
pub(super) const CURRENT: Attributes = Attributes {
    id: ACTIVATION_ID,
    expires_at: EXPIRES_AT,
    limit: LIMIT,
    parameter_version: PARAMETER_VERSION,
    committed_at: ROTATED_AT,
    fingerprint: CONFIG_FP,
    config_at: CONFIG_AT,
    reason: ROTATION_REASON,
    sealed_code: SEALED_CODE,
};

/// Where on the pool item one activation lives.
pub(super) struct Attributes {
    pub(super) id: &'static str,
    pub(super) expires_at: &'static str,
    pub(super) limit: &'static str,
    pub(super) parameter_version: &'static str,
    pub(super) committed_at: &'static str,
    pub(super) fingerprint: &'static str,
    pub(super) config_at: &'static str,
    pub(super) reason: &'static str,
    pub(super) sealed_code: &'static str,
}

/// Which place on the pool item a commit fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The activation requests reserve slots on.
    Current,
    /// The activation ready to take over, whole, when the current one is refused.
    Standby,
}

impl Place {
    pub(super) fn attributes(self) -> &'static Attributes {
        match self {
            Self::Current => &CURRENT,
            Self::Standby => &STANDBY,
        }
    }
}

/// The one item that shares the pools' configs between processes.
const DIRECTORY_KEY: &str = "directory#pools";

/// Committed-activation records and tombstones outlive their activation by a week.
pub(super) const RECORD_LINGER_SECS: i64 = 7 * 86_400;

/// The key of a pool's item.
pub(super) fn pool_key(pool: &str) -> AttributeValue {
    AttributeValue::S(format!("pool#{pool}"))
}

/// The key of an activation's commit record or tombstone.
pub(super) fn record_key(activation_id: &str) -> AttributeValue {
    AttributeValue::S(format!("activation#{activation_id}"))
}

/// The key of a named instance's record.
pub(super) fn instance_key(pool: &str, instance: &str) -> AttributeValue {
    // Host names are case-insensitive.
    AttributeValue::S(format!("{}{}", instance_prefix(pool), instance.to_ascii_lowercase()))
}

/// What the keys of every instance record of `pool` begin with.
pub(super) fn instance_prefix(pool: &str) -> String {
    format!("instance#{pool}#")
}

/// The key of a confirmed node's record.
pub(super) fn node_key(instance_id: &str) -> AttributeValue {
    AttributeValue::S(format!("{NODE_KEY_PREFIX}{instance_id}"))
}

/// What every node record's key starts with (`vending nodes` scans for it).
pub(super) const NODE_KEY_PREFIX: &str = "node#";

/// The key of the directory item.
pub(super) fn directory_key() -> AttributeValue {
    AttributeValue::S(DIRECTORY_KEY.to_owned())
}
