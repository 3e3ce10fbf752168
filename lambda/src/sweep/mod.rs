//! The scheduled sweep: deletes the activations no server can or should use any more,
//! i.e. orphans of crashed or fenced-out rotations and handed-out activations that are
//! expired or full. It never touches a pool's current activation, nor a retired one
//! that may still register a server that is booting right now, nor an activation a
//! late commit made current (a tombstone makes the commit and the deletion exclusive).
//! Where a pool opts in (`replace_stale_nodes_after`), it also deregisters the stale
//! duplicates of re-imaged or re-registered hosts (`sweep/stale.rs`), and it counts the
//! managed nodes per pool and in the account (metrics).
//!
//! It lists every page of the account's activations first (those with the pool tag
//! are ours, grouped by its value), asks DynamoDB about 100 activations at once, deletes
//! with bounded concurrency, carries on past a failed activation (reported in `failed`,
//! tried again next time) and stops starting work when its time budget runs out
//! (`complete: false`; the next sweep carries on). `dry_run` decides and reports
//! without changing anything.

pub mod stale;

use std::collections::BTreeMap;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::aws::activations::ActivationService;
use crate::aws::nodes::ManagedNodes;
use crate::aws::parameters::PoolConfigSource;
use crate::aws::pool_store::{PoolStore, Tombstone};
use crate::clock::EpochSecs;
use crate::config::Config;
use crate::error::VendError;
use crate::metrics::{self, Metric};
use crate::pool::directory::Snapshot;
use crate::pool::settings::PoolSettings;
use crate::pool::state::{sweep_verdict, ActivationInfo, SweepVerdict, DEFAULT_POOL};
use crate::sweep::stale::{stale_duplicates, StaleNode};

/// Deletions in flight at once: enough to finish thousands within a Lambda timeout,
/// few enough to stay inside SSM's request rate with the SDK's retries.
const CONCURRENCY: usize = 8;

pub struct Sweeper {
    store: PoolStore,
    activations: ActivationService,
    nodes: ManagedNodes,
    pool_configs: PoolConfigSource,
    environment: PoolSettings,
    grace_secs: i64,
    node_quota: u32,
}

/// How a sweep runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SweepOptions {
    /// No new work starts after this.
    pub until: Option<Instant>,
    /// Decide and report, change nothing.
    pub dry_run: bool,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    pub pool: String,
    pub current: Option<String>,
    pub examined: usize,
    /// Deleted, or with `dry_run` to be deleted.
    pub deleted_orphans: Vec<String>,
    pub deleted_spent: Vec<String>,
    pub kept: usize,
    /// Activations or nodes whose handling failed; the next sweep tries again.
    pub failed: Vec<String>,
    /// False when listing failed or the time budget ran out before the last page.
    pub complete: bool,
    pub dry_run: bool,
    /// Managed nodes registered through the pool's activations.
    pub managed_nodes: usize,
    /// Stale duplicates deregistered (or, with `dry_run`, to be), and why.
    pub deregistered_nodes: Vec<StaleNode>,
    /// Registrations never used on the activations this sweep retired (deleted as
    /// spent, or with `dry_run` to be): `RegistrationLimit` less SSM's
    /// `RegistrationsCount`. Slots taken and never handed out end up here, whatever
    /// the process that took them could see.
    pub unused_registrations: u64,
}

/// What became of one activation.
enum Outcome {
    Kept,
    Deleted(SweepVerdict),
    Failed,
}

impl Sweeper {
    pub fn new(
        store: PoolStore,
        activations: ActivationService,
        nodes: ManagedNodes,
        pool_configs: PoolConfigSource,
        config: &Config,
    ) -> Self {
        Self {
            store,
            activations,
            nodes,
            pool_configs,
            environment: PoolSettings::from_environment(config),
            grace_secs: i64::try_from(config.sweep_grace.as_secs()).unwrap_or(i64::MAX),
            node_quota: config.node_quota,
        }
    }

