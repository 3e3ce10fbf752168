//! Pools: per-pool role, limit and tags on every activation (and so on every node),
//! configs read at run time from Parameter Store, and who may ask.

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use support::{Emulator, Server};

const FAST_REFRESH: (&str, &str) = ("VENDING_POOL_REFRESH", "1s");
/// Counting activations exactly: no standby beside the current one.
const NO_STANDBY: (&str, &str) = ("VENDING_LOW_WATER_PERCENT", "0");

fn tags_of(activation: &aws_sdk_ssm::types::Activation) -> HashMap<String, String> {
    activation
        .tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pools_make_activations_with_their_own_role_limit_and_tags() {
    let emulator = Emulator::start();
    emulator.create_role("windows-test-nodes");
    let linux_role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool(
            "linux-prod",
            &json!({"iam_role": linux_role, "registration_limit": 3, "tags": {"env": "prod", "os": "linux"}}),
        )
        .await;
    emulator
        .put_pool(
            "windows-test",
            &json!({"iam_role": "windows-test-nodes", "registration_limit": 5, "activation_ttl": "12h",
                    "tags": {"env": "test"}, "default_instance_name": "win-test", "description": "Windows test fleet"}),
        )
        .await;
    let server = emulator.serve(&[FAST_REFRESH]);

    let linux = server.get("/activation?pool=linux-prod").await;
    let windows = server.get("/activation?pool=windows-test").await;
    assert_eq!(linux.status, 200, "{}", linux.shown());
    assert_eq!(windows.status, 200, "{}", windows.shown());
    assert_eq!(linux.json()["Pool"], "linux-prod");
    assert_eq!(windows.json()["Pool"], "windows-test");
    assert_ne!(linux.id(), windows.id());

    let activations = emulator.activations().await;
    let find = |id: String| {
        activations
            .iter()
            .find(|a| a.activation_id() == Some(id.as_str()))
            .unwrap()
            .clone()
    };
    let (l, w) = (find(linux.id()), find(windows.id()));
    assert_eq!(
        (l.iam_role(), l.registration_limit()),
        (Some(linux_role.as_str()), Some(3))
    );
    assert_eq!(
        (w.iam_role(), w.registration_limit()),
        (Some("windows-test-nodes"), Some(5))
    );
    assert_eq!(w.default_instance_name(), Some("win-test"));
    assert_eq!(w.description(), Some("Windows test fleet"));
    assert_eq!(
        tags_of(&l),
        HashMap::from([
            ("activation-vending:pool".to_owned(), "linux-prod".to_owned()),
            (
                "activation-vending:deployment".to_owned(),
                emulator.env_value("VENDING_TABLE")
            ),
            ("env".to_owned(), "prod".to_owned()),
            ("os".to_owned(), "linux".to_owned()),
        ])
    );
    assert_eq!(tags_of(&w).get("env").map(String::as_str), Some("test"));

    // Each pool keeps its own limit: the fourth Linux vend needs a new activation.
    for _ in 0..2 {
        assert_eq!(server.get("/activation?pool=linux-prod").await.id(), linux.id());
    }
    assert_ne!(server.get("/activation?pool=linux-prod").await.id(), linux.id());

    // SSM copies an activation's tags onto each node registered with it.
    let ssm = emulator.ssm().await;
    for (answer, name, want) in [(&linux, "web-01", "prod"), (&windows, "win-01", "test")] {
        let node = emulator.register(&answer.id(), &answer.code(), name).await.unwrap();
        let tags = ssm
            .list_tags_for_resource()
            .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::ManagedInstance)
            .resource_id(&node)
            .send()
            .await
            .unwrap();
        let tags: HashMap<&str, &str> = tags.tag_list().iter().map(|t| (t.key(), t.value())).collect();
        assert_eq!(tags.get("env"), Some(&want), "{name}: {tags:?}");
        assert_eq!(
            tags.get("activation-vending:pool"),
            Some(&answer.json()["Pool"].as_str().unwrap())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_isolates_only_its_own_pool_and_nothing_is_taken() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator.put_pool("good", &json!({"iam_role": role})).await;
    emulator
        .put_pool("broken", &json!({"iam_role": role, "registration_limit": 5000}))
        .await;
    emulator
        .put_pool("typo", &json!({"iam_role": role, "registraton_limit": 5}))
        .await;
    emulator
        .put_pool("off", &json!({"iam_role": role, "enabled": false}))
        .await;
    let server = emulator.serve(&[FAST_REFRESH, NO_STANDBY]);

    let broken = server.get("/activation?pool=broken").await;
    assert_eq!(broken.status, 500, "{}", broken.body);
    assert_eq!(broken.json()["error"]["code"], "PoolMisconfigured");
    let message = broken.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("broken") && message.contains("registration_limit"),
        "{message}"
    );
    let typo = server.get("/activation?pool=typo").await;
    assert_eq!(typo.json()["error"]["code"], "PoolMisconfigured");
    assert!(typo.body.contains("registraton_limit"), "{}", typo.body);

    let off = server.get("/activation?pool=off").await;
    assert_eq!(
        (off.status, off.json()["error"]["code"].as_str()),
        (403, Some("PoolDisabled"))
    );
    let absent = server.get("/activation?pool=absent").await;
    assert_eq!(
        (absent.status, absent.json()["error"]["code"].as_str()),
        (404, Some("PoolNotFound"))
    );

    assert_eq!(server.get("/activation?pool=good").await.status, 200);
    let pools: Vec<String> = emulator
        .activations()
        .await
        .iter()
        .filter_map(|a| tags_of(a).get("activation-vending:pool").cloned())
        .collect();
    assert_eq!(pools, vec!["good"], "no activation for a refused pool");
}

#[tokio::test(flavor = "multi_thread")]
async fn once_a_pool_has_a_config_the_default_without_one_answers_404_and_everyone_says_so() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool("site-a", &json!({"iam_role": role, "allowed_cidrs": ["10.20.0.0/16"]}))
        .await;
    let server = emulator.serve(&[NO_STANDBY, ("VENDING_READY_POOLS", "true")]);
    let log = server.log_text();
    assert!(
        log.contains("there is NO default pool"),
        "the start-up log says it: {log}"
    );

    // From outside every pool's allowed_cidrs, the open default was the way in.
    for path in ["/activation", "/", "/activation?pool=default"] {
        let answer = server.get(path).await;
        assert_eq!(
            (answer.status, answer.json()["error"]["code"].as_str()),
            (404, Some("PoolNotFound")),
            "{path}: {}",
            answer.shown()
        );
    }
    let for_default = emulator
        .activations()
        .await
        .iter()
        .filter(|a| tags_of(a).get("activation-vending:pool").map(String::as_str) == Some("default"))
        .count();
    assert_eq!(for_default, 0, "nothing made for a pool that does not exist");

    let out = vending_pools(&emulator, &["--json"]);
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["default_pool"], "none");
    let names: Vec<&str> = listing["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pool"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["site-a"]);
    let table = String::from_utf8_lossy(&vending_pools(&emulator, &[]).stdout).into_owned();
    assert!(table.contains("there is NO default pool"), "{table}");

    // A config of its own brings it back, with its own rules.
    emulator
        .put_pool("default", &json!({"iam_role": role, "allowed_cidrs": ["127.0.0.0/8"]}))
        .await;
    let out = vending_pools(&emulator, &["--json"]);
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["default_pool"], "config");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_environment_s_default_pool_admits_only_the_default_allowed_cidrs() {
    let emulator = Emulator::start();
    let restricted = emulator.serve(&[("VENDING_DEFAULT_ALLOWED_CIDRS", "10.20.0.0/16"), NO_STANDBY]);
    let refused = restricted.get("/activation").await;
    assert_eq!(
        (refused.status, refused.json()["error"]["code"].as_str()),
        (403, Some("Forbidden")),
        "{}",
        refused.shown()
    );
    assert!(emulator.activations().await.is_empty());
    let local = emulator.serve(&[("VENDING_DEFAULT_ALLOWED_CIDRS", "127.0.0.0/8"), NO_STANDBY]);
    assert_eq!(local.get("/activation").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_added_after_the_process_read_the_configs_is_found_at_once_and_misses_read_at_most_every_5_s() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    // The copy would be good for an hour: only the miss can find the new pool.
    let server = emulator.serve(&[("VENDING_POOL_REFRESH", "1h"), NO_STANDBY]);
    assert_eq!(server.get("/activation").await.status, 200, "the process has its copy");

    emulator.put_pool("added", &json!({"iam_role": role})).await;
    let added = server.get("/activation?pool=added").await;
    assert_eq!(added.status, 200, "{}", added.shown());
    assert_eq!(added.json()["Pool"], "added");

    // A storm of unknown names costs Parameter Store one read per process per 5 s.
    emulator.reset_calls().await;
    for i in 0..10 {
        let absent = server.get(&format!("/activation?pool=absent-{i}")).await;
        assert_eq!(
            (absent.status, absent.json()["error"]["code"].as_str()),
            (404, Some("PoolNotFound"))
        );
    }
    let reads = emulator
        .calls()
        .await
        .get("SSM.GetParametersByPath")
        .copied()
        .unwrap_or(0);
    assert_eq!(reads, 0, "the miss that found `added` read within the last 5 s");
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    for i in 0..5 {
        assert_eq!(server.get(&format!("/activation?pool=absent-{i}")).await.status, 404);
    }
    let reads = emulator
        .calls()
        .await
        .get("SSM.GetParametersByPath")
        .copied()
        .unwrap_or(0);
    assert_eq!(reads, 1, "five misses after 5 s: one read");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_whose_expiry_margin_does_not_outlast_the_deadline_is_misconfigured() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool(
            "short",
            &json!({"iam_role": role, "expiry_margin": "20s", "activation_ttl": "1h"}),
        )
        .await;
    let server = emulator.serve(&[("VENDING_DEADLINE", "20s"), NO_STANDBY]);
    let short = server.get("/activation?pool=short").await;
    assert_eq!(
        (short.status, short.json()["error"]["code"].as_str()),
        (500, Some("PoolMisconfigured")),
        "{}",
        short.body
    );
    assert!(
        short.body.contains("expiry_margin") && short.body.contains("VENDING_DEADLINE"),
        "{}",
        short.body
    );
    assert!(emulator.activations().await.is_empty(), "nothing made for it");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_change_rotates_so_no_node_registers_with_stale_tags() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool("web", &json!({"iam_role": role, "tags": {"patch-group": "a"}}))
        .await;
    let server = emulator.serve(&[FAST_REFRESH]);
    let before = server.get("/activation?pool=web").await;
    assert_eq!(server.get("/activation?pool=web").await.id(), before.id());

    emulator
        .put_pool("web", &json!({"iam_role": role, "tags": {"patch-group": "b"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let after = server.get("/activation?pool=web").await;
    assert_ne!(after.id(), before.id(), "the config changed: a new activation");
    assert!(
        server.log_text().contains("reason=ConfigChanged"),
        "{}",
        server.log_text()
    );
    let activation = emulator
        .activations()
        .await
        .into_iter()
        .find(|a| a.activation_id() == Some(after.id().as_str()))
        .unwrap();
    assert_eq!(tags_of(&activation).get("patch-group").map(String::as_str), Some("b"));
    assert_eq!(
        server.get("/activation?pool=web").await.id(),
        after.id(),
        "and no further rotation"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_outside_the_allowed_networks_takes_no_slot() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool("site-a", &json!({"iam_role": role, "allowed_cidrs": ["10.20.0.0/16"]}))
        .await;

    // Behind a trusted proxy, the forwarded address is the caller.
    let behind_alb = emulator.serve(&[("VENDING_TRUSTED_PROXIES", "127.0.0.0/8"), NO_STANDBY]);
    let admitted = behind_alb
        .request(
            reqwest::Method::GET,
            "/activation?pool=site-a",
            &[("X-Forwarded-For", "10.20.1.1")],
        )
        .await;
    assert_eq!(admitted.status, 200, "{}", admitted.shown());
    assert!(
        behind_alb.log_text().contains("source=10.20.1.1"),
        "the vend's audit line has the source: {}",
        behind_alb.log_text()
    );
    let outsider = behind_alb
        .request(
            reqwest::Method::GET,
            "/activation?pool=site-a",
            &[("X-Forwarded-For", "192.0.2.1")],
        )
        .await;
    assert_eq!(outsider.status, 403, "{}", outsider.shown());

    // Without a trusted proxy, X-Forwarded-For proves nothing: the peer is the caller.
    let direct = emulator.serve(&[]);
    emulator.reset_calls().await;
    let refused = direct
        .request(
            reqwest::Method::GET,
            "/activation?pool=site-a",
            &[("X-Forwarded-For", "10.20.1.1")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.shown());
    assert_eq!(refused.json()["error"]["code"], "Forbidden");
    let calls = emulator.calls().await;
    assert!(!calls.contains_key("DynamoDB.UpdateItem"), "no slot taken: {calls:?}");
    let log = direct.log_text();
    assert!(
        log.contains("refused") && log.contains("site-a") && log.contains("127.0.0.1"),
        "the refusal is logged with pool and source: {log}"
    );
    assert_eq!(
        emulator.activations().await.len(),
        1,
        "only the admitted caller's activation"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_peer_cannot_vouch_for_hops_left_of_the_one_it_appended() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool("site-a", &json!({"iam_role": role, "allowed_cidrs": ["10.20.0.0/16"]}))
        .await;
    let server = emulator.serve(&[("VENDING_TRUSTED_PROXIES", "127.0.0.1/32"), NO_STANDBY]);
    // The proxy at 127.0.0.1 appended the address it saw, itself (something else in
    // the trusted range); the entry left of it is the sender's own claim.
    let spoofed = server
        .request(
            reqwest::Method::GET,
            "/activation?pool=site-a",
            &[("X-Forwarded-For", "10.20.1.1, 127.0.0.1")],
        )
        .await;
    assert_eq!(spoofed.status, 403, "{}", spoofed.shown());
    let log = server.log_text();
    assert!(!log.contains("source=10.20.1.1"), "{log}");
    assert!(emulator.activations().await.is_empty(), "no activation made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_over_three_pools_keeps_each_pools_limit_and_reads_parameter_store_rarely() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    let limits = [("alpha", 5u32), ("beta", 10), ("gamma", 25)];
    for (pool, limit) in limits {
        emulator
            .put_pool(
                pool,
                &json!({"iam_role": role, "registration_limit": limit, "tags": {"pool-name": pool}}),
            )
            .await;
    }
    emulator.set_latency(5).await;
    let servers: Vec<Arc<Server>> = (0..4).map(|_| Arc::new(emulator.serve(&[]))).collect();
    let tasks = (0..300).map(|i| {
        let server = servers[i % servers.len()].clone();
        let pool = limits[i % limits.len()].0;
        tokio::spawn(async move {
            let answer = server
                .vend_with_retries(&format!("/activation?pool={pool}"), Duration::from_secs(120))
                .await;
            (pool, answer)
        })
    });
    let answers: Vec<_> = join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    emulator.set_latency(0).await;
    let mut per_activation: HashMap<String, (u32, &str)> = HashMap::new();
    for (pool, answer) in &answers {
        assert_eq!(answer.status, 200, "{pool}: {}", answer.shown());
        assert_eq!(answer.json()["Pool"], *pool);
        per_activation.entry(answer.id()).or_insert((0, pool)).0 += 1;
    }
    for (id, (count, pool)) in &per_activation {
        let limit = limits.iter().find(|(p, _)| p == pool).unwrap().1;
        assert!(
            *count <= limit,
            "{id} of {pool} handed out {count} times, limit {limit}"
        );
    }
    emulator.assert_all_register(answers.iter().map(|(_, a)| a)).await;
    let reads = emulator
        .calls()
        .await
        .get("SSM.GetParametersByPath")
        .copied()
        .unwrap_or(0);
    println!(
        "three-pool storm: 300 vends, {} activations, {reads} GetParametersByPath",
        per_activation.len()
    );
    assert!(
        reads <= 2,
        "4 cold processes read Parameter Store {reads} times; the shared copy should serve them"
    );
}

fn vending_pools(emulator: &Emulator, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vending"));
    command.arg("pools").args(args).env_clear().env("RUST_LOG", "warn");
    for (k, v) in &emulator.env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn vending_pools_shows_each_pools_settings_and_fails_on_an_invalid_one() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool("linux-prod", &json!({"iam_role": role, "tags": {"env": "prod"}}))
        .await;
    let out = vending_pools(&emulator, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pools = listing["pools"].as_array().unwrap();
    let names: Vec<&str> = pools.iter().map(|p| p["pool"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        vec!["linux-prod"],
        "no implicit default once a pool has a config"
    );
    assert_eq!(pools[0]["settings"]["tags"]["env"], "prod");
    assert_eq!(pools[0]["settings"]["registration_limit"], 100);

    emulator
        .put_pool("broken", &json!({"iam_role": role, "expiry_margin": "13h"}))
        .await;
    let out = vending_pools(&emulator, &[]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("broken") && table.contains("activation_ttl"), "{table}");
    assert!(table.contains("linux-prod"), "{table}");
}

#[test]
fn the_command_line_says_what_it_takes_and_exits_2_on_bad_usage() {
    let vending = || std::process::Command::new(env!("CARGO_BIN_EXE_vending"));
    let help = vending().arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["serve", "sweep", "pools"] {
        assert!(text.contains(command), "{text}");
    }
    let pools_help = vending().args(["pools", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&pools_help.stdout).contains("--json"));
    for bad in [
        &["frobnicate"][..],
        &["serve", "--listen", "nowhere"],
        &["sweep", "--extra"],
    ] {
        let out = vending()
            .args(bad)
            .env_remove("AWS_LAMBDA_RUNTIME_API")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    let out = vending().env_remove("AWS_LAMBDA_RUNTIME_API").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no command outside Lambda");
}
