//! vending-bench: drives `scripts/local.sh` (emulator + N `vending serve`) with a boot
//! storm of concurrent vends and writes what it cost to target/bench/summary.json.
//! `scripts/bench.sh` builds everything and calls this; see docs/performance.md.
#![recursion_limit = "256"]

mod emulator;
mod load;
mod local;
mod procfs;
mod proxy;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Map, Value};

use emulator::{Calls, Emulator};
use local::Local;
use stats::{latency_summary, median, percentile, round};

const USAGE: &str = "\
vending-bench: benchmarks activation vending against scripts/local.sh.

Usage: vending-bench [options]      (normally run by scripts/bench.sh)
  --scenario S        steady | storm-with-rotation | throttled | all   (default steady)
  --servers N         vending serve processes                          (default 2)
  --clients N         concurrent clients                                (default 64)
  --vends N           vends in the main phase                           (default 5000)
  --limit N           registration limit of the main phase   (default 100; 10 for storm-with-rotation)
  --steady-vends N    vends in the hot-path phase (limit 1000, no rotation) (default 600)
  --cold-runs N       fresh processes timed for cold_start_ms/first_vend_ms (default 5)
  --probe-samples N   bare UpdateItems timed for emulator_call_ms_p50       (default 200)
  --max-retries N     client retries per vend after 503/429/5xx/connection errors (default 10)
  --timeout SECS      a load phase stops issuing vends after this          (default 900)
  --root DIR          repository root                                      (default .)
  --out DIR           where summary.json and summary.txt go        (default ROOT/target/bench)

       vending-bench load URL[,URL...] [--vends N] [--clients N] [--pids PID[,PID...]]
                      only the load: GET each URL round-robin, print latencies and the
                      user/system CPU the given processes used (for profiling by hand)

Environment: LOCAL_STATE_DIR, LOCAL_EMULATOR_PORT, LOCAL_VENDING_PORT and VENDING_BIN as
scripts/local.sh reads them (the bench reads pid files from LOCAL_STATE_DIR).
Exit codes: 0 done (targets are reported, not enforced), 1 the run failed, 2 bad usage.";

