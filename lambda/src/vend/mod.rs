//! The vend: reserve a slot on the hot path, have the pool rotated when it needs it,
//! pair every ID with exactly the code stored beside it, and remember what a named
//! machine was given. All of it within one deadline.

pub mod blocks;
pub mod codes;
pub mod refusal;
pub mod rotation;
mod slot;
pub mod standby;
pub mod verify;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::aws::activations::ActivationService;
use crate::aws::parameters::CodeVault;
use crate::aws::parameters::PoolConfigSource;
use crate::aws::pool_store::{Place, PoolStore, Reservation};
use crate::clock::{epoch_now, secs, EpochSecs};
use crate::config::Config;
use crate::error::VendError;
use crate::metrics::{self, Metric, WasteReason};
use crate::pool::directory::{Pool, PoolDirectory};
use crate::pool::state::{
    clears_margin, lease_is_free, promotable, rotate_ahead_due, standby_needed, why_unusable, Caller,
    CurrentActivation, InstanceRecord, RotationReason,
};
use crate::secret::ActivationCode;
use crate::vend::blocks::SlotBlocks;
use crate::vend::codes::Codes;
use crate::vend::rotation::{Rotation, Rotator};
use crate::vend::slot::SlotInHand;
use crate::vend::standby::{prepares_standby, StandbyKeeper};
use crate::vend::verify::{trust_anchor, ActivationChecks, Checked, Retirements};

/// What a caller leaves with.
#[derive(Debug)]
pub struct Vended {
    pub activation_id: String,
    pub code: ActivationCode,
    pub expires_at: EpochSecs,
    pub pool: String,
    /// The request waited for a rotation on its way (the storm's costly path).
    pub waited_for_rotation: bool,
}

/// What a named machine's earlier record gives.
enum Again {
    /// Its activation, still good, handed out again.
    Reused(Vended),
    /// A fresh vend; `replacing` is the record's activation, which may be replaced.
    Fresh { replacing: Option<String> },
}

/// A slot and the code that goes with it.
struct Paired {
    activation: CurrentActivation,
    code: ActivationCode,
    /// The request waited for a rotation on its way (its own or another request's).
    waited_for_rotation: bool,
}

