//! Operating the fleet: `vending status`, metrics as EMF lines, and the clean-up of
//! stale duplicate nodes, against the emulator's managed nodes.

use crate::support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use support::{Emulator, Server};

fn vending(emulator: &Emulator, args: &[&str], overrides: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vending"));
    command.args(args).env_clear().env("RUST_LOG", "warn");
    for (k, v) in &emulator.env {
        command.env(k, v);
    }
    for (k, v) in overrides {
        command.env(k, v);
    }
    command.output().unwrap()
}

async fn age(emulator: &Emulator, node: &str, body: Value) {
    let resp = emulator
        .client()
        .post(format!("{}/_emulator/nodes/{node}", emulator.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_matches_the_emulator_after_a_storm_over_two_pools() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool("web", &json!({"iam_role": role, "registration_limit": 7}))
        .await;
    emulator
        .put_pool("db", &json!({"iam_role": role, "registration_limit": 50}))
        .await;
    // One slot per reserve, so that every slot the table counts was handed out.
    let one_at_a_time = [("VENDING_BLOCK_MAX", "1")];
    let servers: Vec<Arc<Server>> = (0..2).map(|_| Arc::new(emulator.serve(&one_at_a_time))).collect();
    let tasks = (0..60).map(|i| {
        let server = servers[i % 2].clone();
        let pool = if i % 3 == 0 { "db" } else { "web" };
        tokio::spawn(async move {
            let answer = server
                .vend_with_retries(&format!("/activation?pool={pool}"), Duration::from_secs(60))
                .await;
            (pool, answer)
        })
    });
    let answers: Vec<_> = join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    let mut registered: HashMap<&str, usize> = HashMap::new();
    for (i, (pool, answer)) in answers.iter().enumerate() {
        assert_eq!(answer.status, 200, "{}", answer.shown());
        // Every other server registers; the rest are still booting.
        if i % 2 == 0 {
            emulator
                .register(&answer.id(), &answer.code(), &format!("host-{i}"))
                .await
                .unwrap();
            *registered.entry(pool).or_default() += 1;
        }
    }
    let offline = emulator
        .client()
        .get(format!("{}/_emulator/nodes", emulator.url))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["Nodes"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_owned();
    age(&emulator, &offline, json!({"PingStatus": "ConnectionLost"})).await;

    let out = vending(&emulator, &["status", "--json"], &[("VENDING_NODE_QUOTA", "40")]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let activations = emulator.activations().await;
    for pool in ["web", "db"] {
        let p = status["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pool"] == pool)
            .unwrap();
        let id = p["activation_id"].as_str().unwrap();
        let ssm = activations.iter().find(|a| a.activation_id() == Some(id)).unwrap();
        assert_eq!(p["ssm_registrations"], ssm.registrations_count().unwrap(), "{pool}");
        assert_eq!(p["limit"], ssm.registration_limit().unwrap(), "{pool}");
        let handed: usize = answers.iter().filter(|(_, a)| a.id() == id).count();
        assert_eq!(p["slots_handed_out"], handed, "{pool}: slots of the current activation");
        let nodes: u64 = p["nodes"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            nodes as usize, registered[pool],
            "{pool}: nodes registered through the pool"
        );
        assert!(p["last_rotation_reason"].is_string());
        assert_eq!(p["rotation_failing"], false);
    }
    let total: usize = registered.values().sum();
    assert_eq!(status["account"]["hybrid_nodes"], total);
    let lost: u64 = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["nodes"]["ConnectionLost"].as_u64())
        .sum();
    assert_eq!(lost, 1);
    assert_eq!(status["account"]["warning"], total * 10 >= 9 * 40);
    assert_eq!(
        status["default_pool"], "none",
        "web and db have configs, default has none"
    );
    assert!(
        !status["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pool"] == "default"),
        "{status}"
    );

    let table = vending(&emulator, &["status", "--pool", "web"], &[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("web") && !text.contains("\ndb "), "{text}");
    assert!(text.contains("there is NO default pool"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_exits_1_when_a_pool_is_misconfigured() {
    let emulator = Emulator::start();
    emulator
        .put_pool("bad", &json!({"iam_role": "r", "tags": {"aws:x": "y"}}))
        .await;
    let out = vending(&emulator, &["status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("misconfigured"));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_emf_lines_that_follow_the_specification() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool(
            "site-a",
            &json!({"iam_role": role, "registration_limit": 3, "allowed_cidrs": ["10.0.0.0/8"]}),
        )
        .await;
    // With another pool's config there, `default` needs one of its own.
    emulator
        .put_pool("default", &json!({"iam_role": role, "registration_limit": 2}))
        .await;
    // No standby: each rotation is one the vends cause.
    let server = emulator.serve(&[("VENDING_LOW_WATER_PERCENT", "0")]);
    for _ in 0..3 {
        assert_eq!(server.get("/activation").await.status, 200);
    }
    assert_eq!(server.get("/activation?pool=site-a").await.status, 403);
    let docs: Vec<Value> = server
        .log_text()
        .lines()
        .filter(|l| l.starts_with("{\"_aws\"") || l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).expect("an EMF line is one JSON document"))
        .collect();
    assert!(!docs.is_empty(), "no EMF lines");
    for doc in &docs {
        vending::check_emf(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
    }
    let sum = |pool: &str, metric: &str| -> f64 {
        docs.iter()
            .filter(|d| d["Pool"] == pool)
            .filter_map(|d| d[metric].as_f64())
            .sum()
    };
    assert_eq!(sum("default", "Vends"), 3.0);
    assert_eq!(
        sum("default", "Rotations"),
        2.0,
        "limit 2: three vends need two activations"
    );
    assert_eq!(sum("site-a", "Forbidden"), 1.0);
    let slots: Vec<f64> = docs
        .iter()
        .filter(|d| d["Pool"] == "default")
        .filter_map(|d| d["SlotsRemaining"].as_f64())
        .collect();
    assert_eq!(slots, vec![1.0, 0.0, 1.0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clean_up_deregisters_exactly_the_stale_duplicates() {
    let emulator = Emulator::start();
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool("web", &json!({"iam_role": role, "replace_stale_nodes_after": "7d"}))
        .await;
    emulator.put_pool("other", &json!({"iam_role": role})).await;
    let server = emulator.serve(&[]);
    let web = server.get("/activation?pool=web").await;
    let other = server.get("/activation?pool=other").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = 86_400;
    // (name, pool answer, ping status, registered days ago, last ping days ago)
    let plan = [
        ("web-01", &web, "ConnectionLost", 60, 50), // stale: an old registration, long offline
        ("web-01", &web, "ConnectionLost", 40, 30), // stale too
        ("web-01", &web, "Online", 20, 0),          // the newest registration of web-01
        ("web-02", &web, "Online", 60, 0),          // older but online: kept
        ("web-02", &web, "Online", 10, 0),
        ("web-03", &web, "ConnectionLost", 60, 2), // offline two days only: kept
        ("web-03", &web, "Online", 10, 0),
        ("web-04", &web, "ConnectionLost", 60, 50), // the newest of its name, though offline: kept
        ("web-01", &other, "ConnectionLost", 90, 80), // another pool, no clean-up there: kept
    ];
    let mut ids = Vec::new();
    for (name, answer, status, registered, pinged) in plan {
        let id = emulator.register(&answer.id(), &answer.code(), name).await.unwrap();
        age(
            &emulator,
            &id,
            json!({"PingStatus": status, "RegistrationDate": now - registered * day, "LastPingDateTime": now - pinged * day}),
        )
        .await;
        ids.push(id);
    }
    // A foreign node: registered through an activation this service did not make.
    let foreign = emulator
        .ssm()
        .await
        .create_activation()
        .iam_role(&role)
        .send()
        .await
        .unwrap();
    let foreign_id = emulator
        .register(
            foreign.activation_id().unwrap(),
            foreign.activation_code().unwrap(),
            "web-01",
        )
        .await
        .unwrap();
    emulator.saw_code(foreign.activation_code().unwrap());
    age(
        &emulator,
        &foreign_id,
        json!({"PingStatus": "ConnectionLost", "RegistrationDate": now - 90 * day, "LastPingDateTime": now - 80 * day}),
    )
    .await;
    ids.push(foreign_id);
    let expected = {
        let mut e = vec![ids[0].clone(), ids[1].clone()];
        e.sort();
        e
    };
    let deregistered = |report: &Value| -> Vec<String> {
        let mut found: Vec<String> = report
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["deregistered_nodes"].as_array().unwrap().clone())
            .map(|n| n["instance_id"].as_str().unwrap().to_owned())
            .collect();
        found.sort();
        found
    };

    let dry = emulator.sweep_with(&["--dry-run"], &[]);
    assert_eq!(deregistered(&dry), expected, "the dry run shows them");
    let nodes = |emulator: &Emulator| {
        let emulator = emulator.url.clone();
        async move {
            reqwest::get(format!("{emulator}/_emulator/nodes"))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["Nodes"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(nodes(&emulator).await, ids.len(), "and changes nothing");

    let report = emulator.sweep_with(&[], &[]);
    assert_eq!(deregistered(&report), expected);
    assert_eq!(nodes(&emulator).await, ids.len() - 2);
    let reasons: Vec<String> = report
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["deregistered_nodes"].as_array().unwrap().clone())
        .map(|n| n["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        reasons.iter().all(|r| r.contains(&ids[2])),
        "named the newest registration: {reasons:?}"
    );
}

#[test]
fn the_service_reaches_aws_over_tls_trusting_the_system_roots_and_nothing_else() {
    let emulator = Emulator::start();
    let (endpoint, ca, _proxy) = emulator.behind_tls();
    let ca = ca.to_string_lossy().into_owned();
    // The system's roots, as rustls-native-certs reads them, are here only our CA.
    let trusted = vending(
        &emulator,
        &["pools"],
        &[("AWS_ENDPOINT_URL", &endpoint), ("SSL_CERT_FILE", &ca)],
    );
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("default"));
    // Without our CA the certificate is refused: the client verifies what it reaches.
    let untrusted = vending(&emulator, &["pools"], &[("AWS_ENDPOINT_URL", &endpoint)]);
    assert!(!untrusted.status.success());
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("invalid peer certificate"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
}
