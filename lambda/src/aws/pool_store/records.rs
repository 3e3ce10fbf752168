//! The records beside the pool items: what a named instance was given, each
//! activation's commit record or tombstone (the sweep's claim on it), and each
//! confirmed node's record.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, ReturnValuesOnConditionCheckFailure};

use super::codec::{
    activation_record, get_s, instance_item, instance_record, node_item, node_record, s, tombstone_item,
    ActivationRecord, NodeRecord,
};
use super::conditions;
use super::schema::{
    instance_key, instance_prefix, node_key, record_key, Item, ACTIVATION_ID, NODE_KEY_PREFIX, PK, POOL,
};
use super::store::PoolStore;
use crate::aws::{classify, retrying_conflicts, Echo};
use crate::clock::EpochSecs;
use crate::error::VendError;
use crate::pool::state::InstanceRecord;

/// The sweep's claim on an uncommitted activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tombstone {
    /// Laid now or by an earlier sweep: the activation may be deleted.
    Laid,
    /// A commit got there first: the activation is in use.
    Committed,
}

/// What a write that must not overwrite found.
enum Put {
    Written,
    /// The key was taken: the item there, when DynamoDB returned it.
    Taken(Option<Item>),
}

impl PoolStore {
    /// The sweep's claim on an activation no rotation committed: once laid, the
    /// commit's condition on the record fails, so the two can never both win.
    pub async fn lay_tombstone(&self, activation_id: &str, now: EpochSecs) -> Result<Tombstone, VendError> {
        let existing = match self.put_unless_present(tombstone_item(activation_id, now)).await? {
            Put::Written => return Ok(Tombstone::Laid),
            Put::Taken(Some(item)) => activation_record(&item),
            // No old item came back: look it up.
            Put::Taken(None) => self.activation_record(activation_id).await?,
        };
        Ok(match existing {
            Some(ActivationRecord::Committed { .. }) => Tombstone::Committed,
            Some(ActivationRecord::Tombstoned) | None => Tombstone::Laid,
        })
    }

    /// Whether `activation_id` was committed (and by whom) or condemned by the sweep.
    pub async fn activation_record(&self, activation_id: &str) -> Result<Option<ActivationRecord>, VendError> {
        let item = self.get(record_key(activation_id)).await?;
        Ok(item.as_ref().and_then(activation_record))
    }

    /// The pool that committed `activation_id` (as its current activation or its
    /// standby), from the commit record, which outlives the activation by a week;
    /// `None` when no rotation committed it, or the sweep condemned it.
    pub async fn committed_to(&self, activation_id: &str) -> Result<Option<String>, VendError> {
        let Some(item) = self.get(record_key(activation_id)).await? else {
            return Ok(None);
        };
        Ok(match activation_record(&item) {
            Some(ActivationRecord::Committed { .. }) => get_s(&item, POOL).map(str::to_owned),
            _ => None,
        })
    }

    /// Drops every record of `pool` that would hand `activation_id` out again (named
    /// reuse), and says how many. Finding them takes a Scan of the table (the
    /// records are keyed by name): only a refusal SSM confirmed comes here, once per
    /// process and activation (DESIGN.md, "Refusal reports"). Each delete is
    /// conditional: a record that moved on to another activation meanwhile stays.
    pub async fn forget_instances_of(&self, pool: &str, activation_id: &str) -> Result<u32, VendError> {
        let mut start: Option<Item> = None;
        let mut dropped = 0;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("begins_with(#pk, :prefix) AND #aid = :id")
                .projection_expression("#pk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#aid", ACTIVATION_ID)
                .expression_attribute_values(":prefix", s(&instance_prefix(pool)))
                .expression_attribute_values(":id", s(activation_id))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("DynamoDB.Scan", e, Echo::Message))?;
            for item in out.items() {
                if let Some(key) = item.get(PK) {
                    if retrying_conflicts(|| self.forget_instance(key.clone(), activation_id)).await? {
                        dropped += 1;
                    }
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(dropped),
            }
        }
    }

    /// Deletes `instance`'s record in `pool` if it still names `activation_id`: once
    /// its node is confirmed, the slot it kept for the machine's retries is spent.
    pub async fn forget_instance_of(&self, pool: &str, instance: &str, activation_id: &str) -> Result<bool, VendError> {
        retrying_conflicts(|| self.forget_instance(instance_key(pool, instance), activation_id)).await
    }

    /// Deletes one instance record if it still names `activation_id`.
    async fn forget_instance(&self, key: AttributeValue, activation_id: &str) -> Result<bool, VendError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, key)
            .condition_expression("#aid = :id")
            .expression_attribute_names("#aid", ACTIVATION_ID)
            .expression_attribute_values(":id", s(activation_id))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(DeleteItemError::ConditionalCheckFailedException(_)) => Ok(false),
                _ => Err(classify("DynamoDB.DeleteItem", e, Echo::Message)),
            },
        }
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
        let write = conditions::remember_instance(record, replacing, min_expiry);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(instance_item(pool, instance, record)))
            .set_condition_expression(write.condition.clone())
            .set_expression_attribute_names(write.attribute_names())
            .set_expression_attribute_values(write.attribute_values())
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

    /// A confirmed node's record, if it was confirmed.
    pub async fn node(&self, instance_id: &str) -> Result<Option<NodeRecord>, VendError> {
        let item = self.get(node_key(instance_id)).await?;
        Ok(item.as_ref().and_then(node_record))
    }

    /// Records a confirmation once: `Ok(None)` when this write made the record,
    /// `Ok(Some(earlier))` when the node was confirmed before (nothing is written).
    pub async fn record_node(&self, record: &NodeRecord, ttl_secs: i64) -> Result<Option<NodeRecord>, VendError> {
        Ok(match self.put_unless_present(node_item(record, ttl_secs)).await? {
            Put::Written => None,
            Put::Taken(old) => Some(old.as_ref().and_then(node_record).unwrap_or_else(|| record.clone())),
        })
    }

    /// Writes `item` unless an item with its key is there (a conditional `PutItem`);
    /// then that item, as DynamoDB hands it back with the failed condition.
    async fn put_unless_present(&self, item: Item) -> Result<Put, VendError> {
        let write = conditions::not_there_yet();
        retrying_conflicts(|| async {
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .set_condition_expression(write.condition.clone())
                .set_expression_attribute_names(write.attribute_names())
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            match result {
                Ok(_) => Ok(Put::Written),
                Err(e) => match e.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(failed)) => Ok(Put::Taken(failed.item.clone())),
                    _ => Err(classify("DynamoDB.PutItem", e, Echo::Message)),
                },
            }
        })
        .await
    }

    /// Every confirmed node's record (a paginated Scan for the `node#` keys), for
    /// `vending nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, VendError> {
        let mut records = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(#pk, :prefix)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(
                    ":prefix",
                    aws_sdk_dynamodb::types::AttributeValue::S(NODE_KEY_PREFIX.to_owned()),
                )
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("DynamoDB.Scan", e, Echo::Message))?;
            records.extend(out.items().iter().filter_map(node_record));
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(records);
            }
        }
    }
}
