//! DynamoDB: one item per pool (current activation, slots, lease), one per named
//! instance (the activation it was given) and one per committed activation. Every
//! write is conditional; the conditions are what make a slot impossible to hand out
//! twice, and what keep a late commit and the sweep from both winning.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use super::{back_off, classify, retrying_conflicts, Echo, UnansweredAttempts};
use crate::error::VendError;
use crate::metrics::{self, WasteReason};
use crate::pool::{CurrentActivation, EpochSecs, InstanceRecord, Lease, PoolState};

type Item = HashMap<String, AttributeValue>;

const PK: &str = "pk";
const ACTIVATION_ID: &str = "activation_id";
const EXPIRES_AT: &str = "expires_at";
const LIMIT: &str = "reg_limit";
const RESERVED: &str = "reserved";
const PARAMETER_VERSION: &str = "param_version";
const LEASE_OWNER: &str = "lease_owner";
const LEASE_UNTIL: &str = "lease_until";
const ROTATED_AT: &str = "rotated_at";
const TTL: &str = "ttl";
const POOL: &str = "pool";
const COMMITTED_AT: &str = "committed_at";
const COMMITTED_BY: &str = "committed_by";
const TOMBSTONED_AT: &str = "tombstoned_at";
const MACHINE_ID: &str = "machine_id";
const CONFIG_FP: &str = "config_fp";
const CONFIG_AT: &str = "config_at";
const CONFIGS: &str = "configs";
const READ_AT: &str = "read_at";
const CLAIM_UNTIL: &str = "claim_until";
const ROTATION_REASON: &str = "rotation_reason";
const FAILED_AT: &str = "rotation_failed_at";
const FAILURE: &str = "rotation_failure";
const UNUSED_REGISTRATIONS: &str = "unused_regs";
/// The standby activation's attributes on the pool item: the same as the current
/// one's, prefixed.
const STANDBY: Attributes = Attributes {
    id: "sb_activation_id",
    expires_at: "sb_expires_at",
    limit: "sb_reg_limit",
    parameter_version: "sb_param_version",
    committed_at: "sb_committed_at",
    fingerprint: "sb_config_fp",
    config_at: "sb_config_at",
    reason: "sb_reason",
};
const CURRENT: Attributes = Attributes {
    id: ACTIVATION_ID,
    expires_at: EXPIRES_AT,
    limit: LIMIT,
    parameter_version: PARAMETER_VERSION,
    committed_at: ROTATED_AT,
    fingerprint: CONFIG_FP,
    config_at: CONFIG_AT,
    reason: ROTATION_REASON,
};

/// Where on the pool item one activation lives.
struct Attributes {
    id: &'static str,
    expires_at: &'static str,
    limit: &'static str,
    parameter_version: &'static str,
    committed_at: &'static str,
    fingerprint: &'static str,
    config_at: &'static str,
    reason: &'static str,
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
    fn attributes(self) -> &'static Attributes {
        match self {
            Self::Current => &CURRENT,
            Self::Standby => &STANDBY,
        }
    }
}

/// The one item that shares the pools' configs between processes.
const DIRECTORY_KEY: &str = "directory#pools";

/// Committed-activation records and tombstones outlive their activation by a week.
const RECORD_LINGER_SECS: i64 = 7 * 86_400;

/// Attempts at a commit that DynamoDB cancelled for throughput (cancellation
/// reasons the SDK cannot see, so does not retry), with the same token.
const THROTTLED_COMMIT_ATTEMPTS: u32 = 6;

/// The cancellation reasons that mean "slow down" rather than "conflict" or "no".
const THROTTLED_CANCELLATIONS: &[&str] = &[
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

#[derive(Clone)]
pub struct PoolStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// How many slots one reserve asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCount {
    /// One slot, from whatever activation is current.
    One,
    /// `count` slots (at least 2), only from an activation whose limit is `limit`.
    Block { count: u32, limit: u32 },
}

