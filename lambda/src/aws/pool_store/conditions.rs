//! Every conditional write of the store, built as a value: the update, the condition,
//! and their attribute names and values. The conditions carry "never a slot twice"
//! (a reserve takes only free slots of a usable activation, a promotion only a
//! standby that is still the pool's), the lease's fencing (a commit lands only under
//! its own unexpired lease), and the instance record's "same machine, same
//! activation". Pure: `pool_item`, `records` and `directory` send them.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{b, n, s};
use super::schema::*;
use crate::clock::EpochSecs;
use crate::pool::state::{CurrentActivation, InstanceRecord, Wanted};

/// How many slots one reserve asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCount {
    /// One slot, from whatever activation is current.
    One,
    /// `count` slots (at least 2), only from an activation whose limit is `limit`.
    Block { count: u32, limit: u32 },
}

impl SlotCount {
    pub(super) fn slots(self) -> u32 {
        match self {
            Self::One => 1,
            Self::Block { count, .. } => count,
        }
    }
}

/// One write's expressions and the attribute names and values they use.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Write {
    pub(super) update: Option<String>,
    pub(super) condition: Option<String>,
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
}

impl Write {
    fn new(update: Option<String>, condition: Option<&str>) -> Self {
        Self {
            update,
            condition: condition.map(str::to_owned),
            ..Self::default()
        }
    }

    fn name(mut self, placeholder: &str, attribute: &str) -> Self {
        self.names.insert(placeholder.to_owned(), attribute.to_owned());
        self
    }

    fn names(self, pairs: &[(&str, &str)]) -> Self {
        pairs.iter().fold(self, |w, (p, a)| w.name(p, a))
    }

    fn value(mut self, placeholder: &str, value: AttributeValue) -> Self {
        self.values.insert(placeholder.to_owned(), value);
        self
    }

