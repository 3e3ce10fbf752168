//! The scheduled sweep and the Lambda entry point, against the emulator.

use crate::support;

use std::time::Duration;

use aws_sdk_ssm::types::Tag;
use lambda_http::{Context, LambdaEvent};
use serde_json::Value;
use support::{repo_root, Emulator};
use vending::{build_state, build_sweeper, handle_event, router};

const SETTINGS: [(&str, &str); 4] = [
    ("VENDING_REGISTRATION_LIMIT", "2"),
    ("VENDING_LOW_WATER_PERCENT", "0"),
    ("VENDING_LEASE", "1s"),
    ("VENDING_SWEEP_GRACE", "2s"),
];

fn run_sweep(emulator: &Emulator) -> Value {
    emulator.sweep(&SETTINGS)
}

fn ids(value: &Value) -> Vec<String> {
    let mut ids: Vec<String> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_deletes_orphans_and_spent_activations_and_keeps_anything_still_usable() {
    let emulator = Emulator::start();
    let server = emulator.serve(&SETTINGS);

    // Activation A: both slots handed out and registered, so it is spent.
    let a1 = server.get("/activation").await;
    let a2 = server.get("/activation").await;
    assert_eq!(a1.id(), a2.id());
    emulator.register(&a1.id(), &a1.code(), "a1").await.unwrap();
    emulator.register(&a2.id(), &a2.code(), "a2").await.unwrap();
    // Activation B: handed out twice, one server still booting: retired but usable.
    let b1 = server.get("/activation").await;
    let b2 = server.get("/activation").await;
    assert_eq!(b1.id(), b2.id());
    emulator.register(&b1.id(), &b1.code(), "b1").await.unwrap();
    // Activation C: current.
    let c = server.get("/activation").await;
    // An orphan: what a rotation that crashed after CreateActivation leaves behind.
    let orphan = emulator
        .ssm()
        .await
        .create_activation()
        .iam_role(emulator.env_value("VENDING_INSTANCE_ROLE"))
        .default_instance_name("vending-default")
        .set_tags(Some(emulator.our_tags("default")))
        .send()
        .await
        .unwrap();
    // Another stack's activation of a pool with the same name: never ours to sweep.
    let other_stack = Tag::builder()
        .key("activation-vending:deployment")
        .value("another-stacks-table")
        .build()
        .unwrap();
    let neighbour = emulator
        .ssm()
        .await
        .create_activation()
        .iam_role(emulator.env_value("VENDING_INSTANCE_ROLE"))
        .default_instance_name("vending-default")
        .tags(emulator.our_tags("default")[0].clone())
        .tags(other_stack)
        .send()
        .await
        .unwrap();
    let orphan_id = orphan.activation_id().unwrap().to_owned();
    // Somebody else's activation in the same account: not ours to touch.
    let foreign = emulator
        .ssm()
        .await
        .create_activation()
        .iam_role(emulator.env_value("VENDING_INSTANCE_ROLE"))
        .send()
        .await
        .unwrap();

    let young = &run_sweep(&emulator)[0];
    assert_eq!(
        ids(&young["deleted_orphans"]),
        Vec::<String>::new(),
        "the orphan may still be a rotation in flight"
    );
    assert_eq!(ids(&young["deleted_spent"]), vec![a1.id()]);

    // Past the 2 s grace, with a second for the whole-second timestamps SSM keeps.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let report = &run_sweep(&emulator)[0];
    assert_eq!(report["current"], c.id());
    assert_eq!(ids(&report["deleted_orphans"]), vec![orphan_id], "{report}");
    assert_eq!(report["kept"], 2, "{report}");

    let mut left = emulator.activation_ids().await;
    left.sort();
    let mut expected = vec![
        b1.id(),
        c.id(),
        foreign.activation_id().unwrap().to_owned(),
        neighbour.activation_id().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(left, expected);
    assert!(
        emulator.register(&b2.id(), &b2.code(), "b2").await.is_ok(),
        "B still works for its last server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_takes_api_gateway_events_and_the_scheduled_sweep_event() {
    // What template.yaml sets for the function.
    std::env::set_var("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true");
    let emulator = Emulator::start();
    let config = emulator.config(&[]);
    let sdk = emulator.sdk_config().await;
    let app = router(build_state(config.clone(), &sdk));
    let sweeper = std::sync::Arc::new(build_sweeper(&config, &sdk));
    let event = |name: &str| -> Value {
        let text = std::fs::read_to_string(repo_root().join("events").join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    };

    let vend = handle_event(
        app.clone(),
        sweeper.clone(),
        LambdaEvent::new(event("vend.json"), Context::default()),
    )
    .await
    .unwrap();
    assert_eq!(vend["statusCode"], 200, "{vend}");
    let body: Value = serde_json::from_str(vend["body"].as_str().unwrap()).unwrap();
    emulator.saw_code(body["ActivationCode"].as_str().unwrap());
    assert!(emulator
        .activation_ids()
        .await
        .contains(&body["ActivationId"].as_str().unwrap().to_owned()));

    let missing = handle_event(
        app.clone(),
        sweeper.clone(),
        LambdaEvent::new(event("unknown-path.json"), Context::default()),
    )
    .await
    .unwrap();
    assert_eq!(missing["statusCode"], 404);

    let swept = handle_event(
        app.clone(),
        sweeper.clone(),
        LambdaEvent::new(event("sweep.json"), Context::default()),
    )
    .await
    .unwrap();
    assert_eq!(swept[0]["pool"], "default", "{swept}");
    assert_eq!(swept[0]["current"], body["ActivationId"]);

    let nonsense = handle_event(
        app,
        sweeper,
        LambdaEvent::new(serde_json::json!({"hello": 1}), Context::default()),
    )
    .await;
    assert!(nonsense.is_err(), "an event of no known shape is an invocation error");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_reports_the_unused_registrations_of_what_it_retires_and_status_keeps_the_total() {
    let emulator = Emulator::start();
    let settings = [
        ("VENDING_REGISTRATION_LIMIT", "3"),
        ("VENDING_ACTIVATION_TTL", "5s"),
        ("VENDING_EXPIRY_MARGIN", "2s"),
        ("VENDING_DEADLINE", "1s"),
        ("VENDING_LOW_WATER_PERCENT", "0"),
        ("VENDING_LEASE", "1s"),
        ("VENDING_SWEEP_GRACE", "2s"),
    ];
    let server = emulator.serve(&settings);
    // Activation A: one of its three registrations used, then it expires.
    let a = server.get("/activation").await;
    emulator.register(&a.id(), &a.code(), "a1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5_300)).await;
    let b = server.get("/activation").await;
    assert_eq!(b.status, 200, "{}", b.shown());
    assert_ne!(a.id(), b.id());

    let reports = emulator.sweep(&settings);
    let report = &reports[0];
    assert_eq!(report["pool"], "default");
    assert_eq!(ids(&report["deleted_spent"]), vec![a.id()]);
    assert_eq!(report["unused_registrations"], 2, "{report}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vending"))
        .args(["status", "--json"])
        .env_clear()
        .envs(emulator.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pools"][0]["unused_registrations"], 2, "{status}");
}