pub struct Vendor {
    store: PoolStore,
    blocks: SlotBlocks,
    directory: PoolDirectory,
    codes: Arc<Codes>,
    checks: ActivationChecks,
    rotator: Arc<Rotator>,
    config: Config,
    standby: StandbyKeeper,
    /// Refused activations this process has retired (`refusal.rs`).
    retired: Retirements,
    /// One request per process deals with an unusable pool at a time.
    pool_gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn margin(pool: &Pool) -> i64 {
    secs(pool.settings.expiry_margin)
}

impl Vendor {
    pub fn new(
        store: PoolStore,
        vault: CodeVault,
        key: crate::aws::keys::CodeKey,
        pool_configs: PoolConfigSource,
        activations: ActivationService,
        config: Config,
    ) -> Self {
        crate::clock::margin_in_use(secs(config.expiry_margin));
        let directory = PoolDirectory::new(store.clone(), pool_configs, &config);
        let codes = Arc::new(Codes::new(vault, key));
        let checks = ActivationChecks::new(activations.clone(), config.verify_interval);
        let rotator = Arc::new(Rotator::new(store.clone(), codes.clone(), activations, config.clone()));
        let standby = StandbyKeeper::new(rotator.clone(), config.lease, config.runtime);
        Self {
            blocks: SlotBlocks::new(store.clone(), config.block_max),
            store,
            directory,
            codes,
            checks,
            rotator,
            standby,
            config,
            retired: Retirements::default(),
            pool_gates: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Before `vending serve` answers: every enabled, valid pool gets a usable current
    /// activation (unless a standby can take over) and a standby, so the first boot
    /// storm after a deploy waits for no rotation. Best effort, within the deadline:
    /// a pool that cannot be readied now is rotated by its first request as ever.
    pub async fn ready_pools(&self) {
        let work = async {
            let snapshot = match self.directory.snapshot().await {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the pools to ready them");
                    return;
                }
            };
            for (name, pool) in snapshot.all() {
                let Ok(pool) = pool.as_ref() else { continue };
                let misconfigured =
                    crate::config::margin_outlasts_deadline(pool.settings.expiry_margin, self.config.deadline).is_err();
                if !pool.settings.enabled || misconfigured {
                    continue;
                }
                if let Err(e) = self.ready_pool(pool).await {
                    tracing::warn!(pool = name, error = %e, "could not ready the pool");
                }
            }
            self.standby.finish(self.config.deadline).await;
        };
        if tokio::time::timeout(self.config.deadline, work).await.is_err() {
            tracing::warn!("readying the pools ran out of time; their first requests rotate them");
        }
    }

    async fn ready_pool(&self, pool: &Pool) -> Result<(), VendError> {
        let (now, margin) = (epoch_now(), margin(pool));
        let state = self.store.pool(&pool.name).await?;
        let takes_over = state
            .standby
            .as_ref()
            .is_some_and(|s| promotable(s, now, margin, pool.wanted()));
        if let Some(reason) = why_unusable(state.activation.as_ref(), now, margin, pool.wanted()) {
            if !takes_over {
                let seen = state.activation.as_ref().map(|a| a.id.as_str());
                self.run_rotation(pool, reason, seen).await?;
            }
        }
        if self.config.low_water_percent > 0 && standby_needed(state.standby.as_ref(), now, margin, pool.wanted()) {
            self.standby.prepare(pool, None).await;
        }
        Ok(())
    }

    /// The process is stopping: standby preparations get a lease length to finish,
    /// and the slots it reserved and never handed out are counted as wasted.
    /// The clean stop, within `within` (what `VENDING_SHUTDOWN_GRACE` left).
    pub async fn stop(&self, within: Duration) {
        let abandoned = self.standby.finish(self.config.lease.min(within)).await;
        let wasted = self.blocks.release_all();
        tracing::info!(
            slots_wasted = wasted,
            standby_preparations_abandoned = abandoned,
            "stopped vending"
        );
    }

    /// Vends within `VENDING_DEADLINE`, so the caller gets a JSON 503 rather than the
    /// platform's timeout. A rotation the deadline cuts off goes on in the background
    /// and commits or is fenced out by its lease, like any other. A caller outside
    /// the pool's `allowed_cidrs` is refused before anything is taken.
    pub async fn vend(
        &self,
        pool: &str,
        instance: Option<&str>,
        machine_id: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<Vended, VendError> {
        let vend = async {
            let pool = self.admitted(pool, source).await?;
            self.clock_agrees(&pool).await?;
            self.vend_unbounded(&pool, instance, machine_id).await
        };
        let result = match tokio::time::timeout(self.config.deadline, vend).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    pool,
                    deadline_ms = self.config.deadline.as_millis() as u64,
                    "the vend ran out of time"
                );
                Err(VendError::NoActivationYet)
            }
        };
        if let Err(VendError::NoActivationYet) = &result {
            metrics::count(pool, Metric::NoActivationYet);
        }
        result
    }

    /// The pool named `pool`, if it exists, is enabled and valid, and its
    /// `allowed_cidrs` admit `source` (`Forbidden`, counted and logged, if not).
    pub async fn admitted(&self, pool: &str, source: Option<IpAddr>) -> Result<Pool, VendError> {
        let pool = self.directory.lookup(pool).await?;
        if !pool.settings.admits(source) {
            let source_address = source.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
            tracing::warn!(
                pool = %pool.name,
                source = %source_address,
                reason = "the source address is not in the pool's allowed_cidrs",
                "refused"
            );
            metrics::count(&pool.name, Metric::Forbidden);
            return Err(VendError::Forbidden {
                pool: pool.name.clone(),
                source_address,
            });
        }
        Ok(pool)
    }

