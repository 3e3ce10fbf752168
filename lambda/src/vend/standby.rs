//! Keeping each pool's standby ready: which request prepares it, and where the work
//! runs. Under `vending serve` it runs beside the request, which answers at once;
//! under Lambda an environment is frozen once it has answered, so the request
//! that starts a standby waits for it (its slot stays good either way).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::aws::pool_store::{Place, Via};
use crate::config::Runtime;
use crate::pool::directory::Pool;
use crate::pool::state::{AheadTrigger, RotationReason};
use crate::vend::rotation::{Rotation, Rotator};

/// Whether a request that got its slot `via` this way, with `trigger` due, starts
/// the pool's next standby (when the pool needs one). A slot from a block reserved
/// earlier knows the standby only as it was then, so only the low-water slot's
/// holder acts on it. The promoter knows the pool has none: under `vending serve`
/// it starts the next at once, beside its answer; under Lambda it leaves it to the
/// next request, so that its own answer waits on nothing.
pub fn prepares_standby(via: Via, trigger: Option<AheadTrigger>, runtime: Runtime) -> bool {
    trigger == Some(AheadTrigger::LowWaterSlot)
        || match via {
            Via::Reserve => true,
            Via::Block => false,
            Via::Promotion => runtime == Runtime::Server,
        }
}

pub struct StandbyKeeper {
    rotator: Arc<Rotator>,
    attempts: Arc<Attempts>,
    runtime: Runtime,
    /// Standby preparations running beside requests (`vending serve`).
    running: Mutex<tokio::task::JoinSet<()>>,
}

/// When this process began its last unfinished or unsuccessful try at each pool's
/// standby.
struct Attempts {
    lease: Duration,
    began: Mutex<HashMap<String, Instant>>,
}

impl Attempts {
    /// Every request that sees no usable standby qualifies, so a process tries once
    /// at a time per pool, and after a try that failed or found the lease taken, not
    /// again for a lease length (the holder of the low-water slot always tries).
    fn may_begin(&self, pool: &str, trigger: Option<AheadTrigger>) -> bool {
        let mut began = self.began.lock().unwrap_or_else(|p| p.into_inner());
        let blocked = began.get(pool).is_some_and(|t| t.elapsed() < self.lease);
        if blocked && trigger != Some(AheadTrigger::LowWaterSlot) {
            return false;
        }
        if began.len() > 256 {
            began.clear();
        }
        began.insert(pool.to_owned(), Instant::now());
        true
    }

    fn ended(&self, pool: &str, done: bool) {
        if done {
            self.began.lock().unwrap_or_else(|p| p.into_inner()).remove(pool);
        }
    }
}

impl StandbyKeeper {
    pub fn new(rotator: Arc<Rotator>, lease: Duration, runtime: Runtime) -> Self {
        Self {
            rotator,
            attempts: Arc::new(Attempts {
                lease,
                began: Mutex::new(HashMap::new()),
            }),
            runtime,
            running: Mutex::new(tokio::task::JoinSet::new()),
        }
    }

    /// Prepares `pool`'s standby if no other try of this process is under way (or
    /// failed within a lease), for `trigger`'s reason or because it is missing.
    pub async fn prepare(&self, pool: &Pool, trigger: Option<AheadTrigger>) {
        if !self.attempts.may_begin(&pool.name, trigger) {
            return;
        }
        let reason = trigger.map_or(RotationReason::StandbyMissing, AheadTrigger::reason);
        let (rotator, attempts, pool) = (self.rotator.clone(), self.attempts.clone(), pool.clone());
        let work = async move {
            let outcome = rotator.install_under_lease(&pool, reason, Place::Standby, None).await;
            if let Err(e) = &outcome {
                tracing::warn!(pool = %pool.name, error = %e, "preparing a standby failed");
            }
            attempts.ended(
                &pool.name,
                matches!(outcome, Ok(Rotation::Rotated | Rotation::NotNeeded)),
            );
        };
        match self.runtime {
            Runtime::Server => {
                let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                // Reap the finished ones so the set stays small.
                while running.try_join_next().is_some() {}
                running.spawn(work);
            }
            // A task of its own all the same: a request cut off by its deadline must
            // not drop a rotation halfway with the lease held.
            Runtime::Lambda => {
                let _ = tokio::spawn(work).await;
            }
        }
    }

    /// Waits (at most `patience`) for the preparations still running, so that a
    /// stopping server leaves no lease held; returns how many it gave up on.
    pub async fn finish(&self, patience: Duration) -> usize {
        let mut running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::time::timeout(patience, async { while running.join_next().await.is_some() {} }).await;
        running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_s_own_reserve_sees_the_standby_and_may_start_the_next() {
        for runtime in [Runtime::Server, Runtime::Lambda] {
            assert!(prepares_standby(Via::Reserve, None, runtime));
            assert!(prepares_standby(Via::Reserve, Some(AheadTrigger::NearExpiry), runtime));
        }
    }

    #[test]
    fn a_slot_from_an_earlier_block_starts_one_only_at_the_low_water_slot() {
        assert!(!prepares_standby(Via::Block, None, Runtime::Server));
        assert!(!prepares_standby(
            Via::Block,
            Some(AheadTrigger::NearExpiry),
            Runtime::Server
        ));
        assert!(prepares_standby(
            Via::Block,
            Some(AheadTrigger::LowWaterSlot),
            Runtime::Server
        ));
    }

    #[test]
    fn the_promoter_starts_the_next_standby_beside_its_answer_but_never_waits_for_it_under_lambda() {
        assert!(prepares_standby(Via::Promotion, None, Runtime::Server));
        assert!(!prepares_standby(Via::Promotion, None, Runtime::Lambda));
    }
}
