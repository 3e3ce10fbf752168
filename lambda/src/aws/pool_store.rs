//! DynamoDB: one item per pool (current activation, slots, lease) and one per named
//! instance (the activation it was given). Every write is conditional; the
//! conditions are what make a slot impossible to hand out twice.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use super::{classify, Echo};
use crate::error::VendError;
use crate::pool::{CurrentActivation, EpochSecs, InstanceRecord, Lease, PoolState};

type Item = HashMap<String, AttributeValue>;

const PK: &str = "pk";
const ACTIVATION_ID: &str = "activation_id";
const EXPIRES_AT: &str = "expires_at";
const LIMIT: &str = "reg_limit";
const RESERVED: &str = "reserved";
const PARAMETER_VERSION: &str = "param_version";
const GENERATION: &str = "generation";
const LEASE_OWNER: &str = "lease_owner";
const LEASE_UNTIL: &str = "lease_until";
const ROTATED_AT: &str = "rotated_at";
const TTL: &str = "ttl";
const POOL: &str = "pool";
const COMMITTED_AT: &str = "committed_at";

/// Committed-activation records outlive their activation by a week, for audits.
const RECORD_LINGER_SECS: i64 = 7 * 86_400;

#[derive(Clone)]
pub struct PoolStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// The answer to "give me a slot".
#[derive(Debug)]
pub enum Reservation {
    /// The slot is ours: its number is `activation.reserved`.
    Reserved(CurrentActivation),
    /// No slot: the pool as it was, to tell why.
    Refused(PoolState),
}

