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
    use serde_json::Value;

    /// Every key path of a value, objects' keys joined with `.`; one map entry stands for
    /// all (`*`), one array element too (`[]`).
    fn key_paths(value: &Value, path: &str, maps: &[&str], out: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (k, v) in fields {
                    let key = if maps.contains(&path) { "*" } else { k.as_str() };
                    let p = if path.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{path}.{key}")
                    };
                    if !out.contains(&p) {
                        out.push(p.clone());
                        key_paths(v, &p, maps, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| key_paths(v, &format!("{path}[]"), maps, out)),
            _ => {}
        }
    }

    /// A summary whose maps and lists hold one entry each, so every key path shows.
    fn full() -> Summary {
        let calls = Calls::from([("DynamoDB.UpdateItem".to_owned(), 1)]);
        let mut s = Summary {
            scenario: "throttled",
            ..Summary::default()
        };
        s.aws_calls_per_vend_overall.by_operation = BTreeMap::from([("DynamoDB.UpdateItem".to_owned(), 1.0)]);
        let d = &mut s.details;
        d.http_statuses = BTreeMap::from([(200, 1)]);
        d.rotations.by_reason = BTreeMap::from([("no activation".to_owned(), 1)]);
        d.calls = calls.clone();
        d.emulator_busy = BTreeMap::from([("DynamoDB.UpdateItem".to_owned(), Busy::default())]);
        d.faults = crate::scenario::Scenario::Throttled.faults();
        d.hot_path_phase.calls = calls.clone();
        d.keepalive_upstream_phase.calls = calls;
        s
    }

    const MAPS: [&str; 8] = [
        "aws_calls_per_vend_overall.by_operation",
        "details.http_statuses",
        "details.rotations.by_reason",
        "details.calls",
        "details.emulator_busy",
        "details.hot_path_phase.calls",
        "details.keepalive_upstream_phase.calls",
        "scenarios",
    ];

    /// The key paths of `summary.json` (and of each `<scenario>.json`) as they were when
    /// the results were untyped JSON; docs/performance.md documents them.
    const DOCUMENTED: &str = "
        scenario date servers clients vends failed_requests activations_created
        max_vends_per_activation registration_limit hot_path_aws_calls_per_vend
        aws_calls_per_vend_overall aws_calls_per_vend_overall.total
        aws_calls_per_vend_overall.by_operation aws_calls_per_vend_overall.by_operation.*
        vends_waited_for_rotation slots_wasted dynamodb_writes_per_vend
        latency_ms latency_ms.p50 latency_ms.p90 latency_ms.p99 latency_ms.max
        emulator_call_ms_p50 server_cpu_us_per_vend server_peak_rss_mb cold_start_ms first_vend_ms
        machine machine.cores machine.cpu_model
        details details.requested_vends details.duration_s details.vends_per_s
        details.http_statuses details.http_statuses.* details.client_retries details.transport_errors
        details.attempt_latency_ms details.attempt_latency_ms.p50 details.attempt_latency_ms.p90
        details.attempt_latency_ms.p99 details.attempt_latency_ms.max details.activations_vended
        details.rotations details.rotations.count details.rotations.by_reason
        details.rotations.by_reason.* details.rotations.create_to_commit_ms
        details.rotations.create_to_commit_ms.p50 details.rotations.create_to_commit_ms.p90
        details.rotations.create_to_commit_ms.p99 details.rotations.create_to_commit_ms.max
        details.activations_over_their_limit details.calls details.calls.*
        details.emulator_busy details.emulator_busy.* details.emulator_busy.*.calls
        details.emulator_busy.*.total_ms details.emulator_busy.*.slowest_ms
        details.faults details.faults[].operation details.faults[].error details.faults[].rate
        details.emulator_call_ms details.emulator_call_ms.p50 details.emulator_call_ms.p90
        details.emulator_call_ms.p99 details.emulator_call_ms.max
        details.cold_start_runs_ms details.first_vend_runs_ms details.server_peak_rss_mb_main_phase
        details.hot_path_phase details.hot_path_phase.registration_limit
        details.hot_path_phase.warmup_vends details.hot_path_phase.vends
        details.hot_path_phase.failed_requests details.hot_path_phase.activations_seen
        details.hot_path_phase.calls details.hot_path_phase.calls.*
        details.hot_path_phase.aws_calls_per_vend details.hot_path_phase.duration_s
        details.hot_path_phase.vends_per_s details.hot_path_phase.latency_ms
        details.hot_path_phase.latency_ms.p50 details.hot_path_phase.latency_ms.p90
        details.hot_path_phase.latency_ms.p99 details.hot_path_phase.latency_ms.max
        details.hot_path_phase.server_cpu_us_per_vend details.hot_path_phase.server_peak_rss_mb
        details.hot_path_phase.health_requests details.hot_path_phase.server_cpu_us_per_health_request
        details.keepalive_upstream_phase details.keepalive_upstream_phase.vends
        details.keepalive_upstream_phase.failed_requests details.keepalive_upstream_phase.calls
        details.keepalive_upstream_phase.calls.* details.keepalive_upstream_phase.aws_calls_per_vend
        details.keepalive_upstream_phase.latency_ms details.keepalive_upstream_phase.latency_ms.p50
        details.keepalive_upstream_phase.latency_ms.p90 details.keepalive_upstream_phase.latency_ms.p99
        details.keepalive_upstream_phase.latency_ms.max
        details.keepalive_upstream_phase.server_cpu_us_per_vend
        details.keepalive_upstream_phase.connections_to_proxy
        details.keepalive_upstream_phase.requests_through_proxy
        details.load_average_1m details.load_average_1m.before
        details.load_average_1m.main_phase_end details.load_average_1m.end";

    fn sorted_paths(value: &Value) -> Vec<String> {
        let mut out = Vec::new();
        key_paths(value, "", &MAPS, &mut out);
        out.sort();
        out
    }

    fn documented() -> Vec<String> {
        let mut d: Vec<String> = DOCUMENTED.split_whitespace().map(str::to_owned).collect();
        d.sort();
        d
    }

    #[test]
    fn a_scenario_s_json_has_exactly_the_documented_field_names() {
        let json = serde_json::to_value(full()).unwrap();
        assert_eq!(sorted_paths(&json), documented());
    }

    #[test]
    fn summary_json_adds_scenarios_only_when_there_are_several() {
        let one = [full()];
        let json = serde_json::to_value(SummaryFile::new(&one).unwrap()).unwrap();
        assert_eq!(sorted_paths(&json), documented());

        let mut storm = full();
        storm.scenario = "storm-with-rotation";
        let both = [full(), storm];
        let json = serde_json::to_value(SummaryFile::new(&both).unwrap()).unwrap();
        assert_eq!(json["scenario"], "throttled", "the first scenario's figures at the top");
        let names: Vec<&String> = json["scenarios"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["storm-with-rotation", "throttled"]);
        assert_eq!(sorted_paths(&json["scenarios"]["throttled"]), documented());
        assert!(SummaryFile::new(&[]).is_none());
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

    #[test]
    fn numbers_keep_their_json_kinds() {
        let json = serde_json::to_value(full()).unwrap();
        assert!(json["vends"].is_u64(), "counts are integers");
        assert!(json["server_cpu_us_per_vend"].is_f64(), "rounded figures are floats");
        assert!(json["cold_start_ms"].is_null(), "no sample: null");
        assert!(json["details"]["faults"].is_array());
        assert_eq!(
            json["details"]["http_statuses"]["200"], 1,
            "statuses keyed by their text"
        );
        let steady = Summary::default();
        assert!(serde_json::to_value(steady).unwrap()["details"]["faults"].is_null());
    }
}
