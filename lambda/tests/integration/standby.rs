//! The standby activation: promoted whole, once, only when the current activation is
//! refused; a replaced standby is never promoted; a process killed while preparing
//! one blocks nobody and leaves at most one orphan.

use crate::support;

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;
use support::Emulator;
use vending::{epoch_now, CurrentActivation, LeaseAttempt, Place, PoolStore, Wanted};

fn store(emulator: &Emulator, sdk: &aws_config::SdkConfig) -> PoolStore {
    PoolStore::new(aws_sdk_dynamodb::Client::new(sdk), emulator.env_value("VENDING_TABLE"))
}

fn wanted(a: &CurrentActivation) -> Wanted<'_> {
    Wanted {
        fingerprint: a.fingerprint.as_str(),
        config_at: a.config_at,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_standby_is_never_promoted_and_a_standby_is_promoted_once() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "2")]);
    assert_eq!(server.get("/activation").await.status, 200);
    let sdk = emulator.sdk_config().await;
    let store = store(&emulator, &sdk);
    server.log_once_it_says("prepared a standby").await;
    let state = store.pool("default").await.unwrap();
    let (current, standby) = (
        state.activation.unwrap(),
        state.standby.expect("a standby was prepared"),
    );
    let now = epoch_now();

    // While the current activation has slots, the standby stays where it is.
    assert!(store
        .promote_standby("default", &standby, now, 60, wanted(&current), 1)
        .await
        .unwrap()
        .is_none());

    // Another process replaces the standby (as when it nears its expiry) ...
    let owner = "test-replacer";
    assert!(matches!(
        store.take_lease("default", owner, now, now + 30).await.unwrap(),
        LeaseAttempt::Taken(_)
    ));
    let replacement = CurrentActivation {
        id: "replacement-standby".into(),
        ..standby.clone()
    };
    assert!(store
        .commit_rotation("default", owner, &replacement, Place::Standby, "test", now)
        .await
        .unwrap());
    // ... and the current one is used up.
    assert_eq!(server.get("/activation").await.id(), current.id);

    // A request that saw the old standby cannot promote it.
    assert!(store
        .promote_standby("default", &standby, now, 60, wanted(&current), 1)
        .await
        .unwrap()
        .is_none());
    let state = store.pool("default").await.unwrap();
    assert_eq!(state.activation.unwrap().id, current.id);
    assert_eq!(state.standby.unwrap().id, "replacement-standby");

    // Many requests promote the current standby at once: exactly one does.
    let attempts = join_all((0..16).map(|_| {
        let store = store.clone();
        let replacement = replacement.clone();
        let want = (current.fingerprint.clone(), current.config_at);
        async move {
            store
                .promote_standby(
                    "default",
                    &replacement,
                    now,
                    60,
                    Wanted {
                        fingerprint: &want.0,
                        config_at: want.1,
                    },
                    1,
                )
                .await
                .unwrap()
        }
    }))
    .await;
    let winners: Vec<&CurrentActivation> = attempts.iter().flatten().collect();
    assert_eq!(winners.len(), 1, "promoted once");
    assert_eq!(winners[0].id, "replacement-standby");
    assert_eq!(winners[0].reserved, 1, "the promotion took the first slot");
    let state = store.pool("default").await.unwrap();
    assert_eq!(state.activation.unwrap().id, "replacement-standby");
    assert!(state.standby.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_killed_between_creating_a_standby_and_recording_it_blocks_nobody() {
    let emulator = Emulator::start();
    let settings = [
        ("VENDING_REGISTRATION_LIMIT", "3"),
        ("VENDING_LEASE", "3s"),
        ("VENDING_SWEEP_GRACE", "5s"),
    ];
    let mut doomed = emulator.serve(&settings);
    // The second PutParameter is the standby's code: it hangs, and the process dies.
    emulator
        .inject(json!({"operation": "SSM.PutParameter", "delay_ms": 30_000, "skip": 1, "count": 1}))
        .await;
    let url = doomed.url.clone();
    let first = tokio::spawn(async move { reqwest::get(format!("{url}/activation")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while emulator.calls().await.get("SSM.PutParameter").copied().unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "the standby was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill();
    let killed_at = Instant::now();
    let _ = first.await;

    let survivor = emulator.serve(&settings);
    let mut ids = Vec::new();
    for i in 0..7 {
        let answer = survivor.vend_with_retries("/activation", Duration::from_secs(15)).await;
        assert_eq!(answer.status, 200, "{}", answer.shown());
        assert!(emulator
            .register(&answer.id(), &answer.code(), &format!("web-{i}"))
            .await
            .is_ok());
        ids.push(answer.id());
    }
    let blocked = killed_at.elapsed();
    assert!(
        blocked < Duration::from_secs(3 + 8),
        "7 vends took {blocked:?} after the kill"
    );

    // The half-made standby is an orphan the sweep removes once it is past the grace.
    tokio::time::sleep(Duration::from_millis(6_200)).await;
    let report = emulator.sweep(&settings);
    let orphans = report[0]["deleted_orphans"].as_array().unwrap().len();
    assert!(orphans <= 1, "at most one orphan per lost rotation: {orphans}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_readies_its_pools_before_it_answers_so_the_first_vend_waits_for_no_rotation() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator.put_pool("web", &json!({"iam_role": role})).await;
    emulator
        .put_pool("off", &json!({"iam_role": role, "enabled": false}))
        .await;
    let server = emulator.serve(&[("VENDING_READY_POOLS", "true")]);
    let sdk = emulator.sdk_config().await;
    let store = store(&emulator, &sdk);
    // `web` and `off` have configs and `default` has none: there is no `default`.
    let web = store.pool("web").await.unwrap();
    assert!(web.activation.is_some(), "web has its activation before any vend");
    assert!(web.standby.is_some(), "web has its standby before any vend");
    let off = store.pool("off").await.unwrap();
    assert!(
        off.activation.is_none() && off.standby.is_none(),
        "a disabled pool is left alone"
    );

    emulator.reset_calls().await;
    let answer = server.get("/activation?pool=web").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    let calls = emulator.calls().await;
    assert!(!calls.contains_key("SSM.CreateActivation"), "{calls:?}");
    let log = server.log_text();
    let vended = log.lines().find(|l| l.contains(" vended ")).expect("a vended line");
    assert!(vended.contains("waited_for_rotation=false"), "{vended}");

    // A second process finds the pools ready and makes nothing.
    emulator.reset_calls().await;
    let _again = emulator.serve(&[("VENDING_READY_POOLS", "true")]);
    let calls = emulator.calls().await;
    assert!(!calls.contains_key("SSM.CreateActivation"), "{calls:?}");
}