/// The answer to "let me rotate".
#[derive(Debug)]
pub enum LeaseAttempt {
    Taken(PoolState),
    Busy(PoolState),
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

fn committed_key(activation_id: &str) -> AttributeValue {
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
    let activation = get_s(item, ACTIVATION_ID).map(|id| CurrentActivation {
        id: id.to_owned(),
        expires_at: get_n(item, EXPIRES_AT).unwrap_or(0),
        limit: get_n(item, LIMIT).unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
        reserved: get_n(item, RESERVED).unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
        parameter_version: get_n(item, PARAMETER_VERSION).unwrap_or(0),
    });
    let lease = get_s(item, LEASE_OWNER).map(|owner| Lease {
        owner: owner.to_owned(),
        until: get_n(item, LEASE_UNTIL).unwrap_or(0),
    });
    PoolState { activation, lease }
}

fn instance_record(item: &Item) -> Option<InstanceRecord> {
    Some(InstanceRecord {
        activation_id: get_s(item, ACTIVATION_ID)?.to_owned(),
        parameter_version: get_n(item, PARAMETER_VERSION)?,
        expires_at: get_n(item, EXPIRES_AT)?,
    })
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

impl PoolStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The hot path: one conditional write takes a slot, or says why it can't.
    pub async fn reserve_slot(&self, pool: &str, now: EpochSecs, margin_secs: i64) -> Result<Reservation, VendError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, pool_key(pool))
            .update_expression("ADD #reserved :one")
            .condition_expression("attribute_exists(#id) AND #reserved < #limit AND #exp > :min_exp")
            .set_expression_attribute_names(names(&[
                ("#id", ACTIVATION_ID),
                ("#reserved", RESERVED),
                ("#limit", LIMIT),
                ("#exp", EXPIRES_AT),
            ]))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":min_exp", n(now + margin_secs))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match conditional_update(result)? {
            Ok(new) => match pool_state(new.as_ref()).activation {
                Some(activation) => Ok(Reservation::Reserved(activation)),
                None => Err(VendError::Internal(
                    "reserved a slot on a pool without an activation".into(),
                )),
            },
            Err(old) => Ok(Reservation::Refused(pool_state(old.as_ref()))),
        }
    }

    /// Takes the pool's lease if it is free or has run out.
    pub async fn take_lease(
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
            Err(old) => LeaseAttempt::Busy(pool_state(old.as_ref())),
        })
    }

    /// Installs a new activation and frees the lease, only if `owner` still holds an
    /// unexpired lease (fencing: a rotation whose lease ran out cannot commit, so the
    /// sweep may treat an uncommitted activation older than a lease as an orphan).
    /// In the same transaction it records the activation as committed, which is how
    /// the sweep tells handed-out activations from orphans. Returns false when the
    /// lease was lost.
    pub async fn commit_rotation(
        &self,
        pool: &str,
        owner: &str,
        next: &CurrentActivation,
        now: EpochSecs,
    ) -> Result<bool, VendError> {
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, pool_key(pool))
            .update_expression(
                "SET #id = :id, #exp = :exp, #limit = :limit, #reserved = :reserved, #pver = :pver, \
                 #rotated = :now, #gen = if_not_exists(#gen, :zero) + :one REMOVE #owner, #until",
            )
            .condition_expression("#owner = :me AND #until >= :now")
            .set_expression_attribute_names(names(&[
                ("#id", ACTIVATION_ID),
                ("#exp", EXPIRES_AT),
                ("#limit", LIMIT),
                ("#reserved", RESERVED),
                ("#pver", PARAMETER_VERSION),
                ("#rotated", ROTATED_AT),
                ("#gen", GENERATION),
                ("#owner", LEASE_OWNER),
                ("#until", LEASE_UNTIL),
            ]))
            .expression_attribute_values(":id", s(&next.id))
            .expression_attribute_values(":exp", n(next.expires_at))
            .expression_attribute_values(":limit", n(i64::from(next.limit)))
            .expression_attribute_values(":reserved", n(i64::from(next.reserved)))
            .expression_attribute_values(":pver", n(next.parameter_version))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":me", s(owner))
            .build()
            .map_err(|e| VendError::Internal(format!("commit request: {e}")))?;
        let record = Put::builder()
            .table_name(&self.table)
            .item(PK, committed_key(&next.id))
            .item(POOL, s(pool))
            .item(ACTIVATION_ID, s(&next.id))
            .item(EXPIRES_AT, n(next.expires_at))
            .item(COMMITTED_AT, n(now))
            .item(TTL, n(next.expires_at + RECORD_LINGER_SECS))
            .build()
            .map_err(|e| VendError::Internal(format!("commit request: {e}")))?;
        let mut conflicts = 0;
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
            let err = match result {
                Ok(_) => return Ok(true),
                Err(err) => err,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() {
                let codes: Vec<&str> = cancelled
                    .cancellation_reasons()
                    .iter()
                    .filter_map(|r| r.code())
                    .collect();
                if codes.contains(&"ConditionalCheckFailed") {
                    return Ok(false);
                }
                // A reservation landed on the pool item mid-transaction: try again.
                if codes.contains(&"TransactionConflict") && conflicts < 5 {
                    conflicts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10 << conflicts)).await;
                    continue;
                }
            }
            return Err(classify("DynamoDB.TransactWriteItems", err, Echo::Message));
        }
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

    /// Whether `activation_id` was ever the current activation of a pool.
    pub async fn was_committed(&self, activation_id: &str) -> Result<bool, VendError> {
        let item = self.get(committed_key(activation_id)).await?;
        Ok(item.is_some())
    }

    /// Gives the lease back early (a rotation that found nothing to do, or failed).
    pub async fn release_lease(&self, pool: &str, owner: &str) -> Result<(), VendError> {
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
        // Not ours any more (it ran out and was taken): nothing to give back.
        conditional_update(result).map(|_| ())
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

    /// Remembers which activation `instance` was given. If a concurrent request with
    /// the same name got there first (and its record is still good), returns that
    /// record instead, so both callers leave with the same activation.
    pub async fn remember_instance(
        &self,
        pool: &str,
        instance: &str,
        record: &InstanceRecord,
        replacing: Option<&str>,
        min_expiry: EpochSecs,
    ) -> Result<Option<InstanceRecord>, VendError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, instance_key(pool, instance))
            .item(ACTIVATION_ID, s(&record.activation_id))
            .item(PARAMETER_VERSION, n(record.parameter_version))
            .item(EXPIRES_AT, n(record.expires_at))
            .item(TTL, n(record.expires_at))
            .condition_expression("attribute_not_exists(#pk) OR #exp <= :min_exp OR #id = :replacing")
            .set_expression_attribute_names(names(&[("#pk", PK), ("#exp", EXPIRES_AT), ("#id", ACTIVATION_ID)]))
            .expression_attribute_values(":min_exp", n(min_expiry))
            .expression_attribute_values(":replacing", s(replacing.unwrap_or("")))
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
}
