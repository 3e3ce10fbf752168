//! Who the service trusts: only the pool configs named writers wrote
//! (`VENDING_POOL_CONFIG_WRITERS`), and only a customer-managed, enabled KMS key for
//! the codes (`VENDING_KMS_KEY_ID`).

use crate::support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::Emulator;

const ADMIN_KEY: &str = "AKIAPOOLADMIN";
const ADMIN: &str = "arn:aws:sts::123456789012:assumed-role/pool-admin/alice";
const WRITERS: (&str, &str) = (
    "VENDING_POOL_CONFIG_WRITERS",
    "arn:aws:sts::123456789012:assumed-role/pool-admin/*",
);

fn vending_command(emulator: &Emulator, args: &[&str], overrides: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vending"));
    command.args(args).env_clear().env("RUST_LOG", "info");
    for (k, v) in emulator
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(overrides.iter().copied())
    {
        command.env(k, v);
    }
    command
}

fn vending(emulator: &Emulator, args: &[&str], overrides: &[(&str, &str)]) -> std::process::Output {
    vending_command(emulator, args, overrides).output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_config_written_by_anyone_but_the_named_writers_is_misconfigured() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator.set_principal(ADMIN_KEY, ADMIN).await;
    emulator
        .put_pool_as(
            ADMIN_KEY,
            "site-a",
            &json!({"iam_role": role, "allowed_cidrs": ["127.0.0.0/8"]}),
        )
        .await;
    // Anyone else with ssm:PutParameter on the path (here the key "test").
    emulator.put_pool("forged", &json!({"iam_role": role})).await;
    let server = emulator.serve(&[
        WRITERS,
        ("VENDING_POOL_REFRESH", "1s"),
        ("VENDING_LOW_WATER_PERCENT", "0"),
    ]);

    assert_eq!(server.get("/activation?pool=site-a").await.status, 200);
    let forged = server.get("/activation?pool=forged").await;
    assert_eq!(
        (forged.status, forged.json()["error"]["code"].as_str()),
        (500, Some("PoolMisconfigured")),
        "{}",
        forged.shown()
    );
    let message = forged.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("arn:aws:iam::123456789012:user/test") && message.contains("VENDING_POOL_CONFIG_WRITERS"),
        "{message}"
    );

    // Someone else drops site-a's allowed_cidrs: the pool stops, it does not open up.
    emulator.put_pool("site-a", &json!({"iam_role": role})).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let widened = server.get("/activation?pool=site-a").await;
    assert_eq!(widened.status, 500, "{}", widened.shown());

    let log = server.log_text();
    assert!(log.contains("pool config not trusted"), "{log}");
    let untrusted: Vec<Value> = log
        .lines()
        .filter(|l| l.contains("\"PoolConfigUntrusted\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(untrusted.iter().any(|d| d["Pool"] == "forged"), "{log}");
    for doc in &untrusted {
        vending::check_emf(doc).unwrap();
    }
    assert!(emulator.calls().await.contains_key("SSM.DescribeParameters"));

    // `vending pools` says the same, from the operator's side.
    let out = vending(&emulator, &["pools", "--json"], &[WRITERS]);
    assert_eq!(out.status.code(), Some(1));
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let forged = listing["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == "forged")
        .unwrap();
    assert_eq!(forged["valid"], false);
    assert!(forged["problem"].as_str().unwrap().starts_with("(writer)"), "{forged}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_named_writers_anyone_s_config_is_used_and_no_writer_is_read() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator.put_pool("web", &json!({"iam_role": role})).await;
    let server = emulator.serve(&[("VENDING_LOW_WATER_PERCENT", "0")]);
    assert_eq!(server.get("/activation?pool=web").await.status, 200);
    assert!(!emulator.calls().await.contains_key("SSM.DescribeParameters"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aws_managed_or_disabled_key_stops_the_start_naming_vending_kms_key_id() {
    let emulator = Emulator::start();
    let kms = aws_sdk_kms::Client::new(&emulator.sdk_config().await);
    let disabled = kms
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned();
    kms.disable_key().key_id(&disabled).send().await.unwrap();
    for (key, says) in [("alias/aws/ssm", "AWS-managed"), (disabled.as_str(), "not enabled")] {
        let out = exits_within(
            vending_command(
                &emulator,
                &["serve", "--listen", "127.0.0.1:0"],
                &[("VENDING_KMS_KEY_ID", key)],
            ),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("`vending serve` with {key} started serving"));
        assert_eq!(out.status.code(), Some(2), "{key}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("VENDING_KMS_KEY_ID") && stderr.contains(says),
            "{key}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_key_and_fails_on_an_aws_managed_one() {
    let emulator = Emulator::start();
    let out = vending(&emulator, &["status", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["kms_key"]["key_manager"], "CUSTOMER");
    assert_eq!(status["kms_key"]["key_state"], "Enabled");
    assert!(status["kms_key"]["problem"].is_null());

    let out = vending(&emulator, &["status"], &[("VENDING_KMS_KEY_ID", "alias/aws/ssm")]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("kms key") && table.contains("REFUSED"), "{table}");
}

/// The process's output once it exits, or `None` (and it is killed) if it still runs
/// after `within`.
fn exits_within(mut command: Command, within: Duration) -> Option<std::process::Output> {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
