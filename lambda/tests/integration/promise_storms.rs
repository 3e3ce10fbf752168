//! Before/after figures for the promise holes of issue 17: storms with a fault
//! injected, each printing one JSON line of counts (`STORM {...}`). Ignored by
//! default (they take minutes); they assert nothing, so that they run on old code
//! too. Run one with, e.g.:
//!
//!     cargo test -p vending --test integration promise_storms::throttled_commits -- --ignored --nocapture
//!
//! Knobs (environment): STORM_VENDS, STORM_MARGIN, STORM_DEADLINE, STORM_TTL.

use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};
use support::{Answer, Emulator, Server};

fn knob(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Vends `n` times, `width` at a time; each served code is registered at once, as
/// the server that asked would. Returns the answers and SSM's verdict on each 200.
async fn storm(
    emulator: &Arc<Emulator>,
    server: &Arc<Server>,
    n: usize,
    width: usize,
) -> Vec<(Answer, Option<Result<String, String>>)> {
    let mut out = Vec::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..width).map(|_| {
        let (emulator, server, next) = (emulator.clone(), server.clone(), next.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return mine;
                }
                let answer = server.get("/activation").await;
                let registered = if answer.status == 200 {
                    Some(emulator.register(&answer.id(), &answer.code(), &format!("s-{i}")).await)
                } else {
                    None
                };
                mine.push((answer, registered));
            }
        })
    });
    for worker in join_all(workers).await {
        out.extend(worker.unwrap());
    }
    out
}

/// SlotsWasted from the server's EMF lines, by `Reason` (`-` when it has none).
fn slots_wasted(server: &Server) -> BTreeMap<String, f64> {
    let mut wasted = BTreeMap::new();
    for line in server.log_text().lines() {
        let Ok(doc) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(n) = doc.get("SlotsWasted").and_then(Value::as_f64) {
            let reason = doc.get("Reason").and_then(Value::as_str).unwrap_or("-").to_owned();
            *wasted.entry(reason).or_default() += n;
        }
    }
    wasted
}

fn figures(what: &str, results: &[(Answer, Option<Result<String, String>>)], server: &Server) -> Value {
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut no_retry_after = 0;
    for (answer, registered) in results {
        *statuses.entry(answer.status.to_string()).or_default() += 1;
        if answer.status != 200 {
            let code = answer.json()["error"]["code"].as_str().unwrap_or("?").to_owned();
            *codes.entry(code).or_default() += 1;
            if answer.status == 503 && answer.header("retry-after").is_none() {
                no_retry_after += 1;
            }
        }
        if let Some(Err(reason)) = registered {
            *refused.entry(reason.clone()).or_default() += 1;
        }
    }
    json!({
        "scenario": what,
        "vends": results.len(),
        "statuses": statuses,
        "error_codes": codes,
        "503_without_retry_after": no_retry_after,
        "refused_by_ssm": refused,
        "expired_codes": refused.get("ActivationExpired").copied().unwrap_or(0),
        "slots_wasted": slots_wasted(server),
    })
}

async fn run(what: &str, settings: &[(&str, &str)], faults: &[Value], vends: usize) -> Value {
    let emulator = Arc::new(Emulator::start());
    let server = Arc::new(emulator.serve(settings));
    for fault in faults {
        emulator.inject(fault.clone()).await;
    }
    let results = storm(&emulator, &server, vends, 8).await;
    emulator.clear_faults().await;
    let figures = figures(what, &results, &server);
    println!("STORM {figures}");
    figures
}

fn vends(default: usize) -> usize {
    knob("STORM_VENDS", &default.to_string()).parse().unwrap()
}

/// Item 1: half the commits cancelled with each throttling reason; and PutParameter
/// answering TooManyUpdates half the time. Limit 3: a rotation every few vends.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn throttled_commits() {
    for standby in ["20", "0"] {
        for reason in [
            "ThrottlingError",
            "ProvisionedThroughputExceeded",
            "RequestLimitExceeded",
        ] {
            let fault = json!({"operation": "DynamoDB.TransactWriteItems", "error": "TransactionCanceledException",
                               "reasons": [reason, "None"], "rate": 0.5});
            let settings = [
                ("VENDING_REGISTRATION_LIMIT", "3"),
                ("VENDING_LOW_WATER_PERCENT", standby),
            ];
            run(
                &format!("commit cancelled {reason}, low water {standby}%"),
                &settings,
                &[fault],
                vends(60),
            )
            .await;
        }
        let fault = json!({"operation": "SSM.PutParameter", "error": "TooManyUpdates", "rate": 0.5});
        let settings = [
            ("VENDING_REGISTRATION_LIMIT", "3"),
            ("VENDING_LOW_WATER_PERCENT", standby),
        ];
        run(
            &format!("PutParameter TooManyUpdates, low water {standby}%"),
            &settings,
            &[fault],
            vends(60),
        )
        .await;
    }
}

