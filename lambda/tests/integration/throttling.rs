//! Throttling-class answers on the calls a vend, a rotation and a standby
//! preparation make: retried (a commit with its idempotency token), then answered
//! `503` with `Retry-After`, never `500`. Real servers, real SDK, the emulator told
//! to throttle.

use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use serde_json::{json, Value};
use support::{Emulator, Server};

/// Vends `n` times, 8 at a time; the answers in order.
async fn storm(server: &Arc<Server>, n: usize) -> Vec<support::Answer> {
    let mut answers = Vec::new();
    for wave in 0..n.div_ceil(8) {
        let tasks = (wave * 8..n.min(wave * 8 + 8)).map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.get("/activation").await })
        });
        answers.extend(join_all(tasks).await.into_iter().map(Result::unwrap));
    }
    answers
}

/// Status → count, and the error codes of the 503s.
fn tally(answers: &[support::Answer]) -> (BTreeMap<u16, usize>, BTreeMap<String, usize>) {
    let mut statuses = BTreeMap::new();
    let mut codes = BTreeMap::new();
    for a in answers {
        *statuses.entry(a.status).or_default() += 1;
        if a.status != 200 {
            *codes
                .entry(a.json()["error"]["code"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
    }
    (statuses, codes)
}

fn cases() -> Vec<(&'static str, Value)> {
    let cancelled = |reason: &str| {
        json!({"operation": "DynamoDB.TransactWriteItems", "error": "TransactionCanceledException",
               "reasons": [reason, "None"]})
    };
    vec![
        ("commit cancelled: ThrottlingError", cancelled("ThrottlingError")),
        (
            "commit cancelled: ProvisionedThroughputExceeded",
            cancelled("ProvisionedThroughputExceeded"),
        ),
        (
            "commit cancelled: RequestLimitExceeded",
            cancelled("RequestLimitExceeded"),
        ),
        (
            "PutParameter: TooManyUpdates",
            json!({"operation": "SSM.PutParameter", "error": "TooManyUpdates"}),
        ),
        (
            "every call: ThrottlingException",
            json!({"operation": "*", "error": "ThrottlingException"}),
        ),
        (
            "every DynamoDB call: ProvisionedThroughputExceededException",
            json!({"operation": "DynamoDB.*", "error": "ProvisionedThroughputExceededException"}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_through_each_throttling_answer_gets_codes_or_503s_with_retry_after_never_500() {
    for (what, fault) in cases() {
        let emulator = Emulator::start();
        // Three slots an activation: a rotation (and a standby) every few vends.
        let server = Arc::new(emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "3")]));
        let mut fault = fault;
        fault["rate"] = json!(if what.starts_with("every") { 0.3 } else { 0.5 });
        emulator.inject(fault).await;
        let answers = storm(&server, 40).await;
        emulator.clear_faults().await;
        let (statuses, codes) = tally(&answers);
        println!("{what}: {statuses:?} {codes:?}");
        for a in &answers {
            assert_ne!(a.status, 500, "{what}: {}", a.shown());
            if a.status == 503 {
                assert!(a.header("retry-after").is_some(), "{what}: {}", a.shown());
            }
        }
        let served: Vec<&support::Answer> = answers.iter().filter(|a| a.status == 200).collect();
        assert!(served.len() >= 30, "{what}: only {} of 40 served", served.len());
        emulator.assert_all_register(served).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_throttled_on_every_attempt_answers_503_throttled_and_leaves_no_orphan() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_LOW_WATER_PERCENT", "0")]);
    emulator
        .inject(
            json!({"operation": "DynamoDB.TransactWriteItems", "error": "TransactionCanceledException",
                       "reasons": ["ThrottlingError", "None"]}),
        )
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 503, "{}", answer.shown());
    assert_eq!(answer.json()["error"]["code"], "Throttled");
    assert!(answer.header("retry-after").is_some());
    let commits = emulator.calls().await["DynamoDB.TransactWriteItems"];
    assert!(commits > 1, "the commit was tried {commits} time(s)");
    assert_eq!(emulator.activation_ids().await, Vec::<String>::new(), "no orphan");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_parameter_that_keeps_answering_too_many_updates_answers_503_contended() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_LOW_WATER_PERCENT", "0")]);
    emulator
        .inject(json!({"operation": "SSM.PutParameter", "error": "TooManyUpdates", "count": 3}))
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(
        answer.status,
        200,
        "three TooManyUpdates are retried: {}",
        answer.shown()
    );

    let fresh = Emulator::start();
    let server = fresh.serve(&[("VENDING_LOW_WATER_PERCENT", "0")]);
    fresh
        .inject(json!({"operation": "SSM.PutParameter", "error": "TooManyUpdates"}))
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 503, "{}", answer.shown());
    assert_eq!(answer.json()["error"]["code"], "Contended");
    assert!(answer.header("retry-after").is_some());
    assert_eq!(fresh.activation_ids().await, Vec::<String>::new(), "no orphan");
}
