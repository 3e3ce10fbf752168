//! The pool item's operations: reserve slots (one or a block), take and give back
//! the lease, commit a rotation (with its commit record, in one transaction),
//! promote the standby, and the notes `vending status` reads.

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use super::codec::{commit_record_item, pool_state};
use super::conditions::{self, SlotCount, Write};
use super::schema::{pool_key, Place, PK};
use super::store::{conditional_update, Conditional, PoolStore};
use crate::aws::{back_off, classify, retrying_conflicts, Echo, UnansweredAttempts};
use crate::clock::EpochSecs;
use crate::error::VendError;
use crate::metrics::{self, WasteReason};
use crate::pool::state::{CurrentActivation, Lease, PoolState, Wanted};

/// Attempts at a commit that DynamoDB cancelled for throughput (cancellation
/// reasons the SDK cannot see, so does not retry), with the same token.
pub(crate) const THROTTLED_COMMIT_ATTEMPTS: u32 = 6;

/// How much of a failed rotation's error the pool item keeps (the log keeps it whole).
pub(crate) const FAILURE_NOTE_CHARS: usize = 100;

/// The cancellation reasons that mean "slow down" rather than "conflict" or "no".
const THROTTLED_CANCELLATIONS: &[&str] = &[
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

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
        /// The pool's lease as of that write: someone may be preparing the standby.
        lease: Option<Lease>,
        /// When a process last noted SSM's good answer on the item (0: never).
        checked_at: EpochSecs,
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
    /// An UpdateItem of the pool item carrying `write`.
    fn update_pool(
        &self,
        pool: &str,
        write: &Write,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PK, pool_key(pool))
            .set_update_expression(write.update.clone())
            .set_condition_expression(write.condition.clone())
            .set_expression_attribute_names(write.attribute_names())
            .set_expression_attribute_values(write.attribute_values())
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
        wanted: Wanted<'_>,
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
        wanted: Wanted<'_>,
        count: SlotCount,
    ) -> Result<Reservation, VendError> {
        let unanswered = UnansweredAttempts::default();
        let write = conditions::reserve(now, margin_secs, wanted, count);
        let result = retrying_conflicts(|| self.reserve_slots_once(pool, &write, &unanswered)).await;
        let took = matches!(
            result,
            Ok(Reservation::Reserved { .. }) | Err(VendError::Unavailable { .. })
        );
        count_unanswered(pool, &unanswered, count.slots(), took);
        result
    }

    async fn reserve_slots_once(
        &self,
        pool: &str,
        write: &Write,
        unanswered: &UnansweredAttempts,
    ) -> Result<Reservation, VendError> {
        let request = self
            .update_pool(pool, write)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match conditional_update(request.customize().interceptor(unanswered.clone()).send().await)? {
            Conditional::Applied(new) => {
                let state = pool_state(new.as_ref());
                match state.activation {
                    Some(activation) => Ok(Reservation::Reserved {
                        activation,
                        standby: state.standby,
                        via: Via::Reserve,
                        lease: state.lease,
                        checked_at: state.checked_at,
                    }),
                    None => Err(VendError::Internal(
                        "reserved a slot on a pool without an activation".into(),
                    )),
                }
            }
            Conditional::Refused(old) => Ok(Reservation::Refused(pool_state(old.as_ref()))),
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
            .update_pool(pool, &conditions::take_lease(owner, now, until))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        Ok(match conditional_update(result)? {
            Conditional::Applied(new) => LeaseAttempt::Taken(pool_state(new.as_ref())),
            Conditional::Refused(old) => {
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
    pub async fn commit_rotation(
        &self,
        pool: &str,
        owner: &str,
        next: &CurrentActivation,
        place: Place,
        reason: &str,
        now: EpochSecs,
    ) -> Result<bool, VendError> {
        let write = conditions::commit(owner, next, place, reason, now);
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, pool_key(pool))
            .set_update_expression(write.update.clone())
            .set_condition_expression(write.condition.clone())
            .set_expression_attribute_names(write.attribute_names())
            .set_expression_attribute_values(write.attribute_values())
            .build()
            .map_err(|e| VendError::Internal(format!("commit request: {e}")))?;
        let only_once = conditions::not_there_yet();
        let record = Put::builder()
            .table_name(&self.table)
            .set_item(Some(commit_record_item(pool, next, owner, now)))
            .set_condition_expression(only_once.condition.clone())
            .set_expression_attribute_names(only_once.attribute_names())
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
        wanted: Wanted<'_>,
        count: u32,
    ) -> Result<Option<CurrentActivation>, VendError> {
        let count = count.clamp(1, standby.limit.max(1));
        let unanswered = UnansweredAttempts::default();
        let write = conditions::promote_standby(standby, now, margin_secs, wanted, count);
        let result = retrying_conflicts(|| async {
            let result = self
                .update_pool(pool, &write)
                .return_values(ReturnValue::AllNew)
                .customize()
                .interceptor(unanswered.clone())
                .send()
                .await;
            Ok(match conditional_update(result)? {
                Conditional::Applied(new) => pool_state(new.as_ref()).activation,
                Conditional::Refused(_) => None,
            })
        })
        .await;
        let took = matches!(result, Ok(Some(_)) | Err(VendError::Unavailable { .. }));
        count_unanswered(pool, &unanswered, count, took);
        result
    }

    /// Notes on the pool's item that SSM just said `activation_id` works, so that other
    /// processes trust it for an interval as they trust a fresh commit (section 5);
    /// best effort: refused once the activation is no longer current.
    pub async fn record_check(&self, pool: &str, activation_id: &str, now: EpochSecs) {
        let result = self
            .update_pool(pool, &conditions::record_check(activation_id, now))
            .send()
            .await;
        if let Err(e) = result {
            tracing::debug!(pool, error = %classify("DynamoDB.UpdateItem", e, Echo::Message), "could not note the check");
        }
    }

    /// Notes a failed rotation on the pool's item for `vending status`; best effort
    /// (the failure is logged and counted anyway). `error` never carries a code.
    pub async fn record_rotation_failure(&self, pool: &str, now: EpochSecs, error: &str) {
        // Short: the pool item is read and written on every vend, and with both sealed
        // codes it must stay under 1 KB (one write unit; DESIGN §10).
        let error: String = error.chars().take(FAILURE_NOTE_CHARS).collect();
        let result = self
            .update_pool(pool, &conditions::record_rotation_failure(now, &error))
            .send()
            .await;
        if let Err(e) = result {
            tracing::debug!(pool, error = %classify("DynamoDB.UpdateItem", e, Echo::Message), "could not record the rotation failure");
        }
    }

    /// Adds what the sweep found unused on the activations it retired to the pool's
    /// running total (for `vending status`); best effort, like the sweep's metrics.
    pub async fn add_unused_registrations(&self, pool: &str, count: u64) -> Result<(), VendError> {
        let write = conditions::add_unused_registrations(i64::try_from(count).unwrap_or(i64::MAX));
        retrying_conflicts(|| async {
            self.update_pool(pool, &write)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("DynamoDB.UpdateItem", e, Echo::Message))
        })
        .await
    }

    /// Gives the lease back early (a rotation that found nothing to do, or failed).
    /// Returns whether it was still ours to give.
    pub async fn release_lease(&self, pool: &str, owner: &str) -> Result<bool, VendError> {
        let write = conditions::release_lease(owner);
        retrying_conflicts(|| async {
            let result = self.update_pool(pool, &write).send().await;
            // Not ours any more (it ran out and was taken, or a retry of this release
            // finds it already given back): nothing to give back.
            conditional_update(result).map(|outcome| outcome.applied())
        })
        .await
    }

    /// The pool as it is now (strongly consistent); for the sweep and for operators.
    pub async fn pool(&self, pool: &str) -> Result<PoolState, VendError> {
        let item = self.get(pool_key(pool)).await?;
        Ok(pool_state(item.as_ref()))
    }
}
