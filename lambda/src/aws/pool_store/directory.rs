//! The directory item (`directory#pools`): the pools' configs as some process last
//! read them from Parameter Store, shared so that not every process reads them.

use std::collections::BTreeMap;

use super::codec::{directory_configs, directory_snapshot, DirectorySnapshot};
use super::conditions::{self, Write};
use super::schema::{directory_key, PK};
use super::store::{conditional_update, PoolStore};
use crate::aws::retrying_conflicts;
use crate::clock::EpochSecs;
use crate::error::VendError;

impl PoolStore {
    /// The pools' configs as some process last read them from Parameter Store, and
    /// when it read them.
    pub async fn directory_snapshot(&self) -> Result<Option<DirectorySnapshot>, VendError> {
        let Some(item) = self.get(directory_key()).await? else {
            return Ok(None);
        };
        directory_snapshot(&item)
    }

    /// Claims the next read of Parameter Store for this process, if the snapshot is
    /// older than `stale_before` and no other process has claimed it until `until`.
    pub async fn claim_directory_refresh(
        &self,
        now: EpochSecs,
        stale_before: EpochSecs,
        until: EpochSecs,
    ) -> Result<bool, VendError> {
        let write = conditions::claim_directory_refresh(now, stale_before, until);
        self.update_directory(&write).await
    }

    /// Shares a fresh read of the pools' configs, unless a newer one is there.
    pub async fn save_directory_snapshot(
        &self,
        configs: &BTreeMap<String, String>,
        read_at: EpochSecs,
    ) -> Result<(), VendError> {
        let write = conditions::save_directory_snapshot(&directory_configs(configs)?, read_at);
        self.update_directory(&write).await.map(|_| ())
    }

    /// One conditional UpdateItem of the directory item carrying `write`, again while
    /// it meets concurrent writes: whether its condition held.
    async fn update_directory(&self, write: &Write) -> Result<bool, VendError> {
        retrying_conflicts(|| async {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, directory_key())
                .set_update_expression(write.update.clone())
                .set_condition_expression(write.condition.clone())
                .set_expression_attribute_names(write.attribute_names())
                .set_expression_attribute_values(write.attribute_values())
                .send()
                .await;
            conditional_update(result).map(|outcome| outcome.applied())
        })
        .await
    }
}
