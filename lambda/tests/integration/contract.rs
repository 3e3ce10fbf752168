//! The HTTP contract of DESIGN.md, against real servers on the emulator.

use crate::support;

use std::process::Command;

use support::Emulator;

#[tokio::test(flavor = "multi_thread")]
async fn a_vend_answers_the_contract_and_its_code_registers_with_ssm() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[]);

    for path in ["/activation", "/"] {
        let answer = server.get(path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert!(answer.header("content-type").unwrap().starts_with("application/json"));
        let body = answer.json();
        let fields: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
        for field in ["ActivationId", "ActivationCode", "Region", "ExpirationDate", "Pool"] {
            assert!(fields.contains(&field), "{field} missing from {fields:?}");
        }
        assert_eq!(body["Region"], "us-east-1");
        assert_eq!(body["Pool"], "default");
        assert!(body["ExpirationDate"].as_str().unwrap().ends_with('Z'));
    }

    let answer = server.get("/activation").await;
    assert!(
        emulator.activation_ids().await.contains(&answer.id()),
        "SSM knows the vended ID"
    );
    let instance = emulator.register(&answer.id(), &answer.code(), "web-01").await;
    assert!(instance.unwrap().starts_with("mi-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_answers_ok_in_plain_text() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[]);
    let answer = server.get("/health").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "OK");
    assert!(answer.header("content-type").unwrap().starts_with("text/plain"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_is_a_json_error_with_the_right_status() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[]);
    let cases = [
        (reqwest::Method::GET, "/nowhere", 404, "NotFound"),
        (reqwest::Method::GET, "/activation?pool=nosuchpool", 404, "PoolNotFound"),
        (reqwest::Method::POST, "/activation", 405, "MethodNotAllowed"),
        (reqwest::Method::DELETE, "/health", 405, "MethodNotAllowed"),
        (
            reqwest::Method::GET,
            "/activation?instance=bad%20name",
            400,
            "InvalidParameter",
        ),
        (reqwest::Method::GET, "/activation?pool=a/b", 400, "InvalidParameter"),
        (
            reqwest::Method::GET,
            "/activation?machine=4c4c4544-0042-3510-8051-b7c04f4d3832",
            400,
            "InvalidParameter",
        ),
        (
            reqwest::Method::GET,
            "/activation?pool=x&pool=y",
            400,
            "InvalidParameter",
        ),
    ];
    for (method, path, status, code) in cases {
        let answer = server.request(method.clone(), path, &[]).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        assert_eq!(answer.json()["error"]["code"], code, "{method} {path}");
        assert!(answer.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        if status == 405 {
            let allow = if path == "/health" { "GET, HEAD" } else { "GET" };
            assert_eq!(answer.header("allow"), Some(allow), "{method} {path}");
        }
    }
}

/// SHA-256 hex digests, as the boot scripts send them in `X-Machine-Id`.
fn machine(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_machine_gets_the_same_activation_again_without_using_a_slot() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "2"), ("VENDING_LOW_WATER_PERCENT", "0")]);
    let m1 = machine(1);

    let first = server.get(&format!("/activation?instance=web-01&machine={m1}")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    for _ in 0..3 {
        let again = server.get(&format!("/activation?instance=web-01&machine={m1}")).await;
        assert_eq!((again.id(), again.code()), (first.id(), first.code()));
    }
    let by_header = server
        .request(
            reqwest::Method::GET,
            "/activation",
            &[("X-Instance-Name", "WEB-01"), ("X-Machine-Id", &m1.to_uppercase())],
        )
        .await;
    assert_eq!(
        by_header.id(),
        first.id(),
        "the headers name the same (case-insensitive) host and machine"
    );

    // Five vends for web-01 took one slot: one slot of two is left for someone else.
    let other = server
        .get(&format!("/activation?instance=web-02&machine={}", machine(2)))
        .await;
    assert_eq!(other.id(), first.id());
    let third = server
        .get(&format!("/activation?instance=web-03&machine={}", machine(3)))
        .await;
    assert_ne!(
        third.id(),
        first.id(),
        "the limit of 2 is reached, so web-03 gets a new activation"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn golden_image_clones_that_share_a_name_each_take_a_slot_ssm_accepts() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "1"), ("VENDING_LOW_WATER_PERCENT", "0")]);
    let mut answers = Vec::new();
    for (name, m) in [
        ("web-01", 1),
        ("web-01", 2),
        ("localhost", 3),
        ("localhost", 3),
        ("ip-10-0-0-7", 4),
        ("ip-10-0-0-7", 4),
    ] {
        let answer = server
            .get(&format!("/activation?instance={name}&machine={}", machine(m)))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answers.push(answer);
    }
    for (i, a) in answers.iter().enumerate() {
        let registered = emulator.register(&a.id(), &a.code(), &format!("clone-{i}")).await;
        assert!(registered.is_ok(), "clone {i} was refused by SSM: {registered:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_without_a_machine_id_never_reuses_a_record() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "1"), ("VENDING_LOW_WATER_PERCENT", "0")]);
    let first = server
        .get(&format!("/activation?instance=web-01&machine={}", machine(1)))
        .await;
    let unnamed_machine = server.get("/activation?instance=web-01").await;
    assert_ne!(unnamed_machine.id(), first.id(), "a name alone proves nothing");
    assert!(emulator.register(&first.id(), &first.code(), "web-01").await.is_ok());
    assert!(emulator
        .register(&unnamed_machine.id(), &unnamed_machine.code(), "web-01-again")
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_name_on_another_machine_takes_a_fresh_slot_and_replaces_the_record() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "1"), ("VENDING_LOW_WATER_PERCENT", "0")]);
    let vend = |m: u8| {
        let server = &server;
        async move {
            server
                .get(&format!("/activation?instance=web-01&machine={}", machine(m)))
                .await
        }
    };
    let original = vend(1).await;
    let reimaged = vend(2).await;
    assert_ne!(reimaged.id(), original.id(), "a re-imaged host is another machine");
    assert_eq!(
        vend(2).await.id(),
        reimaged.id(),
        "and keeps its own activation on retries"
    );
    let back = vend(1).await;
    assert_ne!(
        back.id(),
        original.id(),
        "the record now belongs to the re-imaged machine"
    );
    assert_ne!(back.id(), reimaged.id());
}

