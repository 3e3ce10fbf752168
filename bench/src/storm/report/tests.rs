use super::*;
use crate::json_shape::shape;
use crate::storm::server::ServerRecord;
use serde_json::Value;

/// Maps whose keys are data (codes, operations, statuses, reasons): entries show as `*`.
const MAPS: [&str; 7] = [
    "http_503_by_code",
    "aws_calls_per_vend_by_operation",
    "aws_throttled_by_operation",
    "details.http_statuses",
    "details.failures",
    "details.aws_calls",
    "details.emulator_busy",
];

/// Every key path of one run in lambda-storm.json with the JSON kind of its value;
/// docs/performance.md documents them. Issue 23 names the first fourteen.
const RUN: &str = "
servers int
throttle_rps float
all_registered_s float
time_to_code_ms map
time_to_code_ms.p50 float
time_to_code_ms.p99 float
http_429 int
http_503_by_code map
http_503_by_code.* int
failed int
refused int
environments_started int
cold_starts int
aws_calls_per_vend_by_operation map
aws_calls_per_vend_by_operation.* float
aws_throttled_by_operation map
aws_throttled_by_operation.* int
slots_wasted int
emulator_busy_s float
throttle_burst float
max_environments int
time_to_code_ms.p90 float
time_to_code_ms.max float
time_to_registered_ms map
time_to_registered_ms.p50 float
time_to_registered_ms.p90 float
time_to_registered_ms.p99 float
time_to_registered_ms.max float
registered int
registration_limit int
lambda_throttled int
target map
target.n_over_throttle_s float
target.floor str
target.floor_s float
target.factor float
target.all_registered_within_s float
target.all_registered_in_time bool
target.every_server_registered bool
target.no_aws_call_throttled bool
details map
details.boot_spread_s float
details.max_wait_s int
details.duration_s float
details.vends int
details.activations_vended int
details.activations_created int
details.confirmed int
details.report_warnings int
details.http_statuses map
details.http_statuses.* int
details.transport_errors int
details.failures map
details.failures.* int
details.stage map
details.stage.requests int
details.stage.http_429 int
details.stage.lambda_throttled int
details.stage.invocations int
details.stage.environments_started int
details.stage.cold_starts int
details.stage.environments_reaped int
details.stage.peak_environments int
details.stage.function_errors int
details.aws_calls map
details.aws_calls.* int
details.aws_calls_per_vend float
details.emulator_busy map
details.emulator_busy.* map
details.emulator_busy.*.calls int
details.emulator_busy.*.total_ms float
details.emulator_busy.*.slowest_ms float
";

fn sorted(lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = lines.into_iter().collect();
    v.sort();
    v
}

/// A run with every optional figure present and one entry in every map.
fn full_run() -> StormRun {
    let latency = latency_summary(&[1.5]);
    let mut run = StormRun {
        throttle_rps: 20.0,
        throttle_burst: 50.0,
        all_registered_s: Some(1.5),
        time_to_code_ms: latency,
        time_to_registered_ms: latency,
        http_503_by_code: BTreeMap::from([("NoActivationYet".to_owned(), 1)]),
        aws_calls_per_vend_by_operation: BTreeMap::from([("SSM.GetParameter".to_owned(), 1.5)]),
        aws_throttled_by_operation: BTreeMap::from([("SSM.GetParameter".to_owned(), 1)]),
        emulator_busy_s: 1.5,
        target: target(
            Throttle::Default,
            10,
            20.0,
            1.5,
            &ClientFigures {
                all_registered_s: Some(1.5),
                ..ClientFigures::default()
            },
            0,
        ),
        ..StormRun::default()
    };
    let d = &mut run.details;
    d.boot_spread_s = 1.5;
    d.duration_s = 1.5;
    d.http_statuses = BTreeMap::from([(200, 1)]);
    d.failures = BTreeMap::from([("gave up".to_owned(), 1)]);
    d.aws_calls = Calls::from([("SSM.GetParameter".to_owned(), 1)]);
    d.aws_calls_per_vend = 1.5;
    d.emulator_busy = BTreeMap::from([(
        "SSM.GetParameter".to_owned(),
        Busy {
            calls: 1,
            total_ms: 1.5,
            slowest_ms: 1.5,
        },
    )]);
    run
}

#[test]
fn a_run_has_exactly_the_documented_field_names_and_kinds() {
    let mut found = Vec::new();
    shape(&serde_json::to_value(full_run()).unwrap(), &MAPS, "", &mut found);
    let documented = RUN.lines().filter(|l| !l.is_empty()).map(str::to_owned);
    assert_eq!(sorted(found), sorted(documented));
}

#[test]
fn the_file_holds_both_runs_and_the_issue_s_fields_under_each() {
    let file = StormFile {
        scenario: "lambda-storm",
        default_throttle: Some(full_run()),
        raised_throttle: Some(full_run()),
        ..StormFile::default()
    };
    let json = serde_json::to_value(&file).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["date", "default_throttle", "machine", "raised_throttle", "scenario"]
    );
    for run in ["default_throttle", "raised_throttle"] {
        for path in [
            "servers",
            "throttle_rps",
            "all_registered_s",
            "time_to_code_ms/p50",
            "time_to_code_ms/p99",
            "http_429",
            "http_503_by_code",
            "failed",
            "refused",
            "environments_started",
            "cold_starts",
            "aws_calls_per_vend_by_operation",
            "aws_throttled_by_operation",
            "slots_wasted",
            "emulator_busy_s",
        ] {
            assert!(json.pointer(&format!("/{run}/{path}")).is_some(), "{run}.{path}");
        }
    }
    let one = serde_json::to_value(StormFile::default()).unwrap();
    assert_eq!(one["raised_throttle"], Value::Null, "a run left out is null");
}

