//! The vend promise under the ways AWS really fails: transaction conflicts, writes
//! that land but whose answer is lost, throttled checks, slow calls, a code parameter
//! that disappears, a commit that arrives after the sweep. Real servers, real SDK,
//! the emulator told to fail.

use crate::support;

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;
use support::Emulator;

const NO_ROTATE_AHEAD: (&str, &str) = ("VENDING_LOW_WATER_PERCENT", "0");

fn digest(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

// ------------------------------------------------------------ remembered verdicts

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_activation_is_not_handed_out_while_its_replacement_cannot_be_made() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[
        ("VENDING_VERIFY_INTERVAL", "1s"),
        ("VENDING_WAIT", "300ms"),
        NO_ROTATE_AHEAD,
    ]);
    let first = server.get("/activation").await;
    assert_eq!(first.status, 200, "{}", first.body);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    emulator.delete_activation(&first.id()).await;
    // SSM will not make a new one for a while.
    emulator
        .inject(json!({"operation": "SSM.CreateActivation", "error": "InternalServerError", "status": 500}))
        .await;
    for attempt in 0..4 {
        let answer = server.get("/activation").await;
        if answer.status == 200 {
            assert_ne!(
                answer.id(),
                first.id(),
                "attempt {attempt} was handed the deleted activation"
            );
        }
        assert_ne!(answer.status, 200, "attempt {attempt}: SSM cannot make activations yet");
    }
    emulator.clear_faults().await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_ne!(answer.id(), first.id());
    assert!(emulator.register(&answer.id(), &answer.code(), "web-01").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_process_checks_an_activation_committed_long_ago_before_handing_it_out() {
    let emulator = Emulator::start();
    let settings = [("VENDING_VERIFY_INTERVAL", "1s"), NO_ROTATE_AHEAD];
    let old = emulator.serve(&settings);
    let first = old.get("/activation").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    emulator.delete_activation(&first.id()).await;
    let cold = emulator.serve(&settings);
    let answer = cold.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_ne!(answer.id(), first.id(), "a cold process trusted a deleted activation");
    assert!(emulator.register(&answer.id(), &answer.code(), "web-01").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_one_cold_process_made_is_trusted_by_the_next_cold_process_without_asking_ssm() {
    // A power return: the pool's activation was committed long ago, and cold
    // processes (Lambda environments) arrive one after another. One asks SSM and notes
    // the answer on the pool item; the next trusts that note for the interval.
    let emulator = Emulator::start();
    let settings = [("VENDING_VERIFY_INTERVAL", "3s"), NO_ROTATE_AHEAD];
    let old = emulator.serve(&settings);
    let first = old.get("/activation").await;
    assert_eq!(first.status, 200, "{}", first.shown());
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    emulator.reset_calls().await;
    let cold = emulator.serve(&settings);
    let answer = cold.get("/activation").await;
    assert_eq!((answer.status, answer.id()), (200, first.id()), "{}", answer.shown());
    let next = emulator.serve(&settings);
    let answer = next.get("/activation").await;
    assert_eq!((answer.status, answer.id()), (200, first.id()), "{}", answer.shown());
    let calls = emulator.calls().await;
    assert_eq!(calls.get("SSM.DescribeActivations"), Some(&1), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_activation_check_does_not_fail_a_vend_that_holds_a_slot() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_VERIFY_INTERVAL", "0s")]);
    assert_eq!(server.get("/activation").await.status, 200);
    emulator
        .inject(json!({"operation": "SSM.DescribeActivations", "error": "ThrottlingException"}))
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert!(emulator.register(&answer.id(), &answer.code(), "web-01").await.is_ok());
    assert!(
        server
            .log_text()
            .contains("could not check the activation with SSM; vending it anyway"),
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_checks_of_one_activation_are_one_call_to_ssm() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_VERIFY_INTERVAL", "1s"), NO_ROTATE_AHEAD]);
    assert_eq!(server.get("/activation").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    emulator
        .inject(json!({"operation": "SSM.DescribeActivations", "delay_ms": 500}))
        .await;
    emulator.reset_calls().await;
    let answers = join_all((0..20).map(|_| server.get("/activation"))).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let calls = emulator.calls().await;
    assert_eq!(calls.get("SSM.DescribeActivations"), Some(&1), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_reads_a_new_activation_s_code_once_however_many_requests_want_it() {
    // A process whose requests all meet an activation another process made opens its
    // sealed code once (KMS Decrypt), and, for an item without one, reads it once
    // from Parameter Store (40 reads a second per account and Region).
    for sealed in [true, false] {
        let emulator = Emulator::start();
        let maker = emulator.serve(&[NO_ROTATE_AHEAD]);
        assert_eq!(maker.get("/activation").await.status, 200);
        if !sealed {
            crate::sealed_codes::set_sealed_code(&emulator, None).await;
        }
        let reader = emulator.serve(&[NO_ROTATE_AHEAD]);
        let read = if sealed { "KMS.Decrypt" } else { "SSM.GetParameter" };
        emulator.inject(json!({"operation": read, "delay_ms": 300})).await;
        emulator.reset_calls().await;
        let answers = join_all((0..20).map(|_| reader.get("/activation"))).await;
        assert!(answers.iter().all(|a| a.status == 200));
        let calls = emulator.calls().await;
        assert_eq!(calls.get(read), Some(&1), "{calls:?}");
        let other = if sealed { "SSM.GetParameter" } else { "KMS.Decrypt" };
        assert_eq!(calls.get(other), None, "{calls:?}");
    }
}

// ------------------------------------------------------------ transaction conflicts

#[tokio::test(flavor = "multi_thread")]
async fn transaction_conflicts_on_the_reserve_are_retried_then_answered_503_never_500() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[]);
    assert_eq!(server.get("/activation").await.status, 200);
    emulator
        .inject(json!({"operation": "DynamoDB.UpdateItem", "error": "TransactionConflictException", "count": 3}))
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 200, "three conflicts are retried: {}", answer.shown());

    emulator
        .inject(json!({"operation": "DynamoDB.UpdateItem", "error": "TransactionConflictException"}))
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 503, "{}", answer.shown());
    assert_eq!(answer.json()["error"]["code"], "Contended");
    assert!(answer.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_cancelled_by_conflicts_is_retried_and_never_orphans_its_activation() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[NO_ROTATE_AHEAD]);
    emulator
        .inject(
            json!({"operation": "DynamoDB.TransactWriteItems", "error": "TransactionCanceledException",
                       "reasons": ["TransactionConflict", "None"], "count": 2}),
        )
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_eq!(emulator.activation_ids().await, vec![answer.id()]);

    // A commit that never gets through: 503, and the new activation is deleted.
    let fresh = Emulator::start();
    let server = fresh.serve(&[NO_ROTATE_AHEAD]);
    fresh
        .inject(
            json!({"operation": "DynamoDB.TransactWriteItems", "error": "TransactionCanceledException",
                       "reasons": ["TransactionConflict", "None"]}),
        )
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 503, "{}", answer.shown());
    assert!(answer.header("retry-after").is_some());
    assert_eq!(
        fresh.activation_ids().await,
        Vec::<String>::new(),
        "no orphan left behind"
    );
}

// ------------------------------------------------------------ lost answers

/// Each write of a vend, in turn, lands and then loses its answer (an error, or the
/// connection dropped): the caller still gets a code SSM accepts, the pool is not
/// blocked for a lease, and at most one activation is orphaned.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_lands_but_loses_its_answer_breaks_no_promise() {
    // (what, fault, named caller)
    let cases = [
        ("reserve", json!({"operation": "DynamoDB.UpdateItem", "skip": 1}), false),
        (
            "lease take",
            json!({"operation": "DynamoDB.UpdateItem", "skip": 1}),
            false,
        ),
        ("commit", json!({"operation": "DynamoDB.TransactWriteItems"}), false),
        ("instance record", json!({"operation": "DynamoDB.PutItem"}), true),
        ("code parameter", json!({"operation": "SSM.PutParameter"}), false),
        ("activation", json!({"operation": "SSM.CreateActivation"}), false),
    ];
    for (what, fault, named) in cases {
        for error in ["InternalServerError", "ConnectionDropped"] {
            let emulator = Emulator::start();
            let server = emulator.serve(&[("VENDING_WAIT", "2s"), NO_ROTATE_AHEAD]);
            if what == "reserve" {
                // The pool needs an activation first: this reserve is the one that takes a slot.
                assert_eq!(server.get("/activation").await.status, 200);
            }
            let mut fault = fault.clone();
            fault["error"] = json!(error);
            fault["when"] = json!("after");
            fault["count"] = json!(1);
            if what == "reserve" {
                fault["skip"] = json!(0);
            }
            emulator.inject(fault).await;
            let path = if named {
                format!("/activation?instance=web-01&machine={}", digest(1))
            } else {
                "/activation".to_owned()
            };
            let started = Instant::now();
            let answer = server.vend_with_retries(&path, Duration::from_secs(10)).await;
            assert_eq!(answer.status, 200, "{what}/{error}: {}", answer.shown());
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "{what}/{error}: the pool was blocked for {:?}",
                started.elapsed()
            );
            if named {
                let again = server.get(&path).await;
                assert_eq!(
                    again.id(),
                    answer.id(),
                    "{what}/{error}: the retry gets the same activation"
                );
            }
            assert!(
                emulator.register(&answer.id(), &answer.code(), "web-01").await.is_ok(),
                "{what}/{error}: SSM refused the code"
            );
            let known = emulator.activation_ids().await;
            assert!(known.len() <= 2, "{what}/{error}: more than one orphan: {known:?}");
        }
    }
}

/// The lease take lands, and every one of the SDK's attempts (5) loses its answer:
/// the request fails, but the lease is read back and given back, so the next request
/// rotates at once instead of waiting a whole `VENDING_LEASE`.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_take_that_lost_every_answer_is_given_back_and_blocks_no_longer_than_a_deadline() {
    // UpdateItem 1 is the reserve (refused: no activation yet), 2 to 6 the lease take's
    // attempts: each lands and loses its answer; or the first lands and loses its answer
    // and the SDK's retries are throttled, so the take ends in another error than a
    // lost answer while the lease is ours all the same.
    let lost = |error: &str| {
        vec![json!({"operation": "DynamoDB.UpdateItem", "error": error, "when": "after", "skip": 1, "count": 5})]
    };
    let landed_then_throttled = vec![
        json!({"operation": "DynamoDB.UpdateItem", "error": "ConnectionDropped", "when": "after", "skip": 1, "count": 1}),
        json!({"operation": "DynamoDB.UpdateItem", "error": "ThrottlingException", "skip": 1, "count": 4}),
    ];
    for (error, faults) in [
        ("InternalServerError", lost("InternalServerError")),
        ("ConnectionDropped", lost("ConnectionDropped")),
        ("ConnectionDropped then ThrottlingException", landed_then_throttled),
    ] {
        let emulator = Emulator::start();
        let server = emulator.serve(&[("VENDING_DEADLINE", "3s"), ("VENDING_LEASE", "30s"), NO_ROTATE_AHEAD]);
        // The pool configs read and shared first (their claim and save are UpdateItems too).
        assert_eq!(server.get("/activation?pool=absent").await.status, 404);
        for fault in faults {
            emulator.inject(fault).await;
        }
        let started = Instant::now();
        let first = server.get("/activation").await;
        assert_eq!(first.status, 503, "{error}: {}", first.shown());
        let answer = server.vend_with_retries("/activation", Duration::from_secs(10)).await;
        assert_eq!(answer.status, 200, "{error}: {}", answer.shown());
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{error}: the pool was blocked for {:?}",
            started.elapsed()
        );
        assert!(
            server.log_text().contains("gave the lease back"),
            "{error}: {}",
            server.log_text()
        );
        assert!(emulator.register(&answer.id(), &answer.code(), "web-01").await.is_ok());
    }
}

