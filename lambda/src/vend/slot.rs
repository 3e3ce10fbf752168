//! `SlotInHand`: a slot a request took and has not handed out yet, counted as wasted
//! (`SlotsWasted`, `Reason` `deadline`) when the request is dropped holding it.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::{self, WasteReason};

/// A slot this request took and has not handed out yet. Dropped while still held
/// (the request was cut off by its deadline), it is counted as wasted.
pub(super) struct SlotInHand {
    pool: String,
    activation_id: String,
    held: AtomicBool,
}

impl SlotInHand {
    pub(super) fn new(pool: &str, activation_id: &str) -> Self {
        Self {
            pool: pool.to_owned(),
            activation_id: activation_id.to_owned(),
            held: AtomicBool::new(true),
        }
    }

    pub(super) fn handed_out(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    /// Never handed out, for `reason`.
    pub(super) fn wasted(&self, reason: WasteReason) {
        if self.held.swap(false, Ordering::Relaxed) {
            metrics::slots_wasted(&self.pool, &self.activation_id, 1, reason);
        }
    }

    /// The request failed with an error holding it: logged with the error, and
    /// counted by the sweep (`unused_registrations`) rather than here.
    pub(super) fn failed(&self) {
        self.held.store(false, Ordering::Relaxed);
    }
}

impl Drop for SlotInHand {
    fn drop(&mut self) {
        self.wasted(WasteReason::Deadline);
    }
}
