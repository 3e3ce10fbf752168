//! Slot blocks (`vending serve`): when several of this process's requests want a
//! slot of the same pool at once, one conditional write reserves a block of slots
//! and the process hands them to those requests in turn, instead of one write per
//! vend on one hot DynamoDB item. A block is sized by the requests waiting (at most
//! `VENDING_BLOCK_MAX`), so a quiet process reserves one slot at a time as before.
//! Under Lambda (one request per environment) the block is always 1.
//!
//! A slot is handed out once (the block is taken under a lock), never beyond the
//! limit (the write's condition says the whole block is free), and never from an
//! activation that has entered the expiry margin or was made with outdated
//! settings: such a block is dropped, and its slots are counted as wasted, as are
//! the slots a stopping process still holds. The margin is judged with the clock
//! of the moment each slot is taken, not of the moment the request started.
//! A reserve or promotion attempt that got no answer may have taken its slots all
//! the same: `PoolStore` counts those as wasted too (`lost_answer`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::aws::pool_store::{PoolStore, Reservation, SlotCount, Via};
use crate::clock::EpochSecs;
use crate::error::VendError;
use crate::metrics::{self, WasteReason};
use crate::pool::state::{promotable, why_unusable, CurrentActivation, Wanted};

/// Slots reserved in one write that this process has not handed out yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotBlock {
    /// As the reserve returned it: `reserved` is the block's last slot.
    activation: CurrentActivation,
    standby: Option<CurrentActivation>,
    next: u32,
}

impl SlotBlock {
    /// The block of `count` slots that a reserve ending at `activation.reserved` took.
    pub fn new(activation: CurrentActivation, standby: Option<CurrentActivation>, count: u32) -> Self {
        let next = activation.reserved.saturating_sub(count.max(1)) + 1;
        Self {
            activation,
            standby,
            next,
        }
    }

    /// The next slot: the activation with `reserved` set to that slot's number, as a
    /// single reserve would have answered.
    pub fn take(&mut self) -> Option<CurrentActivation> {
        (self.next <= self.activation.reserved).then(|| {
            let slot = CurrentActivation {
                reserved: self.next,
                ..self.activation.clone()
            };
            self.next += 1;
            slot
        })
    }

    pub fn left(&self) -> u32 {
        (self.activation.reserved + 1).saturating_sub(self.next)
    }

    pub fn activation_id(&self) -> &str {
        &self.activation.id
    }

    /// Why its slots may no longer be handed out, if so: the reserve's own rule,
    /// less the count of free slots (these are ours already).
    pub fn unusable(&self, now: EpochSecs, margin_secs: i64, wanted: Wanted<'_>) -> Option<WasteReason> {
        let a = &self.activation;
        if a.expires_at <= now + margin_secs {
            Some(WasteReason::Margin)
        } else if a.config_outdated(wanted) {
            Some(WasteReason::Outdated)
        } else {
            None
        }
    }
}

/// How many slots to ask for: one per request of this process that wants one now,
/// at most `block_max`, and no more than the last reserve saw free (the limit
/// and reserved count it returned), so that the write rarely fails for asking
/// too much.
pub fn block_size(block_max: u32, wanting: u32, last_seen: Option<SeenSlots>) -> u32 {
    let size = wanting.clamp(1, block_max.max(1));
    match last_seen {
        Some(SeenSlots { limit, reserved }) if reserved < limit => size.min(limit - reserved),
        _ => size,
    }
}

/// The limit and reserved count of the activation a reserve returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenSlots {
    pub limit: u32,
    pub reserved: u32,
}

impl SeenSlots {
    fn of(activation: &CurrentActivation) -> Self {
        Self {
            limit: activation.limit,
            reserved: activation.reserved,
        }
    }
}

/// At most this many writes per block: asking for fewer when the first finds fewer free.
const BLOCK_ATTEMPTS: u32 = 3;

pub struct SlotBlocks {
    store: PoolStore,
    block_max: u32,
    pools: Mutex<HashMap<String, Arc<PoolSlots>>>,
}

#[derive(Default)]
struct PoolSlots {
    /// Requests of this process that want a slot of this pool right now.
    wanting: AtomicU32,
    /// One reserve at a time per pool: the others wait for its block.
    reserving: tokio::sync::Mutex<()>,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    block: Option<SlotBlock>,
    /// The limit and reserved count the last reserve returned.
    last_seen: Option<SeenSlots>,
}

/// Counts a request as wanting a slot of a pool until dropped.
pub struct Wanting(Arc<PoolSlots>);

