//! Sealed codes (DESIGN §2 step 5, §10, §14): the rotating process seals each new
//! activation's code with the codes' KMS key, under an encryption context naming the
//! deployment, the pool and the activation, beside it on the pool item; a cold process
//! opens it with one KMS Decrypt and reads nothing from Parameter Store. Parameter
//! Store stays the store of record and the fallback: for an item without a sealed
//! code, a rotation whose Encrypt failed, or a ciphertext KMS refuses to open. A KMS
//! throttle past the SDK's retries is a `503` with `Retry-After`. Real servers, real
//! SDK clients, the emulator's KMS (which binds a ciphertext to its context as AWS
//! does). Every code vended here is checked against every log (`support::Emulator`).

use crate::support;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use support::{Emulator, Server};

type Item = HashMap<String, AttributeValue>;

/// The pool item of the default pool, as the table holds it now.
async fn pool_item(emulator: &Emulator) -> Item {
    aws_sdk_dynamodb::Client::new(&emulator.sdk_config().await)
        .get_item()
        .table_name(emulator.env_value("VENDING_TABLE"))
        .key("pk", AttributeValue::S("pool#default".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("the pool item")
}

/// Sets (or, with `None`, removes) the current activation's sealed code on the item, as
/// an item written before sealed codes, or one tampered with, would hold it.
pub(crate) async fn set_sealed_code(emulator: &Emulator, sealed: Option<Vec<u8>>) {
    let client = aws_sdk_dynamodb::Client::new(&emulator.sdk_config().await);
    let request = client
        .update_item()
        .table_name(emulator.env_value("VENDING_TABLE"))
        .key("pk", AttributeValue::S("pool#default".into()))
        .expression_attribute_names("#sealed", "sealed_code");
    let request = match sealed {
        Some(bytes) => request
            .update_expression("SET #sealed = :sealed")
            .expression_attribute_values(":sealed", AttributeValue::B(bytes.into())),
        None => request.update_expression("REMOVE #sealed"),
    };
    request.send().await.unwrap();
}

fn sealed(item: &Item, attribute: &str) -> Option<Vec<u8>> {
    item.get(attribute)
        .and_then(|v| v.as_b().ok())
        .map(|b| b.as_ref().to_vec())
}

fn id_of(item: &Item, attribute: &str) -> String {
    item.get(attribute)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

/// The item's size as DynamoDB counts it: each attribute's name (UTF-8 bytes) plus
/// its value (a string's UTF-8 bytes, a binary's bytes, a number's digits, at most as
/// many as its text: the emulator's count, no smaller than DynamoDB's).
fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
                    AttributeValue::B(b) => b.as_ref().len(),
                    other => panic!("the pool item holds no {other:?}"),
                }
        })
        .sum()
}

/// `operation`'s calls since the last reset.
async fn calls(emulator: &Emulator, operation: &str) -> u64 {
    emulator.calls().await.get(operation).copied().unwrap_or(0)
}