/// The answer to "give me a slot".
#[derive(Debug)]
pub enum Reservation {
    /// The slot is ours: its number is `activation.reserved`. `standby` is the pool's
    /// standby activation, if it has one, as of the write that took the slot, and
    /// `via` says which write that was.
    Reserved {
        activation: CurrentActivation,
        standby: Option<CurrentActivation>,
        via: Via,
    },
    /// No slot: the pool as it was, to tell why.
    Refused(PoolState),
}

/// How a request got its slot, which says how much it knows of the standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A reserve of its own: the standby as the table has it now.
    Reserve,
    /// A block another request of this process reserved: the standby as it was then.
    Block,
    /// The promotion of the standby it made: the pool has no standby now.
    Promotion,
}

/// The answer to "let me rotate".
#[derive(Debug)]
pub enum LeaseAttempt {
    Taken(PoolState),
    Busy(PoolState),
}

/// What the table says about an activation the service created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationRecord {
    /// It became a pool's current activation, by the rotation `by`.
    Committed { by: String },
    /// The sweep condemned it: no commit can land any more.
    Tombstoned,
}

/// The sweep's claim on an uncommitted activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tombstone {
    /// Laid now or by an earlier sweep: the activation may be deleted.
    Laid,
    /// A commit got there first: the activation is in use.
    Committed,
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

fn pool_key(pool: &str) -> AttributeValue {
    s(&format!("pool#{pool}"))
}

fn record_key(activation_id: &str) -> AttributeValue {
    s(&format!("activation#{activation_id}"))
}

fn instance_key(pool: &str, instance: &str) -> AttributeValue {
    // Host names are case-insensitive.
    s(&format!("instance#{pool}#{}", instance.to_ascii_lowercase()))
}

fn pool_state(item: Option<&Item>) -> PoolState {
    let Some(item) = item else {
        return PoolState::default();
    };
    let activation = activation_at(item, &CURRENT, get_n(item, RESERVED).unwrap_or(0));
    let standby = activation_at(item, &STANDBY, 0);
    let lease = get_s(item, LEASE_OWNER).map(|owner| Lease {
        owner: owner.to_owned(),
        until: get_n(item, LEASE_UNTIL).unwrap_or(0),
    });
    let last_failure = get_n(item, FAILED_AT).map(|at| crate::pool::RotationFailure {
        at,
        error: get_s(item, FAILURE).unwrap_or_default().to_owned(),
    });
    PoolState {
        activation,
        standby,
        lease,
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
    })
}

fn instance_record(item: &Item) -> Option<InstanceRecord> {
    Some(InstanceRecord {
        activation_id: get_s(item, ACTIVATION_ID)?.to_owned(),
        parameter_version: get_n(item, PARAMETER_VERSION)?,
        expires_at: get_n(item, EXPIRES_AT)?,
        machine_id: get_s(item, MACHINE_ID).map(str::to_owned),
    })
}

fn activation_record(item: &Item) -> Option<ActivationRecord> {
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

/// A conditional UpdateItem's outcome: `Ok(item after)` when the condition held,
/// `Err(item before)` when it did not (both as asked for with ReturnValues).
fn conditional_update(
    result: Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>>,
) -> Result<Result<Option<Item>, Option<Item>>, VendError> {
    match result {
        Ok(out) => Ok(Ok(out.attributes)),
        Err(e) => match e.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(failed)) => Ok(Err(failed.item.clone())),
            _ => Err(classify("DynamoDB.UpdateItem", e, Echo::Message)),
        },
    }
}

fn names(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
}

/// Counts as wasted (`lost_answer`) the slots each unanswered attempt of a reserve
/// or promotion asked for, when the write's condition held (`took`: a later attempt
/// took its slots, or none answered at all): such an attempt most likely landed, and
/// its slots are then taken and never handed out (the retry that answered took
/// others). When the last attempt was refused, the lost ones are taken to have been
/// refused too, and are not counted (the sweep's `unused_registrations` counts
/// whatever this misses).
fn count_unanswered(pool: &str, unanswered: &UnansweredAttempts, slots: u32, took: bool) {
    let lost = unanswered.count();
    if lost > 0 && took {
        tracing::info!(pool, unanswered_attempts = lost, "a slot write lost its answer");
        metrics::slots_wasted(pool, "unknown", lost.saturating_mul(slots), WasteReason::LostAnswer);
    }
}