impl Drop for Wanting {
    fn drop(&mut self) {
        self.0.wanting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PoolSlots {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot from the block this process holds, if it has a usable one.
    fn take_held(&self, pool: &str, now: EpochSecs, margin_secs: i64, wanted: Wanted<'_>) -> Option<Reservation> {
        let mut held = self.held();
        let block = held.block.as_mut()?;
        if let Some(reason) = block.unusable(now, margin_secs, wanted) {
            if let Some(block) = held.block.take() {
                count_wasted(pool, &block, reason);
            }
            return None;
        }
        let activation = block.take()?;
        let standby = block.standby.clone();
        if block.left() == 0 {
            held.block = None;
        }
        Some(Reservation::Reserved {
            activation,
            standby,
            via: Via::Block,
            lease: None,
            checked_at: 0,
        })
    }
}

impl PoolSlots {
    /// Holds what a write of `count` slots took but its first slot, the caller's.
    fn keep_block(
        &self,
        pool: &str,
        activation: CurrentActivation,
        standby: Option<CurrentActivation>,
        count: u32,
    ) -> Result<CurrentActivation, VendError> {
        let mut held = self.held();
        held.last_seen = Some(SeenSlots::of(&activation));
        if count <= 1 {
            return Ok(activation);
        }
        let mut block = SlotBlock::new(activation, standby, count);
        let first = block
            .take()
            .ok_or_else(|| VendError::Internal("reserved an empty block of slots".into()))?;
        if let Some(old) = held.block.replace(block) {
            count_wasted(pool, &old, WasteReason::Outdated);
        }
        Ok(first)
    }
}

/// Logs and counts the slots `block` never handed out; returns how many.
fn count_wasted(pool: &str, block: &SlotBlock, reason: WasteReason) -> u32 {
    let slots = block.left();
    metrics::slots_wasted(pool, block.activation_id(), slots, reason);
    slots
}

impl SlotBlocks {
    pub fn new(store: PoolStore, block_max: u32) -> Self {
        Self {
            store,
            block_max: block_max.max(1),
            pools: Mutex::new(HashMap::new()),
        }
    }

    fn pool_slots(&self, pool: &str) -> Arc<PoolSlots> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.entry(pool.to_owned()).or_default().clone()
    }

    /// Counts the caller among the requests that want a slot of `pool` (the size of
    /// the next block) until the returned guard is dropped.
    pub fn wanting(&self, pool: &str) -> Option<Wanting> {
        (self.block_max > 1).then(|| {
            let slots = self.pool_slots(pool);
            slots.wanting.fetch_add(1, Ordering::Relaxed);
            Wanting(slots)
        })
    }

    /// A slot: from the block this process holds, or by one conditional write that
    /// reserves a block for every request here that wants one (one slot when blocks
    /// are off). When the current activation is refused and the standby may take
    /// over, the same kind of write promotes the standby with the block taken from
    /// it, while this process's other requests wait for that block instead of
    /// being refused one by one. `limit` is the registration limit the pool's
    /// settings give.
    /// `clock` gives the time each slot is judged by, read when it is taken.
    pub async fn reserve(
        &self,
        pool: &str,
        clock: impl Fn() -> EpochSecs,
        margin_secs: i64,
        wanted: Wanted<'_>,
        limit: u32,
    ) -> Result<Reservation, VendError> {
        let slots = self.pool_slots(pool);
        if self.block_max <= 1 {
            return self.write(pool, &slots, &clock, margin_secs, wanted, limit).await;
        }
        if let Some(reservation) = slots.take_held(pool, clock(), margin_secs, wanted) {
            return Ok(reservation);
        }
        let _turn = slots.reserving.lock().await;
        // The block reserved while we queued may have a slot for us.
        if let Some(reservation) = slots.take_held(pool, clock(), margin_secs, wanted) {
            return Ok(reservation);
        }
        self.write(pool, &slots, &clock, margin_secs, wanted, limit).await
    }

    async fn write(
        &self,
        pool: &str,
        slots: &PoolSlots,
        clock: &impl Fn() -> EpochSecs,
        margin_secs: i64,
        wanted: Wanted<'_>,
        limit: u32,
    ) -> Result<Reservation, VendError> {
        let mut limit = limit;
        for _ in 0..BLOCK_ATTEMPTS {
            let wanting = slots.wanting.load(Ordering::Relaxed);
            let count = block_size(self.block_max, wanting, slots.held().last_seen);
            let ask = if count > 1 {
                SlotCount::Block { count, limit }
            } else {
                SlotCount::One
            };
            let now = clock();
            let state = match self.store.reserve_slots(pool, now, margin_secs, wanted, ask).await? {
                Reservation::Reserved {
                    activation,
                    standby,
                    via,
                    lease,
                    checked_at,
                } => {
                    let first = slots.keep_block(pool, activation, standby.clone(), count)?;
                    return Ok(Reservation::Reserved {
                        activation: first,
                        standby,
                        via,
                        lease,
                        checked_at,
                    });
                }
                Reservation::Refused(state) => state,
            };
            let current = state.activation.as_ref();
            if why_unusable(current, now, margin_secs, wanted).is_none() {
                match current {
                    // Fewer free than asked, or another limit: ask again for what is there.
                    Some(a) if count > 1 => {
                        slots.held().last_seen = Some(SeenSlots::of(a));
                        limit = a.limit;
                        continue;
                    }
                    _ => return Ok(Reservation::Refused(state)),
                }
            }
            let Some(standby) = state
                .standby
                .as_ref()
                .filter(|s| promotable(s, now, margin_secs, wanted))
            else {
                return Ok(Reservation::Refused(state));
            };
            // No lease, no SSM: one conditional write swaps the standby in with a block
            // of its slots. If someone else changed the pool first, reserve again.
            let count = block_size(self.block_max, wanting, None);
            if let Some(activation) = self
                .store
                .promote_standby(pool, standby, clock(), margin_secs, wanted, count)
                .await?
            {
                tracing::info!(pool, activation_id = %activation.id, "promoted the standby");
                let count = count.min(activation.reserved);
                let first = slots.keep_block(pool, activation, None, count)?;
                return Ok(Reservation::Reserved {
                    activation: first,
                    standby: None,
                    via: Via::Promotion,
                    lease: None,
                    checked_at: 0,
                });
            }
        }
        // Still racing other processes for the last few slots: one slot, as ever.
        self.store.reserve_slot(pool, clock(), margin_secs, wanted).await
    }

    /// Drops the block of an activation that turned out unusable (deleted out of
    /// band, its code gone), counting its slots as wasted; returns how many.
    pub fn discard(&self, pool: &str, activation_id: &str, reason: WasteReason) -> u32 {
        let slots = self.pool_slots(pool);
        let mut held = slots.held();
        match held.block.take_if(|b| b.activation_id() == activation_id) {
            Some(block) => count_wasted(pool, &block, reason),
            None => 0,
        }
    }

    /// Counts every slot still held as wasted (the process is stopping); returns
    /// how many.
    pub fn release_all(&self) -> u32 {
        let pools: Vec<(String, Arc<PoolSlots>)> = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, slots)| (name.clone(), slots.clone()))
            .collect();
        let mut wasted = 0;
        for (pool, slots) in pools {
            if let Some(block) = slots.held().block.take() {
                wasted += count_wasted(&pool, &block, WasteReason::Stopping);
            }
        }
        wasted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(limit: u32, reserved: u32) -> SeenSlots {
        SeenSlots { limit, reserved }
    }

