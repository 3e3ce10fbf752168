//! The pool's state and every decision about it, as plain functions over plain data.
//! Nothing here talks to AWS; `vend/mod.rs` asks these functions what to do.

use std::fmt;

use crate::clock::EpochSecs;
use crate::secret::SealedCode;

pub const DEFAULT_POOL: &str = "default";

/// One pool's row in DynamoDB (never a plaintext code: that lives in Parameter Store;
/// the row may carry it sealed with the codes' KMS key).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolState {
    pub activation: Option<CurrentActivation>,
    /// The activation ready to take over, whole, when the current one is refused.
    pub standby: Option<CurrentActivation>,
    pub lease: Option<Lease>,
    /// When a process last heard from SSM that the current activation works (0: never);
    /// older than the current activation's commit when it was a predecessor's.
    pub checked_at: EpochSecs,
    /// Why the current activation was made (for operators).
    pub last_rotation_reason: Option<String>,
    /// The last rotation that failed, if any (for operators).
    pub last_failure: Option<RotationFailure>,
    /// Registrations the sweep found unused on the activations it retired, in all.
    pub unused_registrations: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationFailure {
    pub at: EpochSecs,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentActivation {
    pub id: String,
    pub expires_at: EpochSecs,
    pub limit: u32,
    /// Slots handed out so far; the slot a vend got is this value right after its reserve.
    pub reserved: u32,
    /// The Parameter Store version that holds this activation's ID and code.
    pub parameter_version: i64,
    /// When the rotation that installed it committed (0 when unknown): an activation
    /// committed less than a verify interval ago needs no check with SSM yet.
    pub committed_at: EpochSecs,
    /// The fingerprint of the pool settings it was made with.
    pub fingerprint: String,
    /// When the pool config it was made from was read from Parameter Store.
    pub config_at: EpochSecs,
    /// Its code encrypted with the codes' key, when the rotation that made it could
    /// seal it (`None` for items written before, or when KMS refused: then the code is
    /// read from Parameter Store, the store of record).
    pub sealed_code: Option<SealedCode>,
}

/// The pool settings a process has, as far as the pool's activation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub fingerprint: &'a str,
    pub config_at: EpochSecs,
}

impl CurrentActivation {
    /// Made with other settings than `wanted`, from an older read of the config:
    /// it must go. (Made from a newer read: it is the caller's config that is stale.)
    pub fn config_outdated(&self, wanted: Wanted<'_>) -> bool {
        self.fingerprint != wanted.fingerprint && self.config_at <= wanted.config_at
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: EpochSecs,
}

/// Why a pool needs a new activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationReason {
    NoActivation,
    Expired,
    InsideExpiryMargin,
    SlotsUsedUp,
    DeletedOutOfBand,
    /// The Parameter Store version that holds the code is gone.
    CodeMissing,
    /// The pool's config changed (role, limit, lifetime, tags or name).
    ConfigChanged,
    /// Not needed yet, but soon: rotate while others use the last slots.
    LowWater,
    /// Not needed yet, but the activation nears its expiry margin.
    AheadOfExpiry,
    /// The pool has no standby ready to take over.
    StandbyMissing,
}

impl fmt::Display for RotationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoActivation => "no activation",
            Self::Expired => "expired",
            Self::InsideExpiryMargin => "inside the expiry margin",
            Self::SlotsUsedUp => "slots used up",
            Self::DeletedOutOfBand => "deleted out of band",
            Self::CodeMissing => "code parameter missing",
            Self::ConfigChanged => "ConfigChanged",
            Self::LowWater => "low-water mark",
            Self::AheadOfExpiry => "ahead of expiry",
            Self::StandbyMissing => "standby missing",
        })
    }
}

