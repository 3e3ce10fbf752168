//! vending-bench: drives `scripts/local.sh` (emulator + N `vending serve`) with a boot
//! storm of concurrent vends and writes what it cost to target/bench/summary.json.
//! `scripts/bench.sh` builds everything and calls this; see docs/performance.md.
//!
//! # Layout
//!
//! - `main.rs`: parses the command line and runs a full run or `load` on one thread,
//!   stopping on SIGINT/SIGTERM.
//! - `cli.rs`: the command line (clap): the run's flags, `load`'s, and their checks.
//! - `scenario.rs`: the scenarios (`steady`, `storm-with-rotation`, `throttled`), each
//!   one's default limit and injected faults.
//! - `run.rs`: a full run: per scenario the probe, the main phase and the cold starts,
//!   its `Summary`, and the files written.
//! - `phases.rs`: the hot-path and keep-alive phases, and a measured window of vends.
//! - `summary.rs`: the typed `Summary` that `summary.json` and `<scenario>.json` hold.
//! - `table.rs`: the readable table against the targets (`summary.txt`).
//! - `figures.rs`: figures from counts: CPU, RSS, calls per vend, wasted slots.
//! - `logs.rs`: what the servers' logs say (rotations, vends that waited).
//! - `stats.rs`: percentiles, medians, rounding, latency summaries.
//! - `load.rs`: the load generator (concurrent callers with the boot scripts' retries).
//! - `load_only.rs`: `vending-bench load`, the load generator alone.
//! - `lambda/`: the Lambda-shaped stage (Runtime API, environments, stage throttle).
//! - `stage_only.rs`: `vending-bench stage`, that stage alone.
//! - `local.rs`: `scripts/local.sh` from Rust, and servers the bench starts itself.
//! - `emulator.rs`: the emulator's control routes and a few bare AWS calls.
//! - `proxy.rs`: the keep-alive proxy in front of the emulator.
//! - `json_shape.rs` (tests only): a JSON file's key paths and kinds, for the tests
//!   that hold summary.json's and lambda-storm.json's.
//! - `procfs.rs`: CPU, memory and load of the machine and the servers, from /proc.
//! - `storm/`: `--scenario lambda-storm`: `mod.rs` the runner (a fresh emulator with
//!   quotas, the stage, N booting servers, `lambda-storm.json`), `server.rs` one booting
//!   server as scripts/bootstrap-linux.sh does, `retry.rs` its decisions after each
//!   answer, `report.rs` the typed `lambda-storm.json` and its figures.

mod cli;
mod emulator;
mod figures;
#[cfg(test)]
mod json_shape;
mod lambda;
mod load;
mod load_only;
mod local;
mod logs;
mod phases;
mod procfs;
mod proxy;
mod run;
mod scenario;
mod stage_only;
mod stats;
mod storm;
mod summary;
mod table;

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, ScenarioChoice};

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

/// Runs `work` on one thread (the load generator shares two cores with the servers and
/// the emulator): 0 when it succeeds, 1 with its error on stderr when it fails.
fn block_on(work: impl Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vending-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vending-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // Bad usage: clap's message and exit code 2; --help: exit 0.
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Load(args)) => block_on(load_only::load_only(args)),
        Some(Command::Stage(args)) => block_on(stage_only::stage_only(args, stop_signal())),
        // On SIGINT/SIGTERM the run is dropped: local.sh children are killed, and so are
        // the servers the bench started itself; scripts/bench.sh then runs `local.sh down`.
        None if cli.run.scenario == ScenarioChoice::LambdaStorm => block_on(async {
            tokio::select! {
                result = storm::run(cli.run) => result,
                signal = stop_signal() => Err(format!("stopped by {signal}")),
            }
        }),
        None => block_on(async {
            tokio::select! {
                result = run::run(cli.run) => result,
                signal = stop_signal() => Err(format!("stopped by {signal}")),
            }
        }),
    }
}
