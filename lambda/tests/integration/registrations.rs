//! `POST /registrations`, the confirmation (issue 22 items 1 and 2): a confirmed node is
//! named and tagged and recorded once; a forged claim changes nothing; a re-imaged
//! machine's offline predecessor is deregistered where the pool opts in, an online
//! one never.

use crate::support;

use std::collections::HashMap;

use serde_json::{json, Value};
use support::{Emulator, Server};

const MACHINE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const MACHINE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const MACHINE_TAG: &str = "activation-vending:machine-id";
/// Exact counts of activations: no standby beside the current one.
const NO_STANDBY: (&str, &str) = ("VENDING_LOW_WATER_PERCENT", "0");

/// The answer to one `POST /registrations` (status, JSON body).
async fn report(server: &Server, pool: &str, machine: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/registrations?pool={pool}", server.url))
        .json(body);
    if let Some(machine) = machine {
        request = request.header("X-Machine-Id", machine);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn claim(instance_id: &str, activation_id: &str, instance: &str) -> Value {
    json!({"InstanceId": instance_id, "ActivationId": activation_id, "Instance": instance})
}

/// What a boot script does before it reports: a named vend with its machine ID, then
/// the agent's registration. The activation ID and the node's ID.
async fn vend_and_register(
    emulator: &Emulator,
    server: &Server,
    pool: &str,
    name: &str,
    machine: &str,
) -> (String, String) {
    let vended = server
        .request(
            reqwest::Method::GET,
            &format!("/activation?pool={pool}&instance={name}"),
            &[("X-Machine-Id", machine)],
        )
        .await;
    assert_eq!(vended.status, 200, "{}", vended.shown());
    let node = emulator.register(&vended.id(), &vended.code(), name).await.unwrap();
    (vended.id(), node)
}

async fn node_tags(emulator: &Emulator, instance_id: &str) -> HashMap<String, String> {
    emulator
        .ssm()
        .await
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::ManagedInstance)
        .resource_id(instance_id)
        .send()
        .await
        .unwrap()
        .tag_list()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

/// The node's record in the service's table, if there is one.
async fn node_record(
    emulator: &Emulator,
    instance_id: &str,
) -> Option<HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    aws_sdk_dynamodb::Client::new(&emulator.sdk_config().await)
        .get_item()
        .table_name(emulator.env_value("VENDING_TABLE"))
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("node#{instance_id}")),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

/// How many EMF lines of the server's log carry `metric`, and their sum.
fn metric_sum(server: &Server, metric: &str) -> f64 {
    server
        .log_text()
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|d| d[metric].as_f64())
        .sum()
}

/// Sets what SSM says of a node (`PingStatus`, `RegistrationDate`), as time would.
async fn age_node(emulator: &Emulator, instance_id: &str, update: Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/_emulator/nodes/{instance_id}", emulator.url))
        .json(&update)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
}

async fn node_exists(emulator: &Emulator, instance_id: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{}/_emulator/nodes/{instance_id}", emulator.url))
        .send()
        .await
        .unwrap()
        .status()
        .is_success()
}

