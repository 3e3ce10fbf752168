//! The deployed shape on one machine: the real `vending` binary run as Lambda
//! environments behind a local Lambda Runtime API, with API Gateway's stage throttle in
//! front (docs/performance.md, "lambda-storm").
//!
//! - `bucket.rs`: the token bucket the stage throttle and Lambda's scaling rate share.
//! - `event.rs`: an HTTP request as an API Gateway REST proxy event, and the function's
//!   proxy result back as an HTTP answer.
//! - `runtime_api.rs`: one environment's Runtime API (`/2018-06-01/runtime/...`).
//! - `environments.rs`: the environments: started cold when all are busy (at most 1,000
//!   per 10 s, up to `max_environments`), frozen between requests, reaped when idle.
//! - `gateway.rs`: the stage: throttle, invoke, answer.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// What a stage is started with.
#[derive(Clone, Debug)]
pub struct StageSpec {
    /// The `vending` binary each environment runs (no arguments: Lambda mode).
    pub vending_bin: PathBuf,
    /// The environment of every function process (VENDING_*, AWS_* as `local.sh env`
    /// prints them); the Runtime API's own variables are added.
    pub env: Vec<(String, String)>,
    /// The stage's steady rate (requests a second) and burst.
    pub throttle_rps: f64,
    pub throttle_burst: f64,
    /// At most this many environments at once (the account's concurrency, scaled to
    /// the machine).
    pub max_environments: usize,
    /// An environment idle this long is shut down.
    pub idle_reap: Duration,
    /// The function's timeout (template.yaml: 25 s).
    pub function_timeout: Duration,
    /// Where each environment's stdout/stderr goes (`env-<n>.log`).
    pub log_dir: PathBuf,
}

/// What the stage saw, counted since it started.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct StageCounts {
    /// Requests that reached the stage.
    pub requests: u64,
    /// Answered 429 by the stage throttle (the THROTTLED gateway response).
    pub http_429: u64,
    /// Refused by Lambda (no environment free and none could start): API Gateway
    /// answers these 500 "Internal server error".
    pub lambda_throttled: u64,
    /// Invocations handed to an environment.
    pub invocations: u64,
    /// Processes started.
    pub environments_started: u64,
    /// Invocations that were their environment's first (it started cold for them).
    pub cold_starts: u64,
    /// Environments shut down after `idle_reap`.
    pub environments_reaped: u64,
    /// The most environments alive at once.
    pub peak_environments: u64,
    /// Invocations the function failed (error, crash, timeout, init failure): 502.
    pub function_errors: u64,
}

/// A running stage: its URL takes requests as the deployed API does.
pub struct Stage {
    url: String,
}

impl Stage {
    /// Listens on a free loopback port; environments start on the first requests.
    pub async fn start(spec: StageSpec) -> Result<Stage, String> {
        let _ = spec;
        Err("the Lambda-shaped stage is not built yet".into())
    }

    /// `http://127.0.0.1:<port>`: the API's base URL (no stage path).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn counts(&self) -> StageCounts {
        StageCounts::default()
    }

    /// Stops taking requests and kills every environment.
    pub async fn stop(self) {}
}
