//! Builds the AWS clients and the vend core once, from configuration.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use crate::aws::activations::ActivationService;
use crate::aws::keys::{CodeKey, KeyFacts};
use crate::aws::nodes::ManagedNodes;
use crate::aws::parameters::{CodeVault, PoolConfigSource};
use crate::aws::pool_store::PoolStore;
use crate::clock::DateHeaderInterceptor;
use crate::config::Config;
use crate::entry::http::AppState;
use crate::registration::Confirmer;
use crate::sweep::Sweeper;
use crate::vend::Vendor;

/// The HTTPS client every SDK client shares: hyper with rustls on ring, trusting the
/// system's root certificates (what the SDK's default client does on aws-lc-rs).
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// Shared SDK settings: the standard retry mode (exponential backoff with jitter,
/// throttling-aware) and timeouts short enough to answer within API Gateway's 29 s.
pub async fn load_sdk_config(config: &Config) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .region(Region::new(config.region.clone()))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(50)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(20))
                .build(),
        )
        .load()
        .await
}

/// An SSM client that also compares AWS's clock with ours (`clock.rs`).
fn ssm_client(sdk: &SdkConfig) -> aws_sdk_ssm::Client {
    let config = aws_sdk_ssm::config::Builder::from(sdk)
        .interceptor(DateHeaderInterceptor)
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

/// A DynamoDB client that also compares AWS's clock with ours (`clock.rs`).
fn dynamodb_client(sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .interceptor(DateHeaderInterceptor)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

pub fn build_state(config: Config, sdk: &SdkConfig) -> AppState {
    let ssm = ssm_client(sdk);
    let dynamodb = dynamodb_client(sdk);
    let store = PoolStore::new(dynamodb, config.table.clone());
    let nodes = ManagedNodes::new(ssm.clone(), config.table.clone());
    let vendor = Arc::new(Vendor::new(
        store.clone(),
        CodeVault::new(ssm.clone(), config.parameter_prefix.clone(), config.kms_key_id.clone()),
        code_key(&config, sdk),
        pool_config_source(ssm.clone(), &config),
        ActivationService::new(ssm, config.table.clone()),
        config,
    ));
    AppState {
        confirmer: Arc::new(Confirmer::new(vendor.clone(), store, nodes)),
        vendor,
    }
}

pub fn build_sweeper(config: &Config, sdk: &SdkConfig) -> Sweeper {
    let ssm = ssm_client(sdk);
    Sweeper::new(
        PoolStore::new(dynamodb_client(sdk), config.table.clone()),
        ActivationService::new(ssm.clone(), config.table.clone()),
        ManagedNodes::new(ssm.clone(), config.table.clone()),
        pool_config_source(ssm, config),
        config,
    )
}

/// Reads pool configs from Parameter Store (for `vending pools`).
pub fn pool_configs(config: &Config, sdk: &SdkConfig) -> PoolConfigSource {
    pool_config_source(ssm_client(sdk), config)
}

/// The pool configs, trusting only `VENDING_POOL_CONFIG_WRITERS`' writes.
fn pool_config_source(ssm: aws_sdk_ssm::Client, config: &Config) -> PoolConfigSource {
    PoolConfigSource::new(ssm, config.parameter_prefix.clone()).trusting(config.pool_config_writers.clone())
}

/// Reads what `vending status` shows, with the caller's credentials.
pub fn build_status_reader(config: &Config, sdk: &SdkConfig) -> crate::entry::status::StatusReader {
    let ssm = ssm_client(sdk);
    crate::entry::status::StatusReader {
        store: PoolStore::new(dynamodb_client(sdk), config.table.clone()),
        activations: ActivationService::new(ssm.clone(), config.table.clone()),
        nodes: ManagedNodes::new(ssm.clone(), config.table.clone()),
        pool_configs: pool_config_source(ssm, config),
        key: code_key(config, sdk),
    }
}

/// `vending nodes`: the confirmed nodes (`pool` only, when given) with SSM's ping
/// status, read with the caller's credentials.
pub async fn list_nodes(
    config: &Config,
    sdk: &SdkConfig,
    pool: Option<&str>,
) -> Result<Vec<crate::entry::nodes::ConfirmedNode>, crate::error::VendError> {
    let store = PoolStore::new(dynamodb_client(sdk), config.table.clone());
    let nodes = ManagedNodes::new(ssm_client(sdk), config.table.clone());
    crate::entry::nodes::read(&store, &nodes, pool).await
}

/// The codes' KMS key (`VENDING_KMS_KEY_ID`), sealing for this deployment (`VENDING_TABLE`).
pub fn code_key(config: &Config, sdk: &SdkConfig) -> CodeKey {
    CodeKey::new(aws_sdk_kms::Client::new(sdk), config.kms_key_id.clone()).for_deployment(config.table.clone())
}

/// Why the process must not start: `VENDING_KMS_KEY_ID` names a key that may not
/// hold the codes (a configuration error), or it could not be described.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error("VENDING_KMS_KEY_ID: {0}")]
    Refused(String),
    #[error("could not describe VENDING_KMS_KEY_ID: {0}")]
    Unreadable(crate::error::VendError),
}

/// Describes the codes' key and refuses one that may not hold them (`KeyFacts::refusal`).
pub async fn check_code_key(config: &Config, sdk: &SdkConfig) -> Result<KeyFacts, KeyCheckError> {
    let facts = code_key(config, sdk)
        .describe()
        .await
        .map_err(KeyCheckError::Unreadable)?;
    match facts.refusal() {
        Some(problem) => Err(KeyCheckError::Refused(problem)),
        None => Ok(facts),
    }
}
