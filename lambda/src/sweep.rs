//! The scheduled sweep: deletes the activations no server can or should use any more,
//! i.e. orphans of crashed or fenced-out rotations and handed-out activations that are
//! expired or full. It never touches a pool's current activation, nor a retired one
//! that may still register a server that is booting right now.

use serde::Serialize;

use crate::aws::activations::ActivationService;
use crate::aws::pool_store::PoolStore;
use crate::config::Config;
use crate::error::VendError;
use crate::pool::{sweep_verdict, EpochSecs, SweepVerdict, DEFAULT_POOL};

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
    /// Deletions that failed; the next sweep tries again.
    pub failed: Vec<String>,
}

impl Sweeper {
    pub fn new(store: PoolStore, activations: ActivationService, config: &Config) -> Self {
        Self {
            store,
            activations,
            grace_secs: i64::try_from(config.sweep_grace.as_secs()).unwrap_or(i64::MAX),
        }
    }

    pub async fn sweep_all(&self, now: EpochSecs) -> Result<Vec<SweepReport>, VendError> {
        Ok(vec![self.sweep(DEFAULT_POOL, now).await?])
    }

    pub async fn sweep(&self, pool: &str, now: EpochSecs) -> Result<SweepReport, VendError> {
        let current = self.store.pool(pool).await?.activation.map(|a| a.id);
        let mut report = SweepReport {
            pool: pool.to_owned(),
            current: current.clone(),
            ..SweepReport::default()
        };
        for info in self.activations.list_for_pool(pool).await? {
            report.examined += 1;
            let committed = current.as_deref() == Some(info.id.as_str()) || self.store.was_committed(&info.id).await?;
            let verdict = sweep_verdict(&info, current.as_deref(), committed, now, self.grace_secs);
            let deleted = match verdict {
                SweepVerdict::DeleteOrphan => &mut report.deleted_orphans,
                SweepVerdict::DeleteSpent => &mut report.deleted_spent,
                SweepVerdict::KeepCurrent | SweepVerdict::KeepRetired | SweepVerdict::KeepYoung => {
                    report.kept += 1;
                    continue;
                }
            };
            match self.activations.delete(&info.id).await {
                Ok(()) => deleted.push(info.id),
                Err(e) => {
                    tracing::warn!(pool, activation_id = %info.id, error = %e, "sweep could not delete an activation");
                    report.failed.push(info.id);
                }
            }
        }
        tracing::info!(
            pool,
            examined = report.examined,
            deleted_orphans = report.deleted_orphans.len(),
            deleted_spent = report.deleted_spent.len(),
            kept = report.kept,
            failed = report.failed.len(),
            "swept"
        );
        Ok(report)
    }
}
