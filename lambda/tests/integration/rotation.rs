//! When and how the pool gets a new activation, against real servers on the emulator.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::Emulator;

/// No rotate-ahead, so each test sees only the rotation it provokes.
const NO_ROTATE_AHEAD: (&str, &str) = ("VENDING_LOW_WATER_PERCENT", "0");

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_activation_is_replaced() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[
        ("VENDING_ACTIVATION_TTL", "5s"),
        ("VENDING_EXPIRY_MARGIN", "2s"),
        // The margin must outlast the deadline.
        ("VENDING_DEADLINE", "1s"),
        NO_ROTATE_AHEAD,
    ]);
    let first = server.get("/activation").await;
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let second = server.get("/activation").await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_ne!(second.id(), first.id());
    assert!(server.log_text().contains("reason=expired"), "{}", server.log_text());
    assert!(emulator.register(&second.id(), &second.code(), "web-01").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activation_inside_the_expiry_margin_is_no_longer_handed_out() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[
        ("VENDING_ACTIVATION_TTL", "10s"),
        ("VENDING_EXPIRY_MARGIN", "4s"),
        ("VENDING_DEADLINE", "3s"),
        NO_ROTATE_AHEAD,
    ]);
    let first = server.get("/activation").await;
    let expires = first.json()["ExpirationDate"].as_str().unwrap().to_owned();
    assert_eq!(
        server.get("/activation").await.id(),
        first.id(),
        "well before the margin: same activation"
    );
    // 7 s in: inside the 4 s margin, 3 s before expiry (room for a slow machine).
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    let second = server.get("/activation").await;
    assert_ne!(second.id(), first.id(), "inside the 4 s margin of {expires}");
    assert!(
        server.log_text().contains("reason=inside the expiry margin"),
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn used_up_slots_bring_a_new_activation_and_every_code_registers() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "3"), NO_ROTATE_AHEAD]);
    let mut answers = Vec::new();
    for _ in 0..7 {
        answers.push(server.get("/activation").await);
    }
    let ids: Vec<String> = answers.iter().map(|a| a.id()).collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
    assert_ne!(ids[2], ids[3], "the fourth vend needs a fourth slot");
    assert_eq!(ids[3], ids[5]);
    assert_ne!(ids[5], ids[6]);
    for (i, a) in answers.iter().enumerate() {
        let registered = emulator.register(&a.id(), &a.code(), &format!("web-{i}")).await;
        assert!(registered.is_ok(), "vend {i}: {registered:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activation_deleted_out_of_band_is_replaced() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_VERIFY_INTERVAL", "0s")]);
    let first = server.get("/activation").await;
    emulator.delete_activation(&first.id()).await;
    let second = server.get("/activation").await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_ne!(second.id(), first.id());
    assert!(emulator.register(&second.id(), &second.code(), "web-01").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_slot_is_offered_before_a_ready_standby_takes_over_without_ssm() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[
        ("VENDING_REGISTRATION_LIMIT", "10"),
        ("VENDING_LOW_WATER_PERCENT", "20"),
    ]);
    let first = server.get("/activation").await;
    for slot in 2..=10 {
        let a = server.get("/activation").await;
        assert_eq!(a.id(), first.id(), "slot {slot} of the current activation is offered");
        assert!(emulator
            .register(&a.id(), &a.code(), &format!("web-{slot}"))
            .await
            .is_ok());
    }
    server.log_once_it_says("prepared a standby").await;
    // The eleventh vend finds the current activation used up: the standby takes over
    // in one conditional write, with no call to SSM on the request's path.
    emulator.reset_calls().await;
    let next = server.get("/activation").await;
    assert_ne!(next.id(), first.id());
    let calls = emulator.calls().await;
    assert!(
        !calls
            .keys()
            .any(|op| op.starts_with("SSM.") && op != "SSM.GetParameter"),
        "no SSM call but the code's: {calls:?}"
    );
    assert!(
        server.log_text().contains("promoted the standby"),
        "{}",
        server.log_text()
    );
    assert!(emulator.register(&next.id(), &next.code(), "web-next").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_while_holding_the_lease_blocks_rotation_no_longer_than_the_lease() {
    let emulator = Emulator::start();
    let lease = Duration::from_secs(3);
    let settings = [("VENDING_LEASE", "3s"), ("VENDING_WAIT", "500ms"), NO_ROTATE_AHEAD];
    let mut doomed = emulator.serve(&settings);
    let survivor = emulator.serve(&settings);
    emulator.set_latency(5).await;

    // The doomed server creates an activation, then stalls storing its code: it holds
    // the lease when it dies, after CreateActivation and before its commit.
    emulator
        .inject(json!({"operation": "SSM.PutParameter", "delay_ms": 30_000, "count": 1}))
        .await;
    let doomed_url = doomed.url.clone();
    let stuck = tokio::spawn(async move { reqwest::get(format!("{doomed_url}/activation")).await });
    emulator.wait_for_call("SSM.PutParameter").await;
    doomed.kill();
    let killed_at = Instant::now();
    let _ = stuck.await;

    let busy = survivor.get("/activation").await;
    assert_eq!(busy.status, 503, "the lease still stands: {}", busy.body);
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(busy.json()["error"]["code"], "NoActivationYet");

    let answer = survivor.vend_with_retries("/activation", Duration::from_secs(15)).await;
    let blocked_for = killed_at.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        blocked_for < lease + Duration::from_secs(2),
        "rotation was blocked for {blocked_for:?}, lease is {lease:?}"
    );
    println!("rotation blocked for {blocked_for:?} after a SIGKILL under a {lease:?} lease");
    assert!(emulator.register(&answer.id(), &answer.code(), "web-01").await.is_ok());
    let known = emulator.activation_ids().await;
    assert!(
        known.len() <= 2,
        "at most one orphan besides the live activation: {known:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_that_lost_its_lease_deletes_its_own_activation_and_commits_nothing() {
    let emulator = Emulator::start();
    let settings = [("VENDING_LEASE", "1s"), ("VENDING_WAIT", "10s"), NO_ROTATE_AHEAD];
    let slow = emulator.serve(&settings);
    let fast = emulator.serve(&settings);
    emulator.set_latency(5).await;

    // The slow server's PutParameter takes 3 s: its 1 s lease runs out and the fast
    // server takes over, rotates and commits first.
    emulator
        .inject(json!({"operation": "SSM.PutParameter", "delay_ms": 3_000, "count": 1}))
        .await;
    let slow_url = slow.url.clone();
    let slow_vend = tokio::spawn(async move { reqwest::get(format!("{slow_url}/activation")).await });
    emulator.wait_for_call("SSM.PutParameter").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let fast_answer = fast.get("/activation").await;
    assert_eq!(fast_answer.status, 200, "{}", fast_answer.body);

    let slow_body: serde_json::Value = slow_vend.await.unwrap().unwrap().json().await.unwrap();
    let slow_id = slow_body["ActivationId"].as_str().unwrap().to_owned();
    emulator.saw_code(slow_body["ActivationCode"].as_str().unwrap());
    assert_eq!(
        slow_id,
        fast_answer.id(),
        "the fenced-out rotation adopts the winner's activation"
    );
    assert!(slow.log_text().contains("lost the lease"), "{}", slow.log_text());
    assert_eq!(
        emulator.activation_ids().await,
        vec![fast_answer.id()],
        "the loser deleted its own activation"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_ahead_of_expiry_says_so_in_the_log() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[
        ("VENDING_ACTIVATION_TTL", "10s"),
        ("VENDING_EXPIRY_MARGIN", "2s"),
        ("VENDING_DEADLINE", "1s"),
        ("VENDING_LOW_WATER_PERCENT", "20"),
    ]);
    let first = server.get("/activation").await;
    // 6.5 s in: within one margin of the 2 s margin, still outside it.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let served = server.get("/activation").await;
    assert_eq!(served.id(), first.id(), "the old activation still serves this request");
    let log = server.log_once_it_says("reason=ahead of expiry").await;
    assert!(!log.contains("reason=low-water mark"), "{log}");
}

fn epoch_secs_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn expires_at(answer: &support::Answer) -> i64 {
    let text = answer.json()["ExpirationDate"].as_str().unwrap().to_owned();
    aws_smithy_types::DateTime::from_str(&text, aws_smithy_types::date_time::Format::DateTime)
        .unwrap()
        .secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_that_enters_the_margin_before_it_is_handed_out_is_wasted_and_the_next_activation_served() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[
        ("VENDING_ACTIVATION_TTL", "14s"),
        ("VENDING_EXPIRY_MARGIN", "5s"),
        ("VENDING_DEADLINE", "4s"),
        NO_ROTATE_AHEAD,
    ]);
    let first = server.get("/activation").await;
    let expires = expires_at(&first);
    // The slot is taken 6.5 s before expiry (clear of the 5 s margin), but the
    // write's answer comes 2.5 s late: handed out then, it would be 4 s from expiry.
    let wait = expires as f64 - 6.5 - epoch_secs_f64();
    assert!(wait > 0.0, "the first vend took too long");
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    emulator
        .inject(serde_json::json!({"operation": "DynamoDB.UpdateItem", "delay_ms": 2_500, "when": "after", "count": 1}))
        .await;
    let second = server.get("/activation").await;
    let answered_at = epoch_secs_f64();
    assert_eq!(second.status, 200, "{}", second.shown());
    assert_ne!(second.id(), first.id(), "handed out inside the margin");
    assert!(expires_at(&second) as f64 - answered_at > 5.0);
    let log = server.log_text();
    assert!(log.contains("slots wasted") && log.contains("reason=margin"), "{log}");
    assert!(emulator.register(&second.id(), &second.code(), "web-01").await.is_ok());
}

#[test]
fn an_expiry_margin_not_larger_than_the_deadline_is_refused_at_start_naming_both_settings() {
    use std::io::Read;
    let emulator = Emulator::start();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vending"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .envs(emulator.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("VENDING_EXPIRY_MARGIN", "2s")
        .env("VENDING_ACTIVATION_TTL", "12s")
        .env("VENDING_DEADLINE", "3s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vending serve started with a margin not larger than the deadline");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(
        stderr.contains("VENDING_EXPIRY_MARGIN") && stderr.contains("VENDING_DEADLINE"),
        "{stderr}"
    );
}
