//! `--scenario lambda-storm`: a data-centre power return against the deployed shape.
//! Per run: a fresh emulator with AWS's quotas on (`EMULATOR_QUOTAS=aws-defaults`), the
//! Lambda-shaped stage (bench/src/lambda/) at one throttle in front of the real
//! `vending` binary, N servers booting within `--boot-spread-s` as
//! scripts/bootstrap-linux.sh does (server.rs), then the figures (report.rs). Two runs
//! back to back, the template's default throttle and a raised one; both land in
//! `target/bench/lambda-storm.json`. docs/performance.md, "lambda-storm".
//!
//! - `server.rs`: one booting server (vend, register with SSM, confirm).
//! - `retry.rs`: the script's decisions after each answer, pure.
//! - `report.rs`: the typed `lambda-storm.json` and the figures that fill it.

mod report;
mod retry;
mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::cli::{RunArgs, StormArgs, StormRuns};
use crate::emulator::Emulator;
use crate::figures::{per_vend, slots_wasted};
use crate::lambda::{Stage, StageSpec};
use crate::local::Local;
use crate::procfs;
use crate::run::Places;
use crate::stats::round;
use crate::summary::Machine;
use report::{busy_seconds, client_figures, target, StormDetails, StormFile, StormRun, Throttle};
use server::{Boot, Identity, ServerRecord};

/// The pool every server asks (the service's default).
const POOL: &str = "default";
/// Requests to the stage in flight at once: the stage runs in this process, so each
/// costs two descriptors, and RLIMIT_NOFILE is 20,000 here.
const STAGE_IN_FLIGHT: usize = 4096;
/// Registrations in flight to the emulator at once (it serves one call at a time).
const EMULATOR_IN_FLIGHT: usize = 32;
/// The function's timeout (template.yaml: `Timeout: 25`).
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(25);

/// One run's settings.
struct RunSpec {
    throttle: Throttle,
    servers: usize,
    rps: f64,
    burst: f64,
    /// The pool's registration limit (VENDING_REGISTRATION_LIMIT of every environment).
    limit: u32,
}

/// The runs `--storm-runs` asks for, in order.
fn run_specs(s: &StormArgs) -> Vec<RunSpec> {
    let default = RunSpec {
        throttle: Throttle::Default,
        servers: s.storm_servers,
        rps: s.default_throttle_rps,
        burst: s.default_throttle_burst,
        limit: s.default_limit,
    };
    let raised = RunSpec {
        throttle: Throttle::Raised,
        servers: s.storm_raised_servers,
        rps: s.raised_throttle_rps,
        burst: s.raised_throttle_burst,
        limit: s.raised_limit,
    };
    match s.storm_runs {
        StormRuns::Both => vec![default, raised],
        StormRuns::DefaultThrottle => vec![default],
        StormRuns::RaisedThrottle => vec![raised],
    }
}

struct Storm {
    local: Local,
    bin: PathBuf,
    args: StormArgs,
}

