//! `scripts/local.sh` from Rust, and fresh `vending serve` processes for cold starts.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    fn script(&self) -> Command {
        let mut cmd = Command::new(self.root.join("scripts/local.sh"));
        cmd.env("LOCAL_STATE_DIR", &self.state_dir);
        cmd
    }

    /// `local.sh up --servers N` with this registration limit; other VENDING_* pass through.
    pub fn up(&self, servers: usize, limit: u32) -> Result<Up, String> {
        let out = self
            .script()
            .args(["up", "--servers", &servers.to_string()])
            .env("VENDING_REGISTRATION_LIMIT", limit.to_string())
            .stderr(Stdio::inherit())
            .output()
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

    pub fn down(&self) -> Result<(), String> {
        let status = self
            .script()
            .arg("down")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("scripts/local.sh down: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("scripts/local.sh down failed ({status})"))
        }
    }

    /// The provisioned settings (`export NAME=value` lines of `local.sh env`).
    pub fn env(&self) -> Result<Vec<(String, String)>, String> {
        let out = self
            .script()
            .arg("env")
            .output()
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
    // No connection reuse: every poll is what a load balancer's probe would do.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let base = format!("http://127.0.0.1:{port}");
    let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let log_err = log_file.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
    // Named like local.sh's own pid files, so `local.sh down` stops it if we are killed.
    let _ = std::fs::write(pid_file, child.id().to_string());
    let outcome = async {
        let deadline = started + Duration::from_secs(30);
        let health_ms = loop {
            if let Ok(resp) = http.get(format!("{base}/health")).send().await {
                if resp.status().is_success() {
                    break started.elapsed().as_secs_f64() * 1000.0;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("vending serve exited early ({status}); see {}", log.display()));
            }
            if Instant::now() >= deadline {
                return Err(format!("no 200 on {base}/health within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let (first_vend_ms, activation_id) = loop {
            let resp = http.get(format!("{base}/activation")).send().await;
            if let Ok(resp) = resp {
                if resp.status().is_success() {
                    let at = started.elapsed().as_secs_f64() * 1000.0;
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    break (at, body["ActivationId"].as_str().map(str::to_owned));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no successful vend from {base} within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(ColdRun {
            health_ms,
            first_vend_ms,
            activation_id,
        })
    }
    .await;
    // Our own child, by its handle.
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(pid_file);
    outcome
}
