//! `vending-bench load URL[,URL...]`: the load generator alone against servers started
//! by hand, with the user and system CPU the given processes used per request.

use std::time::Duration;

use serde::Serialize;

use crate::cli::LoadArgs;
use crate::load::{self, LoadSpec};
use crate::procfs;
use crate::stats::{latency_summary, per, round, Latency};

/// What `load` prints (JSON).
#[derive(Serialize, Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    pub duration_s: f64,
    pub latency_ms: Latency,
    pub cpu_us_per_request: CpuSplit,
    pub activations: usize,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct CpuSplit {
    pub user: f64,
    pub system: f64,
}

pub async fn load_only(args: LoadArgs) -> Result<(), String> {
    let ticks = procfs::clock_ticks();
    let split = |pids: &[u32]| -> (u64, u64) {
        pids.iter()
            .filter_map(|&p| procfs::cpu_split_us(p, ticks))
            .fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps))
    };
    let before = split(&args.pids);
    let vend = args.urls.iter().all(|u| !u.ends_with("/health"));
    let result = load::run(&LoadSpec {
        urls: args.urls,
        clients: args.clients,
        vends: args.vends,
        max_retries: 10,
        max_retry_after: 10,
        deadline: Duration::from_secs(900),
        vend,
    })
    .await?;
    let after = split(&args.pids);
    let ok = result.ok();
    let report = LoadReport {
        ok,
        failed: result.failed + result.not_issued,
        duration_s: round(result.elapsed.as_secs_f64(), 2),
        latency_ms: latency_summary(&result.vend_ms),
        cpu_us_per_request: CpuSplit {
            user: per((after.0 - before.0) as f64, ok, 1),
            system: per((after.1 - before.1) as f64, ok, 1),
        },
        activations: result.per_activation.len(),
    };
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}
