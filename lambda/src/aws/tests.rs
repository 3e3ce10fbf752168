//! The error classification, in process: the real SDK clients, with the service's own
//! retry and timeout settings (`app::load_sdk_config`), against a mocked HTTP layer
//! that answers as AWS does (status, `x-amzn-ErrorType`, a JSON body with `__type`).
//! The SDK's deserializers and retries run before `classify` and each adapter's own
//! translation; each test says what the caller sees: the `VendError`, its status and
//! `Retry-After`, or the domain outcome a refused condition means.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::retry::RetryPartition;
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_runtime_api::shared::IntoShared;
use aws_smithy_types::body::SdkBody;
use axum::response::IntoResponse;

use super::activations::{ActivationService, NewActivation};
use super::keys::CodeKey;
use super::nodes::ManagedNodes;
use super::parameters::{CodeVault, PoolConfigSource};
use super::pool_store::THROTTLED_COMMIT_ATTEMPTS;
use super::pool_store::{LeaseAttempt, Place, PoolStore, Reservation, Tombstone};
use super::{classify, Echo, UnansweredAttempts};
use crate::config::Config;
use crate::error::VendError;
use crate::pool::settings::PoolSettings;
use crate::pool::state::{CurrentActivation, InstanceRecord, Wanted};
use crate::secret::ActivationCode;

/// A code no real activation has, easy to look for in every message.
const FAKE_CODE: &str = "FAKECODE-LeakTracer-7q2Zx9";

/// Attempts the service's SDK settings make at a retryable error (`app.rs`).
const SDK_ATTEMPTS: usize = 5;

/// Attempts `retrying_conflicts` makes at a write that meets a concurrent one.
const CONFLICT_ATTEMPTS: usize = super::CONFLICT_ATTEMPTS as usize;

/// The services' JSON protocols, as their answers carry them.
#[derive(Clone, Copy)]
enum Service {
    /// awsJson1_0; `__type` carries the model's namespace.
    DynamoDb,
    /// awsJson1_1.
    Ssm,
    /// awsJson1_1.
    Kms,
}

impl Service {
    fn content_type(self) -> &'static str {
        match self {
            Self::DynamoDb => "application/x-amz-json-1.0",
            Self::Ssm | Self::Kms => "application/x-amz-json-1.1",
        }
    }

    fn error_type(self, code: &str) -> String {
        match self {
            Self::DynamoDb => format!("com.amazonaws.dynamodb.v20120810#{code}"),
            Self::Ssm | Self::Kms => code.to_owned(),
        }
    }
}

/// An answer as `service` sends it: status, body and AWS's headers.
fn answer(service: Service, status: u16, body: &str) -> HttpResponse {
    let mut response = HttpResponse::new(
        StatusCode::try_from(status).expect("a status code"),
        SdkBody::from(body.to_owned()),
    );
    let headers = response.headers_mut();
    headers.insert("content-type", service.content_type());
    headers.insert(
        "x-amzn-requestid",
        "5KHT8GCQ0TLG2FA4A1LSHC1E8RVV4KQNSO5AEMVJF66Q9ASUAAJG",
    );
    response
}

/// An error answer: `__type` and `message` in the body, as the JSON protocols send them.
fn error(service: Service, status: u16, code: &str, message: &str) -> HttpResponse {
    error_with(service, status, code, message, serde_json::Map::new())
}

/// An error answer whose body carries more members (`Item`, `CancellationReasons`).
fn error_with(
    service: Service,
    status: u16,
    code: &str,
    message: &str,
    mut members: serde_json::Map<String, serde_json::Value>,
) -> HttpResponse {
    members.insert("__type".into(), service.error_type(code).into());
    members.insert("message".into(), message.into());
    answer(service, status, &serde_json::Value::Object(members).to_string())
}

fn throttled(service: Service, code: &str) -> HttpResponse {
    error(service, 400, code, "Rate exceeded")
}

/// DynamoDB's refusal of a write whose condition failed, with the item as it was
/// (`ReturnValuesOnConditionCheckFailure: ALL_OLD`).
fn condition_failed(item: serde_json::Value) -> HttpResponse {
    let mut members = serde_json::Map::new();
    members.insert("Item".into(), item);
    error_with(
        Service::DynamoDb,
        400,
        "ConditionalCheckFailedException",
        "The conditional request failed",
        members,
    )
}

/// DynamoDB's cancelled transaction: one reason per action, in order.
fn transaction_cancelled(reasons: &[&str]) -> HttpResponse {
    let listed = reasons.join(", ");
    let mut members = serde_json::Map::new();
    members.insert(
        "CancellationReasons".into(),
        reasons
            .iter()
            .map(|code| serde_json::json!({"Code": code, "Message": format!("{code} on this action")}))
            .collect(),
    );
    error_with(
        Service::DynamoDb,
        400,
        "TransactionCanceledException",
        &format!("Transaction cancelled, please refer cancellation reasons for specific reasons [{listed}]"),
        members,
    )
}

