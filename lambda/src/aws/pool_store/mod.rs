//! DynamoDB: one item per pool (current activation, slots, lease), one per named
//! instance (the activation it was given) and one per committed activation. Every
//! write is conditional; the conditions are what make a slot impossible to hand out
//! twice, and what keep a late commit and the sweep from both winning.
//!
//! `schema` names the table's attributes and keys; `codec` turns items into the
//! domain's types and back, and `conditions` builds every conditional write as a
//! value (both pure, unit-tested without AWS); `store` holds the client; the items'
//! operations are `pool_item` (reserve, lease, commit, promote), `records` (instance
//! and commit records, tombstones) and `directory` (the shared pool configs).

mod codec;
mod conditions;
mod directory;
mod pool_item;
mod records;
mod schema;
mod store;

pub use codec::{ActivationRecord, NodeRecord};
pub use conditions::SlotCount;
#[cfg(test)]
pub(crate) use pool_item::THROTTLED_COMMIT_ATTEMPTS;
pub use pool_item::{LeaseAttempt, Reservation, Via};
pub use records::Tombstone;
pub use schema::Place;
pub use store::PoolStore;
