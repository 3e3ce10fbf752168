//! The integration tests, one binary: each test starts its own emulator (forked by
//! the support kit's factory) and real `vending serve` processes. One binary links
//! the SDK once and starts one emulator factory, instead of once per file.
//! `events.rs` stays a binary of its own: it sets a process-wide variable first.

mod support;

mod blocks;
mod clock;
mod concurrency;
mod contract;
mod hardening;
mod operations;
mod pools;
mod promise_storms;
mod quotas;
mod refusals;
mod registrations;
mod rotation;
mod sealed_codes;
mod serve_limits;
mod standby;
mod sweep;
mod throttling;
mod trust;