/// A pool item as the table holds it: activation `act-1`, `reserved` of 100 slots taken.
fn pool_item(reserved: u32, lease_owner: Option<&str>) -> serde_json::Value {
    let mut item = serde_json::json!({
        "pk": {"S": "pool#p"},
        "activation_id": {"S": "act-1"},
        "expires_at": {"N": "4000000000"},
        "reg_limit": {"N": "100"},
        "reserved": {"N": reserved.to_string()},
        "param_version": {"N": "3"},
        "rotated_at": {"N": "1700000000"},
        "config_fp": {"S": "fp"},
        "config_at": {"N": "1700000000"},
    });
    if let Some(owner) = lease_owner {
        item["lease_owner"] = serde_json::json!({"S": owner});
        item["lease_until"] = serde_json::json!({"N": "4000000000"});
    }
    item
}

/// What the mocked HTTP layer does with one request.
#[derive(Debug)]
enum Answer {
    /// AWS answers (any status).
    Respond(Box<HttpResponse>),
    /// The connection drops before an answer (`connection reset`).
    Drop,
    /// Nothing comes back: only the SDK's attempt timeout ends the wait.
    Silence,
}

impl From<HttpResponse> for Answer {
    fn from(response: HttpResponse) -> Self {
        Self::Respond(Box::new(response))
    }
}

/// The mocked HTTP layer under the real SDK client: AWS's answers, one per request
/// in order, and the bodies of the requests it got. Built on the SDK's own
/// `HttpClient` trait, where the HTTPS client of `app::https_client` plugs in.
#[derive(Debug, Clone)]
struct Aws {
    script: Arc<Mutex<VecDeque<Answer>>>,
    requests: Arc<Mutex<Vec<String>>>,
    scripted: usize,
}

impl Aws {
    /// AWS answering `answers` in order (responses, dropped connections, silences);
    /// `then` scripts more after them.
    fn answering<A: Into<Answer>>(answers: impl IntoIterator<Item = A>) -> Self {
        let script: VecDeque<Answer> = answers.into_iter().map(Into::into).collect();
        Self {
            scripted: script.len(),
            script: Arc::new(Mutex::new(script)),
            requests: Arc::default(),
        }
    }

    /// The same answer `times` times.
    fn repeating<A: Into<Answer>>(times: usize, answer: impl Fn() -> A) -> Self {
        Self::answering((0..times).map(|_| answer()))
    }

    /// One more answer, after the ones scripted so far.
    fn then(self, answer: impl Into<Answer>) -> Self {
        self.script.lock().unwrap().push_back(answer.into());
        Self {
            scripted: self.scripted + 1,
            ..self
        }
    }

    fn requests(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn request_bodies(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Every scripted answer was asked for, and no request came after the last one
    /// (it would have met a dispatch error no test expects).
    fn assert_all_asked(&self) {
        assert_eq!(self.requests(), self.scripted, "requests made against answers scripted");
    }
}

impl HttpConnector for Aws {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let body = String::from_utf8_lossy(request.body().bytes().unwrap_or_default()).into_owned();
        self.requests.lock().unwrap().push(body);
        match self.script.lock().unwrap().pop_front() {
            Some(Answer::Respond(response)) => HttpConnectorFuture::ready(Ok(*response)),
            Some(Answer::Drop) => {
                HttpConnectorFuture::ready(Err(ConnectorError::io("connection reset by peer".into())))
            }
            Some(Answer::Silence) => HttpConnectorFuture::new(std::future::pending()),
            None => HttpConnectorFuture::ready(Err(ConnectorError::other(
                "the test scripted no answer for this request".into(),
                None,
            ))),
        }
    }
}

impl HttpClient for Aws {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        self.clone().into_shared()
    }
}

/// The service's configuration, enough of it for the SDK settings.
fn config() -> Config {
    Config::from_lookup(|name| {
        let value = match name {
            "VENDING_TABLE" => "vending",
            "VENDING_PARAMETER_PREFIX" => "/activation-vending",
            "VENDING_KMS_KEY_ID" => "alias/vending-codes",
            "VENDING_INSTANCE_ROLE" => "vending-managed-instance",
            "AWS_REGION" => "eu-west-1",
            _ => return None,
        };
        Some(value.to_owned())
    })
    .expect("a valid configuration")
}

/// The SDK settings the service runs with (retries, backoff, timeouts).
async fn service_sdk() -> SdkConfig {
    crate::entry::app::load_sdk_config(&config()).await
}

