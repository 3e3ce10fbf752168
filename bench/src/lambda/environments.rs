//! The function's environments, as Lambda runs them: one invocation at a time each; a
//! new process (cold: no caches, its own init) only when none is free, at most
//! 1,000 new ones per 10 s and `max_environments` at once, or the invocation is
//! throttled; an environment waiting for work is frozen (SIGSTOP) and thawed (SIGCONT)
//! when work comes; one idle for `idle_reap` is shut down.

use std::collections::HashMap;
use std::fs::File;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::bucket::TokenBucket;
use super::runtime_api::{self, Invocation, Lifecycle, Mailbox, Reply};
use super::{StageCounts, StageSpec};

/// Lambda's scaling rate: 1,000 new environments every 10 seconds per function.
const SCALING_PER_10_S: f64 = 1000.0;
/// Lambda's init phase has 10 s of its own before the invocation's timeout starts.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The function's fixed environment in template.yaml (the rest is the deployment's,
/// given in `StageSpec::env`, which wins).
pub const TEMPLATE_FUNCTION_ENV: [(&str, &str); 2] = [
    ("VENDING_DEADLINE", "20s"),
    ("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true"),
];

/// Why an invocation got no answer from the function.
#[derive(Debug, PartialEq)]
pub enum InvokeError {
    /// No environment free and none may start: Lambda's 429, API Gateway's 500.
    Throttled,
    /// The function failed, crashed or timed out: API Gateway's 502.
    Function(String),
}

struct Environment {
    pid: Option<u32>,
    mailbox: Arc<Mailbox>,
    api: JoinHandle<()>,
    busy: bool,
}

struct Fleet {
    environments: HashMap<u64, Environment>,
    /// Free environments, frozen, with when each froze; the most recent is used first.
    idle: Vec<(u64, Instant)>,
    scaling: TokenBucket,
    next_id: u64,
    stopped: bool,
}

pub struct Environments {
    spec: StageSpec,
    fleet: Mutex<Fleet>,
    counts: Arc<Mutex<StageCounts>>,
    me: Weak<Environments>,
}

fn signal(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| Pid::from_raw(p as i32)) {
        // The process may have exited already; its watcher removes it.
        let _ = kill_process(pid, signal);
    }
}

