//! KMS: the key that encrypts the codes (`VENDING_KMS_KEY_ID`), described once at
//! start and by `vending status`. Only a customer-managed, enabled key may hold them:
//! an AWS-managed key (`alias/aws/ssm`) lets any principal of the account decrypt
//! through Parameter Store, and every registered node may call `ssm:GetParameter`.

use serde::Serialize;

use super::{classify, Echo};
use crate::error::VendError;

/// What `DescribeKey` says about the codes' key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyFacts {
    /// As configured: an ID, ARN or alias.
    pub key_id: String,
    pub arn: Option<String>,
    /// `CUSTOMER` or `AWS`.
    pub key_manager: String,
    /// `Enabled`, `Disabled`, `PendingDeletion`, ...
    pub key_state: String,
    pub enabled: bool,
}

impl KeyFacts {
    /// Why this key may not hold the codes, or `None` when it may.
    pub fn refusal(&self) -> Option<String> {
        if self.key_manager != "CUSTOMER" {
            return Some(format!(
                "`{}` is an AWS-managed key (KeyManager {}): any principal of the account may decrypt with it through Parameter Store; use a customer-managed key whose policy admits only this service",
                self.key_id, self.key_manager
            ));
        }
        if !self.enabled || self.key_state != "Enabled" {
            return Some(format!(
                "`{}` is not enabled (KeyState {}): Parameter Store could neither store nor return a code",
                self.key_id, self.key_state
            ));
        }
        None
    }
}

#[derive(Clone)]
pub struct CodeKey {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl CodeKey {
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            client,
            key_id: key_id.into(),
        }
    }

    pub async fn describe(&self) -> Result<KeyFacts, VendError> {
        let out = self
            .client
            .describe_key()
            .key_id(&self.key_id)
            .send()
            .await
            .map_err(|e| classify("KMS.DescribeKey", e, Echo::Message))?;
        let metadata = out
            .key_metadata()
            .ok_or_else(|| VendError::Internal("KMS DescribeKey answered no KeyMetadata".into()))?;
        Ok(KeyFacts {
            key_id: self.key_id.clone(),
            arn: metadata.arn().map(str::to_owned),
            key_manager: metadata
                .key_manager()
                .map_or_else(|| "unknown".to_owned(), |m| m.as_str().to_owned()),
            key_state: metadata
                .key_state()
                .map_or_else(|| "unknown".to_owned(), |s| s.as_str().to_owned()),
            enabled: metadata.enabled(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(manager: &str, state: &str, enabled: bool) -> KeyFacts {
        KeyFacts {
            key_id: "alias/k".into(),
            arn: None,
            key_manager: manager.into(),
            key_state: state.into(),
            enabled,
        }
    }

    #[test]
    fn only_an_enabled_customer_managed_key_may_hold_the_codes() {
        assert_eq!(facts("CUSTOMER", "Enabled", true).refusal(), None);
        let aws = facts("AWS", "Enabled", true).refusal().unwrap();
        assert!(aws.contains("AWS-managed"), "{aws}");
        for (state, enabled) in [("Disabled", false), ("PendingDeletion", false), ("Enabled", false)] {
            let refused = facts("CUSTOMER", state, enabled).refusal().unwrap();
            assert!(refused.contains("not enabled"), "{refused}");
        }
    }
}