/// A retry partition of the test's own: the SDK's retry token bucket is shared per
/// partition across the process, and tests draining one would change others' retries.
fn own_retry_partition() -> RetryPartition {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    RetryPartition::new(format!("aws-tests-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

fn credentials() -> Credentials {
    Credentials::new("AKIDTESTS", "secret", None, None, "aws-tests")
}

async fn dynamodb(aws: &Aws) -> aws_sdk_dynamodb::Client {
    dynamodb_with(aws, &service_sdk().await)
}

/// A client of the SDK crate `$sdk` as `app.rs` builds one from `$config`, over `$aws`
/// and with test credentials, less `clock::DateHeaderInterceptor`: the scripted answers
/// carry no `Date`, and the clock's state is the process's, shared with the other unit
/// tests. (A macro: each SDK crate has a config builder of its own, with no common trait.)
macro_rules! client_over {
    ($sdk:ident, $aws:expr, $config:expr) => {
        $sdk::Client::from_conf(
            $sdk::config::Builder::from($config)
                .http_client($aws.clone())
                .credentials_provider(credentials())
                .retry_partition(own_retry_partition())
                .build(),
        )
    };
}

fn dynamodb_with(aws: &Aws, sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    client_over!(aws_sdk_dynamodb, aws, sdk)
}

async fn ssm(aws: &Aws) -> aws_sdk_ssm::Client {
    client_over!(aws_sdk_ssm, aws, &service_sdk().await)
}

async fn kms(aws: &Aws) -> aws_sdk_kms::Client {
    client_over!(aws_sdk_kms, aws, &service_sdk().await)
}

async fn store(aws: &Aws) -> PoolStore {
    PoolStore::new(dynamodb(aws).await, "vending")
}

async fn vault(aws: &Aws) -> CodeVault {
    CodeVault::new(ssm(aws).await, "/activation-vending", "alias/vending-codes")
}

async fn activations(aws: &Aws) -> ActivationService {
    ActivationService::new(ssm(aws).await, "vending")
}

/// CreateActivation for pool `p`, with the pool settings of `config()`.
async fn create_activation(aws: &Aws) -> Result<NewActivation, VendError> {
    let settings = PoolSettings::from_environment(&config());
    activations(aws).await.create("p", &settings, 1_800_000_000).await
}

/// The rotation `rotation-1` commits `next_activation()` as the current activation
/// (its old one spent).
async fn commit_next_as_current(aws: &Aws) -> Result<bool, VendError> {
    store(aws)
        .await
        .commit_rotation(
            "p",
            "rotation-1",
            &next_activation(),
            Place::Current,
            "spent",
            1_800_000_000,
        )
        .await
}

fn next_activation() -> CurrentActivation {
    CurrentActivation {
        id: "act-2".into(),
        expires_at: 4_000_000_000,
        limit: 100,
        reserved: 0,
        parameter_version: 4,
        committed_at: 0,
        fingerprint: "fp".into(),
        config_at: 1_700_000_000,
        sealed_code: None,
    }
}

/// What the callers want: the settings `pool_item`'s activation was made with.
const POOL_ITEM_SETTINGS: Wanted<'static> = Wanted {
    fingerprint: "fp",
    config_at: 1_700_000_000,
};

/// What the caller of a failed vend sees: status, error code and `Retry-After`.
fn face(e: &VendError) -> (u16, &'static str, Option<u32>) {
    (e.status().as_u16(), e.code(), e.retry_after())
}

/// Which AWS call failed (the operation the error names, `None` when it names none) and
/// the failure's face. The face's code names the variant: `Throttled`, `Contended`,
/// `ServiceUnavailable` (`Unavailable`), `InternalError` with an operation (`Aws`).
fn failure(e: &VendError) -> (Option<&'static str>, (u16, &'static str, Option<u32>)) {
    let operation = match e {
        VendError::Throttled { operation }
        | VendError::Contended { operation }
        | VendError::Unavailable { operation, .. }
        | VendError::Aws { operation, .. } => Some(*operation),
        _ => None,
    };
    (operation, face(e))
}

const THROTTLED_503: (u16, &str, Option<u32>) = (503, "Throttled", Some(2));
const CONTENDED_503: (u16, &str, Option<u32>) = (503, "Contended", Some(1));
const UNAVAILABLE_503: (u16, &str, Option<u32>) = (503, "ServiceUnavailable", Some(2));
const INTERNAL_500: (u16, &str, Option<u32>) = (500, "InternalError", None);

/// Every way the error reaches a log line or a caller: `Debug`, `Display` (the
/// failure log line, the rotation failure noted on the pool item) and the HTTP answer.
async fn assert_never_shows_the_code(e: VendError) {
    let mut shown = vec![format!("{e:?}"), e.to_string()];
    let response = e.into_response();
    shown.push(format!("{:?}", response.headers()));
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .expect("the body");
    shown.push(String::from_utf8_lossy(&body).into_owned());
    for shown in shown {
        assert!(!shown.contains(FAKE_CODE), "the code leaked into: {shown}");
    }
}

// DynamoDB.

#[tokio::test]
async fn each_dynamodb_throttle_is_retried_by_the_sdk_then_answers_503_throttled() {
    for code in [
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
    ] {
        let aws = Aws::repeating(SDK_ATTEMPTS, || throttled(Service::DynamoDb, code));
        let e = store(&aws).await.pool("p").await.expect_err(code);
        assert_eq!(failure(&e), (Some("DynamoDB.GetItem"), THROTTLED_503), "{code}: {e:?}");
        aws.assert_all_asked();
    }
}

#[tokio::test]
async fn a_dynamodb_throttle_that_clears_within_the_retries_is_never_seen() {
    let item = serde_json::json!({"Item": pool_item(7, None)}).to_string();
    let aws = Aws::answering([
        throttled(Service::DynamoDb, "ProvisionedThroughputExceededException"),
        throttled(Service::DynamoDb, "ThrottlingException"),
        answer(Service::DynamoDb, 200, &item),
    ]);
    let state = store(&aws).await.pool("p").await.expect("the third attempt answers");
    let activation = state.activation.expect("the pool's activation");
    assert_eq!((activation.id.as_str(), activation.reserved), ("act-1", 7));
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_reserve_whose_condition_fails_is_refused_with_the_pool_as_it_was_not_an_error() {
    let aws = Aws::answering([condition_failed(pool_item(100, None))]);
    let reservation = store(&aws)
        .await
        .reserve_slot("p", 1_800_000_000, 900, POOL_ITEM_SETTINGS)
        .await
        .expect("a refusal is an answer");
    let Reservation::Refused(state) = reservation else {
        panic!("expected a refusal, got {reservation:?}");
    };
    let activation = state.activation.expect("the pool as it was");
    assert_eq!((activation.reserved, activation.limit), (100, 100));
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_lease_another_rotation_holds_is_busy_not_an_error() {
    let aws = Aws::answering([condition_failed(pool_item(3, Some("rotation-elsewhere")))]);
    let attempt = store(&aws)
        .await
        .take_lease("p", "rotation-here", 1_800_000_000, 1_800_000_060)
        .await
        .expect("a held lease is an answer");
    let LeaseAttempt::Busy(state) = attempt else {
        panic!("expected Busy, got {attempt:?}");
    };
    assert_eq!(state.lease.expect("the holder").owner, "rotation-elsewhere");
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_tombstone_that_meets_a_committed_record_says_committed() {
    let record = serde_json::json!({
        "pk": {"S": "activation#act-1"},
        "activation_id": {"S": "act-1"},
        "committed_at": {"N": "1700000000"},
        "committed_by": {"S": "rotation-1"},
    });
    let aws = Aws::answering([condition_failed(record)]);
    let tombstone = store(&aws)
        .await
        .lay_tombstone("act-1", 1_800_000_000)
        .await
        .expect("a committed record is an answer");
    assert_eq!(tombstone, Tombstone::Committed);
    aws.assert_all_asked();
}

#[tokio::test]
async fn an_instance_record_a_concurrent_request_wrote_first_is_returned_not_an_error() {
    let theirs = serde_json::json!({
        "pk": {"S": "instance#p#web-1"},
        "activation_id": {"S": "act-1"},
        "param_version": {"N": "3"},
        "expires_at": {"N": "4000000000"},
        "machine_id": {"S": "machine-1"},
    });
    let aws = Aws::answering([condition_failed(theirs)]);
    let ours = InstanceRecord {
        activation_id: "act-2".into(),
        parameter_version: 4,
        expires_at: 4_000_000_000,
        machine_id: Some("machine-1".into()),
        vended_at: None,
    };
    let first = store(&aws)
        .await
        .remember_instance("p", "web-1", &ours, None, 1_800_000_900)
        .await
        .expect("a record already there is an answer")
        .expect("the record that got there first");
    assert_eq!((first.activation_id.as_str(), first.parameter_version), ("act-1", 3));
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_standby_someone_else_promoted_first_is_none_not_an_error() {
    let aws = Aws::answering([condition_failed(pool_item(1, None))]);
    let promoted = store(&aws)
        .await
        .promote_standby("p", &next_activation(), 1_800_000_000, 900, POOL_ITEM_SETTINGS, 1)
        .await
        .expect("a lost race is an answer");
    assert_eq!(promoted, None);
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_lease_take_that_fails_gives_the_lease_back_in_case_an_attempt_landed() {
    let aws = Aws::repeating(SDK_ATTEMPTS, || throttled(Service::DynamoDb, "ThrottlingException")).then(answer(
        Service::DynamoDb,
        200,
        "{}",
    ));
    let e = store(&aws)
        .await
        .take_lease("p", "rotation-here", 1_800_000_000, 1_800_000_060)
        .await
        .expect_err("throttled");
    assert!(
        matches!(
            e,
            VendError::Throttled {
                operation: "DynamoDB.UpdateItem"
            }
        ),
        "{e:?}"
    );
    aws.assert_all_asked();
    let release = aws.request_bodies().pop().expect("the release");
    assert!(
        release.contains("REMOVE #owner, #until") && release.contains("rotation-here"),
        "{release}"
    );
}

#[tokio::test]
async fn a_batch_read_whose_keys_stay_unprocessed_answers_503_throttled_after_six_rounds() {
    let unprocessed = serde_json::json!({
        "Responses": {"vending": []},
        "UnprocessedKeys": {"vending": {"Keys": [{"pk": {"S": "activation#act-1"}}], "ConsistentRead": true}},
    })
    .to_string();
    let aws = Aws::repeating(6, || answer(Service::DynamoDb, 200, &unprocessed));
    let e = store(&aws)
        .await
        .committed_among(&["act-1".to_owned()])
        .await
        .expect_err("throttled");
    assert_eq!(failure(&e), (Some("DynamoDB.BatchGetItem"), THROTTLED_503), "{e:?}");
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_commit_whose_condition_failed_answers_false_not_an_error() {
    let aws = Aws::answering([transaction_cancelled(&["ConditionalCheckFailed", "None"])]);
    let landed = commit_next_as_current(&aws).await.expect("a lost lease is an answer");
    assert!(!landed);
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_commit_cancelled_by_a_transaction_conflict_is_tried_eight_times_then_answers_503_contended() {
    let aws = Aws::repeating(CONFLICT_ATTEMPTS, || {
        transaction_cancelled(&["None", "TransactionConflict"])
    });
    let e = commit_next_as_current(&aws).await.expect_err("contended");
    assert_eq!(
        failure(&e),
        (Some("DynamoDB.TransactWriteItems"), CONTENDED_503),
        "{e:?}"
    );
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_commit_cancelled_for_throughput_is_retried_with_the_same_token_then_answers_503_throttled() {
    for reason in [
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
    ] {
        // The SDK sees a cancelled transaction, not a throttle, and does not retry it
        // itself: the store tries THROTTLED_COMMIT_ATTEMPTS times.
        let aws = Aws::repeating(THROTTLED_COMMIT_ATTEMPTS as usize, || {
            transaction_cancelled(&[reason, "None"])
        });
        let e = commit_next_as_current(&aws).await.expect_err(reason);
        assert_eq!(
            failure(&e),
            (Some("DynamoDB.TransactWriteItems"), THROTTLED_503),
            "{reason}: {e:?}"
        );
        aws.assert_all_asked();
        for body in aws.request_bodies() {
            assert!(body.contains(r#""ClientRequestToken":"rotation-1""#), "{body}");
        }
    }
}

#[tokio::test]
async fn a_commit_throttled_once_lands_on_its_retry() {
    let aws = Aws::answering([
        transaction_cancelled(&["ThrottlingError", "None"]),
        answer(Service::DynamoDb, 200, "{}"),
    ]);
    let landed = store(&aws)
        .await
        .commit_rotation(
            "p",
            "rotation-1",
            &next_activation(),
            Place::Standby,
            "standby",
            1_800_000_000,
        )
        .await
        .expect("landed");
    assert!(landed);
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_write_that_meets_a_transaction_in_flight_is_tried_eight_times_then_answers_503_contended() {
    let aws = Aws::repeating(CONFLICT_ATTEMPTS, || {
        error(
            Service::DynamoDb,
            400,
            "TransactionConflictException",
            "Transaction is ongoing for the item",
        )
    });
    let e = store(&aws)
        .await
        .release_lease("p", "rotation-1")
        .await
        .expect_err("contended");
    assert_eq!(failure(&e), (Some("DynamoDB.UpdateItem"), CONTENDED_503), "{e:?}");
    aws.assert_all_asked();
}

#[tokio::test]
async fn dynamodb_access_denied_is_not_retried_and_answers_500_keeping_the_aws_code_for_the_logs() {
    let denied = "User: arn:aws:sts::123456789012:assumed-role/vending/fn is not authorized to perform: dynamodb:GetItem on resource: arn:aws:dynamodb:eu-west-1:123456789012:table/vending";
    let aws = Aws::answering([error(Service::DynamoDb, 400, "AccessDeniedException", denied)]);
    let e = store(&aws).await.pool("p").await.expect_err("denied");
    let VendError::Aws {
        operation,
        code,
        detail,
    } = &e
    else {
        panic!("expected an AWS failure, got {e:?}");
    };
    assert_eq!(
        (*operation, code.as_str()),
        ("DynamoDB.GetItem", "AccessDeniedException")
    );
    assert!(detail.contains("dynamodb:GetItem"), "{detail}");
    assert_eq!(face(&e), INTERNAL_500);
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_dynamodb_5xx_is_retried_by_the_sdk_then_answers_503_unavailable() {
    let aws = Aws::repeating(SDK_ATTEMPTS, || {
        error(Service::DynamoDb, 500, "InternalServerError", "Internal server error")
    });
    let e = store(&aws).await.pool("p").await.expect_err("unavailable");
    assert!(
        matches!(&e, VendError::Unavailable { operation: "DynamoDB.GetItem", detail } if detail == "InternalServerError"),
        "{e:?}"
    );
    assert_eq!(face(&e), UNAVAILABLE_503);
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_reserve_whose_connection_drops_on_every_attempt_answers_503_unavailable() {
    let aws = Aws::repeating(SDK_ATTEMPTS, || Answer::Drop);
    let e = store(&aws)
        .await
        .reserve_slot("p", 1_800_000_000, 900, POOL_ITEM_SETTINGS)
        .await
        .expect_err("no answer");
    assert_eq!(failure(&e), (Some("DynamoDB.UpdateItem"), UNAVAILABLE_503), "{e:?}");
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_request_that_never_gets_an_answer_times_out_each_attempt_then_answers_503_unavailable() {
    // The service's retries, with attempts cut short (its own 5 s each would make a
    // 20 s test): the attempt timeout is what ends a silent connection.
    let sdk = service_sdk()
        .await
        .into_builder()
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(20))
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .build();
    let aws = Aws::repeating(SDK_ATTEMPTS, || Answer::Silence);
    let store = PoolStore::new(dynamodb_with(&aws, &sdk), "vending");
    let e = store.pool("p").await.expect_err("no answer");
    assert_eq!(failure(&e), (Some("DynamoDB.GetItem"), UNAVAILABLE_503), "{e:?}");
    aws.assert_all_asked();
}

/// A GetItem through `client` that counts its unanswered attempts.
async fn get_item_counting(
    client: &aws_sdk_dynamodb::Client,
    unanswered: &UnansweredAttempts,
) -> Result<(), VendError> {
    client
        .get_item()
        .table_name("vending")
        .key("pk", AttributeValue::S("pool#p".into()))
        .customize()
        .interceptor(unanswered.clone())
        .send()
        .await
        .map(|_| ())
        .map_err(|e| classify("DynamoDB.GetItem", e, Echo::Message))
}

#[tokio::test]
async fn unanswered_attempts_count_the_5xx_and_the_dropped_ones_not_the_refusals() {
    let aws = Aws::answering([error(
        Service::DynamoDb,
        500,
        "InternalServerError",
        "Internal server error",
    )])
    .then(Answer::Drop)
    .then(answer(Service::DynamoDb, 503, ""))
    .then(throttled(Service::DynamoDb, "ThrottlingException"))
    .then(answer(Service::DynamoDb, 200, "{}"));
    let unanswered = UnansweredAttempts::default();
    get_item_counting(&dynamodb(&aws).await, &unanswered)
        .await
        .expect("the fifth attempt answers");
    assert_eq!(
        unanswered.count(),
        3,
        "a 500, a dropped connection and a 503; the throttle was an answer"
    );
    aws.assert_all_asked();

    let aws = Aws::repeating(SDK_ATTEMPTS, || Answer::Drop);
    let unanswered = UnansweredAttempts::default();
    let e = get_item_counting(&dynamodb(&aws).await, &unanswered)
        .await
        .expect_err("no answer");
    assert_eq!(unanswered.count(), 5, "every dropped attempt");
    assert!(
        matches!(&e, VendError::Unavailable { detail, .. } if detail.contains("connection reset")),
        "{e:?}"
    );
}

// Parameter Store and SSM.

#[tokio::test]
async fn an_ssm_throttle_is_retried_by_the_sdk_then_answers_503_throttled() {
    let aws = Aws::repeating(SDK_ATTEMPTS, || throttled(Service::Ssm, "ThrottlingException"));
    let source = PoolConfigSource::new(ssm(&aws).await, "/activation-vending");
    let e = source.read_all().await.expect_err("throttled");
    assert_eq!(failure(&e), (Some("SSM.GetParametersByPath"), THROTTLED_503), "{e:?}");
    aws.assert_all_asked();
}

#[tokio::test]
async fn an_error_named_only_by_the_x_amzn_error_type_header_is_classified_by_it() {
    let aws = Aws::repeating(SDK_ATTEMPTS, || {
        let mut response = answer(Service::Ssm, 400, r#"{"message":"Rate exceeded"}"#);
        response.headers_mut().insert(
            "x-amzn-ErrorType",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/",
        );
        response
    });
    let e = activations(&aws).await.describe("act-1").await.expect_err("throttled");
    assert!(
        matches!(
            e,
            VendError::Throttled {
                operation: "SSM.DescribeActivations"
            }
        ),
        "{e:?}"
    );
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_bare_ssm_503_is_retried_then_answers_503_unavailable() {
    let aws = Aws::repeating(SDK_ATTEMPTS, || answer(Service::Ssm, 503, ""));
    let e = activations(&aws)
        .await
        .describe("act-1")
        .await
        .expect_err("unavailable");
    assert_eq!(failure(&e), (Some("SSM.DescribeActivations"), UNAVAILABLE_503), "{e:?}");
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_code_version_parameter_store_no_longer_has_is_no_code_not_an_error() {
    for (code, message) in [
        ("ParameterNotFound", "Parameter /activation-vending/pools/p/activation not found."),
        (
            "ParameterVersionNotFound",
            "Systems Manager could not find version 3 of /activation-vending/pools/p/activation. Verify the version and try again.",
        ),
    ] {
        let aws = Aws::answering([error(Service::Ssm, 400, code, message)]);
        let code_found = vault(&aws).await.fetch("p", "act-1", 3).await.expect(code);
        assert!(code_found.is_none(), "{code}");
        aws.assert_all_asked();
    }
}

#[tokio::test]
async fn a_code_write_that_meets_too_many_updates_is_tried_eight_times_then_answers_503_contended() {
    let aws = Aws::repeating(CONFLICT_ATTEMPTS, || {
        error(
            Service::Ssm,
            400,
            "TooManyUpdates",
            "There are concurrent updates for the resource that you are trying to update.",
        )
    });
    let e = vault(&aws)
        .await
        .store("p", "act-1", &ActivationCode::new(FAKE_CODE))
        .await
        .expect_err("contended");
    assert_eq!(failure(&e), (Some("SSM.PutParameter"), CONTENDED_503), "{e:?}");
    aws.assert_all_asked();
}

#[tokio::test]
async fn an_activation_the_role_may_not_pass_answers_500_keeping_the_aws_code_for_the_logs() {
    let aws = Aws::answering([error(
        Service::Ssm,
        400,
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/vending/fn is not authorized to perform: iam:PassRole",
    )]);
    let e = create_activation(&aws).await.expect_err("denied");
    assert!(
        matches!(&e, VendError::Aws { operation: "SSM.CreateActivation", code, detail } if code == "AccessDeniedException" && detail.contains("iam:PassRole")),
        "{e:?}"
    );
    assert_eq!(face(&e), INTERNAL_500);
    aws.assert_all_asked();
}

#[tokio::test]
async fn an_activation_or_node_that_is_already_gone_counts_as_removed() {
    let aws = Aws::answering([error(
        Service::Ssm,
        400,
        "InvalidActivation",
        "Activation ID act-1 does not exist",
    )]);
    activations(&aws).await.delete("act-1").await.expect("already gone");
    aws.assert_all_asked();

    let aws = Aws::answering([error(
        Service::Ssm,
        400,
        "InvalidInstanceId",
        "mi-0123456789abcdef0 is not registered",
    )]);
    ManagedNodes::new(ssm(&aws).await, "vending")
        .deregister("mi-0123456789abcdef0")
        .await
        .expect("already gone");
    aws.assert_all_asked();
}

// KMS.

#[tokio::test]
async fn a_kms_throttle_is_retried_by_the_sdk_then_answers_503_throttled() {
    let aws = Aws::repeating(SDK_ATTEMPTS, || throttled(Service::Kms, "ThrottlingException"));
    let key = CodeKey::new(kms(&aws).await, "alias/vending-codes");
    let e = key.describe().await.expect_err("throttled");
    assert_eq!(failure(&e), (Some("KMS.DescribeKey"), THROTTLED_503), "{e:?}");
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_kms_key_that_is_missing_or_denied_answers_500_naming_the_aws_code() {
    for (code, message) in [
        (
            "NotFoundException",
            "Alias arn:aws:kms:eu-west-1:123456789012:alias/vending-codes is not found.",
        ),
        (
            "AccessDeniedException",
            "User: arn:aws:sts::123456789012:assumed-role/vending/fn is not authorized to perform: kms:DescribeKey",
        ),
    ] {
        let aws = Aws::answering([error(Service::Kms, 400, code, message)]);
        let key = CodeKey::new(kms(&aws).await, "alias/vending-codes");
        let e = key.describe().await.expect_err(code);
        assert!(
            matches!(&e, VendError::Aws { operation: "KMS.DescribeKey", code: c, .. } if c == code),
            "{e:?}"
        );
        assert_eq!(face(&e), INTERNAL_500, "{code}");
        aws.assert_all_asked();
    }
}

// The activation code.

#[tokio::test]
async fn no_error_repeats_an_aws_message_about_a_request_that_carried_the_code() {
    // Parameter Store may echo the value it refused.
    let echoed = format!(
        "1 validation error detected: Value '{{\"ActivationId\":\"act-1\",\"ActivationCode\":\"{FAKE_CODE}\"}}' at 'value' failed to satisfy constraint"
    );
    let code = ActivationCode::new(FAKE_CODE);

    let aws = Aws::answering([error(Service::Ssm, 400, "ValidationException", &echoed)]);
    let e = vault(&aws).await.store("p", "act-1", &code).await.expect_err("refused");
    assert!(
        matches!(&e, VendError::Aws { code, .. } if code == "ValidationException"),
        "{e:?}"
    );
    assert_never_shows_the_code(e).await;
    aws.assert_all_asked();

    let aws = Aws::repeating(SDK_ATTEMPTS, || {
        error(Service::Ssm, 500, "InternalServerError", &echoed)
    });
    let e = vault(&aws)
        .await
        .store("p", "act-1", &code)
        .await
        .expect_err("unavailable");
    assert!(matches!(e, VendError::Unavailable { .. }), "{e:?}");
    assert_never_shows_the_code(e).await;
    aws.assert_all_asked();

    let aws = Aws::answering([error(Service::Ssm, 400, "AccessDeniedException", &echoed)]);
    let e = vault(&aws).await.fetch("p", "act-1", 3).await.expect_err("denied");
    assert_never_shows_the_code(e).await;
    aws.assert_all_asked();
}

#[tokio::test]
async fn a_seal_that_fails_repeats_nothing_of_its_request_which_carried_the_code() {
    let echoed =
        format!("1 validation error detected: Value '{FAKE_CODE}' at 'plaintext' failed to satisfy constraint");
    let code = ActivationCode::new(FAKE_CODE);
    for (status, error_code) in [
        (400, "ValidationException"),
        (400, "AccessDeniedException"),
        (500, "KMSInternalException"),
    ] {
        let attempts = if status == 500 { SDK_ATTEMPTS } else { 1 };
        let aws = Aws::repeating(attempts, || error(Service::Kms, status, error_code, &echoed));
        let key = CodeKey::new(kms(&aws).await, "alias/vending-codes").for_deployment("vending");
        let e = key.seal("p", "act-1", &code).await.expect_err(error_code);
        assert_never_shows_the_code(e).await;
        aws.assert_all_asked();
    }
}

#[tokio::test]
async fn a_sealed_code_that_cannot_be_opened_fails_without_repeating_the_code() {
    let sealed = crate::secret::SealedCode::new(b"ciphertext".to_vec());
    let plaintext = aws_smithy_types::base64::encode(FAKE_CODE);
    // Decrypt's answer is cut off after the plaintext.
    let cut = format!(r#"{{"KeyId":"arn:aws:kms:eu-west-1:123456789012:key/k","Plaintext":"{plaintext}"#);
    let aws = Aws::answering([answer(Service::Kms, 200, &cut)]);
    let key = CodeKey::new(kms(&aws).await, "alias/vending-codes").for_deployment("vending");
    let e = key.open("p", "act-1", &sealed).await.expect_err("unreadable");
    // Whatever the SDK makes of it (here an unhandled error, code `Unknown`, which
    // falls back to Parameter Store), it shows nothing of the answer.
    assert!(!format!("{e:?} {e}").contains(&plaintext), "{e:?}");
    assert_never_shows_the_code(e).await;
    aws.assert_all_asked();

    // A refusal names its code, for the fallback's log line, and nothing of the code.
    let aws = Aws::answering([error(Service::Kms, 400, "InvalidCiphertextException", "")]);
    let key = CodeKey::new(kms(&aws).await, "alias/vending-codes").for_deployment("vending");
    let e = key.open("p", "act-1", &sealed).await.expect_err("refused");
    assert!(
        matches!(&e, VendError::Aws { operation: "KMS.Decrypt", code, .. } if code == "InvalidCiphertextException"),
        "{e:?}"
    );
    assert!(crate::vend::codes::falls_back_to_parameter_store(&e));

    // A plaintext that is not text is no code.
    let binary =
        serde_json::json!({"KeyId": "k", "Plaintext": aws_smithy_types::base64::encode([0xff, 0xfe])}).to_string();
    let aws = Aws::answering([answer(Service::Kms, 200, &binary)]);
    let key = CodeKey::new(kms(&aws).await, "alias/vending-codes").for_deployment("vending");
    let e = key.open("p", "act-1", &sealed).await.expect_err("not UTF-8");
    assert!(matches!(e, VendError::Internal(_)), "{e:?}");
}

#[tokio::test]
async fn a_code_is_sealed_and_opened_under_its_deployment_pool_and_activation() {
    let sealed = aws_smithy_types::base64::encode(b"ciphertext");
    let aws = Aws::answering([
        answer(
            Service::Kms,
            200,
            &serde_json::json!({"KeyId": "k", "CiphertextBlob": sealed}).to_string(),
        ),
        answer(
            Service::Kms,
            200,
            &serde_json::json!({"KeyId": "k", "Plaintext": aws_smithy_types::base64::encode(FAKE_CODE)}).to_string(),
        ),
    ]);
    let key = CodeKey::new(kms(&aws).await, "alias/vending-codes").for_deployment("vending");
    let code = ActivationCode::new(FAKE_CODE);
    let got = key.seal("web", "act-1", &code).await.expect("sealed");
    assert_eq!(got.bytes(), b"ciphertext");
    assert_eq!(key.open("web", "act-1", &got).await.expect("opened"), code);
    let asked = aws.request_bodies();
    let context = serde_json::json!({
        "activation-vending:deployment": "vending",
        "activation-vending:pool": "web",
        "activation-vending:activation": "act-1",
    });
    for body in &asked {
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["EncryptionContext"], context, "{body}");
        assert_eq!(body["KeyId"], "alias/vending-codes", "{body}");
    }
    aws.assert_all_asked();
}

#[tokio::test]
async fn an_answer_that_carries_the_code_but_cannot_be_read_fails_without_repeating_it() {
    // CreateActivation's answer is cut off after the code.
    let cut = format!(r#"{{"ActivationCode":"{FAKE_CODE}","ActivationId":"#);
    let aws = Aws::answering([answer(Service::Ssm, 200, &cut)]);
    let e = create_activation(&aws).await.expect_err("unreadable");
    assert!(
        matches!(
            e,
            VendError::Unavailable {
                operation: "SSM.CreateActivation",
                ..
            }
        ),
        "{e:?}"
    );
    assert_never_shows_the_code(e).await;
    aws.assert_all_asked();

    // GetParameter's answer holds something other than an activation record.
    let parameter = serde_json::json!({
        "Parameter": {"Name": "/activation-vending/pools/p/activation", "Type": "SecureString", "Value": format!("{FAKE_CODE} not JSON"), "Version": 3}
    })
    .to_string();
    let aws = Aws::answering([answer(Service::Ssm, 200, &parameter)]);
    let e = vault(&aws)
        .await
        .fetch("p", "act-1", 3)
        .await
        .expect_err("not a record");
    assert!(matches!(e, VendError::Internal(_)), "{e:?}");
    assert_never_shows_the_code(e).await;
    aws.assert_all_asked();

    // GetParameter's answer is cut off inside the value.
    let cut = format!(r#"{{"Parameter":{{"Value":"{{\"ActivationCode\":\"{FAKE_CODE}"#);
    let aws = Aws::answering([answer(Service::Ssm, 200, &cut)]);
    let e = vault(&aws).await.fetch("p", "act-1", 3).await.expect_err("unreadable");
    assert_never_shows_the_code(e).await;
    aws.assert_all_asked();
}