impl Environments {
    pub fn new(spec: StageSpec, counts: Arc<Mutex<StageCounts>>) -> Arc<Self> {
        let scaling = TokenBucket::new(SCALING_PER_10_S / 10.0, SCALING_PER_10_S, Instant::now());
        Arc::new_cyclic(|me| Self {
            spec,
            fleet: Mutex::new(Fleet {
                environments: HashMap::new(),
                idle: Vec::new(),
                scaling,
                next_id: 0,
                stopped: false,
            }),
            counts,
            me: me.clone(),
        })
    }

    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, change: impl FnOnce(&mut StageCounts)) {
        change(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Runs one invocation: on a thawed free environment, or a new one, or not at all.
    pub async fn invoke(&self, request_id: String, event: Value, epoch_ms: u64) -> Result<Value, InvokeError> {
        let (reply, answer) = oneshot::channel();
        let timeout = self.spec.function_timeout;
        let invocation = Invocation {
            request_id,
            event,
            deadline_ms: epoch_ms + timeout.as_millis() as u64,
            reply,
        };
        let (env, cold) = self.place(invocation)?;
        let wait = if cold { timeout + INIT_TIMEOUT } else { timeout };
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(Reply::Response(value))) => Ok(value),
            Ok(Ok(Reply::Error(e))) => Err(self.function_error(e)),
            Ok(Err(_)) => Err(self.function_error("the environment exited".into())),
            Err(_) => {
                // Lambda ends an environment whose invocation timed out.
                self.kill(env);
                Err(self.function_error(format!("timed out after {} s", wait.as_secs())))
            }
        }
    }

    fn function_error(&self, why: String) -> InvokeError {
        self.count(|c| c.function_errors += 1);
        InvokeError::Function(why)
    }

    /// Gives the invocation to an environment: (its id, whether it started for it).
    fn place(&self, invocation: Invocation) -> Result<(u64, bool), InvokeError> {
        let mut fleet = self.fleet();
        if fleet.stopped {
            return Err(InvokeError::Throttled);
        }
        if let Some((id, _)) = fleet.idle.pop() {
            let env = fleet.environments.get_mut(&id).expect("an idle environment is alive");
            env.busy = true;
            signal(env.pid, Signal::CONT);
            let mailbox = env.mailbox.clone();
            drop(fleet);
            self.count(|c| c.invocations += 1);
            return match mailbox.deliver(invocation) {
                Ok(()) => Ok((id, false)),
                Err(_) => Err(self.function_error("the environment exited".into())),
            };
        }
        let alive = fleet.environments.len();
        if alive >= self.spec.max_environments || !fleet.scaling.take(Instant::now()) {
            drop(fleet);
            self.count(|c| c.lambda_throttled += 1);
            return Err(InvokeError::Throttled);
        }
        let id = fleet.next_id;
        fleet.next_id += 1;
        let env = self.start(id).map_err(|e| {
            self.count(|c| c.function_errors += 1);
            InvokeError::Function(e)
        })?;
        let mailbox = env.mailbox.clone();
        fleet.environments.insert(id, env);
        let alive = fleet.environments.len() as u64;
        drop(fleet);
        self.count(|c| {
            c.invocations += 1;
            c.cold_starts += 1;
            c.environments_started += 1;
            c.peak_environments = c.peak_environments.max(alive);
        });
        mailbox
            .deliver(invocation)
            .map_err(|_| self.function_error("the environment exited".into()))?;
        Ok((id, true))
    }

    /// A new process with its own Runtime API listener, and a watcher for its exit.
    fn start(&self, id: u64) -> Result<Environment, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("a Runtime API listener: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let mailbox = Arc::new(Mailbox::new(id));
        let lifecycle: Arc<dyn Lifecycle> = self.me.upgrade().ok_or("the stage is gone")?;
        let app = runtime_api::router(mailbox.clone(), lifecycle);
        let api = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let log_path = self.spec.log_dir.join(format!("env-{id}.log"));
        let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(&self.spec.vending_bin)
            .envs(TEMPLATE_FUNCTION_ENV)
            .envs(self.spec.env.iter().cloned())
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "vending")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/vending")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("env-{id}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                api.abort();
                return Err(format!("{}: {e}", self.spec.vending_bin.display()));
            }
        };
        let pid = child.id();
        let me = self.me.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            if let Some(environments) = me.upgrade() {
                environments.exited(id);
            }
        });
        Ok(Environment {
            pid,
            mailbox,
            api,
            busy: true,
        })
    }

    fn kill(&self, id: u64) {
        let fleet = self.fleet();
        if let Some(env) = fleet.environments.get(&id) {
            signal(env.pid, Signal::KILL);
        }
    }

    fn exited(&self, id: u64) {
        let mut fleet = self.fleet();
        fleet.idle.retain(|(i, _)| *i != id);
        if let Some(env) = fleet.environments.remove(&id) {
            drop(fleet);
            env.mailbox.close();
            env.api.abort();
        }
    }

    /// Shuts down environments idle for `idle_reap` or longer; how many.
    pub fn reap(&self, now: Instant) -> usize {
        let mut fleet = self.fleet();
        let reap_after = self.spec.idle_reap;
        let (old, young): (Vec<_>, Vec<_>) = fleet
            .idle
            .iter()
            .partition(|(_, since)| now.saturating_duration_since(*since) >= reap_after);
        fleet.idle = young;
        for (id, _) in &old {
            if let Some(env) = fleet.environments.get(id) {
                signal(env.pid, Signal::KILL);
            }
        }
        drop(fleet);
        self.count(|c| c.environments_reaped += old.len() as u64);
        old.len()
    }

    /// Kills every environment; invocations after this are refused.
    pub fn stop(&self) {
        let mut fleet = self.fleet();
        fleet.stopped = true;
        fleet.idle.clear();
        for env in fleet.environments.values() {
            signal(env.pid, Signal::KILL);
        }
    }

    pub fn alive(&self) -> usize {
        self.fleet().environments.len()
    }
}

impl Lifecycle for Environments {
    fn waiting(&self, id: u64) {
        let mut fleet = self.fleet();
        let stopped = fleet.stopped;
        let Some(env) = fleet.environments.get_mut(&id) else {
            return;
        };
        if env.busy || stopped {
            // Its invocation is already in its inbox (a cold start): no freeze.
            return;
        }
        // Frozen under the lock, so a thaw that takes it from `idle` always comes after.
        signal(env.pid, Signal::STOP);
        fleet.idle.push((id, Instant::now()));
    }

    fn answered(&self, id: u64) {
        if let Some(env) = self.fleet().environments.get_mut(&id) {
            env.busy = false;
        }
    }

    fn init_failed(&self, id: u64) {
        self.kill(id);
    }
}
