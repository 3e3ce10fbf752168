//! The service under AWS's request quotas, as the emulator meters them
//! (`/_emulator/quotas`, scripts/emulator/README.md): with the Parameter Store
//! read bucket set far below AWS's 40 a second, cold processes that each read
//! the activation's code once keep the promise: a code or `503` with
//! `Retry-After`, never `500`. Real servers, real SDK, AWS's throttling answer.

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

#[tokio::test(flavor = "multi_thread")]
async fn cold_processes_under_a_low_parameter_store_quota_answer_codes_or_503s_with_retry_after_never_500() {
    let emulator = Emulator::start();
    // The pool's activation exists before the quota: the processes below only read it.
    let first = emulator.serve(&[]);
    let made = first.get("/activation").await;
    assert_eq!(made.status, 200, "{}", made.shown());
    quotas(
        &emulator,
        reqwest::Method::POST,
        Some(json!({"ssm-parameter-reads": {"rate": 1, "burst": 1}})),
    )
    .await;
    let reads_before = get_parameter_calls(&emulator).await;
    // Four cold processes, 8 vends each at once: each process reads the code once.
    let servers: Vec<Arc<Server>> = (0..PROCESSES).map(|_| Arc::new(emulator.serve(&[]))).collect();
    let tasks = servers.iter().flat_map(|server| {
        (0..VENDS_EACH).map(move |_| {
            let server = server.clone();
            tokio::spawn(async move { server.get("/activation").await })
        })
    });
    let answers: Vec<Answer> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
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
