//! The vend: reserve a slot on the hot path, rotate under a lease when the pool
//! needs it, and pair every ID with exactly the code stored beside it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;

use crate::aws::activations::ActivationService;
use crate::aws::parameters::CodeVault;
use crate::aws::pool_store::{LeaseAttempt, PoolStore, Reservation};
use crate::config::Config;
use crate::error::VendError;
use crate::pool::{
    self, rotate_ahead_due, still_needs_rotation, why_unusable, AheadTrigger, CurrentActivation, EpochSecs,
    InstanceRecord, RotationReason, DEFAULT_POOL,
};
use crate::secret::ActivationCode;

/// What a caller leaves with.
#[derive(Debug)]
pub struct Vended {
    pub activation_id: String,
    pub code: ActivationCode,
    pub expires_at: EpochSecs,
    pub pool: String,
}

/// How a rotation attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum Rotation {
    /// We installed a new activation.
    Rotated,
    /// Someone else already had, or lost the race to commit: just reserve again.
    NotNeeded,
    /// Another request holds the lease.
    Busy,
}

pub struct Vendor {
    store: PoolStore,
    vault: CodeVault,
    activations: ActivationService,
    config: Config,
    codes: CodeCache,
    verified: Mutex<HashMap<String, Instant>>,
    /// Last time this process tried to rotate ahead by time; one try per lease length.
    last_time_based_attempt: Mutex<Option<Instant>>,
    process_token: String,
    rotations: AtomicU64,
    /// One request per process deals with an unusable pool at a time.
    pool_gate: tokio::sync::Mutex<()>,
}