    /// The names as the SDK takes them (none: not sent).
    pub(super) fn attribute_names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    /// The values as the SDK takes them (none: not sent; DynamoDB refuses an empty map).
    pub(super) fn attribute_values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

/// The hot path's write: `ADD` the slots, only from a current activation that
/// outlives the margin, was made with the wanted settings (or a newer read of them),
/// and has the slots free: one below its limit, or a whole block below a limit the
/// caller knows.
pub(super) fn reserve(now: EpochSecs, margin_secs: i64, wanted: Wanted<'_>, count: SlotCount) -> Write {
    const USABLE: &str = "attribute_exists(#id) AND #exp > :min_exp AND (#fp = :fp OR #cfg_at > :cfg_at)";
    let write = Write::new(Some("ADD #reserved :count".into()), None)
        .names(&[
            ("#id", ACTIVATION_ID),
            ("#reserved", RESERVED),
            ("#limit", LIMIT),
            ("#exp", EXPIRES_AT),
            ("#fp", CONFIG_FP),
            ("#cfg_at", CONFIG_AT),
        ])
        .value(":min_exp", n(now + margin_secs))
        .value(":fp", s(wanted.fingerprint))
        .value(":cfg_at", n(wanted.config_at));
    match count {
        SlotCount::One => Write {
            condition: Some(format!("{USABLE} AND #reserved < #limit")),
            ..write
        }
        .value(":count", n(1)),
        SlotCount::Block { count, limit } => Write {
            condition: Some(format!("{USABLE} AND #limit = :limit AND #reserved <= :last_start")),
            ..write
        }
        .value(":count", n(i64::from(count)))
        .value(":limit", n(i64::from(limit)))
        .value(":last_start", n(i64::from(limit) - i64::from(count))),
    }
}

/// The lease, if it is free or has run out.
pub(super) fn take_lease(owner: &str, now: EpochSecs, until: EpochSecs) -> Write {
    Write::new(
        Some("SET #owner = :me, #until = :until".into()),
        Some("attribute_not_exists(#owner) OR #until < :now"),
    )
    .names(&[("#owner", LEASE_OWNER), ("#until", LEASE_UNTIL)])
    .value(":me", s(owner))
    .value(":until", n(until))
    .value(":now", n(now))
}

/// The lease given back, if it is still `owner`'s.
pub(super) fn release_lease(owner: &str) -> Write {
    Write::new(Some("REMOVE #owner, #until".into()), Some("#owner = :me"))
        .names(&[("#owner", LEASE_OWNER), ("#until", LEASE_UNTIL)])
        .value(":me", s(owner))
}

/// A commit's update of the pool item: `next` in `place`, the lease freed, only under
/// `owner`'s unexpired lease (fencing). A new current activation starts with the
/// slots `next` says are taken; a standby has none to take. Its sealed code is set
/// with it, or, when the rotation could not seal one, the place's old one removed
/// (it belongs to the activation being replaced).
pub(super) fn commit(owner: &str, next: &CurrentActivation, place: Place, reason: &str, now: EpochSecs) -> Write {
    let at = place.attributes();
    let set_reserved = if place == Place::Current {
        ", #reserved = :reserved"
    } else {
        ""
    };
    let (set_sealed, remove_sealed) = match next.sealed_code {
        Some(_) => (", #sealed = :sealed", ""),
        None => ("", ", #sealed"),
    };
    let write = Write::new(
        Some(format!(
            "SET #id = :id, #exp = :exp, #limit = :limit, #pver = :pver{set_reserved}, \
             #rotated = :now, #fp = :fp, #cfg_at = :cfg_at, #reason = :reason{set_sealed} \
             REMOVE #owner, #until{remove_sealed}"
        )),
        Some("#owner = :me AND #until >= :now"),
    )
    .names(&[
        ("#id", at.id),
        ("#exp", at.expires_at),
        ("#limit", at.limit),
        ("#pver", at.parameter_version),
        ("#rotated", at.committed_at),
        ("#fp", at.fingerprint),
        ("#cfg_at", at.config_at),
        ("#reason", at.reason),
        ("#sealed", at.sealed_code),
        ("#owner", LEASE_OWNER),
        ("#until", LEASE_UNTIL),
    ])
    .value(":fp", s(&next.fingerprint))
    .value(":reason", s(reason))
    .value(":cfg_at", n(next.config_at))
    .value(":id", s(&next.id))
    .value(":exp", n(next.expires_at))
    .value(":limit", n(i64::from(next.limit)))
    .value(":pver", n(next.parameter_version))
    .value(":now", n(now))
    .value(":me", s(owner));
    let write = match &next.sealed_code {
        Some(sealed) => write.value(":sealed", b(sealed.bytes())),
        None => write,
    };
    if place == Place::Current {
        write
            .name("#reserved", RESERVED)
            .value(":reserved", n(i64::from(next.reserved)))
    } else {
        write
    }
}

/// Whether the item is not there yet: the commit record's and the tombstone's
/// condition, so a commit and the sweep can never both win.
pub(super) fn not_there_yet() -> Write {
    Write::new(None, Some("attribute_not_exists(#pk)")).name("#pk", PK)
}

/// The standby made current with its first `count` slots taken, only if `standby` is
/// still the pool's standby, outlives the margin and was made with the wanted
/// settings, and the current activation cannot be reserved (none, used up, inside
/// the margin, or made with other settings).
///
/// The standby's sealed code moves with it, by value: the one `standby` carries is the
/// one its commit wrote beside `:sid` (a standby without one leaves the current
/// place without one too; `SET` from a missing attribute would fail the write).
pub(super) fn promote_standby(
    standby: &CurrentActivation,
    now: EpochSecs,
    margin_secs: i64,
    wanted: Wanted<'_>,
    count: u32,
) -> Write {
    let (set_sealed, remove_sealed) = match standby.sealed_code {
        Some(_) => (", #sealed = :sealed", ""),
        None => ("", ", #sealed"),
    };
    let write = Write::new(
        Some(format!(
            "SET #id = #sid, #exp = #sexp, #limit = #slimit, #pver = #spver, #fp = #sfp, \
             #cfg_at = #scfg_at, #reserved = :count, #rotated = #scommitted, #reason = :reason{set_sealed} \
             REMOVE #sid, #sexp, #slimit, #spver, #sfp, #scfg_at, #scommitted, #sreason, #checked, #ssealed{remove_sealed}"
        )),
        Some(
            "#sid = :sid AND #sexp > :min_exp AND #sfp = :fp AND (attribute_not_exists(#id) \
             OR #reserved >= #limit OR #exp <= :min_exp OR NOT (#fp = :fp OR #cfg_at > :cfg_at))",
        ),
    )
    .names(&[
        ("#id", CURRENT.id),
        ("#exp", CURRENT.expires_at),
        ("#limit", CURRENT.limit),
        ("#pver", CURRENT.parameter_version),
        ("#fp", CURRENT.fingerprint),
        ("#cfg_at", CURRENT.config_at),
        ("#rotated", CURRENT.committed_at),
        ("#reason", CURRENT.reason),
        ("#reserved", RESERVED),
        ("#sid", STANDBY.id),
        ("#sexp", STANDBY.expires_at),
        ("#slimit", STANDBY.limit),
        ("#spver", STANDBY.parameter_version),
        ("#sfp", STANDBY.fingerprint),
        ("#scfg_at", STANDBY.config_at),
        ("#scommitted", STANDBY.committed_at),
        ("#sreason", STANDBY.reason),
        ("#checked", CHECKED_AT),
        ("#sealed", CURRENT.sealed_code),
        ("#ssealed", STANDBY.sealed_code),
    ])
    .value(":sid", s(&standby.id))
    .value(":min_exp", n(now + margin_secs))
    .value(":fp", s(wanted.fingerprint))
    .value(":cfg_at", n(wanted.config_at))
    .value(":count", n(i64::from(count)))
    .value(":reason", s("standby promoted"));
    match &standby.sealed_code {
        Some(sealed) => write.value(":sealed", b(sealed.bytes())),
        None => write,
    }
}

/// SSM's good answer about the current activation noted for other processes: only
/// while it is still the current one, and never moving the time back.
pub(super) fn record_check(activation_id: &str, now: EpochSecs) -> Write {
    Write::new(
        Some("SET #checked = :now".into()),
        Some("#id = :id AND (attribute_not_exists(#checked) OR #checked < :now)"),
    )
    .names(&[("#checked", CHECKED_AT), ("#id", CURRENT.id)])
    .value(":id", s(activation_id))
    .value(":now", n(now))
}

/// A failed rotation noted on the pool item (no condition: best effort).
pub(super) fn record_rotation_failure(now: EpochSecs, error: &str) -> Write {
    Write::new(Some("SET #at = :at, #error = :error".into()), None)
        .names(&[("#at", FAILED_AT), ("#error", FAILURE)])
        .value(":at", n(now))
        .value(":error", s(error))
}

/// The sweep's count of unused registrations added to the pool's total.
pub(super) fn add_unused_registrations(count: i64) -> Write {
    Write::new(Some("ADD #unused :count".into()), None)
        .name("#unused", UNUSED_REGISTRATIONS)
        .value(":count", n(count))
}

/// The instance record written over only when there is none, it expires within
/// `min_expiry`, it holds the activation being replaced, or it names no or another
/// machine: a concurrent request from the same name and machine keeps its record.
pub(super) fn remember_instance(record: &InstanceRecord, replacing: Option<&str>, min_expiry: EpochSecs) -> Write {
    let machine = record.machine_id.as_deref().unwrap_or_default();
    Write::new(
        None,
        Some(
            "attribute_not_exists(#pk) OR #exp <= :min_exp OR #id = :replacing \
             OR attribute_not_exists(#machine) OR #machine <> :machine",
        ),
    )
    .names(&[
        ("#pk", PK),
        ("#exp", EXPIRES_AT),
        ("#id", ACTIVATION_ID),
        ("#machine", MACHINE_ID),
    ])
    .value(":min_exp", n(min_expiry))
    .value(":replacing", s(replacing.unwrap_or("")))
    .value(":machine", s(machine))
}

/// The next read of Parameter Store claimed until `until`, if the snapshot is older
/// than `stale_before` and no other claim holds at `now`.
pub(super) fn claim_directory_refresh(now: EpochSecs, stale_before: EpochSecs, until: EpochSecs) -> Write {
    Write::new(
        Some("SET #claim = :until".into()),
        Some(
            "(attribute_not_exists(#read_at) OR #read_at < :stale) \
             AND (attribute_not_exists(#claim) OR #claim < :now)",
        ),
    )
    .names(&[("#claim", CLAIM_UNTIL), ("#read_at", READ_AT)])
    .value(":until", n(until))
    .value(":stale", n(stale_before))
    .value(":now", n(now))
}

/// A fresh read of the configs shared, unless a newer one is there.
pub(super) fn save_directory_snapshot(configs_json: &str, read_at: EpochSecs) -> Write {
    Write::new(
        Some("SET #configs = :configs, #read_at = :read_at REMOVE #claim".into()),
        Some("attribute_not_exists(#read_at) OR #read_at < :read_at"),
    )
    .names(&[("#configs", CONFIGS), ("#read_at", READ_AT), ("#claim", CLAIM_UNTIL)])
    .value(":configs", s(configs_json))
    .value(":read_at", n(read_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SealedCode;

    const WANTED: Wanted<'static> = Wanted {
        fingerprint: "fp1",
        config_at: 900,
    };

    fn next() -> CurrentActivation {
        CurrentActivation {
            id: "act-2".into(),
            expires_at: 5_000,
            limit: 50,
            reserved: 3,
            parameter_version: 2,
            committed_at: 0,
            fingerprint: "fp1".into(),
            config_at: 900,
            sealed_code: Some(SealedCode::new(b"sealed act-2".to_vec())),
        }
    }

    fn unsealed() -> CurrentActivation {
        CurrentActivation {
            sealed_code: None,
            ..next()
        }
    }

    fn record() -> InstanceRecord {
        InstanceRecord {
            activation_id: "act-1".into(),
            parameter_version: 1,
            expires_at: 5_000,
            machine_id: Some("m-1".into()),
            vended_at: None,
        }
    }

    fn placeholders(write: &Write, sigil: char) -> Vec<String> {
        let text = format!(
            "{} {}",
            write.update.as_deref().unwrap_or(""),
            write.condition.as_deref().unwrap_or("")
        );
        let mut found: Vec<String> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == sigil))
            .filter(|word| word.starts_with(sigil))
            .map(str::to_owned)
            .collect();
        found.sort();
        found.dedup();
        found
    }

