//! The stage with a stand-in function (bench/tests/fixtures/stand_in_function.py): the
//! Runtime API loop as `lambda_runtime` runs it, so these tests need no emulator.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::*;

fn spec(max_environments: usize, throttle_rps: f64, throttle_burst: f64) -> StageSpec {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let log_dir = std::env::temp_dir().join(format!("vending-bench-stage-{}", std::process::id()));
    StageSpec {
        vending_bin: root.join("tests/fixtures/stand_in_function.py"),
        env: vec![("STAND_IN_SLEEP_MS".into(), "0".into())],
        throttle_rps,
        throttle_burst,
        max_environments,
        idle_reap: Duration::from_secs(600),
        function_timeout: Duration::from_secs(5),
        log_dir,
    }
}

async fn get(stage: &Stage, path: &str) -> (u16, Option<String>, Value) {
    get_url(format!("{}{path}", stage.url())).await
}

async fn get_url(url: String) -> (u16, Option<String>, Value) {
    let answer = reqwest::get(url).await.unwrap();
    let status = answer.status().as_u16();
    let retry_after = answer
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, answer.json().await.unwrap())
}

/// The scheduler state of a process in /proc: `T` when stopped.
fn process_state(pid: u64) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')').next().unwrap().trim().chars().next().unwrap()
}

#[tokio::test]
async fn requests_one_after_another_reuse_one_environment_frozen_in_between() {
    let stage = Stage::start(spec(10, 1000.0, 1000.0)).await.unwrap();
    let (status, _, first) = get(&stage, "/activation?pool=a").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["query"]["pool"], "a");
    let pid = first["pid"].as_u64().unwrap();
    let mut state = '?';
    for _ in 0..100 {
        state = process_state(pid);
        if state == 'T' {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, 'T', "an environment waiting for work is frozen");
    let (_, _, second) = get(&stage, "/health").await;
    assert_eq!(second["pid"], pid);
    assert_eq!(second["served"], 2);
    let counts = stage.counts();
    assert_eq!(
        (counts.environments_started, counts.cold_starts, counts.invocations),
        (1, 1, 2)
    );
    stage.stop().await;
}

#[tokio::test]
async fn concurrent_requests_start_environments_up_to_the_cap_then_are_throttled_as_500() {
    let mut spec = spec(3, 1000.0, 1000.0);
    spec.env = vec![("STAND_IN_SLEEP_MS".into(), "1500".into())];
    let stage = Stage::start(spec).await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..5 {
        calls.spawn(get_url(format!("{}/activation", stage.url())));
    }
    let answers: Vec<_> = calls.join_all().await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 2, "{statuses:?}");
    let throttled = answers.iter().find(|a| a.0 == 500).unwrap();
    assert_eq!(throttled.2, serde_json::json!({"message": "Internal server error"}));
    let pids: std::collections::BTreeSet<u64> = answers.iter().filter_map(|a| a.2["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 3, "each concurrent request had its own environment");
    let counts = stage.counts();
    assert_eq!(
        (
            counts.environments_started,
            counts.lambda_throttled,
            counts.peak_environments
        ),
        (3, 2, 3)
    );
    stage.stop().await;
}

#[tokio::test]
async fn over_the_stage_throttle_the_answer_is_the_templates_429() {
    let stage = Stage::start(spec(10, 0.001, 2.0)).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(get(&stage, "/health").await);
    }
    assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), [200, 200, 429]);
    assert_eq!(answers[2].1.as_deref(), Some("1"));
    assert_eq!(answers[2].2["error"]["code"], "Throttled");
    assert_eq!(stage.counts().http_429, 1);
    stage.stop().await;
}

#[tokio::test]
async fn each_api_method_has_its_own_throttle_bucket() {
    let stage = Stage::start(spec(10, 0.001, 1.0)).await.unwrap();
    assert_eq!(get(&stage, "/activation").await.0, 200);
    assert_eq!(get(&stage, "/activation").await.0, 429);
    assert_eq!(
        get(&stage, "/registrations").await.0,
        200,
        "ANY /{{proxy+}} has a bucket of its own"
    );
    assert_eq!(get(&stage, "/health").await.0, 200);
    assert_eq!(stage.counts().http_429, 1);
    stage.stop().await;
}

#[tokio::test]
async fn an_environment_idle_past_its_reap_time_is_shut_down_and_the_next_request_starts_cold() {
    let mut spec = spec(10, 1000.0, 1000.0);
    spec.idle_reap = Duration::from_millis(300);
    let stage = Stage::start(spec).await.unwrap();
    let (_, _, first) = get(&stage, "/health").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(stage.counts().environments_reaped, 1);
    let (status, _, second) = get(&stage, "/health").await;
    assert_eq!(status, 200);
    assert_ne!(second["pid"], first["pid"]);
    assert_eq!(stage.counts().cold_starts, 2);
    stage.stop().await;
}

#[tokio::test]
async fn a_function_that_exits_mid_invocation_gives_502_and_is_replaced() {
    let mut spec = spec(10, 1000.0, 1000.0);
    spec.env = vec![("STAND_IN_CRASH".into(), "/crash".into())];
    let stage = Stage::start(spec).await.unwrap();
    let (status, _, body) = get(&stage, "/crash").await;
    assert_eq!(
        (status, body),
        (502, serde_json::json!({"message": "Internal server error"}))
    );
    let (status, _, _) = get(&stage, "/health").await;
    assert_eq!(status, 200);
    let counts = stage.counts();
    assert_eq!((counts.function_errors, counts.environments_started), (1, 2));
    stage.stop().await;
}
