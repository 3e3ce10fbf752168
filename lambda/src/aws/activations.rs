//! SSM hybrid activations: create one per rotation, check one still works, delete orphans.

use aws_sdk_ssm::operation::delete_activation::DeleteActivationError;
use aws_sdk_ssm::types::{DescribeActivationsFilter, DescribeActivationsFilterKeys, Tag};
use aws_smithy_types::DateTime;

use super::{classify, Echo};
use crate::error::VendError;
use crate::pool::{ActivationInfo, EpochSecs};
use crate::secret::ActivationCode;

/// Tag key that marks activations this service made, with the pool as value.
pub const POOL_TAG: &str = "activation-vending:pool";

/// The name SSM gives servers registered with a pool's activations; also how the
/// sweep finds the pool's activations without listing the whole account.
pub fn default_instance_name(pool: &str) -> String {
    format!("vending-{pool}")
}

#[derive(Clone)]
pub struct ActivationService {
    client: aws_sdk_ssm::Client,
    instance_role: String,
}

#[derive(Debug)]
pub struct NewActivation {
    pub id: String,
    pub code: ActivationCode,
}

impl ActivationService {
    pub fn new(client: aws_sdk_ssm::Client, instance_role: impl Into<String>) -> Self {
        Self {
            client,
            instance_role: instance_role.into(),
        }
    }

    pub async fn create(&self, pool: &str, limit: u32, expires_at: EpochSecs) -> Result<NewActivation, VendError> {
        let tag = Tag::builder()
            .key(POOL_TAG)
            .value(pool)
            .build()
            .map_err(|e| VendError::Internal(format!("activation tag: {e}")))?;
        let out = self
            .client
            .create_activation()
            .iam_role(&self.instance_role)
            .registration_limit(limit as i32)
            .expiration_date(DateTime::from_secs(expires_at))
            .default_instance_name(default_instance_name(pool))
            .description(format!("Vended by activation-vending for pool {pool}"))
            .tags(tag)
            .send()
            .await
            .map_err(|e| classify("SSM.CreateActivation", e, Echo::Message))?;
        match (out.activation_id, out.activation_code) {
            (Some(id), Some(code)) => Ok(NewActivation {
                id,
                code: ActivationCode::new(code),
            }),
            _ => Err(VendError::Internal(
                "CreateActivation answered without an ID or code".into(),
            )),
        }
    }

    /// False when SSM no longer knows the activation, it expired, or it is full
    /// (someone registered with its code outside this service).
    pub async fn still_works(&self, activation_id: &str) -> Result<bool, VendError> {
        let filter = DescribeActivationsFilter::builder()
            .filter_key(DescribeActivationsFilterKeys::ActivationIds)
            .filter_values(activation_id)
            .build();
        let out = self
            .client
            .describe_activations()
            .filters(filter)
            .send()
            .await
            .map_err(|e| classify("SSM.DescribeActivations", e, Echo::Message))?;
        Ok(out.activation_list().iter().any(|a| {
            a.activation_id() == Some(activation_id)
                && !a.expired()
                && a.registrations_count().unwrap_or(0) < a.registration_limit().unwrap_or(i32::MAX)
        }))
    }

    /// One page (up to 50) of the activations this service made for `pool` (matched
    /// by its default instance name and its pool tag), and the token of the next page.
    pub async fn list_page(
        &self,
        pool: &str,
        token: Option<String>,
    ) -> Result<(Vec<ActivationInfo>, Option<String>), VendError> {
        let filter = DescribeActivationsFilter::builder()
            .filter_key(DescribeActivationsFilterKeys::DefaultInstanceName)
            .filter_values(default_instance_name(pool))
            .build();
        let out = self
            .client
            .describe_activations()
            .filters(filter)
            .max_results(50)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| classify("SSM.DescribeActivations", e, Echo::Message))?;
        let found = out
            .activation_list()
            .iter()
            .filter(|a| a.tags().iter().any(|t| t.key() == POOL_TAG && t.value() == pool))
            .filter_map(|a| {
                Some(ActivationInfo {
                    id: a.activation_id()?.to_owned(),
                    expired: a.expired(),
                    registrations: a.registrations_count().unwrap_or(0).max(0) as u32,
                    limit: a.registration_limit().unwrap_or(0).max(0) as u32,
                    created_at: a.created_date().map(|d| d.secs()).unwrap_or(0),
                })
            })
            .collect();
        Ok((found, out.next_token().map(str::to_owned)))
    }

    /// Deletes an activation; one that is already gone counts as deleted.
    pub async fn delete(&self, activation_id: &str) -> Result<(), VendError> {
        match self
            .client
            .delete_activation()
            .activation_id(activation_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(DeleteActivationError::InvalidActivation(_))) => Ok(()),
            Err(e) => Err(classify("SSM.DeleteActivation", e, Echo::Message)),
        }
    }
}
