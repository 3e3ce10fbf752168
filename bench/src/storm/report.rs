//! `target/bench/lambda-storm.json`: a typed [`StormFile`] with one [`StormRun`] per
//! throttle, and the pure figures that fill it (from the servers' records, the stage's
//! counts and the emulator's). The field names are the interface issue 23 names and
//! docs/performance.md documents; the tests below hold them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::server::ServerRecord;
use crate::emulator::{Busy, Calls};
use crate::figures::VendCounts;
use crate::lambda::StageCounts;
use crate::stats::{latency_summary, round, Latency};
use crate::summary::Machine;

/// The whole file.
#[derive(Serialize, Clone, Debug, Default)]
pub struct StormFile {
    pub scenario: &'static str,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`, when the file was written.
    pub date: String,
    /// `null` when `--storm-runs` left the run out.
    pub default_throttle: Option<StormRun>,
    pub raised_throttle: Option<StormRun>,
    pub machine: Machine,
}

/// One run: N servers booting through the stage at one throttle.
#[derive(Serialize, Clone, Debug, Default)]
pub struct StormRun {
    pub servers: usize,
    pub throttle_rps: f64,
    pub throttle_burst: f64,
    /// The pool's registration limit for the run.
    pub registration_limit: u32,
    pub max_environments: usize,
    /// First request of any server to the last registration; `null` if none registered.
    pub all_registered_s: Option<f64>,
    /// Per server, its first request to its first activation (ms).
    pub time_to_code_ms: Latency,
    /// Per server, its first request to its registration (ms).
    pub time_to_registered_ms: Latency,
    pub registered: u64,
    /// 429s the servers got (vends and reports).
    pub http_429: u64,
    /// 503s the servers got, by the body's `error.code` (`none`: no code).
    pub http_503_by_code: BTreeMap<String, u64>,
    /// Servers that ended unregistered (gave up, refused twice, a final answer).
    pub failed: u64,
    /// Refusals SSM gave the servers' registrations.
    pub refused: u64,
    pub environments_started: u64,
    pub cold_starts: u64,
    /// Requests Lambda refused (no environment free, none could start): API Gateway's 500.
    pub lambda_throttled: u64,
    /// Emulator calls per successful vend, by `Service.Action` (the servers' own
    /// `SSM.RegisterManagedInstance` included).
    pub aws_calls_per_vend_by_operation: BTreeMap<String, f64>,
    /// Calls the emulator's quota buckets refused, by operation (each one the service's
    /// SDK then retried, or gave up on).
    pub aws_throttled_by_operation: BTreeMap<String, u64>,
    /// Slots of activations the run moved past that no server was handed.
    pub slots_wasted: u64,
    /// How long the emulator was busy serving AWS calls (it serves one at a time).
    pub emulator_busy_s: f64,
    pub target: Target,
    pub details: StormDetails,
}

/// Issue 23's targets, as figures: reported, never enforced.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Target {
    /// N ÷ the stage's rate: the fastest the throttle lets N vends through.
    pub n_over_throttle_s: f64,
    /// The floor the target is measured from: `stage throttle` (N ÷ rate) or
    /// `emulator busy time` (when it is the larger, at the raised throttle).
    pub floor: &'static str,
    pub floor_s: f64,
    /// 1.1 at the default throttle, 1.2 at the raised one.
    pub factor: f64,
    /// `factor` × `floor_s`: what `all_registered_s` should stay within.
    pub all_registered_within_s: f64,
    /// `all_registered_s` ≤ `all_registered_within_s`; `null` when nothing registered.
    pub all_registered_in_time: Option<bool>,
    /// Every server registered, none failed, none refused, no AWS call throttled.
    pub every_server_registered: bool,
    pub no_aws_call_throttled: bool,
}

/// The rest: the stage's own counts and the raw material of the figures above.
#[derive(Serialize, Clone, Debug, Default)]
pub struct StormDetails {
    pub boot_spread_s: f64,
    pub max_wait_s: u64,
    pub duration_s: f64,
    /// Successful vends (a refused server vends twice).
    pub vends: u64,
    pub activations_vended: usize,
    pub activations_created: usize,
    pub confirmed: u64,
    /// Reports the stage did not take (the script's WARNINGs).
    pub report_warnings: u64,
    pub http_statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// Why servers failed, by reason.
    pub failures: BTreeMap<String, u64>,
    pub stage: StageCounts,
    pub aws_calls: Calls,
    pub aws_calls_per_vend: f64,
    pub emulator_busy: BTreeMap<String, Busy>,
}