    /// Refuses to vend (`ClockSkew`) while the local clock is too far from AWS's.
    /// Stopped, a process still asks AWS once a second (one read of the pool's item)
    /// so that it sees when the clock agrees again.
    async fn clock_agrees(&self, pool: &Pool) -> Result<(), VendError> {
        crate::clock::margin_in_use(margin(pool));
        if crate::clock::check().is_err() && crate::clock::measured_ago().is_none_or(|ago| ago > Duration::from_secs(1))
        {
            let _ = self.store.pool(&pool.name).await;
        }
        crate::clock::check()
    }

    async fn vend_unbounded(
        &self,
        pool: &Pool,
        instance: Option<&str>,
        machine_id: Option<&str>,
    ) -> Result<Vended, VendError> {
        let margin = margin(pool);
        let caller = Caller::keyed(instance, machine_id);
        let mut replacing = None;
        if let Some(caller) = &caller {
            match self.vend_again(pool, caller).await? {
                Again::Reused(vended) => {
                    metrics::count(&pool.name, Metric::Vends);
                    return Ok(vended);
                }
                Again::Fresh { replacing: stale } => replacing = stale,
            }
        }
        loop {
            let Paired {
                activation,
                code,
                waited_for_rotation: waited,
            } = self.reserve_and_pair(pool).await?;
            let slots_left = f64::from(activation.limit.saturating_sub(activation.reserved));
            let vended = Vended {
                activation_id: activation.id.clone(),
                code,
                expires_at: activation.expires_at,
                pool: pool.name.clone(),
                waited_for_rotation: waited,
            };
            let Some(caller) = &caller else {
                metrics::emit(
                    Some(&pool.name),
                    &[(Metric::Vends, 1.0), (Metric::SlotsRemaining, slots_left)],
                );
                return Ok(vended);
            };
            let record = InstanceRecord {
                activation_id: activation.id,
                parameter_version: activation.parameter_version,
                expires_at: activation.expires_at,
                machine_id: Some(caller.machine_id.to_owned()),
                vended_at: Some(epoch_now()),
            };
            let now = epoch_now();
            let winner = self
                .store
                .remember_instance(&pool.name, caller.name, &record, replacing.as_deref(), now + margin)
                .await?;
            let vended = match winner {
                // A concurrent request from the same machine won; hand out its activation so
                // both callers agree. Our slot goes unused, which is safe.
                Some(winner) if winner.reusable_by(caller, now, margin) => {
                    match self
                        .codes
                        .code_for(&pool.name, &winner.activation_id, winner.parameter_version, None)
                        .await?
                    {
                        Some(code) => Vended {
                            activation_id: winner.activation_id,
                            code,
                            expires_at: winner.expires_at,
                            pool: pool.name.clone(),
                            waited_for_rotation: waited,
                        },
                        None => vended,
                    }
                }
                _ => vended,
            };
            // Remembering took a write: judged once more as it is handed out.
            if clears_margin(vended.expires_at, epoch_now(), margin) {
                metrics::emit(
                    Some(&pool.name),
                    &[(Metric::Vends, 1.0), (Metric::SlotsRemaining, slots_left)],
                );
                return Ok(vended);
            }
            metrics::slots_wasted(&pool.name, &vended.activation_id, 1, WasteReason::Margin);
            replacing = Some(vended.activation_id);
        }
    }

    /// A named machine's earlier activation, if it is still good; otherwise a fresh
    /// vend, replacing the record if there is one.
    async fn vend_again(&self, pool: &Pool, caller: &Caller<'_>) -> Result<Again, VendError> {
        let Some(record) = self.store.instance(&pool.name, caller.name).await? else {
            return Ok(Again::Fresh { replacing: None });
        };
        let stale = Again::Fresh {
            replacing: Some(record.activation_id.clone()),
        };
        let now = epoch_now();
        if !record.reusable_by(caller, now, margin(pool))
            || self.checks.usable(&record.activation_id, 0, now).await.is_err()
        {
            return Ok(stale);
        }
        match self
            .codes
            .code_for(&pool.name, &record.activation_id, record.parameter_version, None)
            .await?
        {
            Some(code) => Ok(Again::Reused(Vended {
                activation_id: record.activation_id,
                code,
                expires_at: record.expires_at,
                pool: pool.name.clone(),
                waited_for_rotation: false,
            })),
            None => Ok(stale),
        }
    }