/// Why a commit was not applied, when it was not a failed condition.
enum CommitFailure {
    /// Cancelled for throughput: worth another attempt after a pause.
    Throttled,
    Other(VendError),
}

/// A cancelled commit: which reason cancelled it, in DynamoDB's words.
fn commit_failure(err: SdkError<TransactWriteItemsError, HttpResponse>) -> Result<bool, CommitFailure> {
    const COMMIT: &str = "DynamoDB.TransactWriteItems";
    if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() {
        let codes: Vec<&str> = cancelled
            .cancellation_reasons()
            .iter()
            .filter_map(|r| r.code())
            .collect();
        if codes.contains(&"ConditionalCheckFailed") {
            return Ok(false);
        }
        if codes.contains(&"TransactionConflict") {
            return Err(CommitFailure::Other(VendError::Contended { operation: COMMIT }));
        }
        if codes.iter().any(|c| THROTTLED_CANCELLATIONS.contains(c)) {
            return Err(CommitFailure::Throttled);
        }
    }
    Err(CommitFailure::Other(classify(COMMIT, err, Echo::Message)))
}

impl PoolStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The hot path: one conditional write takes a slot, or says why it can't.
    /// `wanted` is the settings fingerprint the caller's pool config gives and the
    /// time that config was read: an activation made with other settings is refused,
    /// unless it was made from a newer read of the config than the caller's.
    pub async fn reserve_slot(
        &self,
        pool: &str,
        now: EpochSecs,
        margin_secs: i64,
        wanted: (&str, EpochSecs),
    ) -> Result<Reservation, VendError> {
        self.reserve_slots(pool, now, margin_secs, wanted, SlotCount::One).await
    }

    /// Like `reserve_slot`, for a block of slots in the same one write: the slots
    /// are `activation.reserved - count + 1 ..= activation.reserved`. A block is
    /// only taken whole, and only from an activation whose limit is the one the
    /// caller expects, so the condition can say "this many are still free".
    pub async fn reserve_slots(
        &self,
        pool: &str,
        now: EpochSecs,
        margin_secs: i64,
        wanted: (&str, EpochSecs),
        count: SlotCount,
    ) -> Result<Reservation, VendError> {
        let unanswered = UnansweredAttempts::default();
        let result =
            retrying_conflicts(|| self.reserve_slots_once(pool, now, margin_secs, wanted, count, &unanswered)).await;
        let slots = match count {
            SlotCount::One => 1,
            SlotCount::Block { count, .. } => count,
        };
        let took = matches!(
            result,
            Ok(Reservation::Reserved { .. }) | Err(VendError::Unavailable { .. })
        );
        count_unanswered(pool, &unanswered, slots, took);
        result
    }

    async fn reserve_slots_once(
        &self,
        pool: &str,
        now: EpochSecs,
        margin_secs: i64,
        (fingerprint, config_at): (&str, EpochSecs),
        count: SlotCount,
        unanswered: &UnansweredAttempts,
    ) -> Result<Reservation, VendError> {
        const USABLE: &str = "attribute_exists(#id) AND #exp > :min_exp AND (#fp = :fp OR #cfg_at > :cfg_at)";
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, pool_key(pool))
            .update_expression("ADD #reserved :count")
            .set_expression_attribute_names(names(&[
                ("#id", ACTIVATION_ID),
                ("#reserved", RESERVED),
                ("#limit", LIMIT),
                ("#exp", EXPIRES_AT),
                ("#fp", CONFIG_FP),
                ("#cfg_at", CONFIG_AT),
            ]))
            .expression_attribute_values(":min_exp", n(now + margin_secs))
            .expression_attribute_values(":fp", s(fingerprint))
            .expression_attribute_values(":cfg_at", n(config_at))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let request = match count {
            SlotCount::One => request
                .condition_expression(format!("{USABLE} AND #reserved < #limit"))
                .expression_attribute_values(":count", n(1)),
            SlotCount::Block { count, limit } => request
                .condition_expression(format!("{USABLE} AND #limit = :limit AND #reserved <= :last_start"))
                .expression_attribute_values(":count", n(i64::from(count)))
                .expression_attribute_values(":limit", n(i64::from(limit)))
                .expression_attribute_values(":last_start", n(i64::from(limit) - i64::from(count))),
        };
        match conditional_update(request.customize().interceptor(unanswered.clone()).send().await)? {
            Ok(new) => {
                let state = pool_state(new.as_ref());
                match state.activation {
                    Some(activation) => Ok(Reservation::Reserved {
                        activation,
                        standby: state.standby,
                        via: Via::Reserve,
                    }),
                    None => Err(VendError::Internal(
                        "reserved a slot on a pool without an activation".into(),
                    )),
                }
            }
            Err(old) => Ok(Reservation::Refused(pool_state(old.as_ref()))),
        }
    }

    /// Takes the pool's lease if it is free or has run out. A retry of a take whose
    /// answer was lost finds the lease already ours, and counts it as taken. When the
    /// take fails (every attempt lost its answer, or a later attempt was throttled
    /// after an earlier one landed unanswered), it may have landed all the same: the
    /// lease is read back and given back if it is ours (one conditional write), so
    /// that a lost answer does not keep the pool from rotating for a whole lease.
    pub async fn take_lease(
        &self,
        pool: &str,
        owner: &str,
        now: EpochSecs,
        until: EpochSecs,
    ) -> Result<LeaseAttempt, VendError> {
        let taken = retrying_conflicts(|| self.take_lease_once(pool, owner, now, until)).await;
        // Any failure, not only a lost last answer: an earlier attempt may have landed
        // before the later ones were throttled or refused.
        if taken.is_err() {
            match self.release_lease(pool, owner).await {
                Ok(true) => tracing::warn!(
                    pool,
                    "the lease take had landed but lost its answer; gave the lease back"
                ),
                Ok(false) => tracing::debug!(pool, "the lease take whose answer was lost had not landed"),
                Err(e) => {
                    tracing::warn!(pool, error = %e, "could not read back a lease take whose answer was lost; it runs out by itself")
                }
            }
        }
        taken
    }

    async fn take_lease_once(
        &self,
        pool: &str,
        owner: &str,
        now: EpochSecs,
        until: EpochSecs,
    ) -> Result<LeaseAttempt, VendError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, pool_key(pool))
            .update_expression("SET #owner = :me, #until = :until")
            .condition_expression("attribute_not_exists(#owner) OR #until < :now")
            .set_expression_attribute_names(names(&[("#owner", LEASE_OWNER), ("#until", LEASE_UNTIL)]))
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        Ok(match conditional_update(result)? {
            Ok(new) => LeaseAttempt::Taken(pool_state(new.as_ref())),
            Err(old) => {
                let state = pool_state(old.as_ref());
                if state.lease.as_ref().is_some_and(|l| l.owner == owner) {
                    LeaseAttempt::Taken(state)
                } else {
                    LeaseAttempt::Busy(state)
                }
            }
        })
    }

    /// Installs a new activation and frees the lease, only if `owner` still holds an
    /// unexpired lease (fencing: a rotation whose lease ran out cannot commit, so the
    /// sweep may treat an uncommitted activation older than a lease as an orphan).
    /// In the same transaction it records the activation as committed, unless the
    /// sweep has condemned it already. Returns false when a condition failed: the
    /// lease was lost, or this very commit landed on an earlier attempt whose answer
    /// was lost (tell them apart with `activation_record`).
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_rotation(
        &self,
        pool: &str,
        owner: &str,
        next: &CurrentActivation,
        place: Place,
        reason: &str,
        now: EpochSecs,
    ) -> Result<bool, VendError> {
        let at = place.attributes();
        // The current activation starts with no slot taken; a standby has none to take.
        let set_reserved = if place == Place::Current {
            ", #reserved = :reserved"
        } else {
            ""
        };
        let mut attribute_names = vec![
            ("#id", at.id),
            ("#exp", at.expires_at),
            ("#limit", at.limit),
            ("#pver", at.parameter_version),
            ("#rotated", at.committed_at),
            ("#fp", at.fingerprint),
            ("#cfg_at", at.config_at),
            ("#reason", at.reason),
            ("#owner", LEASE_OWNER),
            ("#until", LEASE_UNTIL),
        ];
        if place == Place::Current {
            attribute_names.push(("#reserved", RESERVED));
        }
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, pool_key(pool))
            .update_expression(format!(
                "SET #id = :id, #exp = :exp, #limit = :limit, #pver = :pver{set_reserved}, \
                 #rotated = :now, #fp = :fp, #cfg_at = :cfg_at, #reason = :reason REMOVE #owner, #until"
            ))
            .condition_expression("#owner = :me AND #until >= :now")
            .set_expression_attribute_names(names(&attribute_names))
            .expression_attribute_values(":fp", s(&next.fingerprint))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":cfg_at", n(next.config_at))
            .expression_attribute_values(":id", s(&next.id))
            .expression_attribute_values(":exp", n(next.expires_at))
            .expression_attribute_values(":limit", n(i64::from(next.limit)))
            .expression_attribute_values(":pver", n(next.parameter_version))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":me", s(owner));
        let update = if place == Place::Current {
            update.expression_attribute_values(":reserved", n(i64::from(next.reserved)))
        } else {
            update
        }
        .build()
        .map_err(|e| VendError::Internal(format!("commit request: {e}")))?;
        let record = Put::builder()
            .table_name(&self.table)
            .item(PK, record_key(&next.id))
            .item(POOL, s(pool))
            .item(ACTIVATION_ID, s(&next.id))
            .item(EXPIRES_AT, n(next.expires_at))
            .item(COMMITTED_AT, n(now))
            .item(COMMITTED_BY, s(owner))
            .item(TTL, n(next.expires_at + RECORD_LINGER_SECS))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .build()
            .map_err(|e| VendError::Internal(format!("commit request: {e}")))?;
        retrying_conflicts(|| async {
            let mut throttled = 0;
            loop {
                let result = self
                    .client
                    .transact_write_items()
                    .transact_items(TransactWriteItem::builder().update(update.clone()).build())
                    .transact_items(TransactWriteItem::builder().put(record.clone()).build())
                    // Same token on every retry: a commit that did land is not applied twice,
                    // and its retry answers success instead of "condition failed".
                    .client_request_token(owner)
                    .send()
                    .await;
                match result.map_or_else(commit_failure, |_| Ok(true)) {
                    Ok(landed) => return Ok(landed),
                    Err(CommitFailure::Other(e)) => return Err(e),
                    Err(CommitFailure::Throttled) => {
                        throttled += 1;
                        if throttled >= THROTTLED_COMMIT_ATTEMPTS {
                            return Err(VendError::Throttled {
                                operation: "DynamoDB.TransactWriteItems",
                            });
                        }
                        back_off(throttled, 1_000).await;
                    }
                }
            }
        })
        .await
    }

    /// Makes the standby the current activation and takes its first `count` slots
    /// (at most its limit), in one conditional write, no lease: only if `standby` is still the pool's standby, it
    /// outlives the margin, it was made with the wanted settings, and the current
    /// activation cannot be reserved (used up, inside the margin, or made with other
    /// settings). `None` when someone else changed the pool first.
    pub async fn promote_standby(
        &self,
        pool: &str,
        standby: &CurrentActivation,
        now: EpochSecs,
        margin_secs: i64,
        (fingerprint, config_at): (&str, EpochSecs),
        count: u32,
    ) -> Result<Option<CurrentActivation>, VendError> {
        let count = count.clamp(1, standby.limit.max(1));
        let unanswered = UnansweredAttempts::default();
        let result = retrying_conflicts(|| async {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, pool_key(pool))
                .update_expression(
                    "SET #id = #sid, #exp = #sexp, #limit = #slimit, #pver = #spver, #fp = #sfp, \
                     #cfg_at = #scfg_at, #reserved = :count, #rotated = #scommitted, #reason = :reason \
                     REMOVE #sid, #sexp, #slimit, #spver, #sfp, #scfg_at, #scommitted, #sreason",
                )
                .condition_expression(
                    "#sid = :sid AND #sexp > :min_exp AND #sfp = :fp AND (attribute_not_exists(#id) \
                     OR #reserved >= #limit OR #exp <= :min_exp OR NOT (#fp = :fp OR #cfg_at > :cfg_at))",
                )
                .set_expression_attribute_names(names(&[
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
                ]))
                .expression_attribute_values(":sid", s(&standby.id))
                .expression_attribute_values(":min_exp", n(now + margin_secs))
                .expression_attribute_values(":fp", s(fingerprint))
                .expression_attribute_values(":cfg_at", n(config_at))
                .expression_attribute_values(":count", n(i64::from(count)))
                .expression_attribute_values(":reason", s("standby promoted"))
                .return_values(ReturnValue::AllNew)
                .customize()
                .interceptor(unanswered.clone())
                .send()
                .await;
            Ok(match conditional_update(result)? {
                Ok(new) => pool_state(new.as_ref()).activation,
                Err(_) => None,
            })
        })
        .await;
        let took = matches!(result, Ok(Some(_)) | Err(VendError::Unavailable { .. }));
        count_unanswered(pool, &unanswered, count, took);
        result
    }

    /// Notes a failed rotation on the pool's item for `vending status`; best effort
    /// (the failure is logged and counted anyway). `error` never carries a code.
    pub async fn record_rotation_failure(&self, pool: &str, now: EpochSecs, error: &str) {
        // Short: the pool item is read and written on every vend.
        let error: String = error.chars().take(200).collect();
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, pool_key(pool))
            .update_expression("SET #at = :at, #error = :error")
            .set_expression_attribute_names(names(&[("#at", FAILED_AT), ("#error", FAILURE)]))
            .expression_attribute_values(":at", n(now))
            .expression_attribute_values(":error", s(&error))
            .send()
            .await;
        if let Err(e) = result {
            tracing::debug!(pool, error = %classify("DynamoDB.UpdateItem", e, Echo::Message), "could not record the rotation failure");
        }
    }

    /// Adds what the sweep found unused on the activations it retired to the pool's
    /// running total (for `vending status`); best effort, like the sweep's metrics.
    pub async fn add_unused_registrations(&self, pool: &str, count: u64) -> Result<(), VendError> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        retrying_conflicts(|| async {
            self.client
                .update_item()
                .table_name(&self.table)
                .key(PK, pool_key(pool))
                .update_expression("ADD #unused :count")
                .expression_attribute_names("#unused", UNUSED_REGISTRATIONS)
                .expression_attribute_values(":count", n(count))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("DynamoDB.UpdateItem", e, Echo::Message))
        })
        .await
    }

    /// The sweep's claim on an activation no rotation committed: once laid, the
    /// commit's condition on the record fails, so the two can never both win.
    pub async fn lay_tombstone(&self, activation_id: &str, now: EpochSecs) -> Result<Tombstone, VendError> {
        let result = retrying_conflicts(|| async {
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(PK, record_key(activation_id))
                .item(ACTIVATION_ID, s(activation_id))
                .item(TOMBSTONED_AT, n(now))
                .item(TTL, n(now + RECORD_LINGER_SECS))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            match result {
                Ok(_) => Ok(None),
                Err(e) => match e.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(failed)) => Ok(Some(failed.item.clone())),
                    _ => Err(classify("DynamoDB.PutItem", e, Echo::Message)),
                },
            }
        })
        .await?;
        let existing = match result {
            None => return Ok(Tombstone::Laid),
            Some(Some(item)) => activation_record(&item),
            // No old item came back: look it up.
            Some(None) => self.activation_record(activation_id).await?,
        };
        Ok(match existing {
            Some(ActivationRecord::Committed { .. }) => Tombstone::Committed,
            Some(ActivationRecord::Tombstoned) | None => Tombstone::Laid,
        })
    }

    /// One item by key, strongly consistent.
    async fn get(&self, key: AttributeValue) -> Result<Option<Item>, VendError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, key)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("DynamoDB.GetItem", e, Echo::Message))?;
        Ok(out.item)
    }

    /// Whether `activation_id` was committed (and by whom) or condemned by the sweep.
    pub async fn activation_record(&self, activation_id: &str) -> Result<Option<ActivationRecord>, VendError> {
        let item = self.get(record_key(activation_id)).await?;
        Ok(item.as_ref().and_then(activation_record))
    }

    /// Which of `activation_ids` were ever a pool's current activation, in batches of
    /// 100 keys (BatchGetItem's limit), strongly consistent.
    pub async fn committed_among(&self, activation_ids: &[String]) -> Result<HashSet<String>, VendError> {
        let mut committed = HashSet::new();
        for chunk in activation_ids.chunks(100) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|id| HashMap::from([(PK.to_owned(), record_key(id))]))
                .collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| VendError::Internal(format!("batch request: {e}")))?,
            );
            let mut rounds = 0;
            while let Some(keys) = request.take() {
                rounds += 1;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, keys)
                    .send()
                    .await
                    .map_err(|e| classify("DynamoDB.BatchGetItem", e, Echo::Message))?;
                for item in out.responses().and_then(|r| r.get(&self.table)).into_iter().flatten() {
                    if let (Some(ActivationRecord::Committed { .. }), Some(id)) =
                        (activation_record(item), get_s(item, ACTIVATION_ID))
                    {
                        committed.insert(id.to_owned());
                    }
                }
                // Throttled keys come back unprocessed: ask again, a few times, backing off.
                request = out
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .filter(|k| !k.keys().is_empty())
                    .cloned();
                if request.is_some() {
                    if rounds >= 6 {
                        return Err(VendError::Throttled {
                            operation: "DynamoDB.BatchGetItem",
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50 << rounds)).await;
                }
            }
        }
        Ok(committed)
    }

    /// Gives the lease back early (a rotation that found nothing to do, or failed).
    /// Returns whether it was still ours to give.
    pub async fn release_lease(&self, pool: &str, owner: &str) -> Result<bool, VendError> {
        retrying_conflicts(|| async {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, pool_key(pool))
                .update_expression("REMOVE #owner, #until")
                .condition_expression("#owner = :me")
                .set_expression_attribute_names(names(&[("#owner", LEASE_OWNER), ("#until", LEASE_UNTIL)]))
                .expression_attribute_values(":me", s(owner))
                .send()
                .await;
            // Not ours any more (it ran out and was taken, or a retry of this release
            // finds it already given back): nothing to give back.
            conditional_update(result).map(|outcome| outcome.is_ok())
        })
        .await
    }

    /// The pool as it is now (strongly consistent); for the sweep and for operators.
    pub async fn pool(&self, pool: &str) -> Result<PoolState, VendError> {
        let item = self.get(pool_key(pool)).await?;
        Ok(pool_state(item.as_ref()))
    }

    pub async fn instance(&self, pool: &str, instance: &str) -> Result<Option<InstanceRecord>, VendError> {
        let item = self.get(instance_key(pool, instance)).await?;
        Ok(item.as_ref().and_then(instance_record))
    }

    /// Remembers which activation `instance` (on the machine the record names) was
    /// given. If a concurrent request from the same name and machine got there first
    /// (and its record is still good), returns that record instead, so both callers
    /// leave with the same activation. A record of another machine is replaced.
    pub async fn remember_instance(
        &self,
        pool: &str,
        instance: &str,
        record: &InstanceRecord,
        replacing: Option<&str>,
        min_expiry: EpochSecs,
    ) -> Result<Option<InstanceRecord>, VendError> {
        retrying_conflicts(|| self.remember_instance_once(pool, instance, record, replacing, min_expiry)).await
    }

    async fn remember_instance_once(
        &self,
        pool: &str,
        instance: &str,
        record: &InstanceRecord,
        replacing: Option<&str>,
        min_expiry: EpochSecs,
    ) -> Result<Option<InstanceRecord>, VendError> {
        let machine = record.machine_id.as_deref().unwrap_or_default();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, instance_key(pool, instance))
            .item(ACTIVATION_ID, s(&record.activation_id))
            .item(PARAMETER_VERSION, n(record.parameter_version))
            .item(EXPIRES_AT, n(record.expires_at))
            .item(MACHINE_ID, s(machine))
            .item(TTL, n(record.expires_at))
            .condition_expression(
                "attribute_not_exists(#pk) OR #exp <= :min_exp OR #id = :replacing \
                 OR attribute_not_exists(#machine) OR #machine <> :machine",
            )
            .set_expression_attribute_names(names(&[
                ("#pk", PK),
                ("#exp", EXPIRES_AT),
                ("#id", ACTIVATION_ID),
                ("#machine", MACHINE_ID),
            ]))
            .expression_attribute_values(":min_exp", n(min_expiry))
            .expression_attribute_values(":replacing", s(replacing.unwrap_or("")))
            .expression_attribute_values(":machine", s(machine))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                    Ok(failed.item.as_ref().and_then(instance_record))
                }
                _ => Err(classify("DynamoDB.PutItem", e, Echo::Message)),
            },
        }
    }

    /// The pools' configs as some process last read them from Parameter Store, and
    /// when it read them.
    pub async fn directory_snapshot(&self) -> Result<Option<(BTreeMap<String, String>, EpochSecs)>, VendError> {
        let Some(item) = self.get(s(DIRECTORY_KEY)).await? else {
            return Ok(None);
        };
        let (Some(configs), Some(read_at)) = (get_s(&item, CONFIGS), get_n(&item, READ_AT)) else {
            return Ok(None);
        };
        let configs = serde_json::from_str(configs)
            .map_err(|e| VendError::Internal(format!("the pool directory item is not valid: {e}")))?;
        Ok(Some((configs, read_at)))
    }

    /// Claims the next read of Parameter Store for this process, if the snapshot is
    /// older than `stale_before` and no other process has claimed it until `until`.
    pub async fn claim_directory_refresh(
        &self,
        now: EpochSecs,
        stale_before: EpochSecs,
        until: EpochSecs,
    ) -> Result<bool, VendError> {
        retrying_conflicts(|| async {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, s(DIRECTORY_KEY))
                .update_expression("SET #claim = :until")
                .condition_expression(
                    "(attribute_not_exists(#read_at) OR #read_at < :stale) \
                     AND (attribute_not_exists(#claim) OR #claim < :now)",
                )
                .set_expression_attribute_names(names(&[("#claim", CLAIM_UNTIL), ("#read_at", READ_AT)]))
                .expression_attribute_values(":until", n(until))
                .expression_attribute_values(":stale", n(stale_before))
                .expression_attribute_values(":now", n(now))
                .send()
                .await;
            conditional_update(result).map(|outcome| outcome.is_ok())
        })
        .await
    }

    /// Shares a fresh read of the pools' configs, unless a newer one is there.
    pub async fn save_directory_snapshot(
        &self,
        configs: &BTreeMap<String, String>,
        read_at: EpochSecs,
    ) -> Result<(), VendError> {
        let text = serde_json::to_string(configs)
            .map_err(|e| VendError::Internal(format!("could not encode the pool directory: {e}")))?;
        retrying_conflicts(|| async {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, s(DIRECTORY_KEY))
                .update_expression("SET #configs = :configs, #read_at = :read_at REMOVE #claim")
                .condition_expression("attribute_not_exists(#read_at) OR #read_at < :read_at")
                .set_expression_attribute_names(names(&[
                    ("#configs", CONFIGS),
                    ("#read_at", READ_AT),
                    ("#claim", CLAIM_UNTIL),
                ]))
                .expression_attribute_values(":configs", s(&text))
                .expression_attribute_values(":read_at", n(read_at))
                .send()
                .await;
            conditional_update(result).map(|_| ())
        })
        .await
    }
}