pub fn epoch_now() -> EpochSecs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as EpochSecs)
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Vendor {
    pub fn new(store: PoolStore, vault: CodeVault, activations: ActivationService, config: Config) -> Self {
        let process_token = format!("{:016x}", rand::rng().random::<u64>());
        Self {
            store,
            vault,
            activations,
            config,
            codes: CodeCache::default(),
            verified: Mutex::new(HashMap::new()),
            last_time_based_attempt: Mutex::new(None),
            process_token,
            rotations: AtomicU64::new(0),
            pool_gate: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn margin(&self) -> i64 {
        secs(self.config.expiry_margin)
    }

    /// Resolves a pool name; only `default` exists for now.
    pub fn check_pool(&self, pool: &str) -> Result<(), VendError> {
        if pool == DEFAULT_POOL {
            Ok(())
        } else {
            Err(VendError::PoolNotFound(pool.to_owned()))
        }
    }

    pub async fn vend(&self, pool: &str, instance: Option<&str>) -> Result<Vended, VendError> {
        self.check_pool(pool)?;
        let mut replacing = None;
        if let Some(name) = instance {
            match self.vend_again(pool, name).await? {
                Ok(vended) => return Ok(vended),
                Err(stale) => replacing = stale,
            }
        }
        let (activation, code) = self.reserve_and_pair(pool).await?;
        let vended = Vended {
            activation_id: activation.id.clone(),
            code,
            expires_at: activation.expires_at,
            pool: pool.to_owned(),
        };
        let Some(name) = instance else {
            return Ok(vended);
        };
        let record = InstanceRecord {
            activation_id: activation.id,
            parameter_version: activation.parameter_version,
            expires_at: activation.expires_at,
        };
        let min_expiry = epoch_now() + self.margin();
        match self
            .store
            .remember_instance(pool, name, &record, replacing.as_deref(), min_expiry)
            .await?
        {
            None => Ok(vended),
            // A concurrent request with the same name won; hand out its activation so
            // both callers agree. Our slot goes unused, which is safe.
            Some(winner) => match self
                .code_for(pool, &winner.activation_id, winner.parameter_version)
                .await?
            {
                Some(code) => Ok(Vended {
                    activation_id: winner.activation_id,
                    code,
                    expires_at: winner.expires_at,
                    pool: pool.to_owned(),
                }),
                None => Ok(vended),
            },
        }
    }

    /// A named caller's earlier activation, if it is still good. `Err(Some(id))` means
    /// the record exists but is stale and may be replaced.
    async fn vend_again(&self, pool: &str, name: &str) -> Result<Result<Vended, Option<String>>, VendError> {
        let Some(record) = self.store.instance(pool, name).await? else {
            return Ok(Err(None));
        };
        let stale = Err(Some(record.activation_id.clone()));
        if record.expires_at <= epoch_now() + self.margin() || !self.still_works(&record.activation_id).await? {
            return Ok(stale);
        }
        match self
            .code_for(pool, &record.activation_id, record.parameter_version)
            .await?
        {
            Some(code) => Ok(Ok(Vended {
                activation_id: record.activation_id,
                code,
                expires_at: record.expires_at,
                pool: pool.to_owned(),
            })),
            None => Ok(stale),
        }
    }

    /// Takes a slot and the code that goes with it, rotating or waiting as needed.
    async fn reserve_and_pair(&self, pool: &str) -> Result<(CurrentActivation, ActivationCode), VendError> {
        let deadline = Instant::now() + self.config.wait;
        // Held from the moment this request takes charge of an unusable pool until it
        // gets a slot: the process's other requests wait on it instead of polling AWS.
        let mut in_charge = None;
        let mut waits = 0;
        let mut last_seen = None;
        loop {
            let now = epoch_now();
            match self.store.reserve_slot(pool, now, self.margin()).await? {
                Reservation::Reserved(activation) => {
                    if !self.still_works(&activation.id).await? {
                        self.forget_verified(&activation.id);
                        let seen = Some(activation.id.as_str());
                        self.rotate_or_wait(pool, RotationReason::DeletedOutOfBand, seen, deadline, &mut waits)
                            .await?;
                        continue;
                    }
                    let trigger = rotate_ahead_due(
                        activation.reserved,
                        &activation,
                        now,
                        self.margin(),
                        self.config.low_water_percent,
                    );
                    if trigger.is_some_and(|t| self.may_try_rotate_ahead(t)) {
                        // Our slot on the old activation stays good; failures here only
                        // mean the next crossing tries again.
                        if let Err(e) = self
                            .rotate_under_lease(pool, RotationReason::LowWater, Some(&activation.id))
                            .await
                        {
                            tracing::warn!(pool, error = %e, "rotating ahead failed; the pool keeps its current activation");
                        }
                    }
                    match self
                        .code_for(pool, &activation.id, activation.parameter_version)
                        .await?
                    {
                        Some(code) => return Ok((activation, code)),
                        None => {
                            return Err(VendError::Internal(format!(
                                "Parameter Store has no code for activation {} at version {}",
                                activation.id, activation.parameter_version
                            )))
                        }
                    }
                }
                Reservation::Refused(state) => {
                    if in_charge.is_none() {
                        match self.pool_gate.try_lock() {
                            Ok(guard) => in_charge = Some(guard),
                            Err(_) => {
                                // Another request here is on it. Queue behind it and reserve
                                // again in turn, still holding the gate: after a rotation the
                                // queue drains one reserve at a time instead of as a herd, and
                                // the first to be refused takes charge of the next rotation.
                                match tokio::time::timeout_at(deadline.into(), self.pool_gate.lock()).await {
                                    Ok(guard) => {
                                        in_charge = Some(guard);
                                        continue;
                                    }
                                    Err(_) => return Err(VendError::NoActivationYet),
                                }
                            }
                        }
                    }
                    let seen = state.activation.as_ref().map(|a| a.id.clone());
                    if seen != last_seen {
                        waits = 0;
                        last_seen.clone_from(&seen);
                    }
                    let reason = why_unusable(state.activation.as_ref(), now, self.margin())
                        .unwrap_or(RotationReason::SlotsUsedUp);
                    if pool::lease_is_free(state.lease.as_ref(), now) {
                        self.rotate_or_wait(pool, reason, seen.as_deref(), deadline, &mut waits)
                            .await?;
                    } else {
                        // Someone holds the lease: no point asking for it yet.
                        self.wait_for_rotation(deadline, &mut waits).await?;
                    }
                }
            }
        }
    }

    /// Rotates if we can take the lease; otherwise waits a moment for whoever holds it,
    /// giving up with `NoActivationYet` at the deadline.
    async fn rotate_or_wait(
        &self,
        pool: &str,
        reason: RotationReason,
        seen: Option<&str>,
        deadline: Instant,
        waits: &mut u32,
    ) -> Result<(), VendError> {
        match self.rotate_under_lease(pool, reason, seen).await? {
            Rotation::Rotated => Ok(()),
            // Someone else changed the pool: reserve again at once, within the deadline.
            Rotation::NotNeeded if Instant::now() < deadline => Ok(()),
            Rotation::NotNeeded => Err(VendError::NoActivationYet),
            Rotation::Busy => self.wait_for_rotation(deadline, waits).await,
        }
    }

    /// Sleeps before looking again, backing off (with jitter) so that waiters do not
    /// hammer the pool's item while a rotation is in flight.
    async fn wait_for_rotation(&self, deadline: Instant, waits: &mut u32) -> Result<(), VendError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(VendError::NoActivationYet);
        }
        // A rotation is a few hundred milliseconds of AWS calls: look again at least that often.
        let ceiling_ms = (25u64 << (*waits).min(3)).min(200);
        *waits += 1;
        let pause = Duration::from_millis(rand::rng().random_range(ceiling_ms / 2..=ceiling_ms));
        tokio::time::sleep(pause.min(left)).await;
        Ok(())
    }

    fn may_try_rotate_ahead(&self, trigger: AheadTrigger) -> bool {
        if trigger == AheadTrigger::LowWaterSlot {
            return true;
        }
        // Near expiry, every request in the window qualifies, so each process tries at
        // most once per lease length instead of once per request.
        let mut last = self.last_time_based_attempt.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < self.config.lease) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Take the lease, re-check, create, store, commit under the lease (fencing).
    /// A crash anywhere leaves at most one orphan activation and a lease that runs out.
    async fn rotate_under_lease(
        &self,
        pool: &str,
        reason: RotationReason,
        seen: Option<&str>,
    ) -> Result<Rotation, VendError> {
        let owner = format!(
            "{}-{}",
            self.process_token,
            self.rotations.fetch_add(1, Ordering::Relaxed)
        );
        let now = epoch_now();
        let state = match self
            .store
            .take_lease(pool, &owner, now, now + secs(self.config.lease))
            .await?
        {
            LeaseAttempt::Busy(_) => return Ok(Rotation::Busy),
            LeaseAttempt::Taken(state) => state,
        };
        if !still_needs_rotation(&state, seen, reason, now, self.margin()) {
            self.store.release_lease(pool, &owner).await?;
            return Ok(Rotation::NotNeeded);
        }
        match self.install_new_activation(pool, &owner, reason).await {
            Ok(rotation) => Ok(rotation),
            Err(e) => {
                if let Err(release) = self.store.release_lease(pool, &owner).await {
                    tracing::warn!(pool, error = %release, "could not release the lease; it runs out by itself");
                }
                Err(e)
            }
        }
    }

    async fn install_new_activation(
        &self,
        pool: &str,
        owner: &str,
        reason: RotationReason,
    ) -> Result<Rotation, VendError> {
        let started = Instant::now();
        let expires_at = epoch_now() + secs(self.config.activation_ttl);
        let limit = self.config.registration_limit;
        let created = self.activations.create(pool, limit, expires_at).await?;
        let version = match self.vault.store(pool, &created.id, &created.code).await {
            Ok(version) => version,
            Err(e) => {
                self.delete_orphan(&created.id).await;
                return Err(e);
            }
        };
        let next = CurrentActivation {
            id: created.id.clone(),
            expires_at,
            limit,
            reserved: 0,
            parameter_version: version,
        };
        if !self.store.commit_rotation(pool, owner, &next, epoch_now()).await? {
            tracing::warn!(pool, activation_id = %created.id, "lost the lease before committing; deleting the new activation");
            self.delete_orphan(&created.id).await;
            return Ok(Rotation::NotNeeded);
        }
        self.codes.insert(&created.id, version, created.code);
        self.mark_verified(&created.id);
        tracing::info!(
            pool,
            activation_id = %created.id,
            %reason,
            limit,
            expires_at,
            parameter_version = version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rotated"
        );
        Ok(Rotation::Rotated)
    }

    async fn delete_orphan(&self, activation_id: &str) {
        if let Err(e) = self.activations.delete(activation_id).await {
            tracing::warn!(activation_id, error = %e, "could not delete an unused activation; the sweep will");
        }
    }

    async fn code_for(
        &self,
        pool: &str,
        activation_id: &str,
        version: i64,
    ) -> Result<Option<ActivationCode>, VendError> {
        if let Some(code) = self.codes.get(activation_id, version) {
            return Ok(Some(code));
        }
        let code = self.vault.fetch(pool, activation_id, version).await?;
        if let Some(code) = &code {
            self.codes.insert(activation_id, version, code.clone());
        }
        Ok(code)
    }

    /// Whether SSM still honours the activation, asked at most once per verify interval.
    /// An activation this process has not seen before counts as checked on first
    /// sight (it was just created), so a rotation costs no extra call per process.
    async fn still_works(&self, activation_id: &str) -> Result<bool, VendError> {
        let fresh = {
            let mut verified = self.verified();
            let first_seen = *verified.entry(activation_id.to_owned()).or_insert_with(Instant::now);
            first_seen.elapsed() < self.config.verify_interval
        };
        if fresh {
            return Ok(true);
        }
        let works = self.activations.still_works(activation_id).await?;
        if works {
            self.mark_verified(activation_id);
        } else {
            tracing::warn!(
                activation_id,
                "SSM no longer honours this activation (deleted, expired or full); rotating"
            );
        }
        Ok(works)
    }

    /// The per-process record of when each activation was last checked, kept small:
    /// only the current and a few retired activations ever matter.
    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() > 64 {
            verified.clear();
        }
        verified
    }

    fn mark_verified(&self, activation_id: &str) {
        self.verified().insert(activation_id.to_owned(), Instant::now());
    }

    fn forget_verified(&self, activation_id: &str) {
        self.verified().remove(activation_id);
    }
}