    fn sorted<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
        let mut keys: Vec<String> = keys.cloned().collect();
        keys.sort();
        keys
    }

    /// DynamoDB refuses a write that defines a name or value its expressions do not
    /// use, and one that uses a name or value it does not define.
    fn assert_self_consistent(label: &str, write: &Write) {
        assert_eq!(placeholders(write, '#'), sorted(write.names.keys()), "{label}: names");
        assert_eq!(placeholders(write, ':'), sorted(write.values.keys()), "{label}: values");
    }

    #[test]
    fn every_write_defines_exactly_the_names_and_values_it_uses() {
        let writes = [
            ("reserve one", reserve(1_000, 60, WANTED, SlotCount::One)),
            (
                "reserve a block",
                reserve(1_000, 60, WANTED, SlotCount::Block { count: 8, limit: 50 }),
            ),
            ("take the lease", take_lease("me", 1_000, 1_030)),
            ("release the lease", release_lease("me")),
            (
                "commit as current",
                commit("me", &next(), Place::Current, "exhausted", 1_000),
            ),
            (
                "commit as standby",
                commit("me", &next(), Place::Standby, "ahead", 1_000),
            ),
            (
                "commit as current, unsealed",
                commit("me", &unsealed(), Place::Current, "exhausted", 1_000),
            ),
            (
                "commit as standby, unsealed",
                commit("me", &unsealed(), Place::Standby, "ahead", 1_000),
            ),
            ("not there yet", not_there_yet()),
            ("promote the standby", promote_standby(&next(), 1_000, 60, WANTED, 4)),
            (
                "promote an unsealed standby",
                promote_standby(&unsealed(), 1_000, 60, WANTED, 4),
            ),
            ("record a failure", record_rotation_failure(1_000, "Throttled")),
            ("add unused", add_unused_registrations(3)),
            ("remember an instance", remember_instance(&record(), None, 1_100)),
            ("claim the refresh", claim_directory_refresh(1_000, 940, 1_010)),
            ("save the directory", save_directory_snapshot("{}", 1_000)),
        ];
        for (label, write) in &writes {
            assert_self_consistent(label, write);
        }
    }

    #[test]
    fn a_single_reserve_needs_a_free_slot_of_a_usable_activation() {
        let write = reserve(1_000, 60, WANTED, SlotCount::One);
        assert_eq!(write.update.as_deref(), Some("ADD #reserved :count"));
        let condition = write.condition.as_deref().unwrap();
        assert!(condition.ends_with("AND #reserved < #limit"), "{condition}");
        assert!(
            condition.contains("attribute_exists(#id) AND #exp > :min_exp"),
            "{condition}"
        );
        assert!(condition.contains("(#fp = :fp OR #cfg_at > :cfg_at)"), "{condition}");
        assert_eq!(write.values[":count"], n(1));
        assert_eq!(
            write.values[":min_exp"],
            n(1_060),
            "the activation must outlive the margin"
        );
        assert_eq!(write.values[":fp"], s("fp1"));
        assert_eq!(write.values[":cfg_at"], n(900));
        assert_eq!(
            (write.names["#reserved"].as_str(), write.names["#limit"].as_str()),
            (RESERVED, LIMIT)
        );
    }

    #[test]
    fn a_block_is_taken_whole_or_not_at_all_and_only_under_the_limit_it_was_sized_for() {
        let write = reserve(1_000, 60, WANTED, SlotCount::Block { count: 8, limit: 50 });
        let condition = write.condition.as_deref().unwrap();
        assert!(
            condition.ends_with("AND #limit = :limit AND #reserved <= :last_start"),
            "{condition}"
        );
        assert_eq!(write.values[":count"], n(8));
        assert_eq!(write.values[":limit"], n(50));
        // The last block that fits: slots 43..=50 after ADD 8 to 42.
        assert_eq!(write.values[":last_start"], n(42));
    }

    #[test]
    fn a_block_as_large_as_the_limit_fits_only_an_untouched_activation() {
        let write = reserve(1_000, 60, WANTED, SlotCount::Block { count: 50, limit: 50 });
        assert_eq!(write.values[":last_start"], n(0));
    }

    #[test]
    fn the_lease_is_taken_only_when_free_or_run_out() {
        let write = take_lease("rotation-1", 1_000, 1_030);
        assert_eq!(
            write.condition.as_deref(),
            Some("attribute_not_exists(#owner) OR #until < :now")
        );
        assert_eq!(write.values[":now"], n(1_000));
        assert_eq!(write.values[":until"], n(1_030));
        assert_eq!(write.values[":me"], s("rotation-1"));
    }

    #[test]
    fn a_commit_lands_only_under_its_own_unexpired_lease_and_frees_it() {
        for place in [Place::Current, Place::Standby] {
            let write = commit("rotation-1", &next(), place, "exhausted", 1_000);
            assert_eq!(write.condition.as_deref(), Some("#owner = :me AND #until >= :now"));
            assert_eq!(write.values[":me"], s("rotation-1"));
            assert_eq!(write.values[":now"], n(1_000));
            assert!(write.update.as_deref().unwrap().ends_with("REMOVE #owner, #until"));
        }
    }

    #[test]
    fn a_commit_as_current_resets_the_slots_and_a_standby_touches_none() {
        let current = commit("me", &next(), Place::Current, "exhausted", 1_000);
        assert_eq!(current.names["#id"], ACTIVATION_ID);
        assert_eq!(current.names["#reserved"], RESERVED);
        assert_eq!(current.values[":reserved"], n(3));
        let standby = commit("me", &next(), Place::Standby, "ahead", 1_000);
        assert_eq!(standby.names["#id"], STANDBY.id);
        assert!(!standby.names.contains_key("#reserved"));
        assert!(!standby.values.contains_key(":reserved"));
        assert!(standby.names.values().all(|attribute| attribute != RESERVED));
    }

    #[test]
    fn a_commit_sets_its_sealed_code_in_its_place_or_removes_the_one_it_replaces() {
        for place in [Place::Current, Place::Standby] {
            let sealed = commit("me", &next(), place, "exhausted", 1_000);
            assert_eq!(sealed.names["#sealed"], place.attributes().sealed_code);
            assert_eq!(sealed.values[":sealed"], b(b"sealed act-2"));
            assert!(sealed.update.as_deref().unwrap().contains("#sealed = :sealed"));
            let unsealed = commit("me", &unsealed(), place, "exhausted", 1_000);
            let update = unsealed.update.as_deref().unwrap();
            assert!(update.ends_with("REMOVE #owner, #until, #sealed"), "{update}");
            assert!(!unsealed.values.contains_key(":sealed"));
        }
        assert_eq!(Place::Current.attributes().sealed_code, SEALED_CODE);
        assert_eq!(Place::Standby.attributes().sealed_code, "sb_sealed_code");
    }

    #[test]
    fn a_promotion_moves_the_standbys_sealed_code_with_it_or_leaves_none() {
        let write = promote_standby(&next(), 1_000, 60, WANTED, 4);
        let update = write.update.as_deref().unwrap();
        assert!(update.contains("#sealed = :sealed"), "{update}");
        assert!(update.ends_with(", #ssealed"), "the standby's copy goes: {update}");
        assert_eq!(write.values[":sealed"], b(b"sealed act-2"));
        assert_eq!(
            (write.names["#sealed"].as_str(), write.names["#ssealed"].as_str()),
            (SEALED_CODE, "sb_sealed_code")
        );
        let write = promote_standby(&unsealed(), 1_000, 60, WANTED, 4);
        let update = write.update.as_deref().unwrap();
        assert!(
            update.ends_with(", #ssealed, #sealed"),
            "the old activation's sealed code goes too: {update}"
        );
        assert!(!write.values.contains_key(":sealed"));
    }

    #[test]
    fn a_promotion_takes_only_the_standby_it_saw_and_only_when_the_current_cannot_serve() {
        let write = promote_standby(&next(), 1_000, 60, WANTED, 4);
        let condition = write.condition.as_deref().unwrap();
        assert!(
            condition.starts_with("#sid = :sid AND #sexp > :min_exp AND #sfp = :fp"),
            "{condition}"
        );
        assert!(
            condition.ends_with(
                "(attribute_not_exists(#id) OR #reserved >= #limit OR #exp <= :min_exp OR NOT (#fp = :fp OR #cfg_at > :cfg_at))"
            ),
            "the current activation's usable test, negated: {condition}"
        );
        assert_eq!(write.values[":sid"], s("act-2"));
        assert_eq!(write.values[":count"], n(4));
        assert_eq!(write.values[":min_exp"], n(1_060));
        assert!(write.update.as_deref().unwrap().contains("#reserved = :count"));
    }

    #[test]
    fn the_commit_record_and_the_tombstone_each_land_only_on_an_empty_key() {
        let write = not_there_yet();
        assert_eq!(write.condition.as_deref(), Some("attribute_not_exists(#pk)"));
        assert_eq!(write.names["#pk"], PK);
        assert_eq!(write.attribute_values(), None, "DynamoDB refuses an empty value map");
    }

    #[test]
    fn an_instance_record_of_the_same_machine_is_kept_unless_it_is_replaced_or_expiring() {
        let write = remember_instance(&record(), Some("act-0"), 1_100);
        assert_eq!(write.values[":machine"], s("m-1"));
        assert_eq!(write.values[":replacing"], s("act-0"));
        assert_eq!(write.values[":min_exp"], n(1_100));
        let anonymous = InstanceRecord {
            machine_id: None,
            vended_at: None,
            ..record()
        };
        let write = remember_instance(&anonymous, None, 1_100);
        assert_eq!(write.values[":machine"], s(""));
        assert_eq!(write.values[":replacing"], s(""));
    }
}