/// A first process makes the pool's activation (sealing its code) and its standby;
/// then the calls are counted afresh.
async fn made_by_a_first_process(emulator: &Emulator) -> (Server, String) {
    let first = emulator.serve(&[]);
    let made = first.get("/activation").await;
    assert_eq!(made.status, 200, "{}", made.shown());
    first.log_once_it_says("prepared a standby").await;
    emulator.reset_calls().await;
    (first, made.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_process_vends_a_sealed_code_with_no_parameter_store_read() {
    let emulator = Emulator::start();
    let (_first, code) = made_by_a_first_process(&emulator).await;
    let item = pool_item(&emulator).await;
    assert!(
        sealed(&item, "sealed_code").is_some(),
        "the rotation sealed the code: {item:?}"
    );
    assert!(sealed(&item, "sb_sealed_code").is_some(), "and the standby's: {item:?}");
    let size = item_size(&item);
    let lengths: Vec<(String, usize)> = item
        .iter()
        .map(|(k, v)| (k.clone(), item_size(&Item::from([(k.clone(), v.clone())]))))
        .collect();
    println!(
        "pool item with both sealed codes: {size} bytes; code {} bytes; {lengths:?}",
        code.len()
    );
    assert!(size < 1024, "the pool item is {size} bytes: two write units per write");

    let cold = emulator.serve(&[]);
    let answers = [cold.get("/activation").await, cold.get("/activation").await];
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.shown());
        assert_eq!(answer.code(), code, "the same activation, the same code");
    }
    assert_eq!(calls(&emulator, "SSM.GetParameter").await, 0, "no Parameter Store read");
    assert_eq!(
        calls(&emulator, "KMS.Decrypt").await,
        1,
        "one Decrypt per process and activation"
    );
    emulator.assert_all_register(answers.iter()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_without_a_sealed_code_still_vends_through_parameter_store() {
    let emulator = Emulator::start();
    let (_first, code) = made_by_a_first_process(&emulator).await;
    set_sealed_code(&emulator, None).await;

    let cold = emulator.serve(&[]);
    let answer = cold.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_eq!(answer.code(), code);
    assert_eq!(calls(&emulator, "SSM.GetParameter").await, 1);
    assert_eq!(calls(&emulator, "KMS.Decrypt").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_code_of_another_pool_does_not_open_and_the_vend_falls_back_to_parameter_store() {
    let emulator = Emulator::start();
    let (_first, code) = made_by_a_first_process(&emulator).await;
    let item = pool_item(&emulator).await;
    let current = id_of(&item, "activation_id");
    // A ciphertext of the same code under another pool's context: moved to this item,
    // it must not open here (KMS: InvalidCiphertextException).
    let kms = aws_sdk_kms::Client::new(&emulator.sdk_config().await);
    let elsewhere = kms
        .encrypt()
        .key_id(emulator.env_value("VENDING_KMS_KEY_ID"))
        .plaintext(aws_sdk_kms::primitives::Blob::new(code.as_bytes()))
        .encryption_context("activation-vending:deployment", emulator.env_value("VENDING_TABLE"))
        .encryption_context("activation-vending:pool", "another-pool")
        .encryption_context("activation-vending:activation", current)
        .send()
        .await
        .unwrap();
    set_sealed_code(&emulator, Some(elsewhere.ciphertext_blob().unwrap().as_ref().to_vec())).await;
    emulator.reset_calls().await;

    let cold = emulator.serve(&[]);
    let answer = cold.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_eq!(answer.code(), code);
    assert_eq!(calls(&emulator, "KMS.Decrypt").await, 1);
    assert_eq!(calls(&emulator, "SSM.GetParameter").await, 1, "the fallback read");
    let log = cold.log_text();
    assert!(log.contains("could not open the sealed code"), "{log}");
    assert!(log.contains("InvalidCiphertextException"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decrypt_kms_denies_falls_back_to_parameter_store() {
    let emulator = Emulator::start();
    let (_first, code) = made_by_a_first_process(&emulator).await;
    emulator
        .inject(json!({"operation": "KMS.Decrypt", "error": "AccessDeniedException"}))
        .await;

    let cold = emulator.serve(&[]);
    let answer = cold.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_eq!(answer.code(), code);
    assert_eq!(calls(&emulator, "KMS.Decrypt").await, 1, "a refusal is not retried");
    assert_eq!(calls(&emulator, "SSM.GetParameter").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kms_throttle_past_the_sdks_retries_answers_503_with_retry_after_and_reads_no_parameter() {
    let emulator = Emulator::start();
    let (_first, _code) = made_by_a_first_process(&emulator).await;
    emulator
        .inject(json!({"operation": "KMS.Decrypt", "error": "ThrottlingException"}))
        .await;

    let cold = emulator.serve(&[]);
    let answer = cold.get("/activation").await;
    assert_eq!(answer.status, 503, "{}", answer.shown());
    assert_eq!(answer.json()["error"]["code"], "Throttled", "{}", answer.shown());
    assert!(answer.header("retry-after").is_some(), "{}", answer.shown());
    assert_eq!(calls(&emulator, "KMS.Decrypt").await, 5, "the SDK's 5 attempts");
    assert_eq!(
        calls(&emulator, "SSM.GetParameter").await,
        0,
        "a throttle does not fall back"
    );

    emulator.clear_faults().await;
    let again = cold.get("/activation").await;
    assert_eq!(again.status, 200, "{}", again.shown());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_whose_encrypt_fails_commits_without_a_sealed_code_and_drops_the_old_one() {
    let emulator = Emulator::start();
    // One slot an activation, no standby: each vend rotates.
    let settings = [("VENDING_REGISTRATION_LIMIT", "1"), ("VENDING_LOW_WATER_PERCENT", "0")];
    let first = emulator.serve(&settings);
    let sealed_one = first.get("/activation").await;
    assert_eq!(sealed_one.status, 200, "{}", sealed_one.shown());
    assert!(sealed(&pool_item(&emulator).await, "sealed_code").is_some());

    emulator
        .inject(json!({"operation": "KMS.Encrypt", "error": "KMSInternalException", "status": 500}))
        .await;
    let unsealed = first.get("/activation").await;
    assert_eq!(
        unsealed.status,
        200,
        "an Encrypt failure does not fail the rotation: {}",
        unsealed.shown()
    );
    assert_ne!(unsealed.id(), sealed_one.id());
    let item = pool_item(&emulator).await;
    assert_eq!(id_of(&item, "activation_id"), unsealed.id());
    assert_eq!(
        sealed(&item, "sealed_code"),
        None,
        "the replaced activation's sealed code went with it"
    );
    let log = first.log_text();
    assert!(log.contains("could not seal the code with KMS"), "{log}");

    emulator.clear_faults().await;
    emulator.reset_calls().await;
    let cold = emulator.serve(&settings);
    // The unsealed activation's one slot is taken: the cold process rotates and seals.
    let next = cold.get("/activation").await;
    assert_eq!(next.status, 200, "{}", next.shown());
    assert!(sealed(&pool_item(&emulator).await, "sealed_code").is_some());
    assert_eq!(
        calls(&emulator, "SSM.GetParameter").await,
        0,
        "the rotating process reads nothing back"
    );
    emulator.assert_all_register([&sealed_one, &unsealed, &next]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_promotion_moves_the_standbys_sealed_code_with_it() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "2")]);
    let first = server.get("/activation").await;
    assert_eq!(first.status, 200, "{}", first.shown());
    server.log_once_it_says("prepared a standby").await;
    let before = pool_item(&emulator).await;
    let standby = id_of(&before, "sb_activation_id");
    let standby_sealed = sealed(&before, "sb_sealed_code").expect("the standby's sealed code");

    let mut answers = vec![first];
    while answers.last().is_some_and(|a| a.id() != standby) {
        let answer = server.get("/activation").await;
        assert_eq!(answer.status, 200, "{}", answer.shown());
        answers.push(answer);
        assert!(answers.len() <= 3, "the standby was never promoted");
    }
    let after = pool_item(&emulator).await;
    assert_eq!(id_of(&after, "activation_id"), standby);
    assert_eq!(sealed(&after, "sealed_code"), Some(standby_sealed));

    emulator.reset_calls().await;
    let cold = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "2")]);
    let answer = cold.get("/activation").await;
    assert_eq!(answer.status, 200, "{}", answer.shown());
    assert_eq!(answer.id(), standby);
    assert_eq!(calls(&emulator, "SSM.GetParameter").await, 0);
    answers.push(answer);
    emulator.assert_all_register(answers.iter()).await;
}
