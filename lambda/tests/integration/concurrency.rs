//! Boot storms: many servers, many processes, throttled AWS. No slot is ever handed
//! out twice, no code SSM would refuse, no request lost.

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;
use support::{Answer, Emulator, Server};

/// The storms share two cores with everything else: one at a time.
static ONE_STORM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fires `requests` concurrent vends spread over `servers`; each retries 503s like a
/// boot script. Returns every final answer.
async fn storm(servers: &[Arc<Server>], requests: usize, patience: Duration) -> Vec<Answer> {
    let tasks = (0..requests).map(|i| {
        let server = servers[i % servers.len()].clone();
        tokio::spawn(async move { server.vend_with_retries("/activation", patience).await })
    });
    join_all(tasks).await.into_iter().map(|r| r.expect("task")).collect()
}

/// Asserts the storm's outcome and registers every code like the SSM agent would.
async fn assert_every_vend_registers(emulator: &Emulator, answers: &[Answer], limit: usize) -> HashMap<String, usize> {
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} requests failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    let mut per_activation: HashMap<String, usize> = HashMap::new();
    for a in answers {
        *per_activation.entry(a.id()).or_default() += 1;
    }
    let worst = per_activation.values().max().copied().unwrap_or(0);
    assert!(
        worst <= limit,
        "an activation was handed out {worst} times, limit {limit}"
    );
    emulator.assert_all_register(answers).await;
    per_activation
}

/// The 4-process storm: 400 vends at limit 10 with AWS misbehaving as `trouble` sets
/// up. Servers log at `trace`, and the emulator's drop scans those logs for codes.
async fn four_process_storm(label: &str, trouble: serde_json::Value, latency_ms: u64) {
    let _storm = ONE_STORM_AT_A_TIME.lock().await;
    let emulator = Emulator::start();
    let settings = [("VENDING_REGISTRATION_LIMIT", "10"), ("RUST_LOG", "trace")];
    let servers: Vec<Arc<Server>> = (0..4).map(|_| Arc::new(emulator.serve(&settings))).collect();
    if !trouble.is_null() {
        emulator.inject(trouble).await;
    }
    if latency_ms > 0 {
        emulator.set_latency(latency_ms).await;
    }

    let started = Instant::now();
    let answers = storm(&servers, 400, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    emulator.clear_faults().await;
    emulator.set_latency(0).await;
    let server_errors = answers.iter().filter(|a| a.status >= 500 && a.status != 503).count();
    assert_eq!(server_errors, 0, "{label}: answers of 500");
    let per_activation = assert_every_vend_registers(&emulator, &answers, 10).await;

    let calls = emulator.calls().await;
    let aws_calls: u64 = calls
        .iter()
        .filter(|(k, _)| !k.starts_with("IAM.") && !k.starts_with("KMS."))
        .map(|(_, v)| v)
        .sum();
    println!(
        "storm ({label}): 400 vends over 4 processes in {elapsed:?}; {} activations used, {} created; {:.2} AWS calls per vend; {calls:?}",
        per_activation.len(),
        calls.get("SSM.CreateActivation").copied().unwrap_or(0),
        aws_calls as f64 / 400.0
    );
    assert!(
        per_activation.len() >= 40,
        "400 vends at limit 10 need at least 40 activations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_and_400_concurrent_vends_never_exceed_the_limit() {
    four_process_storm("plain", serde_json::Value::Null, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_through_30_percent_transaction_conflicts_answers_no_500() {
    let conflicts = json!({"operation": "DynamoDB.UpdateItem", "error": "TransactionConflictException", "rate": 0.3});
    four_process_storm("30% TransactionConflictException", conflicts, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_through_20_percent_lost_answers_hands_no_slot_twice() {
    let lost = json!([
        {"operation": "DynamoDB.UpdateItem", "error": "InternalServerError", "when": "after", "rate": 0.1},
        {"operation": "DynamoDB.UpdateItem", "error": "ConnectionDropped", "when": "after", "rate": 0.1}
    ]);
    four_process_storm("20% lost UpdateItem answers", lost, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_with_network_latency_interleaves_and_still_keeps_every_promise() {
    four_process_storm("20 ms latency", serde_json::Value::Null, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_percent_throttling_loses_no_request_and_over_hands_no_slot() {
    let _storm = ONE_STORM_AT_A_TIME.lock().await;
    let emulator = Emulator::start();
    let settings = [("VENDING_REGISTRATION_LIMIT", "10")];
    let servers: Vec<Arc<Server>> = (0..2).map(|_| Arc::new(emulator.serve(&settings))).collect();
    emulator
        .inject(json!([
            {"operation": "DynamoDB.*", "error": "ThrottlingException", "rate": 0.3},
            {"operation": "SSM.*", "error": "ThrottlingException", "rate": 0.3}
        ]))
        .await;
    emulator.set_latency(5).await;

    let answers = storm(&servers, 200, Duration::from_secs(120)).await;
    emulator.clear_faults().await;
    let per_activation = assert_every_vend_registers(&emulator, &answers, 10).await;
    let throttled_answers = servers
        .iter()
        .map(|s| s.log_text().matches("AWS is throttling").count())
        .sum::<usize>();
    println!(
        "throttled storm: 200 vends, {} activations, {throttled_answers} answers were 503 after the SDK's retries",
        per_activation.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_dependency_answers_503_with_retry_after_once_retries_run_out() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[]);
    emulator
        .inject(json!({"operation": "DynamoDB.UpdateItem", "error": "ThrottlingException", "rate": 1.0}))
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "Throttled");
    assert!(answer.header("retry-after").is_some());
    let attempts = emulator.calls().await.get("DynamoDB.UpdateItem").copied().unwrap_or(0);
    assert!(attempts >= 5, "the SDK retried before giving up ({attempts} attempts)");
    emulator.clear_faults().await;
    assert_eq!(
        server.get("/activation").await.status,
        200,
        "and recovers once AWS does"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_dependency_answers_503_not_500() {
    let emulator = Emulator::start();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let server = emulator.serve(&[("AWS_ENDPOINT_URL", &dead)]);
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.header("retry-after").is_some());
    assert!(
        !answer.body.contains("127.0.0.1"),
        "no internals in the answer: {}",
        answer.body
    );
}