async fn web_and_other_pools(emulator: &Emulator, replace_reimaged: bool) {
    let role = emulator.env_value("VENDING_INSTANCE_ROLE");
    emulator
        .put_pool(
            "web",
            &json!({"iam_role": role, "registration_limit": 10, "replace_reimaged_nodes": replace_reimaged}),
        )
        .await;
    emulator
        .put_pool("other", &json!({"iam_role": role, "registration_limit": 10}))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmation_names_tags_and_records_the_node_once() {
    let emulator = Emulator::start();
    web_and_other_pools(&emulator, false).await;
    let server = emulator.serve(&[NO_STANDBY]);
    let (activation, node) = vend_and_register(&emulator, &server, "web", "web-01", MACHINE_A).await;

    let (status, body) = report(&server, "web", Some(MACHINE_A), &claim(&node, &activation, "web-01")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"InstanceId": node, "Tags": {"Name": "web-01", MACHINE_TAG: MACHINE_A}, "Replaced": []})
    );
    let tags = node_tags(&emulator, &node).await;
    assert_eq!(tags.get("Name").map(String::as_str), Some("web-01"));
    assert_eq!(tags.get(MACHINE_TAG).map(String::as_str), Some(MACHINE_A));
    assert_eq!(
        tags.get("activation-vending:pool").map(String::as_str),
        Some("web"),
        "the pool's tags stay beside the new ones"
    );
    let record = node_record(&emulator, &node).await.expect("a node record");
    assert_eq!(record["pool"].as_s().unwrap(), "web");
    assert_eq!(record["activation_id"].as_s().unwrap(), &activation);
    assert_eq!(record["machine_id"].as_s().unwrap(), MACHINE_A);
    assert_eq!(record["instance_name"].as_s().unwrap(), "web-01");
    let confirmed_at: i64 = record["confirmed_at"].as_n().unwrap().parse().unwrap();
    let ttl: i64 = record["ttl"].as_n().unwrap().parse().unwrap();
    assert_eq!(ttl - confirmed_at, 400 * 86_400, "VENDING_NODE_RECORD_TTL's default");
    assert_eq!(metric_sum(&server, "Registered"), 1.0);

    // The same claim again: 200, the same answer, nothing written, not counted again.
    let (again, body_again) = report(&server, "web", Some(MACHINE_A), &claim(&node, &activation, "web-01")).await;
    assert_eq!(again, 200, "{body_again}");
    assert_eq!(body_again, body);
    assert_eq!(node_record(&emulator, &node).await.unwrap(), record);
    assert_eq!(metric_sum(&server, "Registered"), 1.0, "a repeat is not counted");

    // Another machine's or name's claim on the confirmed node: refused, nothing changes.
    for (machine, name) in [(MACHINE_B, "web-01"), (MACHINE_A, "web-09")] {
        let (status, answer) = report(&server, "web", Some(machine), &claim(&node, &activation, name)).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"]["code"], "NotConfirmable");
    }
    assert_eq!(node_record(&emulator, &node).await.unwrap(), record);
    assert_eq!(node_tags(&emulator, &node).await, tags);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmed_machines_next_vend_takes_a_fresh_slot_ssm_accepts() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "1"), NO_STANDBY]);
    let (activation, node) = vend_and_register(&emulator, &server, "default", "web-01", MACHINE_A).await;
    let (status, body) = report(
        &server,
        "default",
        Some(MACHINE_A),
        &claim(&node, &activation, "web-01"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // `--force` on the same machine: the slot its record kept is spent on the node.
    let (again, second_node) = vend_and_register(&emulator, &server, "default", "web-01", MACHINE_A).await;
    assert_ne!(again, activation, "the limit of 1 is reached: a new activation");
    assert_ne!(second_node, node);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_claims_are_refused_and_change_nothing() {
    let emulator = Emulator::start();
    web_and_other_pools(&emulator, false).await;
    let server = emulator.serve(&[NO_STANDBY]);
    let (activation, node) = vend_and_register(&emulator, &server, "web", "web-01", MACHINE_A).await;
    let (other_activation, other_node) = vend_and_register(&emulator, &server, "other", "db-01", MACHINE_B).await;
    // A node of the same activation that registered before the vend of web-02.
    let anonymous = server.get("/activation?pool=web").await;
    assert_eq!(anonymous.id(), activation, "one current activation in the pool");
    let early_node = emulator
        .register(&anonymous.id(), &anonymous.code(), "early")
        .await
        .unwrap();
    let (_, _) = vend_and_register(&emulator, &server, "web", "web-02", MACHINE_B).await;
    let an_hour_ago = vending::epoch_now() - 3_600;
    age_node(&emulator, &early_node, json!({"RegistrationDate": an_hour_ago})).await;

    let forged = [
        // Another activation's node (the other pool's), claimed as web-01's.
        (
            "another activation's node",
            "web",
            Some(MACHINE_A),
            claim(&other_node, &activation, "web-01"),
            403,
        ),
        // Another pool's node with its own activation, claimed under pool web.
        (
            "another pool's node",
            "web",
            Some(MACHINE_A),
            claim(&other_node, &other_activation, "web-01"),
            403,
        ),
        // A node registered before the vend to that name and machine.
        (
            "a node registered before the vend",
            "web",
            Some(MACHINE_B),
            claim(&early_node, &activation, "web-02"),
            403,
        ),
        // Right name, wrong machine.
        (
            "another machine",
            "web",
            Some(MACHINE_B),
            claim(&node, &activation, "web-01"),
            403,
        ),
        // A made-up ID.
        (
            "a made-up mi- ID",
            "web",
            Some(MACHINE_A),
            claim("mi-0123456789abcdef0", &activation, "web-01"),
            404,
        ),
        // An anonymous vend (no X-Machine-Id) cannot be confirmed.
        (
            "an anonymous claim",
            "web",
            None,
            claim(&early_node, &activation, "early"),
            403,
        ),
    ];
    for (what, pool, machine, body, want) in forged {
        let (status, answer) = report(&server, pool, machine, &body).await;
        assert_eq!(status, want, "{what}: {answer}");
        let code = if want == 404 { "NodeNotFound" } else { "NotConfirmable" };
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
    }
    for id in [&node, &other_node, &early_node] {
        let tags = node_tags(&emulator, id).await;
        assert!(
            !tags.contains_key("Name") && !tags.contains_key(MACHINE_TAG),
            "{id} was tagged: {tags:?}"
        );
        assert!(node_record(&emulator, id).await.is_none(), "{id} was recorded");
    }
    assert_eq!(metric_sum(&server, "Registered"), 0.0);

    let (status, answer) = report(&server, "web", Some(MACHINE_A), &json!({"InstanceId": node})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "InvalidParameter");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reimaged_machines_offline_node_is_replaced_and_an_online_one_never() {
    let emulator = Emulator::start();
    web_and_other_pools(&emulator, true).await;
    let server = emulator.serve(&[NO_STANDBY]);
    // The machine's first life, confirmed (so its node carries the machine tag).
    let (activation, first) = vend_and_register(&emulator, &server, "web", "web-01", MACHINE_A).await;
    let (status, _) = report(&server, "web", Some(MACHINE_A), &claim(&first, &activation, "web-01")).await;
    assert_eq!(status, 200);
    // Its second life, while the first node still pings (a clone, say): never replaced.
    let (activation, second) = vend_and_register(&emulator, &server, "web", "web-01", MACHINE_A).await;
    let (status, body) = report(&server, "web", Some(MACHINE_A), &claim(&second, &activation, "web-01")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Replaced"], json!([]), "an Online node is never replaced");
    assert!(node_exists(&emulator, &first).await);

    // Re-imaged once more; the earlier two are offline now.
    age_node(&emulator, &first, json!({"PingStatus": "ConnectionLost"})).await;
    age_node(&emulator, &second, json!({"PingStatus": "ConnectionLost"})).await;
    // A node of another machine, offline, is no concern of this machine's confirmation.
    let (other_activation, bystander) = vend_and_register(&emulator, &server, "web", "web-02", MACHINE_B).await;
    let (status, _) = report(
        &server,
        "web",
        Some(MACHINE_B),
        &claim(&bystander, &other_activation, "web-02"),
    )
    .await;
    assert_eq!(status, 200);
    age_node(&emulator, &bystander, json!({"PingStatus": "ConnectionLost"})).await;

    let (activation, third) = vend_and_register(&emulator, &server, "web", "web-01", MACHINE_A).await;
    let (status, body) = report(&server, "web", Some(MACHINE_A), &claim(&third, &activation, "web-01")).await;
    assert_eq!(status, 200, "{body}");
    let mut replaced: Vec<String> = serde_json::from_value(body["Replaced"].clone()).unwrap();
    replaced.sort();
    let mut want = vec![first.clone(), second.clone()];
    want.sort();
    assert_eq!(replaced, want);
    assert!(!node_exists(&emulator, &first).await && !node_exists(&emulator, &second).await);
    assert!(node_exists(&emulator, &third).await && node_exists(&emulator, &bystander).await);
    assert_eq!(metric_sum(&server, "ReimagedNodesReplaced"), 2.0);
    assert_eq!(metric_sum(&server, "Registered"), 4.0);
    let pools = operator_command(&emulator, &["pools", "--json"]);
    let setting = |name: &str| {
        pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pool"] == name)
            .map(|p| p["settings"]["replace_reimaged_nodes"].clone())
    };
    assert_eq!(
        setting("web"),
        Some(json!(true)),
        "`vending pools` shows the opt-in: {pools}"
    );
    assert_eq!(setting("other"), Some(json!(false)));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_pool_opting_in_a_reimaged_machines_offline_node_stays() {
    let emulator = Emulator::start();
    web_and_other_pools(&emulator, false).await;
    let server = emulator.serve(&[NO_STANDBY]);
    let (activation, first) = vend_and_register(&emulator, &server, "web", "web-01", MACHINE_A).await;
    let (status, _) = report(&server, "web", Some(MACHINE_A), &claim(&first, &activation, "web-01")).await;
    assert_eq!(status, 200);
    age_node(&emulator, &first, json!({"PingStatus": "ConnectionLost"})).await;
    let (activation, second) = vend_and_register(&emulator, &server, "web", "web-01", MACHINE_A).await;
    let (status, body) = report(&server, "web", Some(MACHINE_A), &claim(&second, &activation, "web-01")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Replaced"], json!([]));
    assert!(node_exists(&emulator, &first).await);
}

/// Runs `vending ARGS` with the emulator's settings, signed as an operator (not the
/// service's key: `vending nodes` scans the table, which the service's role may not).
fn operator_command(emulator: &Emulator, args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vending"))
        .args(args)
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(emulator.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_ACCESS_KEY_ID", "operator")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn vending_nodes_lists_confirmed_nodes_and_status_counts_them_per_activation() {
    let emulator = Emulator::start();
    web_and_other_pools(&emulator, false).await;
    let server = emulator.serve(&[NO_STANDBY]);
    let (activation, node) = vend_and_register(&emulator, &server, "web", "web-01", MACHINE_A).await;
    let (_, unconfirmed) = vend_and_register(&emulator, &server, "web", "web-02", MACHINE_B).await;
    let (status, _) = report(&server, "web", Some(MACHINE_A), &claim(&node, &activation, "web-01")).await;
    assert_eq!(status, 200);
    let (other_activation, other) = vend_and_register(&emulator, &server, "other", "db-01", MACHINE_B).await;
    let (status, _) = report(
        &server,
        "other",
        Some(MACHINE_B),
        &claim(&other, &other_activation, "db-01"),
    )
    .await;
    assert_eq!(status, 200);

    let listed = operator_command(&emulator, &["nodes", "--pool", "web", "--json"]);
    let nodes = listed.as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{listed}");
    let entry = &nodes[0];
    assert_eq!(entry["instance_id"], node.as_str());
    assert_eq!(entry["name"], "web-01");
    assert_eq!(entry["machine"], MACHINE_A);
    assert_eq!(entry["pool"], "web");
    assert_eq!(entry["activation_id"], activation.as_str());
    assert_eq!(entry["ping_status"], "Online");
    for field in ["registered_at", "confirmed_at", "source"] {
        assert!(entry[field].is_string(), "{field}: {entry}");
    }
    let every = operator_command(&emulator, &["nodes", "--json"]);
    assert_eq!(every.as_array().unwrap().len(), 2);
    assert!(
        !every.to_string().contains(&unconfirmed),
        "an unconfirmed node is not listed"
    );

    let status = operator_command(&emulator, &["status", "--pool", "web", "--json"]);
    let web = &status["pools"][0];
    assert_eq!(web["activation_id"], activation.as_str());
    assert_eq!(web["confirmed_nodes"], 1, "{web}");
    assert_eq!(web["ssm_registrations"], 2, "{web}");
}
