//! `PoolStore`: the DynamoDB client and table every item's operations share, the
//! one strongly consistent read, and what a conditional update's answer means.

use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use super::schema::{Item, PK};
use crate::aws::{classify, Echo};
use crate::error::VendError;

#[derive(Clone)]
pub struct PoolStore {
    pub(super) client: aws_sdk_dynamodb::Client,
    pub(super) table: String,
}

/// A conditional write's outcome when DynamoDB answered: the condition held (with the
/// item after, when asked for), or it did not (with the item before, when asked for).
#[derive(Debug)]
pub(super) enum Conditional {
    Applied(Option<Item>),
    Refused(Option<Item>),
}

impl Conditional {
    pub(super) fn applied(&self) -> bool {
        matches!(self, Self::Applied(_))
    }
}

/// A conditional UpdateItem's answer: `Applied(item after)` when the condition held,
/// `Refused(item before)` when it did not (both as asked for with ReturnValues).
pub(super) fn conditional_update(
    result: Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>>,
) -> Result<Conditional, VendError> {
    match result {
        Ok(out) => Ok(Conditional::Applied(out.attributes)),
        Err(e) => match e.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                Ok(Conditional::Refused(failed.item.clone()))
            }
            _ => Err(classify("DynamoDB.UpdateItem", e, Echo::Message)),
        },
    }
}

impl PoolStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// One item by key, strongly consistent.
    pub(super) async fn get(&self, key: AttributeValue) -> Result<Option<Item>, VendError> {
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
}
