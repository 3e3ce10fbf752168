//! A full run: each scenario in turn (emulator probe, main phase, cold starts, then the
//! phases of phases.rs), its [`Summary`], and the files written to `--out`.

use std::path::{Path, PathBuf};

use crate::cli::RunArgs;
use crate::emulator::Emulator;
use crate::figures::{
    cpu_total, dynamodb_writes, max_vends_at_limit, over_their_limit, peak_rss_mb, per_vend, slots_wasted,
};
use crate::local::{self, Local};
use crate::logs::{keep_main_phase_logs, log_lengths, rotations_logged, vends_waited};
use crate::scenario::{Scenario, STEADY_LIMIT};
use crate::stats::{latency_summary, median, per, percentile, round};
use crate::summary::{Details, LoadAverage, Machine, Summary, SummaryFile};
use crate::{load, procfs, table};

/// What every phase of a run shares.
pub struct Context {
    pub opts: RunArgs,
    pub local: Local,
    /// The `vending` binary for the processes the bench starts itself.
    pub bin: PathBuf,
    pub out: PathBuf,
    /// Clock ticks per second of /proc/<pid>/stat.
    pub ticks: u64,
    /// `VENDING_LOW_WATER_PERCENT` as the servers read it (20 unless set to 0..=90).
    pub low_water_percent: u32,
}

/// Where a run works, made ready: the repository, `scripts/local.sh`'s state
/// (`LOCAL_STATE_DIR`), the `vending` binary (`VENDING_BIN`) and the output folder.
pub struct Places {
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub bin: PathBuf,
    pub out: PathBuf,
}

impl Places {
    pub fn of(opts: &RunArgs) -> Result<Places, String> {
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
        Ok(Places {
            root,
            state_dir,
            bin,
            out,
        })
    }
}

/// Runs every scenario `opts` names and writes `<scenario>.json`/`.txt` after each,
/// then `summary.json` and `summary.txt`.
pub async fn run(opts: RunArgs) -> Result<(), String> {
    let Places {
        root,
        state_dir,
        bin,
        out,
    } = Places::of(&opts)?;
    let low_water_percent = std::env::var("VENDING_LOW_WATER_PERCENT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|p| *p <= 90)
        .unwrap_or(20);
    let scenarios = opts.scenario.scenarios();
    let ctx = Context {
        opts,
        local: Local { root, state_dir },
        bin,
        out,
        ticks: procfs::clock_ticks(),
        low_water_percent,
    };
    let mut results = Vec::new();
    let mut text = String::new();
    for scenario in scenarios {
        let result = ctx.run(scenario).await?;
        let table = table::table(&result);
        println!("{table}");
        write_json(&ctx.out.join(format!("{}.json", scenario.name())), &result)?;
        write(&ctx.out.join(format!("{}.txt", scenario.name())), &table)?;
        text.push_str(&table);
        text.push('\n');
        results.push(result);
    }
    let summary = SummaryFile::new(&results).ok_or("no scenario ran")?;
    write_json(&ctx.out.join("summary.json"), &summary)?;
    write(&ctx.out.join("summary.txt"), &text)?;
    eprintln!("wrote {}", ctx.out.join("summary.json").display());
    Ok(())
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let json = serde_json::to_string_pretty(value).map_err(|e| format!("{}: {e}", path.display()))?;
    write(path, &json)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, format!("{text}\n")).map_err(|e| format!("{}: {e}", path.display()))
}

impl Context {
    /// The DynamoDB table `scripts/local.sh` provisioned.
    pub async fn table(&self) -> Result<String, String> {
        self.local
            .env()
            .await?
            .into_iter()
            .find(|(k, _)| k == "VENDING_TABLE")
            .map(|(_, v)| v)
            .ok_or_else(|| "scripts/local.sh env has no VENDING_TABLE".into())
    }

    /// One scenario, from a fresh emulator to its figures.
    async fn run(&self, scenario: Scenario) -> Result<Summary, String> {
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
        let main = load::run(&self.vend_load(urls, o.vends)).await;
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
        let ok = main.ok();
        let cold_health: Vec<f64> = cold.iter().map(|c| c.health_ms).collect();
        let cold_vend: Vec<f64> = cold.iter().map(|c| c.first_vend_ms).collect();
        let one_place = |values: &[f64]| values.iter().map(|v| round(*v, 1)).collect::<Vec<_>>();
        Ok(Summary {
            scenario: scenario.name(),
            date: procfs::utc_now(),
            servers: o.servers,
            clients: o.clients,
            vends: ok,
            failed_requests: main.failed + main.not_issued,
            activations_created: created,
            max_vends_per_activation: max_vends_at_limit(&counts, &limits, limit),
            registration_limit: limit,
            hot_path_aws_calls_per_vend: steady.aws_calls_per_vend,
            aws_calls_per_vend_overall: per_vend(&calls, ok),
            latency_ms: latency_summary(&main.vend_ms),
            emulator_call_ms_p50: percentile(&probe_sorted, 50.0).map(|v| round(v, 2)),
            server_cpu_us_per_vend: per((cpu1 - cpu0) as f64, ok, 1),
            server_peak_rss_mb: round(rss_main.max(steady.server_peak_rss_mb), 1),
            cold_start_ms: median(&cold_health).map(|v| round(v, 1)),
            first_vend_ms: median(&cold_vend).map(|v| round(v, 1)),
            vends_waited_for_rotation: waited,
            slots_wasted: wasted,
            dynamodb_writes_per_vend: per(dynamodb_writes(&calls) as f64, ok, 4),
            machine: Machine {
                cores: procfs::cores(),
                cpu_model: procfs::cpu_model(),
            },
            details: Details {
                requested_vends: o.vends,
                duration_s: round(main.elapsed.as_secs_f64(), 2),
                vends_per_s: round(ok as f64 / main.elapsed.as_secs_f64().max(1e-9), 1),
                http_statuses: main.statuses.clone(),
                client_retries: main.retries,
                transport_errors: main.transport_errors,
                attempt_latency_ms: latency_summary(&main.attempt_ms),
                activations_vended: main.per_activation.len(),
                rotations,
                activations_over_their_limit: over_their_limit(&counts, &limits),
                calls,
                emulator_busy: busy,
                faults,
                emulator_call_ms: latency_summary(&probe),
                cold_start_runs_ms: one_place(&cold_health),
                first_vend_runs_ms: one_place(&cold_vend),
                server_peak_rss_mb_main_phase: round(rss_main, 1),
                hot_path_phase: steady,
                keepalive_upstream_phase: keepalive,
                load_average_1m: LoadAverage {
                    before: load_before,
                    main_phase_end: load_during,
                    end: procfs::load_average(),
                },
            },
        })
    }
}