/// Codes of the last few activations, keyed by ID and parameter version.
#[derive(Default)]
struct CodeCache {
    entries: Mutex<VecDeque<(String, i64, ActivationCode)>>,
}

impl CodeCache {
    const CAPACITY: usize = 8;

    fn get(&self, activation_id: &str, version: i64) -> Option<ActivationCode> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .find(|(id, v, _)| id == activation_id && *v == version)
            .map(|(_, _, code)| code.clone())
    }

    fn insert(&self, activation_id: &str, version: i64, code: ActivationCode) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.iter().any(|(id, v, _)| id == activation_id && *v == version) {
            return;
        }
        if entries.len() == Self::CAPACITY {
            entries.pop_front();
        }
        entries.push_back((activation_id.to_owned(), version, code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_cache_pairs_ids_with_their_own_version_only() {
        let cache = CodeCache::default();
        cache.insert("a", 1, ActivationCode::new("code-a1"));
        assert_eq!(cache.get("a", 1), Some(ActivationCode::new("code-a1")));
        assert_eq!(cache.get("a", 2), None);
        assert_eq!(cache.get("b", 1), None);
    }

    #[test]
    fn the_code_cache_forgets_the_oldest_first() {
        let cache = CodeCache::default();
        for v in 0..=CodeCache::CAPACITY as i64 {
            cache.insert("a", v, ActivationCode::new(format!("c{v}")));
        }
        assert_eq!(cache.get("a", 0), None);
        assert!(cache.get("a", CodeCache::CAPACITY as i64).is_some());
    }
}
