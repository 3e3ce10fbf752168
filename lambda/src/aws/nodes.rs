//! SSM managed nodes: the hybrid nodes registered with the pools' activations, for
//! `vending status`, the node-quota metric and the stale-node clean-up.

use aws_sdk_ssm::operation::deregister_managed_instance::DeregisterManagedInstanceError;
use aws_sdk_ssm::types::InstanceInformationStringFilter;

use super::{classify, Echo};
use crate::clock::EpochSecs;
use crate::error::VendError;
use crate::pool::settings::{DEPLOYMENT_TAG, POOL_TAG};

#[derive(Clone)]
pub struct ManagedNodes {
    client: aws_sdk_ssm::Client,
    /// This deployment's name: only nodes registered with its activations are its.
    deployment: String,
}

/// One managed node as the clean-up and status need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub computer_name: String,
    pub ping_status: String,
    pub last_ping: EpochSecs,
    pub registered: EpochSecs,
    /// The value of its pool tag (`None` for a node without one).
    pub pool: Option<String>,
}

impl ManagedNodes {
    pub fn new(client: aws_sdk_ssm::Client, deployment: impl Into<String>) -> Self {
        Self {
            client,
            deployment: deployment.into(),
        }
    }

    /// Every node matching `filter` (tag filters count MaxResults before filtering,
    /// so pages may be short: follow every token).
    async fn list(
        &self,
        filters: Vec<InstanceInformationStringFilter>,
        with_pool: Option<&str>,
    ) -> Result<Vec<Node>, VendError> {
        let mut nodes = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .describe_instance_information()
                .set_filters(Some(filters.clone()))
                .max_results(50)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| classify("SSM.DescribeInstanceInformation", e, Echo::Message))?;
            for info in out.instance_information_list() {
                let Some(id) = info.instance_id() else { continue };
                nodes.push(Node {
                    id: id.to_owned(),
                    computer_name: info.computer_name().unwrap_or_default().to_owned(),
                    ping_status: info.ping_status().map(|p| p.as_str().to_owned()).unwrap_or_default(),
                    last_ping: info.last_ping_date_time().map(|d| d.secs()).unwrap_or(0),
                    registered: info.registration_date().map(|d| d.secs()).unwrap_or(0),
                    pool: with_pool.map(str::to_owned),
                });
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(nodes);
            }
        }
    }

    /// The nodes registered through `pool`'s activations of this deployment (they
    /// carry both tags).
    pub async fn of_pool(&self, pool: &str) -> Result<Vec<Node>, VendError> {
        let filters = [(POOL_TAG, pool), (DEPLOYMENT_TAG, self.deployment.as_str())]
            .into_iter()
            .map(|(key, value)| {
                InstanceInformationStringFilter::builder()
                    .key(format!("tag:{key}"))
                    .values(value)
                    .build()
                    .map_err(|e| VendError::Internal(format!("node filter: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.list(filters, Some(pool)).await
    }

    /// Every hybrid (on-premises) node in the account and Region, ours or not: what
    /// counts against the standard tier's node quota.
    pub async fn hybrid_count(&self) -> Result<usize, VendError> {
        let filter = InstanceInformationStringFilter::builder()
            .key("ResourceType")
            .values("ManagedInstance")
            .build()
            .map_err(|e| VendError::Internal(format!("node filter: {e}")))?;
        Ok(self.list(vec![filter], None).await?.len())
    }

    /// Deregisters a node; one already gone counts as deregistered.
    pub async fn deregister(&self, id: &str) -> Result<(), VendError> {
        match self.client.deregister_managed_instance().instance_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(DeregisterManagedInstanceError::InvalidInstanceId(_))
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(classify("SSM.DeregisterManagedInstance", e, Echo::Message)),
        }
    }
}