/// `SlotsWasted` by `Reason`, from a server's EMF lines.
fn slots_wasted(log: &str) -> std::collections::BTreeMap<String, f64> {
    let mut wasted = std::collections::BTreeMap::new();
    for doc in log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        if let Some(n) = doc.get("SlotsWasted").and_then(serde_json::Value::as_f64) {
            let reason = doc["Reason"].as_str().unwrap_or("-").to_owned();
            *wasted.entry(reason).or_default() += n;
        }
    }
    wasted
}

#[tokio::test(flavor = "multi_thread")]
async fn slots_taken_and_never_handed_out_are_counted_with_their_reason() {
    // A reserve that lands and loses its answer: the SDK's retry takes another slot.
    let emulator = Emulator::start();
    let server = emulator.serve(&[NO_ROTATE_AHEAD]);
    assert_eq!(server.get("/activation").await.status, 200);
    emulator
        .inject(json!({"operation": "DynamoDB.UpdateItem", "error": "ConnectionDropped", "when": "after", "count": 1}))
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    let wasted = slots_wasted(&server.log_text());
    assert_eq!(wasted.get("lost_answer"), Some(&1.0), "{wasted:?}");

    // A request cut off by its deadline while holding its slot: a second process,
    // which has not opened the code yet, opens it slowly.
    let emulator = Emulator::start();
    let first = emulator.serve(&[NO_ROTATE_AHEAD]);
    assert_eq!(first.get("/activation").await.status, 200);
    let server = emulator.serve(&[NO_ROTATE_AHEAD, ("VENDING_DEADLINE", "2s")]);
    emulator
        .inject(json!({"operation": "KMS.Decrypt", "delay_ms": 3_000, "count": 1}))
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 503, "{}", answer.shown());
    let wasted = slots_wasted(&server.log_text());
    assert_eq!(wasted.get("deadline"), Some(&1.0), "{wasted:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_landed_but_answered_an_error_is_kept_not_deleted() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[NO_ROTATE_AHEAD]);
    // A 400 the SDK does not retry: only reading the commit record can tell it landed.
    emulator
        .inject(
            json!({"operation": "DynamoDB.TransactWriteItems", "error": "ValidationException",
                       "when": "after", "count": 1}),
        )
        .await;
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_eq!(emulator.activation_ids().await, vec![answer.id()]);
    assert!(emulator.register(&answer.id(), &answer.code(), "web-01").await.is_ok());
}