/// The hot-path phase runs with this registration limit so that it never rotates.
const STEADY_LIMIT: u32 = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Steady,
    StormWithRotation,
    Throttled,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Steady, Scenario::StormWithRotation, Scenario::Throttled];

    fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::StormWithRotation => "storm-with-rotation",
            Scenario::Throttled => "throttled",
        }
    }

    fn default_limit(self) -> u32 {
        match self {
            Scenario::StormWithRotation => 10,
            _ => 100,
        }
    }

    /// Faults injected for the main phase only.
    fn faults(self) -> Option<Value> {
        match self {
            Scenario::Throttled => Some(json!([
                {"operation": "DynamoDB.*", "error": "ThrottlingException", "rate": 0.3},
                {"operation": "SSM.*", "error": "ThrottlingException", "rate": 0.3},
            ])),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Options {
    scenarios: Vec<Scenario>,
    servers: usize,
    clients: usize,
    vends: usize,
    limit: Option<u32>,
    steady_vends: usize,
    cold_runs: usize,
    probe_samples: usize,
    max_retries: u32,
    timeout: Duration,
    root: PathBuf,
    out: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        scenarios: vec![Scenario::Steady],
        servers: 2,
        clients: 64,
        vends: 5000,
        limit: None,
        steady_vends: 600,
        cold_runs: 5,
        probe_samples: 200,
        max_retries: 10,
        timeout: Duration::from_secs(900),
        root: PathBuf::from("."),
        out: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        if matches!(flag, "-h" | "--help") {
            return Ok(None);
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        let number = |min: usize| -> Result<usize, String> {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| format!("{flag}: `{value}` must be a whole number of at least {min}"))
        };
        match flag {
            "--scenario" => {
                o.scenarios = match value.as_str() {
                    "all" => Scenario::ALL.to_vec(),
                    name => vec![Scenario::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
                        format!("--scenario: `{name}` is not steady, storm-with-rotation, throttled or all")
                    })?],
                }
            }
            "--servers" => o.servers = number(1)?,
            "--clients" => o.clients = number(1)?,
            "--vends" => o.vends = number(1)?,
            "--limit" => {
                let n = number(1)?;
                o.limit = Some(
                    u32::try_from(n)
                        .ok()
                        .filter(|n| *n <= 1000)
                        .ok_or("--limit: at most 1000")?,
                );
            }
            "--steady-vends" => o.steady_vends = number(1)?,
            "--cold-runs" => o.cold_runs = number(1)?,
            "--probe-samples" => o.probe_samples = number(1)?,
            "--max-retries" => o.max_retries = u32::try_from(number(0)?).map_err(|_| "--max-retries: too large")?,
            "--timeout" => o.timeout = Duration::from_secs(number(1)? as u64),
            "--root" => o.root = PathBuf::from(value),
            "--out" => o.out = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(Some(o))
}

struct Context {
    opts: Options,
    local: Local,
    bin: PathBuf,
    out: PathBuf,
    ticks: u64,
    low_water_percent: u32,
}

struct Measured {
    result: load::LoadResult,
    calls: emulator::Calls,
    cpu_us: u64,
}

fn cpu_total(pids: &[u32], ticks: u64) -> Result<u64, String> {
    pids.iter()
        .map(|&pid| procfs::cpu_us(pid, ticks).ok_or_else(|| format!("cannot read /proc/{pid}/stat")))
        .sum()
}

fn peak_rss_mb(pids: &[u32]) -> f64 {
    let kb = pids
        .iter()
        .filter_map(|&pid| procfs::peak_rss_kb(pid))
        .max()
        .unwrap_or(0);
    kb as f64 / 1024.0
}

fn per_vend(calls: &Calls, vends: u64) -> Value {
    let by_op: Map<String, Value> = calls
        .iter()
        .map(|(op, n)| (op.clone(), json!(round(*n as f64 / vends.max(1) as f64, 4))))
        .collect();
    json!({
        "total": round(emulator::total(calls) as f64 / vends.max(1) as f64, 4),
        "by_operation": by_op,
    })
}

/// What the servers' logs say about the rotations they made (`rotated` lines):
/// how many, why, and how long CreateActivation → PutParameter → commit took.
fn rotations_logged(local: &Local, servers: usize) -> Value {
    let text: String = (1..=servers)
        .map(|i| std::fs::read_to_string(local.state_dir.join(format!("logs/vending-{i}.log"))).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let (reasons, elapsed) = parse_rotations(&text);
    json!({
        "count": elapsed.len(),
        "by_reason": reasons,
        "create_to_commit_ms": latency_summary(&elapsed),
    })
}

/// `rotated` log lines → (count by reason, elapsed_ms of each).
fn parse_rotations(text: &str) -> (BTreeMap<String, u64>, Vec<f64>) {
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut elapsed = Vec::new();
    for line in text.lines().filter(|l| l.contains(" rotated ")) {
        if let Some(start) = line.find(" reason=") {
            let rest = &line[start + " reason=".len()..];
            let reason = rest.find(" limit=").map_or(rest, |end| &rest[..end]);
            *reasons.entry(reason.trim_matches('"').to_owned()).or_default() += 1;
        }
        if let Some(start) = line.find(" elapsed_ms=") {
            let rest = &line[start + " elapsed_ms=".len()..];
            if let Ok(ms) = rest.split_whitespace().next().unwrap_or_default().parse::<f64>() {
                elapsed.push(ms);
            }
        }
    }
    (reasons, elapsed)
}

/// The servers' logs as they stand, to read only what a phase adds.
fn log_lengths(local: &Local, servers: usize) -> Vec<usize> {
    (1..=servers)
        .map(|i| {
            std::fs::read_to_string(local.state_dir.join(format!("logs/vending-{i}.log")))
                .map(|t| t.len())
                .unwrap_or(0)
        })
        .collect()
}

/// The next phase restarts the servers over their logs: keep the main phase's as
/// `logs/<scenario>-vending-N.log` for reading afterwards.
fn keep_main_phase_logs(local: &Local, scenario: Scenario, servers: usize) {
    for i in 1..=servers {
        let logs = local.state_dir.join("logs");
        let _ = std::fs::copy(
            logs.join(format!("vending-{i}.log")),
            logs.join(format!("{}-vending-{i}.log", scenario.name())),
        );
    }
}

/// `vended` lines written since `from` that say the request waited for a rotation.
fn vends_waited(local: &Local, from: &[usize]) -> u64 {
    from.iter()
        .enumerate()
        .map(|(i, start)| {
            let text = std::fs::read_to_string(local.state_dir.join(format!("logs/vending-{}.log", i + 1)))
                .unwrap_or_default();
            text.get(*start..)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("vended") && l.contains("waited_for_rotation=true"))
                .count() as u64
        })
        .sum()
}

/// Slots of activations the run moved past that nobody was handed: every vended
/// activation but the newest, its limit minus its vends.
fn slots_wasted(order: &[(String, u64)], vended: &HashMap<String, u64>) -> u64 {
    let used: Vec<&(String, u64)> = order.iter().filter(|(id, _)| vended.contains_key(id)).collect();
    used.iter()
        .take(used.len().saturating_sub(1))
        .map(|(id, limit)| limit.saturating_sub(vended[id]))
        .sum()
}

/// Conditional writes DynamoDB took per vend.
fn dynamodb_writes(calls: &Calls) -> u64 {
    [
        "DynamoDB.UpdateItem",
        "DynamoDB.PutItem",
        "DynamoDB.TransactWriteItems",
        "DynamoDB.DeleteItem",
    ]
    .iter()
    .filter_map(|op| calls.get(*op))
    .sum()
}

fn add_counts(into: &mut HashMap<String, u64>, from: &HashMap<String, u64>) {
    for (id, n) in from {
        *into.entry(id.clone()).or_default() += n;
    }
}

impl Context {
    /// Hot path: servers with a limit of 1000, warmed until the pool holds a fresh
    /// limit-1000 activation that every server has already vended from (code cached),
    /// then `steady_vends` vends that stay below the low-water mark: no rotation can
    /// happen inside the measured window.
    async fn steady_phase(&self, counts: &mut HashMap<String, u64>) -> Result<Value, String> {
        let o = &self.opts;
        let low_water_slot = u64::from(STEADY_LIMIT * (100 - self.low_water_percent) / 100);
        let steady_vends = o.steady_vends.min(low_water_slot.saturating_sub(50) as usize).max(1);
        let up = self.local.up(o.servers, STEADY_LIMIT).await?;
        let emu = Emulator::new(&up.emulator, &self.table().await?)?;
        let urls: Vec<String> = up.urls.iter().map(|u| format!("{u}/activation")).collect();
        let http = load::http_client()?;
        let mut warm: Vec<bool> = vec![false; urls.len()];
        let mut warm_for: Option<String> = None;
        let mut warmup_vends = 0;
        let mut ready = false;
        for i in 0..4 * STEADY_LIMIT as usize {
            let k = i % urls.len();
            let resp = http
                .get(&urls[k])
                .send()
                .await
                .map_err(|e| format!("warm-up vend: {e}"))?;
            if resp.status().is_success() {
                let body: Value = resp.json().await.map_err(|e| format!("warm-up vend: {e}"))?;
                let id = body["ActivationId"].as_str().unwrap_or_default().to_owned();
                *counts.entry(id.clone()).or_default() += 1;
                warmup_vends += 1;
                if let Some(pool) = emu.pool_item("default").await? {
                    if pool.limit == u64::from(STEADY_LIMIT) {
                        if warm_for.as_deref() != Some(pool.activation_id.as_str()) {
                            warm.iter_mut().for_each(|w| *w = false);
                            warm_for = Some(pool.activation_id.clone());
                        }
                        if id == pool.activation_id {
                            warm[k] = true;
                        }
                        if warm.iter().all(|w| *w) && pool.reserved + (steady_vends as u64) + 10 < low_water_slot {
                            ready = true;
                            break;
                        }
                    }
                }
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !ready {
            return Err("the hot-path phase never reached a fresh limit-1000 activation".into());
        }
        let pids = self.local.server_pids(o.servers)?;
        let Measured { result, calls, cpu_us } = self.measure_vends(&emu, &pids, urls, steady_vends).await?;
        add_counts(counts, &result.per_activation);
        let ok = result.ok();
        // Calibration: the same servers answering /health, i.e. the inbound HTTP
        // stack alone, with no AWS call.
        let health_urls: Vec<String> = up.urls.iter().map(|u| format!("{u}/health")).collect();
        let h0 = cpu_total(&pids, self.ticks)?;
        let health = load::run(&load::LoadSpec {
            urls: health_urls,
            clients: o.clients,
            vends: 10_000,
            max_retries: 0,
            max_retry_after: 1,
            deadline: o.timeout,
            vend: false,
        })
        .await?;
        let h1 = cpu_total(&pids, self.ticks)?;
        Ok(json!({
            "registration_limit": STEADY_LIMIT,
            "warmup_vends": warmup_vends,
            "vends": ok,
            "failed_requests": result.failed + result.not_issued,
            "activations_seen": result.per_activation.len(),
            "calls": calls,
            "aws_calls_per_vend": round(emulator::total(&calls) as f64 / ok.max(1) as f64, 4),
            "duration_s": round(result.elapsed.as_secs_f64(), 2),
            "vends_per_s": round(ok as f64 / result.elapsed.as_secs_f64().max(1e-9), 1),
            "latency_ms": latency_summary(&result.vend_ms),
            "server_cpu_us_per_vend": round(cpu_us as f64 / ok.max(1) as f64, 1),
            "server_peak_rss_mb": round(peak_rss_mb(&pids), 1),
            "health_requests": health.ok(),
            "server_cpu_us_per_health_request": round((h1 - h0) as f64 / health.ok().max(1) as f64, 1),
        }))
    }

    /// The hot path again, on fresh servers whose AWS endpoint is a keep-alive proxy in
    /// front of the emulator: what a vend costs when the SDK can reuse connections, as it
    /// does against AWS. Diagnostic only; the headline figures come from local.sh's servers.
    async fn keepalive_phase(
        &self,
        emulator_url: &str,
        env: &[(String, String)],
        first_port: u16,
        counts: &mut HashMap<String, u64>,
    ) -> Result<Value, String> {
        let o = &self.opts;
        let proxy = proxy::start(emulator_url).await?;
        let mut env = env.to_vec();
        env.push(("AWS_ENDPOINT_URL".into(), proxy.url.clone()));
        env.push(("VENDING_REGISTRATION_LIMIT".into(), STEADY_LIMIT.to_string()));
        let probe = local::probe_client()?;
        let mut servers = Vec::new();
        for i in 0..o.servers {
            let port = first_port + u16::try_from(i).map_err(|_| "too many servers")?;
            let log = self.local.state_dir.join(format!("logs/keepalive-{}.log", i + 1));
            let pid_file = self.local.state_dir.join(format!("vending-keepalive-{}.pid", i + 1));
            let mut server = local::spawn_server(&self.bin, &env, port, &log, &pid_file)?;
            server.wait_healthy(&probe).await?;
            servers.push(server);
        }
        let urls: Vec<String> = servers.iter().map(|s| format!("{}/activation", s.base)).collect();
        // Warm each server (connection, code cache) before measuring.
        let warm = load::run(&load::LoadSpec {
            urls: urls.clone(),
            clients: o.servers,
            vends: 4 * o.servers,
            max_retries: o.max_retries,
            max_retry_after: 10,
            deadline: o.timeout,
            vend: true,
        })
        .await?;
        add_counts(counts, &warm.per_activation);
        let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
        let emu = Emulator::new(emulator_url, &self.table().await?)?;
        let (conns0, reqs0) = proxy.counts();
        let Measured { result, calls, cpu_us } = self.measure_vends(&emu, &pids, urls, o.steady_vends).await?;
        let (conns1, reqs1) = proxy.counts();
        add_counts(counts, &result.per_activation);
        let ok = result.ok();
        drop(servers);
        drop(proxy);
        Ok(json!({
            "vends": ok,
            "failed_requests": result.failed + result.not_issued,
            "calls": calls,
            "aws_calls_per_vend": round(emulator::total(&calls) as f64 / ok.max(1) as f64, 4),
            "latency_ms": latency_summary(&result.vend_ms),
            "server_cpu_us_per_vend": round(cpu_us as f64 / ok.max(1) as f64, 1),
            "connections_to_proxy": conns1 - conns0,
            "requests_through_proxy": reqs1 - reqs0,
        }))
    }

    /// A measured window of vends: the emulator's calls (counted from a reset) and the
    /// servers' CPU, over exactly that window.
    async fn measure_vends(
        &self,
        emu: &Emulator,
        pids: &[u32],
        urls: Vec<String>,
        vends: usize,
    ) -> Result<Measured, String> {
        let o = &self.opts;
        emu.reset_calls().await?;
        let cpu0 = cpu_total(pids, self.ticks)?;
        let result = load::run(&load::LoadSpec {
            urls,
            clients: o.clients,
            vends,
            max_retries: o.max_retries,
            max_retry_after: 10,
            deadline: o.timeout,
            vend: true,
        })
        .await?;
        let cpu1 = cpu_total(pids, self.ticks)?;
        let calls = emu.calls().await?;
        Ok(Measured {
            result,
            calls,
            cpu_us: cpu1 - cpu0,
        })
    }

    async fn table(&self) -> Result<String, String> {
        self.local
            .env()
            .await?
            .into_iter()
            .find(|(k, _)| k == "VENDING_TABLE")
            .map(|(_, v)| v)
            .ok_or_else(|| "scripts/local.sh env has no VENDING_TABLE".into())
    }

    async fn run(&self, scenario: Scenario) -> Result<Value, String> {
        let o = &self.opts;
        let limit = o.limit.unwrap_or(scenario.default_limit());
        eprintln!(
            "== {}: {} servers, {} clients, {} vends, limit {limit}",
            scenario.name(),
            o.servers,
            o.clients,
            o.vends
        );
        let load_before = procfs::load_average();
        // A fresh emulator, so the pool starts empty and every activation is this run's.
        self.local.down().await?;
        let up = self.local.up(o.servers, limit).await?;
        let env = self.local.env().await?;
        let emu = Emulator::new(&up.emulator, &self.table().await?)?;

        eprintln!("   timing {} bare UpdateItems against the emulator", o.probe_samples);
        let probe = emu.time_update_item(o.probe_samples).await?;
        let mut probe_sorted = probe.clone();
        probe_sorted.sort_by(f64::total_cmp);

        eprintln!("   main phase");
        let pids = self.local.server_pids(o.servers)?;
        let urls: Vec<String> = up.urls.iter().map(|u| format!("{u}/activation")).collect();
        let faults = scenario.faults();
        if let Some(f) = &faults {
            emu.set_faults(f).await?;
        }
        emu.reset_calls().await?;
        let logs_before = log_lengths(&self.local, o.servers);
        let cpu0 = cpu_total(&pids, self.ticks)?;
        let main = load::run(&load::LoadSpec {
            urls,
            clients: o.clients,
            vends: o.vends,
            max_retries: o.max_retries,
            max_retry_after: 10,
            deadline: o.timeout,
            vend: true,
        })
        .await;
        let cpu1 = cpu_total(&pids, self.ticks);
        let calls = emu.calls().await;
        let busy = emu.busy().await?;
        if faults.is_some() {
            emu.clear_faults().await?;
        }
        let (main, cpu1, calls) = (main?, cpu1?, calls?);
        let rss_main = peak_rss_mb(&pids);
        let load_during = procfs::load_average();
        let created = emu.activation_limits().await?.len();
        let rotations = rotations_logged(&self.local, o.servers);
        let waited = vends_waited(&self.local, &logs_before);
        keep_main_phase_logs(&self.local, scenario, o.servers);
        let wasted = slots_wasted(&emu.activations_in_order().await?, &main.per_activation);
        let mut counts = main.per_activation.clone();

        eprintln!("   cold starts ({} fresh processes)", o.cold_runs);
        let port = up
            .urls
            .first()
            .and_then(|u| u.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or("cannot read the servers' port")?
            + u16::try_from(o.servers).map_err(|_| "too many servers")?;
        let mut cold_env = env.clone();
        cold_env.push(("VENDING_REGISTRATION_LIMIT".into(), limit.to_string()));
        let mut cold = Vec::new();
        for i in 0..o.cold_runs {
            let log = self.local.state_dir.join(format!("logs/coldstart-{i}.log"));
            let pid_file = self.local.state_dir.join("vending-coldstart.pid");
            let run = local::cold_start(&self.bin, &cold_env, port, &log, &pid_file).await?;
            if let Some(id) = &run.activation_id {
                *counts.entry(id.clone()).or_default() += 1;
            }
            cold.push(run);
        }

        eprintln!("   hot-path phase (limit {STEADY_LIMIT}, {} vends)", o.steady_vends);
        let steady = self.steady_phase(&mut counts).await?;
        eprintln!("   hot path with a keep-alive proxy in front of the emulator");
        let keepalive = self.keepalive_phase(&up.emulator, &env, port + 1, &mut counts).await?;

        // Every vend this run made, per activation, against each activation's own limit.
        let limits = emu.activation_limits().await?;
        let over_limit = counts
            .iter()
            .filter(|(id, n)| limits.get(*id).is_some_and(|l| **n > *l))
            .count();
        let max_per_activation = counts
            .iter()
            .filter(|(id, _)| limits.get(*id) == Some(&u64::from(limit)))
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);

        let ok = main.ok();
        let cold_health: Vec<f64> = cold.iter().map(|c| c.health_ms).collect();
        let cold_vend: Vec<f64> = cold.iter().map(|c| c.first_vend_ms).collect();
        let statuses: BTreeMap<String, u64> = main.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect();
        let hot = steady["aws_calls_per_vend"].clone();
        let peak_rss = rss_main.max(steady["server_peak_rss_mb"].as_f64().unwrap_or(0.0));
        Ok(json!({
            "scenario": scenario.name(),
            "date": procfs::utc_now(),
            "servers": o.servers,
            "clients": o.clients,
            "vends": ok,
            "failed_requests": main.failed + main.not_issued,
            "activations_created": created,
            "max_vends_per_activation": max_per_activation,
            "registration_limit": limit,
            "hot_path_aws_calls_per_vend": hot,
            "aws_calls_per_vend_overall": per_vend(&calls, ok),
            "vends_waited_for_rotation": waited,
            "slots_wasted": wasted,
            "dynamodb_writes_per_vend": round(dynamodb_writes(&calls) as f64 / ok.max(1) as f64, 4),
            "latency_ms": latency_summary(&main.vend_ms),
            "emulator_call_ms_p50": percentile(&probe_sorted, 50.0).map(|v| round(v, 2)),
            "server_cpu_us_per_vend": round((cpu1 - cpu0) as f64 / ok.max(1) as f64, 1),
            "server_peak_rss_mb": round(peak_rss, 1),
            "cold_start_ms": median(&cold_health).map(|v| round(v, 1)),
            "first_vend_ms": median(&cold_vend).map(|v| round(v, 1)),
            "machine": {
                "cores": procfs::cores(),
                "cpu_model": procfs::cpu_model(),
            },
            "details": {
                "requested_vends": o.vends,
                "duration_s": round(main.elapsed.as_secs_f64(), 2),
                "vends_per_s": round(ok as f64 / main.elapsed.as_secs_f64().max(1e-9), 1),
                "http_statuses": statuses,
                "client_retries": main.retries,
                "transport_errors": main.transport_errors,
                "attempt_latency_ms": latency_summary(&main.attempt_ms),
                "activations_vended": main.per_activation.len(),
                "rotations": rotations,
                "activations_over_their_limit": over_limit,
                "calls": calls,
                "emulator_busy": busy,
                "faults": faults,
                "emulator_call_ms": latency_summary(&probe),
                "cold_start_runs_ms": cold_health.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
                "first_vend_runs_ms": cold_vend.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
                "server_peak_rss_mb_main_phase": round(rss_main, 1),
                "hot_path_phase": steady,
                "keepalive_upstream_phase": keepalive,
                "load_average_1m": {"before": load_before, "main_phase_end": load_during, "end": procfs::load_average()},
            },
        }))
    }
}

fn fmt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The readable table: one line a figure, its target where the issue sets one.
fn table(r: &Value) -> String {
    let check = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    };
    let num = |k: &str| r[k].as_f64();
    let limit = num("registration_limit");
    // In `steady` no vend should wait for a rotation; in `storm-with-rotation` under 5%.
    let steady = r["scenario"] == "steady";
    let waited_target = if steady { "0" } else { "< 5% vends" };
    let waited_ok = |waited: f64, vends: f64| {
        if steady {
            waited == 0.0
        } else {
            waited < 0.05 * vends.max(1.0)
        }
    };
    let rows: Vec<(String, String, &str, &str)> = vec![
        ("vends".into(), fmt(&r["vends"]), "", ""),
        (
            "failed_requests".into(),
            fmt(&r["failed_requests"]),
            "0",
            check(num("failed_requests").map(|v| v == 0.0)),
        ),
        ("activations_created".into(), fmt(&r["activations_created"]), "", ""),
        (
            "max_vends_per_activation".into(),
            fmt(&r["max_vends_per_activation"]),
            "<= limit",
            check(num("max_vends_per_activation").zip(limit).map(|(m, l)| m <= l)),
        ),
        ("registration_limit".into(), fmt(&r["registration_limit"]), "", ""),
        (
            "hot_path_aws_calls_per_vend".into(),
            fmt(&r["hot_path_aws_calls_per_vend"]),
            "<= 1.05",
            check(num("hot_path_aws_calls_per_vend").map(|v| v <= 1.05)),
        ),
        (
            "aws_calls_per_vend_overall".into(),
            fmt(&r["aws_calls_per_vend_overall"]["total"]),
            "",
            "",
        ),
        ("latency_ms p50".into(), fmt(&r["latency_ms"]["p50"]), "", ""),
        ("latency_ms p90".into(), fmt(&r["latency_ms"]["p90"]), "", ""),
        ("latency_ms p99".into(), fmt(&r["latency_ms"]["p99"]), "", ""),
        ("latency_ms max".into(), fmt(&r["latency_ms"]["max"]), "", ""),
        ("emulator_call_ms_p50".into(), fmt(&r["emulator_call_ms_p50"]), "", ""),
        (
            "server_cpu_us_per_vend".into(),
            fmt(&r["server_cpu_us_per_vend"]),
            "< 300",
            check(num("server_cpu_us_per_vend").map(|v| v < 300.0)),
        ),
        (
            "server_peak_rss_mb".into(),
            fmt(&r["server_peak_rss_mb"]),
            "< 40",
            check(num("server_peak_rss_mb").map(|v| v < 40.0)),
        ),
        (
            "cold_start_ms".into(),
            fmt(&r["cold_start_ms"]),
            "< 100",
            check(num("cold_start_ms").map(|v| v < 100.0)),
        ),
        ("first_vend_ms".into(), fmt(&r["first_vend_ms"]), "", ""),
        (
            "vends_waited_for_rotation".into(),
            fmt(&r["vends_waited_for_rotation"]),
            waited_target,
            check(
                num("vends_waited_for_rotation")
                    .zip(num("vends"))
                    .map(|(w, v)| waited_ok(w, v)),
            ),
        ),
        (
            "slots_wasted".into(),
            fmt(&r["slots_wasted"]),
            "< 2% vends",
            check(
                num("slots_wasted")
                    .zip(num("vends"))
                    .map(|(w, v)| w < 0.02 * v.max(1.0)),
            ),
        ),
        (
            "dynamodb_writes_per_vend".into(),
            fmt(&r["dynamodb_writes_per_vend"]),
            "<= 0.3",
            check(num("dynamodb_writes_per_vend").map(|v| v <= 0.3)),
        ),
    ];
    let mut out = format!(
        "scenario {} · {} servers · {} clients · {} · {} cores, {}\n",
        fmt(&r["scenario"]),
        fmt(&r["servers"]),
        fmt(&r["clients"]),
        fmt(&r["date"]),
        fmt(&r["machine"]["cores"]),
        fmt(&r["machine"]["cpu_model"]),
    );
    out.push_str(&format!("{:<36} {:>10}  {:<9} verdict\n", "figure", "value", "target"));
    for (name, value, target, verdict) in rows {
        let line = format!("{name:<36} {value:>10}  {target:<9} {verdict}");
        out.push_str(line.trim_end());
        out.push('\n');
        if name == "aws_calls_per_vend_overall" {
            for (op, v) in r["aws_calls_per_vend_overall"]["by_operation"]
                .as_object()
                .into_iter()
                .flatten()
            {
                out.push_str(&format!("  {:<34} {:>10}\n", format!("{op} per vend"), fmt(v)));
            }
        }
    }
    let d = &r["details"];
    out.push_str(&format!(
        "main phase {} s ({} vends/s), client retries {}, HTTP {}; hot-path phase {} vends, {} s\n",
        fmt(&d["duration_s"]),
        fmt(&d["vends_per_s"]),
        fmt(&d["client_retries"]),
        fmt(&d["http_statuses"]),
        fmt(&d["hot_path_phase"]["vends"]),
        fmt(&d["hot_path_phase"]["duration_s"]),
    ));
    out.push_str(&format!(
        "server CPU per request (us): hot-path vend {}, /health alone {}, vend with keep-alive to AWS {}\n",
        fmt(&d["hot_path_phase"]["server_cpu_us_per_vend"]),
        fmt(&d["hot_path_phase"]["server_cpu_us_per_health_request"]),
        fmt(&d["keepalive_upstream_phase"]["server_cpu_us_per_vend"]),
    ));
    out
}

async fn run(opts: Options) -> Result<(), String> {
    let root = std::fs::canonicalize(&opts.root).map_err(|e| format!("--root {}: {e}", opts.root.display()))?;
    let state_dir = std::env::var_os("LOCAL_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/bench/local"));
    std::fs::create_dir_all(state_dir.join("logs")).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let bin = std::env::var_os("VENDING_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/vending"));
    let out = opts.out.clone().unwrap_or_else(|| root.join("target/bench"));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let low_water_percent = std::env::var("VENDING_LOW_WATER_PERCENT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|p| *p <= 90)
        .unwrap_or(20);
    let scenarios = opts.scenarios.clone();
    let ctx = Context {
        opts,
        local: Local { root, state_dir },
        bin,
        out,
        ticks: procfs::clock_ticks(),
        low_water_percent,
    };
    let mut results = Vec::new();
    for scenario in scenarios {
        let result = ctx.run(scenario).await?;
        let text = table(&result);
        println!("{text}");
        let json = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        write(&ctx.out.join(format!("{}.json", scenario.name())), &json)?;
        write(&ctx.out.join(format!("{}.txt", scenario.name())), &text)?;
        results.push((scenario, result, text));
    }
    // summary.json: the (first) scenario's figures at the top level; with `all`, every
    // scenario's figures under "scenarios" as well.
    let (mut summary, mut text) = (results[0].1.clone(), String::new());
    if results.len() > 1 {
        summary["scenarios"] = results
            .iter()
            .map(|(s, r, _)| (s.name().to_owned(), r.clone()))
            .collect::<Map<String, Value>>()
            .into();
    }
    for (_, _, t) in &results {
        text.push_str(t);
        text.push('\n');
    }
    let json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    write(&ctx.out.join("summary.json"), &json)?;
    write(&ctx.out.join("summary.txt"), &text)?;
    eprintln!("wrote {}", ctx.out.join("summary.json").display());
    Ok(())
}

fn write(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, format!("{text}\n")).map_err(|e| format!("{}: {e}", path.display()))
}

