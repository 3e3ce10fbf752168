//! KMS: the key that encrypts the codes (`VENDING_KMS_KEY_ID`), described once at
//! start and by `vending status`. Only a customer-managed, enabled key may hold them:
//! an AWS-managed key (`alias/aws/ssm`) lets any principal of the account decrypt
//! through Parameter Store, and every registered node may call `ssm:GetParameter`.
//!
//! The same key seals each new activation's code directly (`Encrypt`) for the pool
//! item, and opens it (`Decrypt`) once per process and activation, under an
//! encryption context that names the deployment, the pool and the activation
//! (`code_context`): the key policy admits the service's direct calls only with that
//! context, and a ciphertext opens only under the context it was sealed with.

use std::collections::HashMap;

use aws_sdk_kms::primitives::Blob;
use serde::Serialize;

use super::{classify, Echo};
use crate::error::VendError;
use crate::secret::{ActivationCode, SealedCode};

/// The encryption context's keys, spelled like the activations' tags.
pub const CONTEXT_DEPLOYMENT: &str = "activation-vending:deployment";
pub const CONTEXT_POOL: &str = "activation-vending:pool";
pub const CONTEXT_ACTIVATION: &str = "activation-vending:activation";

/// The encryption context a code is sealed and opened under: this deployment (its
/// table), the pool and the activation. A ciphertext moved to another pool's item, or
/// beside another activation, no longer opens (`InvalidCiphertextException`).
pub fn code_context(deployment: &str, pool: &str, activation_id: &str) -> HashMap<String, String> {
    HashMap::from([
        (CONTEXT_DEPLOYMENT.to_owned(), deployment.to_owned()),
        (CONTEXT_POOL.to_owned(), pool.to_owned()),
        (CONTEXT_ACTIVATION.to_owned(), activation_id.to_owned()),
    ])
}

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
    /// The deployment the sealed codes belong to (`VENDING_TABLE`), part of their context.
    deployment: String,
}

impl CodeKey {
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            client,
            key_id: key_id.into(),
            deployment: String::new(),
        }
    }

    /// The key as the deployment `table` seals and opens codes with it.
    pub fn for_deployment(self, table: impl Into<String>) -> Self {
        Self {
            deployment: table.into(),
            ..self
        }
    }

    /// `code` encrypted for the pool item of `pool` beside `activation_id`.
    pub async fn seal(&self, pool: &str, activation_id: &str, code: &ActivationCode) -> Result<SealedCode, VendError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(code.expose().as_bytes()))
            .set_encryption_context(Some(code_context(&self.deployment, pool, activation_id)))
            .send()
            .await
            // The request carried the code: nothing of AWS's message is repeated.
            .map_err(|e| classify("KMS.Encrypt", e, Echo::Nothing))?;
        match out.ciphertext_blob() {
            Some(blob) if !blob.as_ref().is_empty() => Ok(SealedCode::new(blob.as_ref())),
            _ => Err(VendError::Internal("KMS Encrypt answered no ciphertext".into())),
        }
    }

    /// The code `sealed` holds, if it was sealed for `activation_id` of `pool` in this
    /// deployment with this key.
    pub async fn open(
        &self,
        pool: &str,
        activation_id: &str,
        sealed: &SealedCode,
    ) -> Result<ActivationCode, VendError> {
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(sealed.bytes()))
            .set_encryption_context(Some(code_context(&self.deployment, pool, activation_id)))
            .send()
            .await
            // The answer carries the code: one that cannot be read must not be
            // repeated, so nothing of AWS's words is kept (the error code is).
            .map_err(|e| classify("KMS.Decrypt", e, Echo::Nothing))?;
        let plaintext = out
            .plaintext()
            .ok_or_else(|| VendError::Internal("KMS Decrypt answered no plaintext".into()))?;
        String::from_utf8(plaintext.as_ref().to_vec())
            .map(ActivationCode::new)
            .map_err(|_| VendError::Internal("KMS Decrypt answered a plaintext that is not UTF-8".into()))
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
    fn a_code_is_sealed_for_its_deployment_pool_and_activation() {
        let context = code_context("vending-table", "web", "act-1");
        assert_eq!(context.len(), 3);
        assert_eq!(context["activation-vending:deployment"], "vending-table");
        assert_eq!(context["activation-vending:pool"], "web");
        assert_eq!(context["activation-vending:activation"], "act-1");
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