/// The vend's rule for a slot: free, and the activation outlives the margin.
/// `None` means a slot can be reserved; otherwise the reason a rotation is due.
pub fn why_unusable(
    activation: Option<&CurrentActivation>,
    now: EpochSecs,
    margin_secs: i64,
    wanted: Wanted<'_>,
) -> Option<RotationReason> {
    let Some(a) = activation else {
        return Some(RotationReason::NoActivation);
    };
    if a.expires_at <= now {
        Some(RotationReason::Expired)
    } else if a.expires_at <= now + margin_secs {
        Some(RotationReason::InsideExpiryMargin)
    } else if a.reserved >= a.limit {
        Some(RotationReason::SlotsUsedUp)
    } else if a.config_outdated(wanted) {
        Some(RotationReason::ConfigChanged)
    } else {
        None
    }
}

/// Below this limit, rotating ahead by slots would throw away a large share of every
/// activation for little gain: small pools rotate when their slots are used up.
pub const MIN_LIMIT_TO_ROTATE_AHEAD: u32 = 10;

/// The slot whose holder starts the next rotation: `percent` of the limit (at least one
/// slot) before the end. `None` when the limit is too small to rotate ahead by slots.
pub fn low_water_slot(limit: u32, percent: u32) -> Option<u32> {
    if percent == 0 || limit < MIN_LIMIT_TO_ROTATE_AHEAD {
        return None;
    }
    let spare = (u64::from(limit) * u64::from(percent)).div_ceil(100).max(1) as u32;
    let slot = limit.checked_sub(spare)?;
    (slot >= 1).then_some(slot)
}

/// What makes a rotation ahead of time due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AheadTrigger {
    /// This request took the low-water slot. Reservations are atomic, so exactly one
    /// request per activation sees this.
    LowWaterSlot,
    /// The activation is within one margin of entering its expiry margin. Every request
    /// in that window sees this, so callers should throttle their attempts.
    NearExpiry,
}

impl AheadTrigger {
    pub fn reason(self) -> RotationReason {
        match self {
            Self::LowWaterSlot => RotationReason::LowWater,
            Self::NearExpiry => RotationReason::AheadOfExpiry,
        }
    }
}

/// Whether the holder of `slot` should rotate ahead, and why.
pub fn rotate_ahead_due(
    slot: u32,
    a: &CurrentActivation,
    now: EpochSecs,
    margin_secs: i64,
    percent: u32,
) -> Option<AheadTrigger> {
    if low_water_slot(a.limit, percent) == Some(slot) {
        Some(AheadTrigger::LowWaterSlot)
    } else if percent > 0 && a.expires_at <= now + 2 * margin_secs {
        Some(AheadTrigger::NearExpiry)
    } else {
        None
    }
}

/// Whether a standby may take over now: it outlives the margin and was made with
/// the settings the caller's config wants.
pub fn promotable(standby: &CurrentActivation, now: EpochSecs, margin_secs: i64, wanted: Wanted<'_>) -> bool {
    standby.expires_at > now + margin_secs && standby.fingerprint == wanted.fingerprint
}

/// Whether the pool needs a (new) standby: none, or one that could not take over by
/// the time the current activation enters its margin (one that expires within two
/// margins is replaced, never promoted), or one made with other settings.
pub fn standby_needed(
    standby: Option<&CurrentActivation>,
    now: EpochSecs,
    margin_secs: i64,
    wanted: Wanted<'_>,
) -> bool {
    standby.is_none_or(|s| !promotable(s, now + margin_secs, margin_secs, wanted))
}

/// Whether an activation expiring at `expires_at` may still be handed out at `now`.
pub fn clears_margin(expires_at: EpochSecs, now: EpochSecs, margin_secs: i64) -> bool {
    expires_at > now + margin_secs
}

/// Whether a lease (if any) lets `now` take the pool. A request whose slot's write
/// showed it held skips preparing the standby: its try would only be refused.
pub fn lease_is_free(lease: Option<&Lease>, now: EpochSecs) -> bool {
    lease.is_none_or(|l| l.until < now)
}