// ------------------------------------------------------------ time

#[tokio::test(flavor = "multi_thread")]
async fn a_vend_never_outlives_its_deadline_and_the_cut_off_rotation_still_lands() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_DEADLINE", "2s"), NO_ROTATE_AHEAD]);
    emulator
        .inject(json!({"operation": "SSM.CreateActivation", "delay_ms": 4_000, "count": 1}))
        .await;
    let started = Instant::now();
    let answer = server.get("/activation").await;
    let took = started.elapsed();
    assert_eq!(answer.status, 503, "the caller waited {took:?}");
    assert_eq!(answer.json()["error"]["code"], "NoActivationYet");
    assert!(answer.header("retry-after").is_some());
    assert!(took < Duration::from_millis(2_800), "the caller waited {took:?}");

    let answer = server.vend_with_retries("/activation", Duration::from_secs(10)).await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_eq!(
        emulator.activation_ids().await,
        vec![answer.id()],
        "the rotation the deadline cut off went on and committed"
    );
}

// ------------------------------------------------------------ a missing code

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_code_parameter_brings_a_new_activation_instead_of_500s() {
    let emulator = Emulator::start();
    let maker = emulator.serve(&[]);
    let first = maker.get("/activation").await;
    maker.log_once_it_says("prepared a standby").await;
    // Parameter Store is read only for an item without a sealed code (one written
    // before them): a sealed code would serve without it.
    crate::sealed_codes::set_sealed_code(&emulator, None).await;
    emulator
        .ssm()
        .await
        .delete_parameter()
        .name(format!(
            "{}/pools/default/activation",
            emulator.env_value("VENDING_PARAMETER_PREFIX")
        ))
        .send()
        .await
        .unwrap();
    // A process that never saw the code.
    let server = emulator.serve(&[]);
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_ne!(answer.id(), first.id());
    assert!(
        server.log_text().contains("reason=code parameter missing"),
        "{}",
        server.log_text()
    );
    assert!(emulator.register(&answer.id(), &answer.code(), "web-01").await.is_ok());
}

