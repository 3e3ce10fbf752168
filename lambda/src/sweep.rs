//! The scheduled sweep: deletes the activations no server can or should use any more,
//! i.e. orphans of crashed or fenced-out rotations and handed-out activations that are
//! expired or full. It never touches a pool's current activation, nor a retired one
//! that may still register a server that is booting right now, nor an activation a
//! late commit made current (a tombstone makes the commit and the deletion exclusive).
//!
//! It lists every page of the account's activations first (those with the pool tag
//! are ours, grouped by its value), asks DynamoDB about 100 activations at once, deletes
//! with bounded concurrency, carries on past a failed activation (reported in `failed`,
//! tried again next time) and stops starting work when its time budget runs out
//! (`complete: false`; the next sweep carries on).

use std::collections::BTreeMap;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::aws::activations::ActivationService;
use crate::aws::pool_store::{PoolStore, Tombstone};
use crate::config::Config;
use crate::error::VendError;
use crate::pool::{sweep_verdict, ActivationInfo, EpochSecs, SweepVerdict, DEFAULT_POOL};

/// Deletions in flight at once: enough to finish thousands within a Lambda timeout,
/// few enough to stay inside SSM's request rate with the SDK's retries.
const CONCURRENCY: usize = 8;

pub struct Sweeper {
    store: PoolStore,
    activations: ActivationService,
    grace_secs: i64,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    pub pool: String,
    pub current: Option<String>,
    pub examined: usize,
    pub deleted_orphans: Vec<String>,
    pub deleted_spent: Vec<String>,
    pub kept: usize,
    /// Activations whose handling failed; the next sweep tries again.
    pub failed: Vec<String>,
    /// False when listing failed or the time budget ran out before the last page.
    pub complete: bool,
}

/// What became of one activation.
enum Outcome {
    Kept,
    Deleted(SweepVerdict),
    Failed,
}

impl Sweeper {
    pub fn new(store: PoolStore, activations: ActivationService, config: &Config) -> Self {
        Self {
            store,
            activations,
            grace_secs: i64::try_from(config.sweep_grace.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// Sweeps every pool that has activations (and `default` always); no new work
    /// starts after `until` (when given).
    pub async fn sweep_all(&self, now: EpochSecs, until: Option<Instant>) -> Result<Vec<SweepReport>, VendError> {
        // Everything first, then act: deleting while paging would move the pages.
        let (found, listed_all) = self.list(until).await;
        let mut by_pool: BTreeMap<String, Vec<ActivationInfo>> = BTreeMap::new();
        by_pool.entry(DEFAULT_POOL.to_owned()).or_default();
        for (pool, info) in found {
            by_pool.entry(pool).or_default().push(info);
        }
        let mut reports = Vec::with_capacity(by_pool.len());
        for (pool, activations) in by_pool {
            reports.push(self.sweep_pool(&pool, &activations, listed_all, now, until).await?);
        }
        Ok(reports)
    }

    async fn sweep_pool(
        &self,
        pool: &str,
        activations: &[ActivationInfo],
        listed_all: bool,
        now: EpochSecs,
        until: Option<Instant>,
    ) -> Result<SweepReport, VendError> {
        let current = self.store.pool(pool).await?.activation.map(|a| a.id);
        let mut report = SweepReport {
            pool: pool.to_owned(),
            current: current.clone(),
            complete: listed_all,
            ..SweepReport::default()
        };
        for chunk in activations.chunks(100) {
            if until.is_some_and(|t| Instant::now() >= t) {
                report.complete = false;
                break;
            }
            self.sweep_chunk(pool, current.as_deref(), chunk, now, &mut report)
                .await;
        }
        tracing::info!(
            pool,
            examined = report.examined,
            deleted_orphans = report.deleted_orphans.len(),
            deleted_spent = report.deleted_spent.len(),
            kept = report.kept,
            failed = report.failed.len(),
            complete = report.complete,
            "swept"
        );
        Ok(report)
    }

    /// Every activation this service made, with its pool, page by page; false when
    /// listing stopped early.
    async fn list(&self, until: Option<Instant>) -> (Vec<(String, ActivationInfo)>, bool) {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            if until.is_some_and(|t| Instant::now() >= t) {
                return (found, false);
            }
            match self.activations.list_page(token).await {
                Ok((page, next)) => {
                    found.extend(page);
                    token = next;
                    if token.is_none() {
                        return (found, true);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the sweep could not list every activation; sweeping those it has");
                    return (found, false);
                }
            }
        }
    }

    async fn sweep_chunk(
        &self,
        pool: &str,
        current: Option<&str>,
        chunk: &[ActivationInfo],
        now: EpochSecs,
        report: &mut SweepReport,
    ) {
        report.examined += chunk.len();
        let ids: Vec<String> = chunk.iter().map(|info| info.id.clone()).collect();
        let committed = match self.store.committed_among(&ids).await {
            Ok(committed) => committed,
            Err(e) => {
                tracing::warn!(pool, error = %e, "the sweep could not read commit records; skipping these");
                report.failed.extend(ids);
                return;
            }
        };
        let outcomes: Vec<(String, Outcome)> = stream::iter(chunk)
            .map(|info| {
                let committed = current == Some(info.id.as_str()) || committed.contains(&info.id);
                async move {
                    let outcome = self.settle(pool, current, info, committed, now).await;
                    (info.id.clone(), outcome)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (id, outcome) in outcomes {
            match outcome {
                Outcome::Kept => report.kept += 1,
                Outcome::Deleted(SweepVerdict::DeleteOrphan) => report.deleted_orphans.push(id),
                Outcome::Deleted(_) => report.deleted_spent.push(id),
                Outcome::Failed => report.failed.push(id),
            }
        }
    }

    /// Decides about one activation and acts on it.
    async fn settle(
        &self,
        pool: &str,
        current: Option<&str>,
        info: &ActivationInfo,
        committed: bool,
        now: EpochSecs,
    ) -> Outcome {
        let mut verdict = sweep_verdict(info, current, committed, now, self.grace_secs);
        if verdict == SweepVerdict::DeleteOrphan {
            // Claim it first: a rotation paused past the grace can no longer commit it.
            match self.store.lay_tombstone(&info.id, now).await {
                Ok(Tombstone::Laid) => {}
                Ok(Tombstone::Committed) => verdict = sweep_verdict(info, current, true, now, self.grace_secs),
                Err(e) => {
                    tracing::warn!(pool, activation_id = %info.id, error = %e, "sweep could not claim an orphan");
                    return Outcome::Failed;
                }
            }
        }
        if !matches!(verdict, SweepVerdict::DeleteOrphan | SweepVerdict::DeleteSpent) {
            return Outcome::Kept;
        }
        match self.activations.delete(&info.id).await {
            Ok(()) => Outcome::Deleted(verdict),
            Err(e) => {
                tracing::warn!(pool, activation_id = %info.id, error = %e, "sweep could not delete an activation");
                Outcome::Failed
            }
        }
    }
}