/// After taking the lease: does the reason we came for still hold? Someone may have
/// rotated between our failed reserve and our lease.
pub fn still_needs_rotation(
    state: &PoolState,
    seen_activation: Option<&str>,
    reason: RotationReason,
    now: EpochSecs,
    margin_secs: i64,
    wanted: Wanted<'_>,
) -> bool {
    let current = state.activation.as_ref();
    let same_activation = current.map(|a| a.id.as_str()) == seen_activation;
    match reason {
        // Reasons only the finder can see: if the pool moved on, someone dealt with it.
        RotationReason::DeletedOutOfBand
        | RotationReason::CodeMissing
        | RotationReason::LowWater
        | RotationReason::AheadOfExpiry
        | RotationReason::StandbyMissing => same_activation,
        _ => why_unusable(current, now, margin_secs, wanted).is_some(),
    }
}

/// A name a caller gives itself to get the same activation on every retry.
/// Plausible host names only: DNS labels (plus `_`, which Windows allows), 1..=253 chars.
pub fn valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Pool names are path segments in Parameter Store and keys in DynamoDB.
pub fn valid_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Host names that many machines share (fresh installs, golden images, cloud
/// defaults): keying records by them would hand one machine's slot to another.
pub fn shared_default_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let first = name.split('.').next().unwrap_or_default();
    matches!(first, "localhost" | "localhost4" | "localhost6")
        || name.ends_with(".localdomain")
        || first
            .strip_prefix("ip-")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
}

/// A machine identity as the boot scripts send it: the SHA-256 hex digest of the
/// machine's own ID (never the raw value). Returns it in lowercase.
pub fn parse_machine_id(text: &str) -> Option<String> {
    (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| text.to_ascii_lowercase())
}

/// Who is asking, as far as reuse goes: a record is keyed only by a distinctive
/// name together with a machine identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller<'a> {
    pub name: &'a str,
    pub machine_id: &'a str,
}

impl<'a> Caller<'a> {
    /// `None` when the request cannot be told apart from another machine's.
    pub fn keyed(name: Option<&'a str>, machine_id: Option<&'a str>) -> Option<Self> {
        match (name, machine_id) {
            (Some(name), Some(machine_id)) if !shared_default_name(name) => Some(Self { name, machine_id }),
            _ => None,
        }
    }
}

/// What a named instance was given, so a retry gets the same activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub activation_id: String,
    pub parameter_version: i64,
    pub expires_at: EpochSecs,
    /// The machine that was given it; `None` for records written before machine ids.
    pub machine_id: Option<String>,
    /// When the vend wrote it (a reuse does not rewrite it); `None` for records
    /// written before confirmations: those cannot be confirmed.
    pub vended_at: Option<EpochSecs>,
}

impl InstanceRecord {
    /// Whether `caller` may be handed this record's activation again (if SSM still
    /// honours it): the same machine, and the activation outlives the margin.
    pub fn reusable_by(&self, caller: &Caller<'_>, now: EpochSecs, margin_secs: i64) -> bool {
        self.machine_id.as_deref() == Some(caller.machine_id) && self.expires_at > now + margin_secs
    }
}

/// What SSM says about one of the pool's activations, for the sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationInfo {
    pub id: String,
    pub expired: bool,
    pub registrations: u32,
    pub limit: u32,
    pub created_at: EpochSecs,
}

/// Whether SSM still registers servers with an activation it describes as `info`
/// (`None`: it no longer knows it): not deleted, not expired, not full (someone
/// registered with its code outside this service). A refusal report is confirmed
/// exactly when this is false.
pub fn still_honoured(info: Option<&ActivationInfo>) -> bool {
    info.is_some_and(|a| !a.expired && a.registrations < a.limit)
}

