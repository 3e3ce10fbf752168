//! The service under AWS's request quotas, as the emulator meters them
//! (`/_emulator/quotas`, scripts/emulator/README.md): with the Parameter Store
//! read bucket set far below AWS's 40 a second, cold processes open the pool item's
//! sealed code with KMS and read nothing from Parameter Store; for an item without
//! one (written before sealed codes), each reads the activation's code once and
//! keeps the promise: a code or `503` with `Retry-After`, never `500`. Real servers,
//! real SDK, AWS's throttling answer.

use crate::support;

use std::sync::Arc;

use futures::future::join_all;
use serde_json::{json, Value};
use support::{Answer, Emulator, Server};

/// Cold `vending serve` processes in the storm below, and requests sent to each at once.
const PROCESSES: u64 = 4;
const VENDS_EACH: u64 = 8;

/// Attempts the SDK makes per call (`entry/app.rs`, `load_sdk_config`).
const SDK_ATTEMPTS: u64 = 5;

async fn quotas(emulator: &Emulator, method: reqwest::Method, body: Option<Value>) -> Value {
    let mut request = emulator
        .client()
        .request(method, format!("{}/_emulator/quotas", emulator.url));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let resp = request.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.unwrap()
}

/// Four cold processes, 8 vends each at once; the answers.
async fn storm_of_cold_processes(emulator: &Emulator) -> Vec<Answer> {
    let servers: Vec<Arc<Server>> = (0..PROCESSES).map(|_| Arc::new(emulator.serve(&[]))).collect();
    let tasks = servers.iter().flat_map(|server| {
        (0..VENDS_EACH).map(move |_| {
            let server = server.clone();
            tokio::spawn(async move { server.get("/activation").await })
        })
    });
    join_all(tasks).await.into_iter().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_processes_under_a_low_parameter_store_quota_open_the_sealed_code_and_read_no_parameter() {
    let emulator = Emulator::start();
    // The pool's activation, its code sealed on the item, exists before the quota.
    let first = emulator.serve(&[]);
    let made = first.get("/activation").await;
    assert_eq!(made.status, 200, "{}", made.shown());
    first.log_once_it_says("prepared a standby").await;
    quotas(
        &emulator,
        reqwest::Method::POST,
        Some(json!({"ssm-parameter-reads": {"rate": 1, "burst": 1}})),
    )
    .await;
    emulator.reset_calls().await;
    let answers = storm_of_cold_processes(&emulator).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    let calls = emulator.calls().await;
    let count = |operation: &str| calls.get(operation).copied().unwrap_or(0);
    println!(
        "statuses {statuses:?}; GetParameter calls {}, Decrypt calls {}",
        count("SSM.GetParameter"),
        count("KMS.Decrypt")
    );
    assert!(answers.iter().all(|a| a.status == 200), "{statuses:?}");
    // Before sealed codes this storm made 16 GetParameter calls and answered 503s.
    assert_eq!(count("SSM.GetParameter"), 0, "{calls:?}");
    assert_eq!(count("KMS.Decrypt"), PROCESSES, "one Decrypt per process: {calls:?}");
    emulator.assert_all_register(answers.iter()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_processes_under_a_low_parameter_store_quota_answer_codes_or_503s_with_retry_after_never_500() {
    let emulator = Emulator::start();
    // The pool's activation exists before the quota: the processes below only read it,
    // from Parameter Store: its item holds no sealed code (written before them).
    let first = emulator.serve(&[]);
    let made = first.get("/activation").await;
    assert_eq!(made.status, 200, "{}", made.shown());
    first.log_once_it_says("prepared a standby").await;
    crate::sealed_codes::set_sealed_code(&emulator, None).await;
    quotas(
        &emulator,
        reqwest::Method::POST,
        Some(json!({"ssm-parameter-reads": {"rate": 1, "burst": 1}})),
    )
    .await;
    let reads_before = get_parameter_calls(&emulator).await;
    // Four cold processes, 8 vends each at once: each process reads the code once.
    let answers = storm_of_cold_processes(&emulator).await;
    let shown = quotas(&emulator, reqwest::Method::GET, None).await;
    let throttled = shown["ssm-parameter-reads"]["throttled"].as_u64().unwrap_or(0);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    let reads = get_parameter_calls(&emulator).await - reads_before;
    println!("statuses {statuses:?}; GetParameter calls {reads}, throttled {throttled}");
    for a in &answers {
        assert!(a.status == 200 || a.status == 503, "{}: {}", a.status, a.shown());
        if a.status == 503 {
            assert!(a.header("retry-after").is_some(), "{}", a.shown());
        }
    }
    assert!(throttled > 0, "the bucket never bit: {shown}");
    // A process's 8 requests all wait on its one read of the code, and share its
    // outcome when it fails: one read per process, each at most the SDK's attempts.
    // (Each request reading again after a shared read failed made 80-85 calls; now 16.)
    assert!(
        reads <= PROCESSES * SDK_ATTEMPTS,
        "{reads} GetParameter calls for {PROCESSES} processes' reads of one code: {shown}"
    );
    let served: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert!(!served.is_empty(), "nothing served: {statuses:?}");
    emulator.assert_all_register(served).await;
}

async fn get_parameter_calls(emulator: &Emulator) -> u64 {
    emulator.calls().await.get("SSM.GetParameter").copied().unwrap_or(0)
}