// ------------------------------------------------------------ the sweep and a late commit

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_arrives_after_the_sweep_deleted_its_activation_does_not_land() {
    let emulator = Emulator::start();
    let settings = [
        ("VENDING_LEASE", "1s"),
        ("VENDING_SWEEP_GRACE", "2s"),
        ("VENDING_WAIT", "10s"),
    ];
    let server = emulator.serve(&settings);
    // The commit is held in the network for 6 s: longer than the lease and the grace.
    emulator
        .inject(json!({"operation": "DynamoDB.TransactWriteItems", "delay_ms": 6_000, "count": 1}))
        .await;
    let url = server.url.clone();
    let vend = tokio::spawn(async move { reqwest::get(format!("{url}/activation")).await });
    emulator.wait_for_call("DynamoDB.TransactWriteItems").await;
    // Ages count in whole seconds: past the 2 s grace for certain.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let report = emulator.sweep(&settings);
    assert_eq!(
        report[0]["deleted_orphans"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );

    let body: serde_json::Value = vend.await.unwrap().unwrap().json().await.unwrap();
    let (id, code) = (
        body["ActivationId"].as_str().unwrap(),
        body["ActivationCode"].as_str().unwrap(),
    );
    emulator.saw_code(code);
    assert!(
        emulator.register(id, code, "web-01").await.is_ok(),
        "the late commit installed the activation the sweep had deleted"
    );
}

// ------------------------------------------------------------ logs

#[tokio::test(flavor = "multi_thread")]
async fn no_code_reaches_the_log_even_at_trace() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("RUST_LOG", "trace"), ("VENDING_REGISTRATION_LIMIT", "2")]);
    for _ in 0..5 {
        assert_eq!(server.get("/activation").await.status, 200);
    }
    // The emulator's drop scans every server log for every code handed out.
}

