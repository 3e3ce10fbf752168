//! Activation vending: hands on-prem servers a working SSM hybrid activation at boot.
//!
//! # Layout
//!
//! The one module map of the service (README.md and docs/DESIGN.md link here); one
//! line per module, its one job. `tests/docs/check.py` (in `make lint`) fails when a
//! file under `lambda/src` is missing from this list.
//!
//! Entry points:
//! - `main.rs`: the binary `vending`: command line (`clap`), exit codes, the runtime;
//!   Lambda, `serve`, `sweep`, `status`, `pools`; metrics off for the operator's commands.
//! - `lambda_entry.rs`: what Lambda invokes: API Gateway and ALB events to the router,
//!   `{"sweep": true}` to the sweep.
//! - `app.rs`: the SDK configuration and AWS clients, built once for the router, the
//!   sweeper, `vending status` and `vending pools`.
//! - `serve.rs`: `vending serve`'s connections: the cap, the header and idle timeouts,
//!   the drain bounded by `VENDING_SHUTDOWN_GRACE`.
//! - `http.rs`: the one axum router, strict request parsing (`pool`, `instance`,
//!   `machine` and their headers), the caller's source address, the `vended` log line.
//!
//! The vend:
//! - `vend.rs`: `Vendor`, the vend as a whole: the pool and who asks, named reuse,
//!   reserve, check, rotate or wait behind the pool's gate, ask for the next standby,
//!   pair ID with code, remember the caller; the deadline; the vend metrics; readying
//!   the pools at start.
//! - `blocks.rs`: `SlotBlocks`, the reserve as a process sends it: one write per pool in
//!   flight, a block of slots for the requests waiting, the standby's promotion with
//!   its block, the slots held and the wasted ones counted.
//! - `standby.rs`: `StandbyKeeper`, who prepares the next standby (`prepares_standby`),
//!   one try at a time per process and pool (the low-water slot's holder always
//!   tries), beside the request (`vending serve`) or awaited (Lambda).
//! - `rotation.rs`: `Rotator`, a new activation under the lease: take it, re-check,
//!   create, store, commit as current or standby (`install_under_lease`, fencing),
//!   `settle_commit`; the rotation metrics and the failure record.
//! - `verify.rs`: `ActivationChecks`, whether SSM still honours an activation, with
//!   remembered verdicts and concurrent checks collapsed into one call.
//! - `codes.rs`: `Codes`, the code cache (8 entries, keyed by activation ID and
//!   parameter version) in front of Parameter Store; concurrent reads of one code are
//!   one `GetParameter`.
//! - `pool.rs`: pure decisions over plain data: why a pool is unusable (a changed
//!   config included), the low-water slot, the standby's triggers, `promotable`,
//!   `standby_needed`, lease freedom, name rules, machine ids, who may reuse a
//!   record, the sweep's verdict.
//!
//! Pools:
//! - `pools.rs`: `PoolSettings`, a pool's config parsed and validated, the
//!   environment's `default`, the settings fingerprint, who may ask (`admits`,
//!   `client_address`).
//! - `directory.rs`: `PoolDirectory`, the pool configs a process vends with, read from
//!   Parameter Store and shared through the DynamoDB item `directory#pools`;
//!   `Snapshot::lookup`.
//! - `pools_report.rs`: `vending pools`, every pool's effective settings or problem,
//!   as a table or JSON.
//!
//! Operations:
//! - `sweep.rs`: `Sweeper`, the scheduled clean-up of orphan and spent activations and
//!   stale nodes; the sweep metrics.
//! - `stale.rs`: `stale_duplicates`, which of a pool's nodes the clean-up deregisters,
//!   and why.
//! - `status.rs`: `vending status`: `StatusReader`, the table and the JSON.
//! - `metrics.rs`: CloudWatch embedded-metric-format lines on standard output
//!   (dimensions `Pool`, and `Reason` for `SlotsWasted`), and `check_emf`.
//! - `clock.rs`: the local clock against the `Date` of AWS's answers
//!   (`DateHeaderInterceptor` on every SDK client); `503 ClockSkew` when they disagree.
//!
//! AWS adapters (`aws/`, one per service, SDK errors mapped through `aws::classify`):
//! - `aws/mod.rs`: `classify`, the one mapping of SDK errors into `VendError`;
//!   `retrying_conflicts`; `UnansweredAttempts`, which counts a request's attempts
//!   that got no answer.
//! - `aws/pool_store.rs`: `PoolStore`, DynamoDB: pool items, instance and commit
//!   records, tombstones, the directory item; every write conditional.
//! - `aws/parameters.rs`: `CodeVault` and `PoolConfigSource`, Parameter Store: the
//!   codes (SecureString under the customer KMS key, pinned by version) and the pool
//!   configs.
//! - `aws/activations.rs`: `ActivationService`, SSM activations: create, describe,
//!   delete.
//! - `aws/keys.rs`: `CodeKey`, KMS: the codes' key described at start, and
//!   `KeyFacts::refusal` (an AWS-managed or disabled key stops the service).
//! - `aws/nodes.rs`: `ManagedNodes`, SSM managed nodes: list by pool tag or account,
//!   deregister.
//! - `aws/tests.rs`: the error classification against real-shaped AWS answers (the SDK
//!   clients over a mocked HTTP layer).
//!
//! Foundations:
//! - `config.rs`: the environment's `VENDING_*` settings read once into a validated
//!   `Config`; every problem names its variable.
//! - `duration.rs`: the service's duration spellings (`30s`, `15m`, `24h`, `7d`,
//!   `1h30m`, `500ms`).
//! - `error.rs`: `VendError` and its one mapping to status, code, message and headers.
//! - `secret.rs`: `ActivationCode`: no `Display`, redacted `Debug`, read only through
//!   `expose()`.
//! - `logging.rs`: text or JSON log lines; the SDK's and HTTP stack's targets capped at
//!   `info` whatever `RUST_LOG` says (below it they would print `CreateActivation`'s
//!   answer and `PutParameter`'s request, which carry the code).
//! - `lib.rs`: this map and the module list.

pub mod app;
pub mod aws;
pub mod blocks;
pub mod clock;
pub mod codes;
pub mod config;
pub mod directory;
pub mod duration;
pub mod error;
pub mod http;
pub mod lambda_entry;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod pools;
pub mod pools_report;
pub mod rotation;
pub mod secret;
pub mod serve;
pub mod stale;
pub mod standby;
pub mod status;
pub mod sweep;
pub mod vend;
pub mod verify;
