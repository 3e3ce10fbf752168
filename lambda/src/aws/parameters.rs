//! Parameter Store: the pool's activation ID and code, together in one SecureString
//! under the customer KMS key. Versions pin an ID to its code across rotations.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_ssm::types::{ParameterStringFilter, ParameterType};
use serde::{Deserialize, Serialize};

use super::{classify, retrying_conflicts, Echo};
use crate::error::VendError;
use crate::metrics::{self, Metric};
use crate::pool::settings::{trusted_writer, untrusted_config};
use crate::secret::ActivationCode;

#[derive(Clone)]
pub struct CodeVault {
    client: aws_sdk_ssm::Client,
    prefix: String,
    kms_key_id: String,
}

/// Every pool's `config` parameter, as Parameter Store holds it.
#[derive(Clone)]
pub struct PoolConfigSource {
    client: aws_sdk_ssm::Client,
    prefix: String,
    /// `VENDING_POOL_CONFIG_WRITERS`: empty, anyone's configs are used.
    writers: Vec<String>,
}

impl PoolConfigSource {
    pub fn new(client: aws_sdk_ssm::Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            writers: Vec::new(),
        }
    }

    /// Uses only configs last written by a principal `writers` matches (ARN patterns).
    pub fn trusting(self, writers: Vec<String>) -> Self {
        Self { writers, ..self }
    }

    /// Parameter name → (version, `LastModifiedUser`) of every parameter under the
    /// pools' path, from `DescribeParameters` (50 a page, every page).
    async fn last_writers(&self) -> Result<HashMap<String, (i64, String)>, VendError> {
        let filter = ParameterStringFilter::builder()
            .key("Path")
            .option("Recursive")
            .values(self.path().trim_end_matches('/'))
            .build()
            .map_err(|e| VendError::Internal(format!("DescribeParameters filter: {e}")))?;
        let mut writers = HashMap::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .describe_parameters()
                .parameter_filters(filter.clone())
                .max_results(50)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| classify("SSM.DescribeParameters", e, Echo::Message))?;
            for parameter in out.parameters() {
                if let Some(name) = parameter.name() {
                    let writer = parameter.last_modified_user().unwrap_or_default().to_owned();
                    writers.insert(name.to_owned(), (parameter.version(), writer));
                }
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(writers);
            }
        }
    }

    /// Replaces every config whose version's last writer `VENDING_POOL_CONFIG_WRITERS`
    /// does not name with `untrusted_config`, with a warning and `PoolConfigUntrusted`.
    async fn drop_untrusted(&self, configs: &mut BTreeMap<String, (i64, String)>) -> Result<(), VendError> {
        if self.writers.is_empty() || configs.is_empty() {
            return Ok(());
        }
        let writers = self.last_writers().await?;
        for (pool, (version, text)) in configs.iter_mut() {
            let name = format!("{}{pool}/config", self.path());
            let why = match writers.get(&name) {
                Some((v, writer)) if v == version && trusted_writer(&self.writers, writer) => continue,
                Some((v, writer)) if v == version => {
                    format!("last written by {writer}, whom VENDING_POOL_CONFIG_WRITERS does not name")
                }
                _ => "changed while it was read; its writer is checked again at the next refresh".to_owned(),
            };
            tracing::warn!(pool = %pool, parameter = %name, version = *version, problem = %why, "pool config not trusted");
            metrics::count(pool, Metric::PoolConfigUntrusted);
            *text = untrusted_config(&why);
        }
        Ok(())
    }

    pub fn path(&self) -> String {
        format!("{}/pools/", self.prefix)
    }

    /// Pool name → the raw text of `<prefix>/pools/<name>/config`, every page of
    /// `GetParametersByPath` (10 parameters a page: each costs one read of the
    /// account's shared Parameter Store quota).
    /// With `VENDING_POOL_CONFIG_WRITERS` set, each config's last writer is read in the
    /// same refresh (`drop_untrusted`).
    pub async fn read_all(&self) -> Result<BTreeMap<String, String>, VendError> {
        let path = self.path();
        let mut configs = BTreeMap::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .get_parameters_by_path()
                .path(path.trim_end_matches('/'))
                .recursive(true)
                .with_decryption(false)
                .max_results(10)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| classify("SSM.GetParametersByPath", e, Echo::Message))?;
            for parameter in out.parameters() {
                let (Some(name), Some(value)) = (parameter.name(), parameter.value()) else {
                    continue;
                };
                if parameter.r#type() != Some(&ParameterType::String) {
                    continue;
                }
                if let Some(pool) = name.strip_prefix(&path).and_then(|rest| rest.strip_suffix("/config")) {
                    if !pool.contains('/') {
                        configs.insert(pool.to_owned(), (parameter.version(), value.to_owned()));
                    }
                }
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                self.drop_untrusted(&mut configs).await?;
                return Ok(configs.into_iter().map(|(pool, (_, text))| (pool, text)).collect());
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredActivation {
    #[serde(rename = "ActivationId")]
    activation_id: String,
    #[serde(rename = "ActivationCode")]
    activation_code: String,
}

