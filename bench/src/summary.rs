//! What a run writes: one [`Summary`] per scenario (`<scenario>.json`) and
//! [`SummaryFile`] (`summary.json`). The field names are the interface
//! docs/performance.md documents; the tests below hold them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::emulator::{Busy, Calls};
use crate::scenario::Fault;
use crate::stats::Latency;

/// One scenario's figures: the headline ones in the order of the table (table.rs), then
/// `machine` and `details`.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Summary {
    pub scenario: &'static str,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`, when the scenario's figures were gathered.
    pub date: String,
    pub servers: usize,
    pub clients: usize,
    /// Successful vends of the main phase.
    pub vends: u64,
    /// Vends that still failed after the caller's retries, or were never issued.
    pub failed_requests: u64,
    pub activations_created: usize,
    pub max_vends_per_activation: u64,
    pub registration_limit: u32,
    pub hot_path_aws_calls_per_vend: f64,
    pub aws_calls_per_vend_overall: PerVend,
    pub latency_ms: Latency,
    pub emulator_call_ms_p50: Option<f64>,
    pub server_cpu_us_per_vend: f64,
    pub server_peak_rss_mb: f64,
    pub cold_start_ms: Option<f64>,
    pub first_vend_ms: Option<f64>,
    pub vends_waited_for_rotation: u64,
    pub slots_wasted: u64,
    pub dynamodb_writes_per_vend: f64,
    pub machine: Machine,
    pub details: Details,
}

/// `summary.json`: the first scenario's figures at the top level; with `--scenario
/// all`, every scenario's figures under `scenarios` as well.
#[derive(Serialize, Debug)]
pub struct SummaryFile<'a> {
    #[serde(flatten)]
    pub first: &'a Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenarios: Option<BTreeMap<&'static str, &'a Summary>>,
}

impl<'a> SummaryFile<'a> {
    /// `None` when there is no scenario.
    pub fn new(results: &'a [Summary]) -> Option<Self> {
        let first = results.first()?;
        let scenarios = (results.len() > 1).then(|| results.iter().map(|s| (s.scenario, s)).collect());
        Some(Self { first, scenarios })
    }
}

