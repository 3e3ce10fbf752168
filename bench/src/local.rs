//! `scripts/local.sh` from Rust, and fresh `vending serve` processes for cold starts.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;

pub struct Local {
    pub root: PathBuf,
    pub state_dir: PathBuf,
}

pub struct Up {
    pub urls: Vec<String>,
    pub emulator: String,
}

impl Local {
    /// local.sh as a child that is killed if the bench stops waiting for it (an
    /// interrupted run), so it cannot go on starting servers after the clean-up.
    fn script(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.root.join("scripts/local.sh"));
        cmd.env("LOCAL_STATE_DIR", &self.state_dir).kill_on_drop(true);
        cmd
    }

    /// `local.sh up --servers N` with this registration limit; other VENDING_* pass through.
    pub async fn up(&self, servers: usize, limit: u32) -> Result<Up, String> {
        let out = self
            .script()
            .args(["up", "--servers", &servers.to_string()])
            .env("VENDING_REGISTRATION_LIMIT", limit.to_string())
            .stderr(Stdio::inherit())
            .output()
            .await
            .map_err(|e| format!("scripts/local.sh up: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/local.sh up failed ({})", out.status));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::to_owned)
                .ok_or_else(|| format!("scripts/local.sh up printed no {key} line"))
        };
        Ok(Up {
            urls: value("VENDING_URLS=")?.split(',').map(str::to_owned).collect(),
            emulator: value("EMULATOR_URL=")?,
        })
    }

    /// `local.sh up --servers 0` (a fresh emulator, provisioned, no server) with
    /// `extra` in the emulator's environment; the emulator's URL.
    pub async fn up_emulator(&self, extra: &[(&str, &str)]) -> Result<String, String> {
        let out = self
            .script()
            .args(["up", "--servers", "0"])
            .envs(extra.iter().copied())
            .stderr(Stdio::inherit())
            .output()
            .await
            .map_err(|e| format!("scripts/local.sh up: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/local.sh up --servers 0 failed ({})", out.status));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("EMULATOR_URL="))
            .map(str::to_owned)
            .ok_or_else(|| "scripts/local.sh up printed no EMULATOR_URL= line".into())
    }

    pub async fn down(&self) -> Result<(), String> {
        let status = self
            .script()
            .arg("down")
            .stdout(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("scripts/local.sh down: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("scripts/local.sh down failed ({status})"))
        }
    }

    /// The provisioned settings (`export NAME=value` lines of `local.sh env`).
    pub async fn env(&self) -> Result<Vec<(String, String)>, String> {
        let out = self
            .script()
            .arg("env")
            .output()
            .await
            .map_err(|e| format!("scripts/local.sh env: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/local.sh env failed ({})", out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// PIDs of the `vending serve` processes `up` started (its pid files).
    pub fn server_pids(&self, servers: usize) -> Result<Vec<u32>, String> {
        (1..=servers)
            .map(|i| {
                let file = self.state_dir.join(format!("vending-{i}.pid"));
                procfs::read_pid(&file).ok_or_else(|| format!("no pid in {}", file.display()))
            })
            .collect()
    }
}

/// A `vending serve` this bench started itself; killed (by its handle) when dropped.
pub struct Server {
    child: Child,
    pid_file: PathBuf,
    pub base: String,
    pub pid: u32,
    started: Instant,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Execs `bin serve` on `port` with `env` added to ours. The pid file is named like
/// local.sh's own, so `local.sh down` stops the process should the bench be killed.
pub fn spawn_server(
    bin: &Path,
    env: &[(String, String)],
    port: u16,
    log: &Path,
    pid_file: &Path,
) -> Result<Server, String> {
    let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let log_err = log_file.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
    let pid = child.id();
    let _ = std::fs::write(pid_file, pid.to_string());
    Ok(Server {
        child,
        pid_file: pid_file.to_owned(),
        base: format!("http://127.0.0.1:{port}"),
        pid,
        started,
        log: log.to_owned(),
    })
}

/// No connection reuse: every poll is what a load balancer's probe would do.
pub fn probe_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| format!("http client: {e}"))
}

impl Server {
    /// Milliseconds from exec to the first `200` on /health (polled every millisecond).
    pub async fn wait_healthy(&mut self, http: &reqwest::Client) -> Result<f64, String> {
        let deadline = self.started + Duration::from_secs(30);
        loop {
            if let Ok(resp) = http.get(format!("{}/health", self.base)).send().await {
                if resp.status().is_success() {
                    return Ok(self.started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "vending serve exited early ({status}); see {}",
                    self.log.display()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("no 200 on {}/health within 30 s", self.base));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Milliseconds from exec to the first successful vend, and the activation it gave.
    pub async fn first_vend(&self, http: &reqwest::Client) -> Result<(f64, Option<String>), String> {
        let deadline = self.started + Duration::from_secs(30);
        loop {
            if let Ok(resp) = http.get(format!("{}/activation", self.base)).send().await {
                if resp.status().is_success() {
                    let at = self.started.elapsed().as_secs_f64() * 1000.0;
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    return Ok((at, body["ActivationId"].as_str().map(str::to_owned)));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no successful vend from {} within 30 s", self.base));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One fresh process: exec to first `200` on /health, and to first successful vend.
#[derive(Debug, Clone)]
pub struct ColdRun {
    pub health_ms: f64,
    pub first_vend_ms: f64,
    pub activation_id: Option<String>,
}

/// Starts `bin serve` on `port` with `env`, times it, and kills it again.
pub async fn cold_start(
    bin: &Path,
    env: &[(String, String)],
    port: u16,
    log: &Path,
    pid_file: &Path,
) -> Result<ColdRun, String> {
    let http = probe_client()?;
    let mut server = spawn_server(bin, env, port, log, pid_file)?;
    let health_ms = server.wait_healthy(&http).await?;
    let (first_vend_ms, activation_id) = server.first_vend(&http).await?;
    Ok(ColdRun {
        health_ms,
        first_vend_ms,
        activation_id,
    })
}