#[tokio::test(flavor = "multi_thread")]
async fn head_requests_take_no_slot() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[]);
    assert_eq!(server.get("/activation").await.status, 200);
    server.log_once_it_says("prepared a standby").await;
    emulator.reset_calls().await;
    for path in ["/", "/activation", "/activation?pool=default"] {
        let answer = server.request(reqwest::Method::HEAD, path, &[]).await;
        assert_eq!(answer.status, 405, "HEAD {path}");
        assert_eq!(answer.header("allow"), Some("GET"), "HEAD {path}");
    }
    let health = server.request(reqwest::Method::HEAD, "/health", &[]).await;
    assert_eq!(health.status, 200);
    let calls = emulator.calls().await;
    assert!(calls.is_empty(), "HEAD touched AWS: {calls:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hot_path_is_one_dynamodb_call_per_vend() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[]);
    assert_eq!(server.get("/activation").await.status, 200, "first vend rotates");
    server.log_once_it_says("prepared a standby").await;
    emulator.reset_calls().await;
    for _ in 0..20 {
        assert_eq!(server.get("/activation").await.status, 200);
    }
    let calls = emulator.calls().await;
    assert_eq!(calls.get("DynamoDB.UpdateItem"), Some(&20), "{calls:?}");
    assert_eq!(calls.values().sum::<u64>(), 20, "nothing but the reserve: {calls:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_service_endpoint_variables_reach_dynamodb_and_ssm() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[
        ("AWS_ENDPOINT_URL", ""),
        ("AWS_ENDPOINT_URL_DYNAMODB", &emulator.url),
        ("AWS_ENDPOINT_URL_SSM", &emulator.url),
    ]);
    let answer = server.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let calls = emulator.calls().await;
    assert!(
        calls.contains_key("DynamoDB.UpdateItem") && calls.contains_key("SSM.CreateActivation"),
        "{calls:?}"
    );
}

#[test]
fn bad_configuration_stops_the_start_and_names_the_setting() {
    let cases = [
        ("VENDING_REGISTRATION_LIMIT", "0"),
        ("VENDING_ACTIVATION_TTL", "45d"),
        ("VENDING_EXPIRY_MARGIN", "soon"),
        ("VENDING_TABLE", ""),
    ];
    for (name, value) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vending"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("VENDING_TABLE", "t")
            .env("VENDING_PARAMETER_PREFIX", "/p")
            .env("VENDING_KMS_KEY_ID", "alias/k")
            .env("VENDING_INSTANCE_ROLE", "r")
            .env("AWS_REGION", "us-east-1")
            .env(name, value);
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}