/// Item 2: half the UpdateItems delayed 2.6 s; VENDING_DEADLINE 3s, lifetime 12s,
/// margin STORM_MARGIN (4s; the old code is run with 2s, which the new refuses).
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn margin_at_hand_out() {
    let (margin, deadline, ttl) = (
        knob("STORM_MARGIN", "4s"),
        knob("STORM_DEADLINE", "3s"),
        knob("STORM_TTL", "12s"),
    );
    let settings = [
        ("VENDING_EXPIRY_MARGIN", margin.as_str()),
        ("VENDING_DEADLINE", deadline.as_str()),
        ("VENDING_ACTIVATION_TTL", ttl.as_str()),
    ];
    let fault = json!({"operation": "DynamoDB.UpdateItem", "delay_ms": 2_600, "rate": 0.5});
    run(
        &format!("UpdateItem delayed 2.6 s at half, margin {margin}, deadline {deadline}, lifetime {ttl}"),
        &settings,
        &[fault],
        vends(300),
    )
    .await;
}

/// Item 3: a fifth of the UpdateItems land and lose their answer (connection
/// dropped): the slots they took, as the process counts them and as the sweep
/// finds them unused once the activations are retired.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn lost_answers() {
    let settings = [
        ("VENDING_REGISTRATION_LIMIT", "10"),
        ("VENDING_ACTIVATION_TTL", "10s"),
        ("VENDING_EXPIRY_MARGIN", "4s"),
        ("VENDING_DEADLINE", "3s"),
        ("VENDING_LEASE", "2s"),
        ("VENDING_SWEEP_GRACE", "3s"),
    ];
    let emulator = Arc::new(Emulator::start());
    let server = Arc::new(emulator.serve(&settings));
    emulator
        .inject(json!({"operation": "DynamoDB.UpdateItem", "error": "ConnectionDropped", "when": "after", "rate": 0.2}))
        .await;
    let results = storm(&emulator, &server, vends(200), 8).await;
    emulator.clear_faults().await;
    let mut figures = figures("UpdateItem answer lost at a fifth", &results, &server);
    // Every activation of the storm expires, then the sweep retires them.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let _ = server.get("/activation").await;
    let reports = emulator.sweep(&settings);
    let unused: u64 = reports
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.get("unused_registrations").and_then(Value::as_u64))
        .sum();
    let retired: usize = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["deleted_spent"].as_array().map_or(0, Vec::len))
        .sum();
    figures["sweep_retired"] = json!(retired);
    figures["sweep_unused_registrations"] = json!(unused);
    println!("STORM {figures}");
}

/// Item 4: the lease take lands and every attempt of it loses its answer, five
/// times over: how long until the pool serves again.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn lost_lease_answers() {
    let mut blocked_ms = Vec::new();
    for _ in 0..5 {
        let emulator = Emulator::start();
        let server = emulator.serve(&[("VENDING_DEADLINE", "3s"), ("VENDING_LOW_WATER_PERCENT", "0")]);
        // The pool configs read and shared first (their claim and save are UpdateItems too).
        assert_eq!(server.get("/activation?pool=absent").await.status, 404);
        emulator
            .inject(
                json!({"operation": "DynamoDB.UpdateItem", "error": "InternalServerError", "when": "after",
                           "skip": 1, "count": 5}),
            )
            .await;
        let started = Instant::now();
        let answer = server.vend_with_retries("/activation", Duration::from_secs(60)).await;
        assert_eq!(answer.status, 200, "{}", answer.shown());
        blocked_ms.push(started.elapsed().as_millis() as u64);
    }
    println!(
        "STORM {}",
        json!({"scenario": "lease take loses every answer", "ms_until_served": blocked_ms})
    );
}
