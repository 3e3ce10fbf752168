//! Parameter Store: the pool's activation ID and code, together in one SecureString
//! under the customer KMS key. Versions pin an ID to its code across rotations.

use std::collections::BTreeMap;

use aws_sdk_ssm::types::ParameterType;
use serde::{Deserialize, Serialize};

use super::{classify, retrying_conflicts, Echo};
use crate::error::VendError;
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
}

impl PoolConfigSource {
    pub fn new(client: aws_sdk_ssm::Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
        }
    }

    pub fn path(&self) -> String {
        format!("{}/pools/", self.prefix)
    }

    /// Pool name → the raw text of `<prefix>/pools/<name>/config`, every page of
    /// `GetParametersByPath` (10 parameters a page: each costs one read of the
    /// account's shared Parameter Store quota).
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
                        configs.insert(pool.to_owned(), value.to_owned());
                    }
                }
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(configs);
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