    fn activation(reserved: u32, limit: u32) -> CurrentActivation {
        CurrentActivation {
            id: "act-1".into(),
            expires_at: 10_000,
            limit,
            reserved,
            parameter_version: 1,
            committed_at: 0,
            fingerprint: "fp".into(),
            config_at: 100,
            sealed_code: None,
        }
    }

    const WANTED: Wanted<'static> = Wanted {
        fingerprint: "fp",
        config_at: 100,
    };

    #[test]
    fn a_block_hands_out_each_of_its_slots_once_in_order() {
        // A reserve of 4 that ended at slot 7 took slots 4, 5, 6 and 7.
        let mut block = SlotBlock::new(activation(7, 10), None, 4);
        assert_eq!(block.left(), 4);
        let slots: Vec<u32> = std::iter::from_fn(|| block.take()).map(|a| a.reserved).collect();
        assert_eq!(slots, vec![4, 5, 6, 7]);
        assert_eq!(block.left(), 0);
        assert_eq!(block.take(), None);
    }

    #[test]
    fn a_block_of_an_activation_inside_the_margin_or_outdated_is_unusable() {
        let block = SlotBlock::new(activation(7, 10), None, 4);
        assert_eq!(block.unusable(1_000, 600, WANTED), None);
        assert_eq!(block.unusable(9_500, 600, WANTED), Some(WasteReason::Margin));
        let newer = Wanted {
            fingerprint: "other",
            config_at: 200,
        };
        assert_eq!(block.unusable(1_000, 600, newer), Some(WasteReason::Outdated));
        // Made from a newer read than the caller's: the caller's config is the stale one.
        let older = Wanted {
            fingerprint: "other",
            config_at: 50,
        };
        assert_eq!(block.unusable(1_000, 600, older), None);
    }

    #[test]
    fn the_block_follows_the_queue_up_to_the_maximum() {
        assert_eq!(block_size(8, 0, None), 1);
        assert_eq!(block_size(8, 1, None), 1);
        assert_eq!(block_size(8, 5, None), 5);
        assert_eq!(block_size(8, 50, None), 8);
        assert_eq!(block_size(1, 50, None), 1);
    }

    #[test]
    fn the_block_asks_no_more_than_the_last_reserve_saw_free() {
        assert_eq!(block_size(8, 50, Some(seen(10, 7))), 3);
        assert_eq!(block_size(8, 2, Some(seen(10, 7))), 2);
        // Seen full: another process may have put a new activation in; ask as usual.
        assert_eq!(block_size(8, 50, Some(seen(10, 10))), 8);
    }
}
