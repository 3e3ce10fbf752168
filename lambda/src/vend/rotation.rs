//! Rotation under a lease: take the lease, re-check, create, store, commit under the
//! lease (fencing). A crash anywhere leaves at most one orphan activation and a
//! lease that runs out; a commit whose answer was lost is recognised, not undone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;

use crate::aws::activations::ActivationService;
use crate::aws::pool_store::{ActivationRecord, LeaseAttempt, Place, PoolStore};
use crate::clock::{epoch_now, secs};
use crate::config::Config;
use crate::error::VendError;
use crate::metrics::{self, Metric};
use crate::pool::directory::Pool;
use crate::pool::state::{standby_needed, still_needs_rotation, CurrentActivation, RotationReason};
use crate::vend::codes::Codes;

/// How a rotation attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// We installed a new activation.
    Rotated,
    /// Someone else already had, or we lost the race to commit: just reserve again.
    NotNeeded,
    /// Another request holds the lease.
    Busy,
}

pub struct Rotator {
    store: PoolStore,
    codes: Arc<Codes>,
    activations: ActivationService,
    config: Config,
    process_token: String,
    rotations: AtomicU64,
}

impl Rotator {
    pub fn new(store: PoolStore, codes: Arc<Codes>, activations: ActivationService, config: Config) -> Self {
        Self {
            store,
            codes,
            activations,
            config,
            process_token: format!("{:016x}", rand::rng().random::<u64>()),
            rotations: AtomicU64::new(0),
        }
    }

    /// Installs a new activation in `place` for `reason` if no one else is or has,
    /// once the lease is ours: as the current activation (`seen` is the one the
    /// caller found unusable, so a rotation someone finished meanwhile is not
    /// repeated), or as the standby beside it (only if the pool still needs one).
    pub async fn install_under_lease(
        &self,
        pool: &Pool,
        reason: RotationReason,
        place: Place,
        seen: Option<&str>,
    ) -> Result<Rotation, VendError> {
        let (name, margin) = (pool.name.as_str(), secs(pool.settings.expiry_margin));
        let owner = format!(
            "{}-{}",
            self.process_token,
            self.rotations.fetch_add(1, Ordering::Relaxed)
        );
        let now = epoch_now();
        let state = match self
            .store
            .take_lease(name, &owner, now, now + secs(self.config.lease))
            .await?
        {
            LeaseAttempt::Busy(_) => return Ok(Rotation::Busy),
            LeaseAttempt::Taken(state) => state,
        };
        let needed = match place {
            Place::Current => still_needs_rotation(&state, seen, reason, now, margin, pool.wanted()),
            Place::Standby => standby_needed(state.standby.as_ref(), now, margin, pool.wanted()),
        };
        if !needed {
            self.store.release_lease(name, &owner).await?;
            return Ok(Rotation::NotNeeded);
        }
        match self.install_new_activation(pool, &owner, reason, place).await {
            Ok(rotation) => {
                if rotation == Rotation::Rotated {
                    metrics::count(name, Metric::Rotations);
                }
                Ok(rotation)
            }
            Err(e) => {
                metrics::count(name, Metric::RotationFailures);
                tracing::warn!(pool = name, %reason, error = %e, "rotation failed");
                self.store
                    .record_rotation_failure(name, epoch_now(), &e.to_string())
                    .await;
                if let Err(release) = self.store.release_lease(name, &owner).await {
                    tracing::warn!(pool = name, error = %release, "could not release the lease; it runs out by itself");
                }
                Err(e)
            }
        }
    }

    async fn install_new_activation(
        &self,
        pool: &Pool,
        owner: &str,
        reason: RotationReason,
        place: Place,
    ) -> Result<Rotation, VendError> {
        let started = Instant::now();
        let name = pool.name.as_str();
        let expires_at = epoch_now() + secs(pool.settings.activation_ttl);
        let limit = pool.settings.registration_limit;
        let created = self.activations.create(name, &pool.settings, expires_at).await?;
        let stored = match self.codes.store(name, &created.id, &created.code).await {
            Ok(stored) => stored,
            Err(e) => {
                self.delete_unused(&created.id).await;
                return Err(e);
            }
        };
        let next = CurrentActivation {
            id: created.id.clone(),
            expires_at,
            limit,
            reserved: 0,
            parameter_version: stored.version,
            committed_at: 0,
            fingerprint: pool.fingerprint.clone(),
            config_at: pool.config_at,
            sealed_code: stored.sealed,
        };
        let committed = self
            .store
            .commit_rotation(name, owner, &next, place, &reason.to_string(), epoch_now())
            .await;
        if !self.settle_commit(name, owner, &created.id, committed).await? {
            return Ok(Rotation::NotNeeded);
        }
        tracing::info!(
            pool = name,
            activation_id = %created.id,
            %reason,
            limit,
            iam_role = %pool.settings.iam_role,
            config = %pool.fingerprint,
            expires_at,
            parameter_version = next.parameter_version,
            sealed = next.sealed_code.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "{}",
            if place == Place::Current { "rotated" } else { "prepared a standby" }
        );
        Ok(Rotation::Rotated)
    }

    /// Decides whether a commit landed when its answer was not a plain success: a
    /// failed condition may be our own earlier attempt whose answer was lost, and an
    /// error may hide a write that landed. Fences first (gives the lease back, so no
    /// late attempt can land afterwards), then reads the commit record. Only an
    /// activation that certainly never became current is deleted.
    async fn settle_commit(
        &self,
        pool: &str,
        owner: &str,
        activation_id: &str,
        committed: Result<bool, VendError>,
    ) -> Result<bool, VendError> {
        let failure = match committed {
            Ok(true) => return Ok(true),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        let fenced = self.store.release_lease(pool, owner).await.is_ok();
        match self.store.activation_record(activation_id).await {
            Ok(Some(ActivationRecord::Committed { by })) if by == owner => {
                tracing::info!(pool, activation_id, "the commit had landed; its answer was lost");
                Ok(true)
            }
            Ok(record) if fenced || record == Some(ActivationRecord::Tombstoned) => {
                tracing::warn!(
                    pool,
                    activation_id,
                    "lost the lease before committing; deleting the new activation"
                );
                self.delete_unused(activation_id).await;
                failure.map_or(Ok(false), Err)
            }
            _ => {
                tracing::warn!(
                    pool,
                    activation_id,
                    "cannot tell whether the commit landed; leaving the activation to the sweep"
                );
                failure.map_or(Ok(false), Err)
            }
        }
    }

    async fn delete_unused(&self, activation_id: &str) {
        if let Err(e) = self.activations.delete(activation_id).await {
            tracing::warn!(activation_id, error = %e, "could not delete an unused activation; the sweep will");
        }
    }
}