// ------------------------------------------------------------ the sweep at scale

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_gets_through_thousands_of_activations_past_errors() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    let ssm = emulator.ssm().await;
    let total = std::env::var("SWEEP_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000usize);
    let tags = emulator.our_tags("default");
    let created = Instant::now();
    let batches = (0..total).collect::<Vec<_>>();
    for chunk in batches.chunks(64) {
        join_all(chunk.iter().map(|_| {
            ssm.create_activation()
                .iam_role(&role)
                .default_instance_name("vending-default")
                .set_tags(Some(tags.clone()))
                .send()
        }))
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    }
    println!("created {total} orphans in {:?}", created.elapsed());
    // Ages count in whole seconds: every one past the 2 s grace for certain.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    emulator
        // An error the SDK does not retry: the sweep must carry on past each of them.
        .inject(json!({"operation": "SSM.DeleteActivation", "error": "TooManyUpdates", "count": 25}))
        .await;
    let started = Instant::now();
    let report = emulator.sweep(&[("VENDING_LEASE", "1s"), ("VENDING_SWEEP_GRACE", "2s")]);
    let took = started.elapsed();
    let report = &report[0];
    let deleted = report["deleted_orphans"].as_array().unwrap().len();
    let failed = report["failed"].as_array().unwrap().len();
    println!("swept {total} activations in {took:?}: {deleted} deleted, {failed} failed");
    assert_eq!(report["examined"], total);
    assert_eq!(report["complete"], true);
    assert_eq!(deleted + failed, total, "kept {}", report["kept"]);
    assert_eq!(failed, 25, "each refused deletion is reported");
    assert_eq!(
        emulator.activation_ids().await.len(),
        failed,
        "only the failed ones are left"
    );
}