/// Runs lambda-storm and writes `<out>/lambda-storm.json`.
pub async fn run(opts: RunArgs) -> Result<(), String> {
    let Places {
        root,
        state_dir,
        bin,
        out,
    } = Places::of(&opts)?;
    let storm = Storm {
        local: Local { root, state_dir },
        bin,
        args: opts.storm,
    };
    let mut file = StormFile {
        scenario: "lambda-storm",
        machine: Machine {
            cores: procfs::cores(),
            cpu_model: procfs::cpu_model(),
        },
        ..StormFile::default()
    };
    for (number, spec) in (1u32..).zip(run_specs(&storm.args)) {
        let result = storm.run(number, &spec).await;
        // Whatever happened, the emulator of the run goes (bench.sh's trap would too).
        storm.local.down().await?;
        let result = result?;
        eprintln!(
            "   {}: {} of {} registered in {} s (target {} s, {}), {} failed, {} refused, {} x 429, {} environments",
            spec.throttle.name(),
            result.registered,
            result.servers,
            result.all_registered_s.map_or("-".into(), |s| s.to_string()),
            result.target.all_registered_within_s,
            result.target.floor,
            result.failed,
            result.refused,
            result.http_429,
            result.environments_started
        );
        match spec.throttle {
            Throttle::Default => file.default_throttle = Some(result),
            Throttle::Raised => file.raised_throttle = Some(result),
        }
    }
    file.date = procfs::utc_now();
    let path = out.join("lambda-storm.json");
    let json = serde_json::to_string_pretty(&file).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::write(&path, format!("{json}\n")).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The environment of every function process: what `local.sh env` prints, then the
/// caller's own `VENDING_*` and `RUST_LOG` winning (as local.sh passes them to its
/// servers; not VENDING_BIN, the bench's own).
fn function_env(
    provisioned: Vec<(String, String)>,
    caller: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut env = provisioned;
    for (name, value) in caller {
        if (name.starts_with("VENDING_") && name != "VENDING_BIN") || name == "RUST_LOG" {
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
        }
    }
    env
}

impl Storm {
    async fn run(&self, number: u32, spec: &RunSpec) -> Result<StormRun, String> {
        let a = &self.args;
        eprintln!(
            "== lambda-storm {}: {} servers, stage {} rps (burst {}), limit {}, at most {} environments",
            spec.throttle.name(),
            spec.servers,
            spec.rps,
            spec.burst,
            spec.limit,
            a.max_environments
        );
        self.local.down().await?;
        let emulator_url = self.local.up_emulator(&[("EMULATOR_QUOTAS", "aws-defaults")]).await?;
        let emu = Emulator::new(&emulator_url, "")?;
        if emu.quotas().await?.is_empty() {
            return Err("the emulator runs without quotas (EMULATOR_QUOTAS=aws-defaults did not reach it)".into());
        }
        let mut env = function_env(self.local.env().await?, std::env::vars());
        env.retain(|(name, _)| name != "VENDING_REGISTRATION_LIMIT");
        env.push(("VENDING_REGISTRATION_LIMIT".into(), spec.limit.to_string()));
        let log_dir = self
            .local
            .state_dir
            .join(format!("logs/lambda-storm-{}", spec.throttle.name()));
        std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
        emu.reset_quotas().await?;
        emu.reset_calls().await?;
        let stage = Stage::start(StageSpec {
            vending_bin: self.bin.clone(),
            env,
            throttle_rps: spec.rps,
            throttle_burst: spec.burst,
            max_environments: a.max_environments,
            idle_reap: a.idle_reap,
            function_timeout: FUNCTION_TIMEOUT,
            log_dir,
        })
        .await?;

        let started = Instant::now();
        let records = self
            .boot(number, spec.servers, stage.url(), &emulator_url, started)
            .await;
        let duration_s = round(started.elapsed().as_secs_f64(), 2);
        let counts = stage.counts();
        stage.stop().await;
        let records = records?;

        let calls = emu.calls().await?;
        let busy = emu.busy().await?;
        let quotas = emu.quotas().await?;
        emu.clear_quotas().await?;
        let order = emu.activations_in_order().await?;

        let figures = client_figures(&records);
        let mut throttled = std::collections::BTreeMap::new();
        for quota in quotas.values() {
            for (op, n) in &quota.throttled_by_operation {
                *throttled.entry(op.clone()).or_insert(0u64) += n;
            }
        }
        let throttled_calls: u64 = throttled.values().sum();
        let vends = figures.vends();
        let per = per_vend(&calls, vends);
        let emulator_busy_s = busy_seconds(&busy);
        Ok(StormRun {
            servers: spec.servers,
            throttle_rps: spec.rps,
            throttle_burst: spec.burst,
            registration_limit: spec.limit,
            max_environments: a.max_environments,
            all_registered_s: figures.all_registered_s,
            time_to_code_ms: figures.time_to_code_ms,
            time_to_registered_ms: figures.time_to_registered_ms,
            registered: figures.registered,
            http_429: figures.http_429(),
            http_503_by_code: figures.http_503_by_code.clone(),
            failed: figures.failed,
            refused: figures.refused,
            environments_started: counts.environments_started,
            cold_starts: counts.cold_starts,
            lambda_throttled: counts.lambda_throttled,
            aws_calls_per_vend_by_operation: per.by_operation,
            aws_throttled_by_operation: throttled,
            slots_wasted: slots_wasted(&order, &figures.per_activation),
            emulator_busy_s,
            target: target(
                spec.throttle,
                spec.servers,
                spec.rps,
                emulator_busy_s,
                &figures,
                throttled_calls,
            ),
            details: StormDetails {
                boot_spread_s: a.boot_spread_s,
                max_wait_s: a.max_wait.as_secs(),
                duration_s,
                vends,
                activations_vended: figures.per_activation.len(),
                activations_created: order.len(),
                confirmed: figures.confirmed,
                report_warnings: figures.report_warnings,
                http_statuses: figures.http_statuses,
                transport_errors: figures.transport_errors,
                failures: figures.failures,
                stage: counts,
                aws_calls: calls,
                aws_calls_per_vend: per.total,
                emulator_busy: busy,
            },
        })
    }

    /// `servers` tasks, server i starting at i × spread ÷ servers; their records.
    async fn boot(
        &self,
        run: u32,
        servers: usize,
        stage_url: &str,
        emulator_url: &str,
        started: Instant,
    ) -> Result<Vec<ServerRecord>, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let boot = Arc::new(Boot {
            http,
            stage: stage_url.trim_end_matches('/').to_owned(),
            emulator: emulator_url.trim_end_matches('/').to_owned(),
            pool: POOL.to_owned(),
            max_wait: self.args.max_wait,
            started,
            stage_gate: Arc::new(Semaphore::new(STAGE_IN_FLIGHT)),
            emulator_gate: Arc::new(Semaphore::new(EMULATOR_IN_FLIGHT)),
        });
        let spread = Duration::from_secs_f64(self.args.boot_spread_s);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let tasks: Vec<_> = (0..servers)
            .map(|i| {
                let boot = Arc::clone(&boot);
                let at = started + spread.mul_f64(i as f64 / servers as f64);
                let seed = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    boot.server(&Identity::new(run, i), seed).await
                })
            })
            .collect();
        let mut records = Vec::with_capacity(servers);
        for task in tasks {
            records.push(task.await.map_err(|e| format!("a server task failed: {e}"))?);
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn storm_args(args: &str) -> StormArgs {
        crate::cli::Cli::try_parse_from(std::iter::once("vending-bench").chain(args.split_whitespace()))
            .unwrap()
            .run
            .storm
    }

    #[test]
    fn both_runs_by_default_at_the_issue_s_counts_and_throttles() {
        let specs = run_specs(&storm_args("--scenario lambda-storm"));
        let got: Vec<_> = specs.iter().map(|s| (s.throttle, s.servers, s.rps, s.burst)).collect();
        assert_eq!(
            got,
            [
                (Throttle::Default, 1000, 20.0, 50.0),
                (Throttle::Raised, 10_000, 1000.0, 2000.0)
            ]
        );
    }

    #[test]
    fn functions_get_the_provisioned_settings_and_the_caller_s_vending_ones() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let env = function_env(
            vec![pair("VENDING_TABLE", "t"), pair("AWS_ENDPOINT_URL", "http://e")],
            [
                pair("VENDING_TABLE", "mine"),
                pair("VENDING_BIN", "/x"),
                pair("RUST_LOG", "debug"),
                pair("HOME", "/root"),
            ]
            .into_iter(),
        );
        assert_eq!(
            env,
            [
                pair("AWS_ENDPOINT_URL", "http://e"),
                pair("VENDING_TABLE", "mine"),
                pair("RUST_LOG", "debug")
            ]
        );
    }

    #[test]
    fn a_small_run_of_one_throttle() {
        let specs = run_specs(&storm_args(
            "--scenario lambda-storm --storm-runs raised-throttle --storm-raised-servers 50 --raised-throttle-rps 100",
        ));
        assert_eq!(specs.len(), 1);
        assert_eq!(
            (specs[0].throttle, specs[0].servers, specs[0].rps, specs[0].burst),
            (Throttle::Raised, 50, 100.0, 2000.0)
        );
    }
}