    /// Takes a slot and the code that goes with it, rotating or waiting as needed.
    /// Also says whether the request waited for a rotation on its way (its own or
    /// another request's), which a storm should make rare.
    async fn reserve_and_pair(&self, pool: &Pool) -> Result<Paired, VendError> {
        let deadline = Instant::now() + self.config.wait;
        let (name, margin) = (pool.name.as_str(), margin(pool));
        // Held from the moment this request takes charge of an unusable pool until it
        // gets a slot: the process's other requests wait on it instead of polling AWS.
        let mut in_charge = None;
        let mut waits = 0;
        let mut waited = false;
        let mut last_seen = None;
        // Counts this request into the size of the process's next block of slots.
        let mut wanting = None;
        let gate = self.pool_gate(name);
        loop {
            if wanting.is_none() {
                wanting = self.blocks.wanting(name);
            }
            if in_charge.is_none() && gate.try_lock().is_err() {
                // Another request here is dealing with this pool being unusable: queue
                // behind it rather than be refused by DynamoDB as well.
                in_charge = Some(self.queue_at(&gate, deadline).await?);
                waited = true;
            }
            let now = epoch_now();
            let limit = pool.settings.registration_limit;
            // Promotes the standby when the current activation is refused.
            // The margin is judged with the clock of the moment the slot is taken.
            let reservation = self
                .blocks
                .reserve(name, epoch_now, margin, pool.wanted(), limit)
                .await?;
            match reservation {
                Reservation::Reserved {
                    activation,
                    standby,
                    via,
                    lease,
                    checked_at,
                } => {
                    wanting = None;
                    let now = epoch_now();
                    // Counted as wasted (`deadline`) if the request is cut off holding it.
                    let slot = SlotInHand::new(name, &activation.id);
                    if activation.fingerprint != pool.fingerprint {
                        // Made from a newer read of the pool's config than ours.
                        self.directory.outdated_by(activation.config_at).await;
                    }
                    let trusted_since = trust_anchor(activation.committed_at, checked_at);
                    match self.checks.usable(&activation.id, trusted_since, now).await {
                        Err(reason) => {
                            slot.wasted(WasteReason::Deleted);
                            self.blocks.discard(name, &activation.id, WasteReason::Deleted);
                            waited = true;
                            self.rotate_or_wait(pool, reason, Some(&activation.id), deadline, &mut waits)
                                .await?;
                            continue;
                        }
                        // Other processes (cold Lambda environments) then trust it for
                        // an interval instead of each asking SSM.
                        Ok(Checked::Asked) => self.store.record_check(name, &activation.id, now).await,
                        Ok(Checked::Trusted) => {}
                    }
                    // Keep a standby ready, so that no request waits on SSM when this
                    // activation is used up or nears its expiry.
                    if self.config.low_water_percent > 0 && standby_needed(standby.as_ref(), now, margin, pool.wanted())
                    {
                        let trigger = rotate_ahead_due(
                            activation.reserved,
                            &activation,
                            now,
                            margin,
                            self.config.low_water_percent,
                        );
                        if prepares_standby(via, trigger, self.config.runtime) && lease_is_free(lease.as_ref(), now) {
                            // Our slot stays good; a failure only means a later request
                            // tries again.
                            self.standby.prepare(pool, trigger).await;
                        }
                    }
                    let code = self
                        .codes
                        .code_of(name, &activation)
                        .await
                        .inspect_err(|_| slot.failed())?;
                    match code {
                        // Judged again as it is handed out: a slot that no longer
                        // clears the margin is wasted, and the request goes on to the
                        // next activation.
                        Some(code) if !clears_margin(activation.expires_at, epoch_now(), margin) => {
                            drop(code);
                            slot.wasted(WasteReason::Margin);
                            waited = true;
                        }
                        Some(code) => {
                            slot.handed_out();
                            return Ok(Paired {
                                activation,
                                code,
                                waited_for_rotation: waited,
                            });
                        }
                        None => {
                            slot.wasted(WasteReason::Deleted);
                            tracing::warn!(
                                pool = name,
                                activation_id = %activation.id,
                                parameter_version = activation.parameter_version,
                                "Parameter Store no longer holds this activation's code; rotating"
                            );
                            self.checks.condemn(&activation.id, RotationReason::CodeMissing).await;
                            self.blocks.discard(name, &activation.id, WasteReason::Deleted);
                            let seen = Some(activation.id.as_str());
                            waited = true;
                            self.rotate_or_wait(pool, RotationReason::CodeMissing, seen, deadline, &mut waits)
                                .await?;
                        }
                    }
                }
                Reservation::Refused(state) => {
                    let promotable_standby = state
                        .standby
                        .as_ref()
                        .is_some_and(|s| promotable(s, now, margin, pool.wanted()));
                    if promotable_standby {
                        // Others kept changing the pool as we tried to promote it: a
                        // moment, then reserve (and promote) again.
                        self.wait_for_rotation(deadline, &mut waits).await?;
                        continue;
                    }
                    if in_charge.is_none() {
                        match gate.clone().try_lock_owned() {
                            Ok(guard) => in_charge = Some(guard),
                            Err(_) => {
                                in_charge = Some(self.queue_at(&gate, deadline).await?);
                                waited = true;
                                continue;
                            }
                        }
                    }
                    let seen = state.activation.as_ref().map(|a| a.id.clone());
                    if seen != last_seen {
                        waits = 0;
                        last_seen.clone_from(&seen);
                    }
                    let reason = why_unusable(state.activation.as_ref(), now, margin, pool.wanted())
                        .unwrap_or(RotationReason::SlotsUsedUp);
                    if lease_is_free(state.lease.as_ref(), now) {
                        waited = true;
                        self.rotate_or_wait(pool, reason, seen.as_deref(), deadline, &mut waits)
                            .await?;
                    } else {
                        // Someone holds the lease: no point asking for it yet.
                        waited = true;
                        self.wait_for_rotation(deadline, &mut waits).await?;
                    }
                }
            }
        }
    }