impl CodeVault {
    pub fn new(client: aws_sdk_ssm::Client, prefix: impl Into<String>, kms_key_id: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            kms_key_id: kms_key_id.into(),
        }
    }

    pub fn parameter_name(&self, pool: &str) -> String {
        format!("{}/pools/{pool}/activation", self.prefix)
    }

    /// Stores a new activation; returns the parameter version that holds it.
    pub async fn store(&self, pool: &str, activation_id: &str, code: &ActivationCode) -> Result<i64, VendError> {
        let value = serde_json::to_string(&StoredActivation {
            activation_id: activation_id.to_owned(),
            activation_code: code.expose().to_owned(),
        })
        .map_err(|_| VendError::Internal("could not encode the activation for Parameter Store".into()))?;
        // `TooManyUpdates` (another write of the parameter in flight) is contention:
        // tried again like a DynamoDB transaction conflict, then `Contended`.
        let out = retrying_conflicts(|| async {
            self.client
                .put_parameter()
                .name(self.parameter_name(pool))
                .description(format!("Current hybrid activation of pool {pool} (activation-vending)"))
                .value(value.clone())
                .r#type(ParameterType::SecureString)
                .key_id(&self.kms_key_id)
                .overwrite(true)
                .send()
                .await
                .map_err(|e| classify("SSM.PutParameter", e, Echo::Nothing))
        })
        .await?;
        Ok(out.version())
    }

    /// The code stored with `activation_id` at `version`; `None` when that version is
    /// gone (Parameter Store keeps 100) or holds another activation.
    pub async fn fetch(
        &self,
        pool: &str,
        activation_id: &str,
        version: i64,
    ) -> Result<Option<ActivationCode>, VendError> {
        let result = self
            .client
            .get_parameter()
            .name(format!("{}:{version}", self.parameter_name(pool)))
            .with_decryption(true)
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let missing = e.as_service_error().is_some_and(|s| {
                    matches!(
                        s,
                        aws_sdk_ssm::operation::get_parameter::GetParameterError::ParameterNotFound(_)
                            | aws_sdk_ssm::operation::get_parameter::GetParameterError::ParameterVersionNotFound(_)
                    )
                });
                if missing {
                    return Ok(None);
                }
                return Err(classify("SSM.GetParameter", e, Echo::Nothing));
            }
        };
        let value = out.parameter().and_then(|p| p.value()).unwrap_or_default();
        let stored: StoredActivation = serde_json::from_str(value).map_err(|_| {
            VendError::Internal(format!(
                "parameter {} is not an activation record",
                self.parameter_name(pool)
            ))
        })?;
        if stored.activation_id != activation_id {
            return Ok(None);
        }
        Ok(Some(ActivationCode::new(stored.activation_code)))
    }
}
