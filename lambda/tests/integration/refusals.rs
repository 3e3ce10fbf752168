//! Refusal reports (issue 22 item 3): a server whose code SSM refused reports it on
//! `POST /registrations`, and the pool heals at once when SSM agrees.

use crate::support;

use futures::future::join_all;
use serde_json::{json, Value};
use support::{Answer, Emulator, Server};

/// SHA-256 hex digests, as the boot scripts send them in `X-Machine-Id`.
const MACHINE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const MACHINE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// What a boot script sends when SSM refused its code.
async fn report(server: &Server, activation_id: &str, error: &str, machine: &str) -> Answer {
    post(
        server,
        "/registrations?pool=default",
        json!({"ActivationId": activation_id, "Error": error}),
        machine,
    )
    .await
}

async fn post(server: &Server, path_and_query: &str, body: Value, machine: &str) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("{}{path_and_query}", server.url))
        .header("X-Machine-Id", machine)
        .json(&body)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Answer {
        status,
        headers,
        body: response.text().await.unwrap(),
    }
}

async fn named_vend(server: &Server, instance: &str, machine: &str) -> Answer {
    let answer = server
        .request(
            reqwest::Method::GET,
            "/activation",
            &[("X-Instance-Name", instance), ("X-Machine-Id", machine)],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    answer
}

fn describe_calls(calls: &std::collections::HashMap<String, u64>) -> u64 {
    calls.get("SSM.DescribeActivations").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_deleted_out_of_band_is_replaced_within_one_report() {
    let emulator = Emulator::start();
    let first_process = emulator.serve(&[]);
    let dead = first_process.get("/activation").await;
    emulator.delete_activation(&dead.id()).await;
    let answer = report(&first_process, &dead.id(), "InvalidActivation", MACHINE_A).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({"ActivationId": dead.id(), "Confirmed": true}));
    assert!(
        first_process.log_text().contains("RegistrationRefused"),
        "the report is counted"
    );
    // Another process has never checked the activation: committed less than a verify
    // interval ago, it would trust it and hand it out, unless the report retired it.
    let other_process = emulator.serve(&[]);
    let next = other_process.get("/activation").await;
    assert_eq!(next.status, 200, "{}", next.shown());
    assert_ne!(next.id(), dead.id(), "the next vend gets a good activation");
    assert!(emulator.register(&next.id(), &next.code(), "web-02").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_reports_make_one_ssm_check() {
    let emulator = Emulator::start();
    // No standby: its preparation beside the first vend would be one more CreateActivation.
    let server = emulator.serve(&[("VENDING_LOW_WATER_PERCENT", "0")]);
    let dead = server.get("/activation").await;
    emulator.delete_activation(&dead.id()).await;
    emulator.reset_calls().await;
    let id = dead.id();
    let answers = join_all((0..50).map(|_| report(&server, &id, "InvalidActivation", MACHINE_A))).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["Confirmed"], true, "{}", answer.body);
    }
    let calls = emulator.calls().await;
    assert_eq!(describe_calls(&calls), 1, "{calls:?}");
    assert_eq!(calls.get("SSM.CreateActivation"), Some(&1), "one retirement: {calls:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_ssm_does_not_confirm_changes_nothing() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_LOW_WATER_PERCENT", "0")]);
    let given = named_vend(&server, "web-01", MACHINE_A).await;
    emulator.reset_calls().await;
    let answer = report(&server, &given.id(), "RegistrationLimitExceeded", MACHINE_A).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({"ActivationId": given.id(), "Confirmed": false}));
    let calls = emulator.calls().await;
    assert_eq!(describe_calls(&calls), 1, "the report is checked with SSM: {calls:?}");
    assert!(server.log_text().contains("SSM still honours it; nothing changed"));
    // The record is kept: the same machine gets the same activation again, and the
    // pool still vends it to others.
    let again = named_vend(&server, "web-01", MACHINE_A).await;
    assert_eq!(again.id(), given.id());
    assert_eq!(server.get("/activation").await.id(), given.id());
    let calls = emulator.calls().await;
    assert_eq!(calls.get("SSM.CreateActivation"), None, "no rotation: {calls:?}");
    assert_eq!(calls.get("DynamoDB.DeleteItem"), None, "no record dropped: {calls:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_pointing_to_a_retired_activation_is_dropped() {
    let emulator = Emulator::start();
    let reporting = emulator.serve(&[]);
    let reusing = emulator.serve(&[]);
    // The reusing process vends it (it trusts its fresh commit without asking SSM).
    let given = named_vend(&reusing, "web-01", MACHINE_A).await;
    emulator.delete_activation(&given.id()).await;
    // Another machine, on another process, is refused and reports it.
    let answer = report(&reporting, &given.id(), "InvalidActivation", MACHINE_B).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["Confirmed"], true);
    // Without its record, web-01 gets a fresh activation, not the dead one its
    // process would still trust.
    let again = named_vend(&reusing, "web-01", MACHINE_A).await;
    assert_ne!(
        again.id(),
        given.id(),
        "named reuse never hands out a retired activation"
    );
    assert!(emulator.register(&again.id(), &again.code(), "web-01").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_with_an_error_ssm_does_not_refuse_codes_with_is_a_bad_request() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_LOW_WATER_PERCENT", "0")]);
    let given = server.get("/activation").await;
    emulator.reset_calls().await;
    for body in [
        json!({"ActivationId": given.id(), "Error": "AccessDenied"}),
        json!({"ActivationId": given.id(), "Error": "invalidactivation"}),
        json!({"ActivationId": "not-an-activation", "Error": "InvalidActivation"}),
        json!({"ActivationId": given.id()}),
        json!({"ActivationId": given.id(), "Error": "InvalidActivation", "Code": "x"}),
        json!({"InstanceId": "mi-0123456789abcdef0", "ActivationId": given.id(), "Error": "InvalidActivation"}),
    ] {
        let answer = post(&server, "/registrations?pool=default", body.clone(), MACHINE_A).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(answer.json()["error"]["code"], "InvalidParameter", "{body}");
    }
    assert_eq!(describe_calls(&emulator.calls().await), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activation_the_pool_never_vended_is_not_confirmable() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_LOW_WATER_PERCENT", "0")]);
    assert_eq!(server.get("/activation").await.status, 200);
    emulator.reset_calls().await;
    // A made-up ID, and a real activation the service never committed.
    let foreign = emulator
        .ssm()
        .await
        .create_activation()
        .iam_role(emulator.env_value("VENDING_INSTANCE_ROLE"))
        .send()
        .await
        .unwrap()
        .activation_id
        .unwrap();
    for id in ["0d6e8a37-5c2b-4f1e-9a4d-3b7c2e1f0a9b", foreign.as_str()] {
        let answer = report(&server, id, "InvalidActivation", MACHINE_A).await;
        assert_eq!(answer.status, 403, "{id}: {}", answer.body);
        assert_eq!(answer.json()["error"]["code"], "NotConfirmable", "{id}");
    }
    assert_eq!(
        describe_calls(&emulator.calls().await),
        0,
        "nobody makes the service ask SSM about an activation it never vended"
    );
}