    /// The gate of a pool's unusable spells: one request per process deals with
    /// them, the others queue behind it and reserve again in turn, still holding the
    /// gate, so that after a rotation the queue drains in order instead of as a herd,
    /// and the first to be refused takes charge of the next rotation.
    fn pool_gate(&self, pool: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.pool_gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(pool.to_owned()).or_default().clone()
    }

    async fn queue_at(
        &self,
        gate: &Arc<tokio::sync::Mutex<()>>,
        deadline: Instant,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, VendError> {
        tokio::time::timeout_at(deadline.into(), gate.clone().lock_owned())
            .await
            .map_err(|_| VendError::NoActivationYet)
    }

    /// Rotates if we can take the lease; otherwise waits a moment for whoever holds it,
    /// giving up with `NoActivationYet` at the deadline.
    async fn rotate_or_wait(
        &self,
        pool: &Pool,
        reason: RotationReason,
        seen: Option<&str>,
        deadline: Instant,
        waits: &mut u32,
    ) -> Result<(), VendError> {
        match self.run_rotation(pool, reason, seen).await? {
            Rotation::Rotated => Ok(()),
            // Someone else changed the pool: reserve again at once, within the deadline.
            Rotation::NotNeeded if Instant::now() < deadline => Ok(()),
            Rotation::NotNeeded => Err(VendError::NoActivationYet),
            Rotation::Busy => self.wait_for_rotation(deadline, waits).await,
        }
    }

    /// Runs a rotation of the current activation as a task of its own: when the request's deadline cuts the request off, the rotation is not
    /// dropped halfway with its lease held.
    async fn run_rotation(
        &self,
        pool: &Pool,
        reason: RotationReason,
        seen: Option<&str>,
    ) -> Result<Rotation, VendError> {
        let rotator = self.rotator.clone();
        let (pool, seen) = (pool.clone(), seen.map(str::to_owned));
        tokio::spawn(async move {
            rotator
                .install_under_lease(&pool, reason, Place::Current, seen.as_deref())
                .await
        })
        .await
        .map_err(|e| VendError::Internal(format!("the rotation task failed: {e}")))?
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
}
