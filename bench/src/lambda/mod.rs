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

mod bucket;
mod environments;
mod event;
mod gateway;
mod runtime_api;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use environments::Environments;
use gateway::{Gateway, Throttle};

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
    counts: Arc<Mutex<StageCounts>>,
    environments: Arc<Environments>,
    server: JoinHandle<()>,
    reaper: JoinHandle<()>,
}

impl Stage {
    /// Listens on a free loopback port; environments start on the first requests.
    pub async fn start(spec: StageSpec) -> Result<Stage, String> {
        raise_open_files_limit();
        std::fs::create_dir_all(&spec.log_dir).map_err(|e| format!("{}: {e}", spec.log_dir.display()))?;
        let counts = Arc::new(Mutex::new(StageCounts::default()));
        let throttle = Throttle::new(spec.throttle_rps, spec.throttle_burst);
        let environments = Environments::new(spec, counts.clone());
        let gateway = Arc::new(Gateway {
            throttle: Mutex::new(throttle),
            environments: environments.clone(),
            counts: counts.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("the stage's listener: {e}"))?;
        let url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
        let app = gateway::router(gateway).into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let reaping = environments.clone();
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                reaping.reap(Instant::now());
            }
        });
        Ok(Stage {
            url,
            counts,
            environments,
            server,
            reaper,
        })
    }

    /// `http://127.0.0.1:<port>`: the API's base URL (no stage path).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn counts(&self) -> StageCounts {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops taking requests and kills every environment.
    pub async fn stop(self) {
        self.server.abort();
        self.reaper.abort();
        self.environments.stop();
        for _ in 0..50 {
            if self.environments.alive() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Thousands of clients and hundreds of environments each hold sockets: the soft limit
/// goes up to the hard one (best effort: a lower limit only shows as connect errors).
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}