async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// `vending-bench load ...`: the load generator alone, for profiling by hand.
async fn load_only(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    let urls: Vec<String> = it
        .next()
        .ok_or("load needs URL[,URL...]")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let (mut vends, mut clients, mut pids) = (1000usize, 64usize, Vec::<u32>::new());
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: `{value}` is not valid");
        match flag.as_str() {
            "--vends" => vends = value.parse().map_err(|_| bad())?,
            "--clients" => clients = value.parse().map_err(|_| bad())?,
            "--pids" => {
                pids = value
                    .split(',')
                    .map(|p| p.parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    let ticks = procfs::clock_ticks();
    let split = |pids: &[u32]| -> (u64, u64) {
        pids.iter()
            .filter_map(|&p| procfs::cpu_split_us(p, ticks))
            .fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps))
    };
    let before = split(&pids);
    let vend = urls.iter().all(|u| !u.ends_with("/health"));
    let result = load::run(&load::LoadSpec {
        urls,
        clients,
        vends,
        max_retries: 10,
        max_retry_after: 10,
        deadline: Duration::from_secs(900),
        vend,
    })
    .await?;
    let after = split(&pids);
    let ok = result.ok().max(1) as f64;
    let out = json!({
        "ok": result.ok(),
        "failed": result.failed + result.not_issued,
        "duration_s": round(result.elapsed.as_secs_f64(), 2),
        "latency_ms": latency_summary(&result.vend_ms),
        "cpu_us_per_request": {
            "user": round((after.0 - before.0) as f64 / ok, 1),
            "system": round((after.1 - before.1) as f64 / ok, 1),
        },
        "activations": result.per_activation.len(),
    });
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("load") {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("vending-bench: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match runtime.block_on(load_only(&args[1..])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vending-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match parse_args(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vending-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // One thread: the load generator shares two cores with the servers and the emulator.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vending-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT/SIGTERM the run is dropped: local.sh children are killed, and so are
    // the servers the bench started itself; scripts/bench.sh then runs `local.sh down`.
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run(opts) => result,
            signal = stop_signal() => Err(format!("stopped by {signal}")),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vending-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_the_slots_of_activations_the_run_moved_past_are_wasted() {
        let order = vec![
            ("a".to_owned(), 10),
            ("b".to_owned(), 10),
            ("standby".to_owned(), 10),
            ("c".to_owned(), 10),
        ];
        let vended = HashMap::from([("a".to_owned(), 10), ("b".to_owned(), 7), ("c".to_owned(), 2)]);
        assert_eq!(
            slots_wasted(&order, &vended),
            3,
            "b retired with 3 slots unused; c is current"
        );
        assert_eq!(slots_wasted(&order, &HashMap::new()), 0);
    }

    #[test]
    fn dynamodb_writes_count_every_write_operation_and_no_read() {
        let calls: Calls = [
            ("DynamoDB.UpdateItem", 10),
            ("DynamoDB.TransactWriteItems", 2),
            ("DynamoDB.GetItem", 5),
            ("SSM.GetParameter", 3),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(dynamodb_writes(&calls), 12);
    }

    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn defaults_are_the_issue_s() {
        let o = parse_args(&[]).unwrap().unwrap();
        assert_eq!((o.servers, o.clients, o.vends), (2, 64, 5000));
        assert_eq!(o.scenarios, vec![Scenario::Steady]);
        assert_eq!(o.limit.unwrap_or(o.scenarios[0].default_limit()), 100);
    }

    #[test]
    fn scenarios_and_flags_parse() {
        let o = parse_args(&args("--scenario storm-with-rotation --clients=8 --vends 10"))
            .unwrap()
            .unwrap();
        assert_eq!(o.scenarios, vec![Scenario::StormWithRotation]);
        assert_eq!(o.scenarios[0].default_limit(), 10);
        assert_eq!((o.clients, o.vends), (8, 10));
        assert_eq!(parse_args(&args("--scenario all")).unwrap().unwrap().scenarios.len(), 3);
        assert!(parse_args(&args("--scenario nope")).is_err());
        assert!(parse_args(&args("--limit 0")).is_err());
        assert!(parse_args(&args("--limit 1001")).is_err());
        assert!(parse_args(&args("--help")).unwrap().is_none());
    }

    #[test]
    fn rotation_lines_are_read_from_the_logs() {
        let log = "\
2026-11-26T23:55:42Z  INFO rotated pool=\"default\" activation_id=a reason=no activation limit=100 expires_at=1 parameter_version=1 elapsed_ms=73
2026-11-26T23:55:43Z  INFO vended pool=default activation_id=a instance=\"-\" elapsed_ms=5
2026-11-26T23:55:44Z  INFO rotated pool=\"default\" activation_id=b reason=low-water mark limit=100 expires_at=1 parameter_version=2 elapsed_ms=21";
        let (reasons, elapsed) = parse_rotations(log);
        assert_eq!(elapsed, vec![73.0, 21.0]);
        assert_eq!(reasons.get("no activation"), Some(&1));
        assert_eq!(reasons.get("low-water mark"), Some(&1));
    }

    #[test]
    fn the_table_marks_missed_targets() {
        let r = json!({
            "scenario": "steady", "vends": 10, "failed_requests": 1, "registration_limit": 100,
            "max_vends_per_activation": 100, "hot_path_aws_calls_per_vend": 1.0,
            "server_cpu_us_per_vend": 400.0, "server_peak_rss_mb": 10.0, "cold_start_ms": 5.0,
        });
        let t = table(&r);
        assert!(t
            .lines()
            .any(|l| l.starts_with("failed_requests") && l.ends_with("MISSED")));
        assert!(t
            .lines()
            .any(|l| l.starts_with("server_cpu_us_per_vend") && l.ends_with("MISSED")));
        assert!(t
            .lines()
            .any(|l| l.starts_with("hot_path_aws_calls_per_vend") && l.ends_with("met")));
    }
}