/// What the servers' records add up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientFigures {
    pub all_registered_s: Option<f64>,
    pub time_to_code_ms: Latency,
    pub time_to_registered_ms: Latency,
    pub registered: u64,
    pub failed: u64,
    pub refused: u64,
    pub confirmed: u64,
    pub report_warnings: u64,
    pub http_statuses: BTreeMap<u16, u64>,
    pub http_503_by_code: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub failures: BTreeMap<String, u64>,
    /// Successful vends by activation ID.
    pub per_activation: VendCounts,
}

impl ClientFigures {
    pub fn vends(&self) -> u64 {
        self.per_activation.values().sum()
    }

    pub fn http_429(&self) -> u64 {
        self.http_statuses.get(&429).copied().unwrap_or(0)
    }
}

/// Adds the records up. Times per server are from its own first request.
pub fn client_figures(records: &[ServerRecord]) -> ClientFigures {
    let mut f = ClientFigures::default();
    let mut to_code = Vec::new();
    let mut to_registered = Vec::new();
    let mut first: Option<f64> = None;
    let mut last: Option<f64> = None;
    for r in records {
        if let Some(t) = r.first_request_s {
            first = Some(first.map_or(t, |f| f.min(t)));
        }
        if let (Some(start), Some(code)) = (r.first_request_s, r.code_s) {
            to_code.push((code - start) * 1000.0);
        }
        match (r.first_request_s, r.registered_s) {
            (Some(start), Some(done)) => {
                to_registered.push((done - start) * 1000.0);
                last = Some(last.map_or(done, |l| l.max(done)));
                f.registered += 1;
            }
            _ => f.failed += 1,
        }
        if let Some(why) = &r.failure {
            *f.failures.entry(why.clone()).or_default() += 1;
        }
        f.refused += u64::from(r.refused);
        f.confirmed += u64::from(r.confirmed);
        f.report_warnings += u64::from(r.report_warnings);
        f.transport_errors += r.transport_errors;
        for (status, n) in &r.statuses {
            *f.http_statuses.entry(*status).or_default() += n;
        }
        for (code, n) in &r.codes_503 {
            *f.http_503_by_code.entry(code.clone()).or_default() += n;
        }
        for id in &r.vended {
            *f.per_activation.entry(id.clone()).or_default() += 1;
        }
    }
    f.all_registered_s = match (first, last) {
        (Some(first), Some(last)) => Some(round(last - first, 2)),
        _ => None,
    };
    f.time_to_code_ms = latency_summary(&to_code);
    f.time_to_registered_ms = latency_summary(&to_registered);
    f
}

/// Which throttle a run is at: the target differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttle {
    Default,
    Raised,
}

impl Throttle {
    /// The run's key in lambda-storm.json.
    pub fn name(self) -> &'static str {
        match self {
            Throttle::Default => "default_throttle",
            Throttle::Raised => "raised_throttle",
        }
    }
}

/// Issue 23 item 5: within 1.1 × N ÷ rate at the default throttle; within 1.2 × the
/// larger of N ÷ rate and the emulator's busy time when raised.
pub fn target(
    throttle: Throttle,
    servers: usize,
    rps: f64,
    emulator_busy_s: f64,
    figures: &ClientFigures,
    throttled_calls: u64,
) -> Target {
    let n_over_throttle_s = round(servers as f64 / rps, 2);
    let (floor, floor_s, factor) = match throttle {
        Throttle::Default => ("stage throttle", n_over_throttle_s, 1.1),
        Throttle::Raised if emulator_busy_s > n_over_throttle_s => ("emulator busy time", emulator_busy_s, 1.2),
        Throttle::Raised => ("stage throttle", n_over_throttle_s, 1.2),
    };
    let within = round(floor_s * factor, 2);
    Target {
        n_over_throttle_s,
        floor,
        floor_s,
        factor,
        all_registered_within_s: within,
        all_registered_in_time: figures.all_registered_s.map(|s| s <= within),
        every_server_registered: figures.registered == servers as u64 && figures.failed == 0 && figures.refused == 0,
        no_aws_call_throttled: throttled_calls == 0,
    }
}

/// Emulator seconds busy, from `GET /_emulator/busy`.
pub fn busy_seconds(busy: &BTreeMap<String, Busy>) -> f64 {
    round(busy.values().map(|b| b.total_ms).sum::<f64>() / 1000.0, 2)
}

#[cfg(test)]
mod tests;