#[test]
fn every_run_field_is_in_the_docs_table() {
    let doc = include_str!("../../../../docs/performance.md");
    let json = serde_json::to_value(full_run()).unwrap();
    for field in json.as_object().unwrap().keys() {
        let named = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .any(|l| l.split('|').nth(1).unwrap_or_default().contains(&format!("`{field}`")));
        assert!(named, "`{field}` is not in docs/performance.md's lambda-storm table");
    }
}

fn server(first: f64, code: Option<f64>, registered: Option<f64>) -> ServerRecord {
    ServerRecord {
        first_request_s: Some(first),
        code_s: code,
        registered_s: registered,
        ..ServerRecord::default()
    }
}

#[test]
fn all_registered_runs_from_the_first_request_to_the_last_registration() {
    let mut a = server(1.0, Some(1.5), Some(2.0));
    a.statuses = BTreeMap::from([(429, 3), (200, 2)]);
    a.codes_503 = BTreeMap::from([("NoActivationYet".to_owned(), 1)]);
    a.vended = vec!["act-1".into()];
    a.confirmed = true;
    let mut b = server(2.0, Some(4.0), Some(9.25));
    b.statuses = BTreeMap::from([(429, 1), (503, 1)]);
    b.codes_503 = BTreeMap::from([("NoActivationYet".to_owned(), 2)]);
    b.vended = vec!["act-1".into(), "act-2".into()];
    b.refused = 1;
    b.report_warnings = 1;
    let mut c = server(0.5, None, None);
    c.failure = Some("gave up after --max-wait (9 attempts)".into());
    c.transport_errors = 2;

    let f = client_figures(&[a, b, c]);
    assert_eq!(f.all_registered_s, Some(8.75), "0.5 (c's first request) to 9.25");
    assert_eq!((f.registered, f.failed, f.refused), (2, 1, 1));
    assert_eq!((f.confirmed, f.report_warnings, f.transport_errors), (1, 1, 2));
    assert_eq!(f.http_429(), 4);
    assert_eq!(f.http_503_by_code["NoActivationYet"], 3);
    assert_eq!(f.vends(), 3);
    assert_eq!(f.per_activation["act-1"], 2);
    assert_eq!(f.failures.len(), 1);
    assert_eq!(f.time_to_code_ms.p50, Some(500.0), "nearest rank of 500 and 2000 ms");
    assert_eq!(f.time_to_code_ms.p99, Some(2000.0));
    assert_eq!(f.time_to_registered_ms.max, Some(7250.0));
}

#[test]
fn nothing_registered_leaves_the_times_null() {
    let f = client_figures(&[server(1.0, None, None)]);
    assert_eq!((f.all_registered_s, f.failed), (None, 1));
    assert_eq!(f.time_to_code_ms, Latency::default());
    assert_eq!(client_figures(&[]).all_registered_s, None);
}

#[test]
fn the_default_throttle_s_target_is_within_1_1_times_n_over_the_rate() {
    let figures = ClientFigures {
        all_registered_s: Some(54.0),
        registered: 1000,
        ..ClientFigures::default()
    };
    let t = target(Throttle::Default, 1000, 20.0, 400.0, &figures, 0);
    assert_eq!(
        (t.n_over_throttle_s, t.floor, t.floor_s),
        (50.0, "stage throttle", 50.0)
    );
    assert_eq!((t.factor, t.all_registered_within_s), (1.1, 55.0));
    assert_eq!(t.all_registered_in_time, Some(true));
    assert!(t.every_server_registered && t.no_aws_call_throttled);
    let late = ClientFigures {
        all_registered_s: Some(56.0),
        ..figures.clone()
    };
    assert_eq!(
        target(Throttle::Default, 1000, 20.0, 0.0, &late, 3).all_registered_in_time,
        Some(false)
    );
    assert!(!target(Throttle::Default, 1000, 20.0, 0.0, &late, 3).no_aws_call_throttled);
    assert!(!target(Throttle::Default, 1001, 20.0, 0.0, &late, 0).every_server_registered);
}

#[test]
fn the_raised_throttle_s_floor_is_the_larger_of_n_over_the_rate_and_the_emulator_s_busy_time() {
    let figures = ClientFigures::default();
    let by_emulator = target(Throttle::Raised, 10_000, 1000.0, 25.0, &figures, 0);
    assert_eq!((by_emulator.floor, by_emulator.floor_s), ("emulator busy time", 25.0));
    assert_eq!(by_emulator.all_registered_within_s, 30.0);
    assert_eq!(by_emulator.all_registered_in_time, None, "nothing registered");
    let by_throttle = target(Throttle::Raised, 10_000, 1000.0, 4.0, &figures, 0);
    assert_eq!((by_throttle.floor, by_throttle.floor_s), ("stage throttle", 10.0));
    assert_eq!(by_throttle.all_registered_within_s, 12.0);
}

#[test]
fn busy_seconds_add_every_operation() {
    let busy = BTreeMap::from([
        (
            "a".to_owned(),
            Busy {
                calls: 1,
                total_ms: 1500.0,
                slowest_ms: 1.0,
            },
        ),
        (
            "b".to_owned(),
            Busy {
                calls: 1,
                total_ms: 2504.0,
                slowest_ms: 1.0,
            },
        ),
    ]);
    assert_eq!(busy_seconds(&busy), 4.0);
}
