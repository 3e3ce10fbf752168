//! Activation vending: hands on-prem servers a working SSM hybrid activation at boot.
//!
//! # Layout
//!
//! The one module map of the service (README.md and docs/DESIGN.md link here); one
//! line per module, its one job. `tests/docs/check.py` (in `make lint`) fails when a
//! file under `lambda/src` is missing from this list; `tests/layout/check.py` fails
//! on an import circle between modules and on a file over 600 lines.
//!
//! Levels, from the top; a module uses only modules on its own level or below
//! (`tests/layout/check.py` fails on any import circle).
//!
//! Entry points (`entry/`, thin):
//! - `main.rs`: the binary `vending`: command line (`clap`), exit codes, the runtime;
//!   Lambda, `serve`, `sweep`, `status`, `pools`, `nodes`; metrics off for the
//!   operator's commands.
//! - `entry/mod.rs`: the entry points' list.
//! - `entry/lambda.rs`: what Lambda invokes: API Gateway and ALB events to the router,
//!   `{"sweep": true}` to the sweep.
//! - `entry/app.rs`: the SDK configuration and AWS clients, built once for the router,
//!   the sweeper, `vending status` and `vending pools`.
//! - `entry/serve.rs`: `vending serve`'s connections: the cap, the header and idle
//!   timeouts, the drain bounded by `VENDING_SHUTDOWN_GRACE`.
//! - `entry/http.rs`: the one axum router, strict request parsing (`pool`, `instance`,
//!   `machine` and their headers, `POST /registrations`' two body shapes), the
//!   caller's source address, the `vended` log line.
//! - `entry/status.rs`: `vending status`: `StatusReader`, the table and the JSON
//!   (per pool the current activation's slots, SSM's count, confirmed nodes).
//! - `entry/pools.rs`: `vending pools`, every pool's effective settings or problem,
//!   as a table or JSON.
//! - `entry/nodes.rs`: `vending nodes`, the confirmed nodes with SSM's ping status,
//!   as a table or JSON.
//!
//! The vend (`vend/`):
//! - `vend/mod.rs`: `Vendor`, the vend as a whole: the pool and who asks, named reuse,
//!   reserve, check, rotate or wait behind the pool's gate, ask for the next standby,
//!   pair ID with code, remember the caller; the deadline; the vend metrics; readying
//!   the pools at start.
//! - `vend/blocks.rs`: `SlotBlocks`, the reserve as a process sends it: one write per
//!   pool in flight, a block of slots for the requests waiting, the standby's
//!   promotion with its block, the slots held and the wasted ones counted.
//! - `vend/slot.rs`: `SlotInHand`, a slot taken and not handed out yet; counted as
//!   wasted (`deadline`) when the request is dropped holding it.
//! - `vend/standby.rs`: `StandbyKeeper`, who prepares the next standby
//!   (`prepares_standby`), one try at a time per process and pool (the low-water
//!   slot's holder always tries), beside the request (`vending serve`) or awaited
//!   (Lambda).
//! - `vend/rotation.rs`: `Rotator`, a new activation under the lease: take it,
//!   re-check, create, store, commit as current or standby (`install_under_lease`,
//!   fencing), `settle_commit`; the rotation metrics and the failure record.
//! - `vend/verify.rs`: `ActivationChecks`, whether SSM still honours an activation,
//!   with remembered verdicts and concurrent checks collapsed into one call; the
//!   fresh check a refusal report forces (`recheck`); `Retirements`, the refused
//!   activations this process retired.
//! - `vend/refusal.rs`: refusal reports: an activation the pool vended and SSM
//!   refused, checked with SSM once per burst, retired and its records dropped.
//! - `vend/codes.rs`: `Codes`, the code cache (8 entries, keyed by activation ID and
//!   parameter version) in front of KMS and Parameter Store: a code the pool item
//!   carries sealed is opened with one `Decrypt`, else (or when KMS refuses it:
//!   `falls_back_to_parameter_store`) read with one `GetParameter`; concurrent reads
//!   of one code are one read, whose outcome, a failure included, they all share. A
//!   rotation's code is stored in Parameter Store first, then sealed (`Stored`).
//!
//! The confirmation of a registration (`registration/`, uses the vend's pool lookup):
//! - `registration/mod.rs`: `Confirmer`, `POST /registrations`' confirmation: believe
//!   SSM and the vend record, tag the node, replace a re-imaged machine's offline
//!   nodes, record the node once, count it.
//! - `registration/verdict.rs`: `confirmable`, `same_claim`, `reimaged_to_replace`:
//!   the confirmation's decisions over plain data.
//!
//! The sweep (`sweep/`):
//! - `sweep/mod.rs`: `Sweeper`, the scheduled clean-up of orphan and spent
//!   activations and stale nodes; the sweep metrics.
//! - `sweep/stale.rs`: `stale_duplicates`, which of a pool's nodes the clean-up
//!   deregisters, and why.
//!
//! The pool (`pool/`, one concept: its state, its settings, the directory of them):
//! - `pool/mod.rs`: the three parts' list.
//! - `pool/state.rs`: `PoolState` and pure decisions over plain data: why a pool is
//!   unusable (a changed config included), the low-water slot, the standby's
//!   triggers, `promotable`, `standby_needed`, lease freedom, name rules, machine ids,
//!   who may reuse a record, the sweep's verdict.
//! - `pool/settings.rs`: `PoolSettings`, a pool's config parsed and validated, the
//!   environment's `default`, the settings fingerprint, who may ask (`admits`,
//!   `client_address`).
//! - `pool/directory.rs`: `PoolDirectory`, the pool configs a process vends with, read
//!   from Parameter Store and shared through the DynamoDB item `directory#pools`;
//!   `Snapshot::lookup` gives a `Pool` (a name with its settings).
//!
//! AWS adapters (`aws/`, one per service, SDK errors mapped through `aws::classify`):
//! - `aws/mod.rs`: `classify`, the one mapping of SDK errors into `VendError`;
//!   `retrying_conflicts`; `UnansweredAttempts`, which counts a request's attempts
//!   that got no answer.
//! - `aws/pool_store/mod.rs`: `PoolStore`, DynamoDB: pool items, instance and commit
//!   records, tombstones, the directory item; every write conditional. Its parts:
//! - `aws/pool_store/schema.rs`: the table's attribute names, keys and constants;
//!   `Place` (current or standby, and where each lives on the pool item).
//! - `aws/pool_store/codec.rs`: items to `PoolState`, `InstanceRecord`,
//!   `ActivationRecord`, `DirectorySnapshot` and back; pure, unit-tested.
//! - `aws/pool_store/conditions.rs`: every conditional write as a value (update,
//!   condition, names, values): "never a slot twice", fencing; pure, unit-tested.
//! - `aws/pool_store/store.rs`: the client and table, the consistent read, what a
//!   conditional update's answer means (`Conditional`).
//! - `aws/pool_store/pool_item.rs`: the pool item: reserve (a slot or a block),
//!   lease, commit (with its record, one transaction), promote the standby.
//! - `aws/pool_store/records.rs`: instance records (and dropping those of a refused
//!   activation), commit records, tombstones, node records.
//! - `aws/pool_store/directory.rs`: the directory item `directory#pools`.
//! - `aws/parameters.rs`: `CodeVault` and `PoolConfigSource`, Parameter Store: the
//!   codes (SecureString under the customer KMS key, pinned by version) and the pool
//!   configs.
//! - `aws/activations.rs`: `ActivationService`, SSM activations: create, describe,
//!   delete.
//! - `aws/keys.rs`: `CodeKey`, KMS: the codes' key described at start, and
//!   `KeyFacts::refusal` (an AWS-managed or disabled key stops the service); `seal`
//!   and `open`, a code encrypted for the pool item under `code_context` (deployment,
//!   pool, activation).
//! - `aws/nodes.rs`: `ManagedNodes`, SSM managed nodes: list by pool tag, machine tag
//!   or account, one by ID, tag, deregister.
//! - `aws/tests.rs`: the error classification against real-shaped AWS answers (the SDK
//!   clients over a mocked HTTP layer).
//!
//! Foundations (used from every level above):
//! - `config.rs`: the environment's `VENDING_*` settings read once into a validated
//!   `Config`; every problem names its variable; `margin_outlasts_deadline`.
//! - `duration.rs`: the service's duration spellings (`30s`, `15m`, `24h`, `7d`,
//!   `1h30m`, `500ms`).
//! - `error.rs`: `VendError` and its one mapping to status, code, message and headers.
//! - `secret.rs`: `ActivationCode`: no `Display`, redacted `Debug`, read only through
//!   `expose()`; `SealedCode`, its KMS ciphertext, whose `Debug` shows only its length.
//! - `logging.rs`: text or JSON log lines; the SDK's and HTTP stack's targets capped at
//!   `info` whatever `RUST_LOG` says (below it they would print `CreateActivation`'s
//!   answer and `PutParameter`'s request, which carry the code).
//! - `metrics.rs`: CloudWatch embedded-metric-format lines on standard output
//!   (dimensions `Pool`, `Reason` for `SlotsWasted`, `Confirmed` for
//!   `RegistrationRefused`), and `check_emf`.
//! - `clock.rs`: at the bottom of the crate: `EpochSecs`, `epoch_now`, and the local
//!   clock against the `Date` of AWS's answers (`DateHeaderInterceptor` on every SDK
//!   client); `503 ClockSkew` when they disagree.
//! - `lib.rs`: this map, the module list and the public surface.
//!
//! # Public surface
//!
//! Every module is `pub(crate)`. What `main.rs` and the tests under `lambda/tests`
//! use is re-exported here, and nothing else is public: the entry points (`build_*`,
//! `router`, `handle_event`, `run_lambda`, `serve`, `read_pools`, `list_nodes`,
//! `nodes_table`, `check_code_key`),
//! `Config`, `SweepOptions`, `epoch_now`, logging and metrics switches, `check_emf`;
//! and, for the integration tests that drive the reserve and the standby's promotion
//! directly against the emulator, `PoolStore` with its answers (`Reservation`,
//! `LeaseAttempt`, `Place`), `SlotBlocks`, `CurrentActivation`, `Wanted` and
//! `WasteReason`.

pub(crate) mod aws;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod duration;
pub(crate) mod entry;
pub(crate) mod error;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod pool;
pub(crate) mod registration;
pub(crate) mod secret;
pub(crate) mod sweep;
pub(crate) mod vend;

pub use aws::pool_store::{LeaseAttempt, Place, PoolStore, Reservation};
pub use clock::epoch_now;
pub use config::Config;
pub use entry::app::{
    build_state, build_status_reader, build_sweeper, check_code_key, https_client, list_nodes, load_sdk_config,
    pool_configs, KeyCheckError,
};
pub use entry::http::router;
pub use entry::lambda::{handle_event, run as run_lambda};
pub use entry::nodes::table as nodes_table;
pub use entry::pools::read as read_pools;
pub use entry::serve::{serve, ServeLimits};
pub use logging::init as init_logging;
pub use metrics::{check_emf, disable as disable_metrics, WasteReason};
pub use pool::state::{CurrentActivation, Wanted};
pub use sweep::SweepOptions;
pub use vend::blocks::SlotBlocks;
