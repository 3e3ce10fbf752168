//! SSM hybrid activations: create one per rotation, check one still works, delete orphans.

use aws_sdk_ssm::operation::delete_activation::DeleteActivationError;
use aws_sdk_ssm::types::{DescribeActivationsFilter, DescribeActivationsFilterKeys, Tag};
use aws_smithy_types::DateTime;

use super::{classify, Echo};
use crate::clock::EpochSecs;
use crate::error::VendError;
use crate::pool::settings::{PoolSettings, DEPLOYMENT_TAG, POOL_TAG};
use crate::pool::state::{still_honoured, ActivationInfo};
use crate::secret::ActivationCode;

fn info(a: &aws_sdk_ssm::types::Activation) -> ActivationInfo {
    ActivationInfo {
        id: a.activation_id().unwrap_or_default().to_owned(),
        expired: a.expired(),
        registrations: a.registrations_count().unwrap_or(0).max(0) as u32,
        limit: a.registration_limit().unwrap_or(0).max(0) as u32,
        created_at: a.created_date().map(|d| d.secs()).unwrap_or(0),
    }
}

#[derive(Clone)]
pub struct ActivationService {
    client: aws_sdk_ssm::Client,
    /// This deployment's name (its table): the value of every activation's
    /// deployment tag, and the only activations the sweep looks at.
    deployment: String,
}

#[derive(Debug)]
pub struct NewActivation {
    pub id: String,
    pub code: ActivationCode,
}

impl ActivationService {
    pub fn new(client: aws_sdk_ssm::Client, deployment: impl Into<String>) -> Self {
        Self {
            client,
            deployment: deployment.into(),
        }
    }

    /// A new activation with the pool's role, limit, name and tags (SSM copies the
    /// tags onto every node registered with it), plus the pool tag.
    pub async fn create(
        &self,
        pool: &str,
        settings: &PoolSettings,
        expires_at: EpochSecs,
    ) -> Result<NewActivation, VendError> {
        let tags = [(POOL_TAG, pool), (DEPLOYMENT_TAG, self.deployment.as_str())]
            .into_iter()
            .chain(settings.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map(|(key, value)| Tag::builder().key(key).value(value).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VendError::Internal(format!("activation tag: {e}")))?;
        let description = settings
            .description
            .clone()
            .unwrap_or_else(|| format!("Vended by activation-vending for pool {pool}"));
        let out = self
            .client
            .create_activation()
            .iam_role(&settings.iam_role)
            .registration_limit(settings.registration_limit as i32)
            .expiration_date(DateTime::from_secs(expires_at))
            .default_instance_name(&settings.default_instance_name)
            .description(description)
            .set_tags(Some(tags))
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
        Ok(still_honoured(self.describe(activation_id).await?.as_ref()))
    }

    /// What SSM says about one activation; `None` when it no longer knows it.
    pub async fn describe(&self, activation_id: &str) -> Result<Option<ActivationInfo>, VendError> {
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
        Ok(out
            .activation_list()
            .iter()
            .find(|a| a.activation_id() == Some(activation_id))
            .map(info))
    }

    /// One page (up to 50) of the account's activations that this service made
    /// (they carry the pool tag), each with its pool, and the next page's token.
    pub async fn list_page(
        &self,
        token: Option<String>,
    ) -> Result<(Vec<(String, ActivationInfo)>, Option<String>), VendError> {
        let out = self
            .client
            .describe_activations()
            .max_results(50)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| classify("SSM.DescribeActivations", e, Echo::Message))?;
        let found = out
            .activation_list()
            .iter()
            .filter(|a| {
                a.tags()
                    .iter()
                    .any(|t| t.key() == DEPLOYMENT_TAG && t.value() == self.deployment)
            })
            .filter_map(|a| {
                let pool = a.tags().iter().find(|t| t.key() == POOL_TAG)?.value().to_owned();
                a.activation_id()?;
                Some((pool, info(a)))
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