/// What the sweep does with an activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepVerdict {
    /// The pool's current activation.
    KeepCurrent,
    /// Handed out and still able to register servers: someone may be booting with it.
    KeepRetired,
    /// Possibly a rotation still in flight (younger than the lease plus slack).
    KeepYoung,
    /// Never committed and older than any lease: a crashed or fenced-out rotation's.
    DeleteOrphan,
    /// Handed out once, but expired or full: it can register nobody.
    DeleteSpent,
}

/// The sweep's rule. `committed` says whether the activation was ever current;
/// `grace_secs` must exceed the lease (a rotation cannot commit after its lease).
pub fn sweep_verdict(
    info: &ActivationInfo,
    current: Option<&str>,
    committed: bool,
    now: EpochSecs,
    grace_secs: i64,
) -> SweepVerdict {
    if current == Some(info.id.as_str()) {
        SweepVerdict::KeepCurrent
    } else if committed {
        if info.expired || info.registrations >= info.limit {
            SweepVerdict::DeleteSpent
        } else {
            SweepVerdict::KeepRetired
        }
    } else if now - info.created_at > grace_secs {
        SweepVerdict::DeleteOrphan
    } else {
        SweepVerdict::KeepYoung
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activation(reserved: u32, limit: u32, expires_at: EpochSecs) -> CurrentActivation {
        CurrentActivation {
            id: "a-1".into(),
            expires_at,
            limit,
            reserved,
            parameter_version: 1,
            committed_at: 0,
            fingerprint: "fp-1".into(),
            config_at: 100,
            sealed_code: None,
        }
    }

    const SAME: Wanted<'static> = Wanted {
        fingerprint: "fp-1",
        config_at: 100,
    };

    #[test]
    fn a_standby_takes_over_only_whole_fresh_and_made_with_the_wanted_settings() {
        let standby = activation(0, 10, 10_000);
        assert!(promotable(&standby, 1_000, 900, SAME));
        assert!(
            !promotable(&standby, 9_200, 900, SAME),
            "inside the margin: replaced, never promoted"
        );
        let other = Wanted {
            fingerprint: "fp-2",
            config_at: 200,
        };
        assert!(!promotable(&standby, 1_000, 900, other), "made with other settings");
    }

    #[test]
    fn a_standby_that_would_expire_within_two_margins_is_replaced() {
        let standby = activation(0, 10, 10_000);
        assert!(standby_needed(None, 1_000, 900, SAME));
        assert!(!standby_needed(Some(&standby), 1_000, 900, SAME));
        assert!(
            standby_needed(Some(&standby), 8_300, 900, SAME),
            "expires within two margins"
        );
    }

    #[test]
    fn a_config_change_retires_the_activation_made_with_the_old_settings() {
        let a = activation(0, 10, 99_999);
        let newer = Wanted {
            fingerprint: "fp-2",
            config_at: 160,
        };
        assert_eq!(
            why_unusable(Some(&a), 1_000, 900, newer),
            Some(RotationReason::ConfigChanged)
        );
        let older = Wanted {
            fingerprint: "fp-0",
            config_at: 40,
        };
        assert_eq!(
            why_unusable(Some(&a), 1_000, 900, older),
            None,
            "a process with an older read of the config does not rotate back"
        );
    }

    #[test]
    fn a_fresh_activation_with_free_slots_is_usable() {
        assert_eq!(why_unusable(Some(&activation(3, 10, 10_000)), 1_000, 900, SAME), None);
    }

    #[test]
    fn each_reason_for_rotation_is_told_apart() {
        assert_eq!(why_unusable(None, 0, 900, SAME), Some(RotationReason::NoActivation));
        assert_eq!(
            why_unusable(Some(&activation(0, 10, 1_000)), 1_000, 900, SAME),
            Some(RotationReason::Expired)
        );
        assert_eq!(
            why_unusable(Some(&activation(0, 10, 1_800)), 1_000, 900, SAME),
            Some(RotationReason::InsideExpiryMargin)
        );
        assert_eq!(
            why_unusable(Some(&activation(10, 10, 99_999)), 1_000, 900, SAME),
            Some(RotationReason::SlotsUsedUp)
        );
    }

    #[test]
    fn the_low_water_slot_leaves_a_share_of_slots_for_the_storm() {
        assert_eq!(low_water_slot(10, 20), Some(8));
        assert_eq!(low_water_slot(1000, 20), Some(800));
        assert_eq!(low_water_slot(3, 20), None, "small pools use every slot");
        assert_eq!(
            low_water_slot(1, 20),
            None,
            "a one-slot activation rotates on every vend anyway"
        );
        assert_eq!(low_water_slot(10, 0), None);
    }

    #[test]
    fn only_the_low_water_slot_rotates_ahead_by_slots() {
        let a = activation(0, 10, 1_000_000);
        let due: Vec<u32> = (1..=10)
            .filter(|s| rotate_ahead_due(*s, &a, 0, 900, 20).is_some())
            .collect();
        assert_eq!(due, vec![8]);
    }

    #[test]
    fn rotation_ahead_by_time_starts_one_margin_before_the_margin() {
        let a = activation(0, 1000, 10_000);
        assert_eq!(rotate_ahead_due(1, &a, 10_000 - 1_801, 900, 20), None);
        assert_eq!(
            rotate_ahead_due(1, &a, 10_000 - 1_800, 900, 20),
            Some(AheadTrigger::NearExpiry)
        );
    }

    #[test]
    fn an_expired_lease_is_free_and_a_live_one_is_not() {
        let lease = Lease {
            owner: "x".into(),
            until: 100,
        };
        assert!(lease_is_free(None, 50));
        assert!(!lease_is_free(Some(&lease), 100));
        assert!(lease_is_free(Some(&lease), 101));
    }

    #[test]
    fn a_rotation_someone_else_finished_is_not_repeated() {
        let rotated = PoolState {
            activation: Some(CurrentActivation {
                id: "new".into(),
                ..activation(0, 10, 99_999)
            }),
            lease: None,
            ..PoolState::default()
        };
        for reason in [
            RotationReason::SlotsUsedUp,
            RotationReason::DeletedOutOfBand,
            RotationReason::LowWater,
        ] {
            assert!(
                !still_needs_rotation(&rotated, Some("old"), reason, 1_000, 900, SAME),
                "{reason}"
            );
        }
        assert!(still_needs_rotation(
            &rotated,
            Some("new"),
            RotationReason::DeletedOutOfBand,
            1_000,
            900,
            SAME
        ));
        assert!(still_needs_rotation(
            &PoolState::default(),
            None,
            RotationReason::NoActivation,
            1_000,
            900,
            SAME
        ));
    }

    #[test]
    fn instance_names_must_look_like_host_names() {
        for good in ["web-01", "web-01.corp.example.com", "WIN_SRV_7", "a"] {
            assert!(valid_instance_name(good), "{good}");
        }
        let too_long = "a".repeat(254);
        for bad in [
            "",
            "-web",
            "web-",
            "a..b",
            "web 01",
            "web/01",
            "<script>",
            too_long.as_str(),
            "é",
        ] {
            assert!(!valid_instance_name(bad), "{bad}");
        }
    }

    #[test]
    fn names_many_machines_share_are_never_keyed() {
        for shared in [
            "localhost",
            "LOCALHOST",
            "localhost.localdomain",
            "localhost6.localdomain6",
            "ip-10-0-1-17",
            "ip-10-0-1-17.ec2.internal",
            "ip-172-31-5-9.eu-west-1.compute.internal",
        ] {
            assert!(shared_default_name(shared), "{shared}");
            assert_eq!(Caller::keyed(Some(shared), Some("ab")), None, "{shared}");
        }
        for own in ["web-01", "ip-camera-7", "db01.corp.example.com", "WIN-4J8KQ2"] {
            assert!(!shared_default_name(own), "{own}");
        }
    }

    #[test]
    fn a_record_is_reused_only_by_the_same_name_and_machine() {
        let digest = "a".repeat(64);
        let other = "b".repeat(64);
        assert_eq!(Caller::keyed(Some("web-01"), None), None, "a name alone is never keyed");
        let record = InstanceRecord {
            activation_id: "a-1".into(),
            parameter_version: 1,
            expires_at: 10_000,
            machine_id: Some(digest.clone()),
            vended_at: None,
        };
        let same = Caller::keyed(Some("web-01"), Some(&digest)).unwrap();
        let clone = Caller::keyed(Some("web-01"), Some(&other)).unwrap();
        assert!(record.reusable_by(&same, 1_000, 900));
        assert!(
            !record.reusable_by(&clone, 1_000, 900),
            "another machine with the same name"
        );
        assert!(!record.reusable_by(&same, 9_500, 900), "inside the expiry margin");
        let legacy = InstanceRecord {
            machine_id: None,
            vended_at: None,
            ..record
        };
        assert!(!legacy.reusable_by(&same, 1_000, 900), "a record without a machine id");
    }

    #[test]
    fn machine_ids_are_sha256_hex_digests() {
        let upper = "ABCDEF0123456789".repeat(4);
        assert_eq!(parse_machine_id(&upper), Some(upper.to_ascii_lowercase()));
        for bad in [
            "",
            "abc",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            "4c4c4544-0042-3510-8051-b7c04f4d3832",
        ] {
            assert_eq!(parse_machine_id(bad), None, "{bad}");
        }
    }

    fn info(id: &str, expired: bool, registrations: u32, created_at: EpochSecs) -> ActivationInfo {
        ActivationInfo {
            id: id.into(),
            expired,
            registrations,
            limit: 10,
            created_at,
        }
    }

    #[test]
    fn a_refusal_is_confirmed_by_an_activation_gone_expired_or_full() {
        assert!(still_honoured(Some(&info("a", false, 9, 0))), "a free slot left");
        assert!(!still_honoured(None), "gone (deleted out of band)");
        assert!(!still_honoured(Some(&info("a", true, 0, 0))), "expired");
        assert!(!still_honoured(Some(&info("a", false, 10, 0))), "at its limit");
        assert!(!still_honoured(Some(&info("a", false, 11, 0))), "over its limit");
    }

    #[test]
    fn the_sweep_never_deletes_the_current_activation() {
        let current = info("cur", true, 10, 0);
        assert_eq!(
            sweep_verdict(&current, Some("cur"), true, 10_000, 60),
            SweepVerdict::KeepCurrent
        );
        assert_eq!(
            sweep_verdict(&current, Some("cur"), false, 10_000, 60),
            SweepVerdict::KeepCurrent
        );
    }

    #[test]
    fn the_sweep_keeps_a_retired_activation_that_can_still_register_servers() {
        let retired = info("old", false, 3, 0);
        assert_eq!(
            sweep_verdict(&retired, Some("cur"), true, 10_000, 60),
            SweepVerdict::KeepRetired
        );
    }

    #[test]
    fn the_sweep_deletes_spent_activations_and_old_orphans_only() {
        assert_eq!(
            sweep_verdict(&info("a", true, 0, 0), Some("cur"), true, 10_000, 60),
            SweepVerdict::DeleteSpent
        );
        assert_eq!(
            sweep_verdict(&info("b", false, 10, 0), Some("cur"), true, 10_000, 60),
            SweepVerdict::DeleteSpent
        );
        assert_eq!(
            sweep_verdict(&info("c", false, 0, 0), Some("cur"), false, 10_000, 60),
            SweepVerdict::DeleteOrphan
        );
        assert_eq!(
            sweep_verdict(&info("d", false, 0, 9_990), Some("cur"), false, 10_000, 60),
            SweepVerdict::KeepYoung,
            "a rotation may still be committing it"
        );
    }
}