    /// Sweeps every pool that has activations or a config (and `default` always).
    pub async fn sweep_all(&self, now: EpochSecs, options: SweepOptions) -> Result<Vec<SweepReport>, VendError> {
        // Without the configs, the activations are still swept; only the opt-in node
        // clean-up waits for a sweep that can read them.
        let configs = self.pool_configs.read_all().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the sweep could not read the pool configs; no node clean-up this time");
            BTreeMap::new()
        });
        let snapshot = Snapshot::parse(&configs, now, &self.environment);
        // Everything first, then act: deleting while paging would move the pages.
        let (found, listed_all) = self.list(options.until).await;
        let mut by_pool: BTreeMap<String, Vec<ActivationInfo>> = BTreeMap::new();
        for (name, _) in snapshot.all() {
            by_pool.entry(name.to_owned()).or_default();
        }
        by_pool.entry(DEFAULT_POOL.to_owned()).or_default();
        for (pool, info) in found {
            by_pool.entry(pool).or_default().push(info);
        }
        let mut reports = Vec::with_capacity(by_pool.len());
        for (pool, activations) in by_pool {
            let mut report = self.sweep_pool(&pool, &activations, listed_all, now, options).await?;
            let clean_after = snapshot
                .lookup(&pool)
                .ok()
                .and_then(|p| p.settings.replace_stale_nodes_after);
            let counted = self.tend_nodes(&pool, clean_after, now, options, &mut report).await;
            let mut figures = vec![
                (
                    Metric::SweepDeleted,
                    (report.deleted_orphans.len() + report.deleted_spent.len()) as f64,
                ),
                (Metric::SweepFailures, report.failed.len() as f64),
                (Metric::StaleNodesDeregistered, report.deregistered_nodes.len() as f64),
                (Metric::UnusedRegistrations, report.unused_registrations as f64),
            ];
            if report.unused_registrations > 0 && !options.dry_run {
                if let Err(e) = self
                    .store
                    .add_unused_registrations(&pool, report.unused_registrations)
                    .await
                {
                    tracing::warn!(pool, error = %e, "could not add the unused registrations to the pool's total");
                }
            }
            if counted {
                figures.push((Metric::ManagedNodes, report.managed_nodes as f64));
            }
            metrics::emit(Some(&pool), &figures);
            reports.push(report);
        }
        self.count_account_nodes().await;
        Ok(reports)
    }

    async fn sweep_pool(
        &self,
        pool: &str,
        activations: &[ActivationInfo],
        listed_all: bool,
        now: EpochSecs,
        options: SweepOptions,
    ) -> Result<SweepReport, VendError> {
        let state = self.store.pool(pool).await?;
        let current = state.activation.map(|a| a.id);
        // The standby is as good as current: it takes over whole, any moment now.
        let standby = state.standby.map(|a| a.id);
        let mut report = SweepReport {
            pool: pool.to_owned(),
            current: current.clone(),
            complete: listed_all,
            dry_run: options.dry_run,
            ..SweepReport::default()
        };
        for chunk in activations.chunks(100) {
            if options.until.is_some_and(|t| Instant::now() >= t) {
                report.complete = false;
                break;
            }
            let in_use = [current.as_deref(), standby.as_deref()];
            self.sweep_chunk(pool, in_use, chunk, now, options.dry_run, &mut report)
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
            dry_run = report.dry_run,
            "swept"
        );
        Ok(report)
    }

    /// Counts the pool's nodes and, where the pool opts in, deregisters its stale
    /// duplicates. False when the nodes could not be listed (nothing is counted).
    async fn tend_nodes(
        &self,
        pool: &str,
        clean_after: Option<std::time::Duration>,
        now: EpochSecs,
        options: SweepOptions,
        report: &mut SweepReport,
    ) -> bool {
        let nodes = match self.nodes.of_pool(pool).await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(pool, error = %e, "the sweep could not list the pool's nodes");
                return false;
            }
        };
        report.managed_nodes = nodes.len();
        let Some(after) = clean_after else {
            return true;
        };
        let after_secs = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
        for stale in stale_duplicates(pool, &nodes, now, after_secs) {
            if !options.dry_run {
                if let Err(e) = self.nodes.deregister(&stale.instance_id).await {
                    tracing::warn!(pool, instance_id = %stale.instance_id, error = %e, "could not deregister a stale node");
                    report.failed.push(stale.instance_id);
                    continue;
                }
            }
            tracing::info!(
                pool,
                instance_id = %stale.instance_id,
                computer_name = %stale.computer_name,
                reason = %stale.reason,
                dry_run = options.dry_run,
                "deregistered a stale node"
            );
            report.deregistered_nodes.push(stale);
        }
        true
    }

    /// The account's hybrid nodes against the standard tier's quota.
    async fn count_account_nodes(&self) {
        match self.nodes.hybrid_count().await {
            Ok(count) => {
                metrics::emit(None, &[(Metric::ManagedNodes, count as f64)]);
                let quota = f64::from(self.node_quota);
                if count as f64 >= 0.9 * quota {
                    tracing::warn!(
                        nodes = count,
                        quota = self.node_quota,
                        "the account's hybrid nodes are at 90% or more of the standard tier's quota"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not count the account's hybrid nodes"),
        }
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
        [current, standby]: [Option<&str>; 2],
        chunk: &[ActivationInfo],
        now: EpochSecs,
        dry_run: bool,
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
        let outcomes: Vec<(&ActivationInfo, Outcome)> = stream::iter(chunk)
            .map(|info| {
                let committed = current == Some(info.id.as_str()) || committed.contains(&info.id);
                let is_standby = standby == Some(info.id.as_str());
                async move {
                    let outcome = if is_standby {
                        Outcome::Kept
                    } else {
                        self.settle(pool, current, info, committed, now, dry_run).await
                    };
                    (info, outcome)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (info, outcome) in outcomes {
            let id = info.id.clone();
            match outcome {
                Outcome::Kept => report.kept += 1,
                Outcome::Deleted(SweepVerdict::DeleteOrphan) => report.deleted_orphans.push(id),
                Outcome::Deleted(_) => {
                    report.unused_registrations += u64::from(info.limit.saturating_sub(info.registrations));
                    report.deleted_spent.push(id);
                }
                Outcome::Failed => report.failed.push(id),
            }
        }
    }

    /// Decides about one activation and acts on it (unless `dry_run`).
    async fn settle(
        &self,
        pool: &str,
        current: Option<&str>,
        info: &ActivationInfo,
        committed: bool,
        now: EpochSecs,
        dry_run: bool,
    ) -> Outcome {
        let mut verdict = sweep_verdict(info, current, committed, now, self.grace_secs);
        if dry_run {
            return match verdict {
                SweepVerdict::DeleteOrphan | SweepVerdict::DeleteSpent => Outcome::Deleted(verdict),
                _ => Outcome::Kept,
            };
        }
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