/// AWS calls per vend, in all and by operation (4 decimals).
#[derive(Serialize, Clone, Debug, Default)]
pub struct PerVend {
    pub total: f64,
    pub by_operation: BTreeMap<String, f64>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Details {
    pub requested_vends: usize,
    pub duration_s: f64,
    pub vends_per_s: f64,
    /// HTTP status (a JSON object key, so a string) → answers of that status.
    pub http_statuses: BTreeMap<u16, u64>,
    pub client_retries: u64,
    pub transport_errors: u64,
    pub attempt_latency_ms: Latency,
    pub activations_vended: usize,
    pub rotations: Rotations,
    pub activations_over_their_limit: usize,
    pub calls: Calls,
    pub emulator_busy: BTreeMap<String, Busy>,
    /// The faults injected in the main phase (`throttled`), `null` otherwise.
    pub faults: Option<Vec<Fault>>,
    pub emulator_call_ms: Latency,
    pub cold_start_runs_ms: Vec<f64>,
    pub first_vend_runs_ms: Vec<f64>,
    pub server_peak_rss_mb_main_phase: f64,
    pub hot_path_phase: HotPathPhase,
    pub keepalive_upstream_phase: KeepAlivePhase,
    pub load_average_1m: LoadAverage,
}

/// The `rotated` lines of the servers' logs over the main phase.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Rotations {
    pub count: usize,
    pub by_reason: BTreeMap<String, u64>,
    pub create_to_commit_ms: Latency,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct HotPathPhase {
    pub registration_limit: u32,
    pub warmup_vends: u64,
    pub vends: u64,
    pub failed_requests: u64,
    pub activations_seen: usize,
    pub calls: Calls,
    pub aws_calls_per_vend: f64,
    pub duration_s: f64,
    pub vends_per_s: f64,
    pub latency_ms: Latency,
    pub server_cpu_us_per_vend: f64,
    pub server_peak_rss_mb: f64,
    pub health_requests: u64,
    pub server_cpu_us_per_health_request: f64,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct KeepAlivePhase {
    pub vends: u64,
    pub failed_requests: u64,
    pub calls: Calls,
    pub aws_calls_per_vend: f64,
    pub latency_ms: Latency,
    pub server_cpu_us_per_vend: f64,
    pub connections_to_proxy: u64,
    pub requests_through_proxy: u64,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct LoadAverage {
    pub before: Option<f64>,
    pub main_phase_end: Option<f64>,
    pub end: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_shape::shape;
    use crate::scenario::Scenario;
    use crate::stats::latency_summary;
    use serde_json::Value;

    /// Maps whose keys are data (operations, statuses, reasons): their entries show as `*`.
    const MAPS: [&str; 7] = [
        "aws_calls_per_vend_overall.by_operation",
        "details.http_statuses",
        "details.rotations.by_reason",
        "details.calls",
        "details.emulator_busy",
        "details.hot_path_phase.calls",
        "details.keepalive_upstream_phase.calls",
    ];

    /// Every key path of `summary.json`'s figures (and of each `<scenario>.json`) with
    /// the JSON kind of its value, as the untyped JSON wrote them (read from a run of
    /// `throttled`, the one scenario with faults, before the Summary was typed).
    /// docs/performance.md documents them.
    const DOCUMENTED: &str = "
activations_created int
aws_calls_per_vend_overall map
aws_calls_per_vend_overall.by_operation map
aws_calls_per_vend_overall.by_operation.* float
aws_calls_per_vend_overall.total float
clients int
cold_start_ms float
date str
details map
details.activations_over_their_limit int
details.activations_vended int
details.attempt_latency_ms map
details.attempt_latency_ms.max float
details.attempt_latency_ms.p50 float
details.attempt_latency_ms.p90 float
details.attempt_latency_ms.p99 float
details.calls map
details.calls.* int
details.client_retries int
details.cold_start_runs_ms list
details.cold_start_runs_ms[] float
details.duration_s float
details.emulator_busy map
details.emulator_busy.* map
details.emulator_busy.*.calls int
details.emulator_busy.*.slowest_ms float
details.emulator_busy.*.total_ms float
details.emulator_call_ms map
details.emulator_call_ms.max float
details.emulator_call_ms.p50 float
details.emulator_call_ms.p90 float
details.emulator_call_ms.p99 float
details.faults list
details.faults[] map
details.faults[].error str
details.faults[].operation str
details.faults[].rate float
details.first_vend_runs_ms list
details.first_vend_runs_ms[] float
details.hot_path_phase map
details.hot_path_phase.activations_seen int
details.hot_path_phase.aws_calls_per_vend float
details.hot_path_phase.calls map
details.hot_path_phase.calls.* int
details.hot_path_phase.duration_s float
details.hot_path_phase.failed_requests int
details.hot_path_phase.health_requests int
details.hot_path_phase.latency_ms map
details.hot_path_phase.latency_ms.max float
details.hot_path_phase.latency_ms.p50 float
details.hot_path_phase.latency_ms.p90 float
details.hot_path_phase.latency_ms.p99 float
details.hot_path_phase.registration_limit int
details.hot_path_phase.server_cpu_us_per_health_request float
details.hot_path_phase.server_cpu_us_per_vend float
details.hot_path_phase.server_peak_rss_mb float
details.hot_path_phase.vends int
details.hot_path_phase.vends_per_s float
details.hot_path_phase.warmup_vends int
details.http_statuses map
details.http_statuses.* int
details.keepalive_upstream_phase map
details.keepalive_upstream_phase.aws_calls_per_vend float
details.keepalive_upstream_phase.calls map
details.keepalive_upstream_phase.calls.* int
details.keepalive_upstream_phase.connections_to_proxy int
details.keepalive_upstream_phase.failed_requests int
details.keepalive_upstream_phase.latency_ms map
details.keepalive_upstream_phase.latency_ms.max float
details.keepalive_upstream_phase.latency_ms.p50 float
details.keepalive_upstream_phase.latency_ms.p90 float
details.keepalive_upstream_phase.latency_ms.p99 float
details.keepalive_upstream_phase.requests_through_proxy int
details.keepalive_upstream_phase.server_cpu_us_per_vend float
details.keepalive_upstream_phase.vends int
details.load_average_1m map
details.load_average_1m.before float
details.load_average_1m.end float
details.load_average_1m.main_phase_end float
details.requested_vends int
details.rotations map
details.rotations.by_reason map
details.rotations.by_reason.* int
details.rotations.count int
details.rotations.create_to_commit_ms map
details.rotations.create_to_commit_ms.max float
details.rotations.create_to_commit_ms.p50 float
details.rotations.create_to_commit_ms.p90 float
details.rotations.create_to_commit_ms.p99 float
details.server_peak_rss_mb_main_phase float
details.transport_errors int
details.vends_per_s float
dynamodb_writes_per_vend float
emulator_call_ms_p50 float
failed_requests int
first_vend_ms float
hot_path_aws_calls_per_vend float
latency_ms map
latency_ms.max float
latency_ms.p50 float
latency_ms.p90 float
latency_ms.p99 float
machine map
machine.cores int
machine.cpu_model str
max_vends_per_activation int
registration_limit int
scenario str
server_cpu_us_per_vend float
server_peak_rss_mb float
servers int
slots_wasted int
vends int
vends_waited_for_rotation int
";

    /// Paths and kinds that are in `actual` but not documented, and documented but not
    /// in `actual`.
    fn difference(actual: &Value) -> (Vec<String>, Vec<String>) {
        let mut found = Vec::new();
        shape(actual, &MAPS, "", &mut found);
        let documented: Vec<String> = DOCUMENTED
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        let extra = found.iter().filter(|l| !documented.contains(l)).cloned().collect();
        let missing = documented.into_iter().filter(|l| !found.contains(l)).collect();
        (extra, missing)
    }

    /// A summary with every optional figure present and one entry in every map and list,
    /// so that every path shows with the kind of a real value.
    fn full() -> Summary {
        let calls = Calls::from([("DynamoDB.UpdateItem".to_owned(), 1)]);
        let latency = latency_summary(&[1.5]);
        let mut s = Summary {
            scenario: "throttled",
            latency_ms: latency,
            emulator_call_ms_p50: Some(1.5),
            cold_start_ms: Some(1.5),
            first_vend_ms: Some(1.5),
            ..Summary::default()
        };
        s.aws_calls_per_vend_overall.by_operation = BTreeMap::from([("DynamoDB.UpdateItem".to_owned(), 1.0)]);
        let d = &mut s.details;
        d.http_statuses = BTreeMap::from([(200, 1)]);
        d.attempt_latency_ms = latency;
        d.rotations.by_reason = BTreeMap::from([("no activation".to_owned(), 1)]);
        d.rotations.create_to_commit_ms = latency;
        d.calls = calls.clone();
        d.emulator_busy = BTreeMap::from([("DynamoDB.UpdateItem".to_owned(), Busy::default())]);
        d.faults = Scenario::Throttled.faults();
        d.emulator_call_ms = latency;
        d.cold_start_runs_ms = vec![1.5];
        d.first_vend_runs_ms = vec![1.5];
        d.hot_path_phase.calls = calls.clone();
        d.hot_path_phase.latency_ms = latency;
        d.keepalive_upstream_phase.calls = calls;
        d.keepalive_upstream_phase.latency_ms = latency;
        d.load_average_1m = LoadAverage {
            before: Some(1.5),
            main_phase_end: Some(1.5),
            end: Some(1.5),
        };
        s
    }

    #[test]
    fn a_scenario_s_json_has_exactly_the_documented_field_names_and_kinds() {
        let (extra, missing) = difference(&serde_json::to_value(full()).unwrap());
        assert!(
            extra.is_empty() && missing.is_empty(),
            "extra: {extra:?}\nmissing: {missing:?}"
        );
    }

    #[test]
    fn summary_json_adds_scenarios_only_when_there_are_several() {
        let one = [full()];
        let json = serde_json::to_value(SummaryFile::new(&one).unwrap()).unwrap();
        assert_eq!(difference(&json), (vec![], vec![]));

        let mut storm = full();
        storm.scenario = "storm-with-rotation";
        let both = [full(), storm];
        let mut json = serde_json::to_value(SummaryFile::new(&both).unwrap()).unwrap();
        assert_eq!(json["scenario"], "throttled", "the first scenario's figures at the top");
        let scenarios = json.as_object_mut().unwrap().remove("scenarios").unwrap();
        assert_eq!(difference(&json), (vec![], vec![]));
        let names: Vec<&String> = scenarios.as_object().unwrap().keys().collect();
        assert_eq!(names, ["storm-with-rotation", "throttled"]);
        assert_eq!(difference(&scenarios["throttled"]), (vec![], vec![]));
        assert!(SummaryFile::new(&[]).is_none());
    }

    #[test]
    fn figures_without_samples_are_null() {
        let json = serde_json::to_value(Summary::default()).unwrap();
        for path in [
            "/cold_start_ms",
            "/latency_ms/p50",
            "/emulator_call_ms_p50",
            "/details/faults",
        ] {
            assert_eq!(json.pointer(path), Some(&Value::Null), "{path}");
        }
    }

    #[test]
    fn every_headline_field_is_in_the_docs_table() {
        let doc = include_str!("../../docs/performance.md");
        let json = serde_json::to_value(full()).unwrap();
        for field in json.as_object().unwrap().keys() {
            let named = doc
                .lines()
                .filter(|l| l.starts_with("| `"))
                .any(|l| l.split('|').nth(1).unwrap_or_default().contains(&format!("`{field}`")));
            assert!(named, "`{field}` is not in docs/performance.md's field table");
        }
    }
}
