//! SSM managed nodes: the hybrid nodes registered with the pools' activations, for
//! `vending status`, the node-quota metric, the stale-node clean-up and the
//! confirmation of a registration (one node by ID, its tags, a machine's nodes).

use aws_sdk_ssm::operation::add_tags_to_resource::AddTagsToResourceError;
use aws_sdk_ssm::operation::deregister_managed_instance::DeregisterManagedInstanceError;
use aws_sdk_ssm::operation::describe_instance_information::DescribeInstanceInformationError;
use aws_sdk_ssm::types::{InstanceInformation, InstanceInformationStringFilter, ResourceTypeForTagging, Tag};

use super::{classify, Echo};
use crate::clock::EpochSecs;
use crate::error::VendError;
use crate::pool::settings::{DEPLOYMENT_TAG, MACHINE_TAG, POOL_TAG};

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
    /// The activation it registered with ("" when SSM does not say).
    pub activation_id: String,
}

fn node(info: &InstanceInformation, pool: Option<&str>) -> Option<Node> {
    Some(Node {
        id: info.instance_id()?.to_owned(),
        computer_name: info.computer_name().unwrap_or_default().to_owned(),
        ping_status: info.ping_status().map(|p| p.as_str().to_owned()).unwrap_or_default(),
        last_ping: info.last_ping_date_time().map(|d| d.secs()).unwrap_or(0),
        registered: info.registration_date().map(|d| d.secs()).unwrap_or(0),
        pool: pool.map(str::to_owned),
        activation_id: info.activation_id().unwrap_or_default().to_owned(),
    })
}

fn filter(key: impl Into<String>, value: &str) -> Result<InstanceInformationStringFilter, VendError> {
    InstanceInformationStringFilter::builder()
        .key(key)
        .values(value)
        .build()
        .map_err(|e| VendError::Internal(format!("node filter: {e}")))
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
            nodes.extend(
                out.instance_information_list()
                    .iter()
                    .filter_map(|info| node(info, with_pool)),
            );
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(nodes);
            }
        }
    }

    /// The nodes registered through `pool`'s activations of this deployment (they
    /// carry both tags).
    pub async fn of_pool(&self, pool: &str) -> Result<Vec<Node>, VendError> {
        let filters = vec![
            filter(format!("tag:{POOL_TAG}"), pool)?,
            filter(format!("tag:{DEPLOYMENT_TAG}"), &self.deployment)?,
        ];
        self.list(filters, Some(pool)).await
    }

    /// The pool's nodes of this deployment that a confirmation tagged (they carry the
    /// machine-id tag).
    pub async fn confirmed_of_pool(&self, pool: &str) -> Result<Vec<Node>, VendError> {
        let filters = vec![
            filter(format!("tag:{POOL_TAG}"), pool)?,
            filter(format!("tag:{DEPLOYMENT_TAG}"), &self.deployment)?,
            filter("tag-key", MACHINE_TAG)?,
        ];
        self.list(filters, Some(pool)).await
    }

    /// One node by its ID (`InstanceIds` filter); `None` when SSM knows no such node
    /// (its `InvalidInstanceId`).
    pub async fn node(&self, id: &str) -> Result<Option<Node>, VendError> {
        let answer = self
            .client
            .describe_instance_information()
            .filters(filter("InstanceIds", id)?)
            .send()
            .await;
        match answer {
            Ok(out) => Ok(out
                .instance_information_list()
                .iter()
                .filter_map(|info| node(info, None))
                .find(|n| n.id == id)),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(DescribeInstanceInformationError::InvalidInstanceId(_))
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify("SSM.DescribeInstanceInformation", e, Echo::Message)),
        }
    }

    /// This deployment's nodes that carry the machine-id tag `machine_id` (a
    /// confirmation put it there): the machine's registrations, old and new.
    pub async fn of_machine(&self, machine_id: &str) -> Result<Vec<Node>, VendError> {
        let filters = vec![
            filter(format!("tag:{MACHINE_TAG}"), machine_id)?,
            filter(format!("tag:{DEPLOYMENT_TAG}"), &self.deployment)?,
        ];
        self.list(filters, None).await
    }

    /// Puts `tags` on a managed node (keys already there get the new value), beside
    /// the tags it has; `NodeNotFound` when the node is gone.
    pub async fn tag(&self, id: &str, tags: &[(&str, &str)]) -> Result<(), VendError> {
        let tags = tags
            .iter()
            .map(|(key, value)| {
                Tag::builder()
                    .key(*key)
                    .value(*value)
                    .build()
                    .map_err(|e| VendError::Internal(format!("node tag: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        match self
            .client
            .add_tags_to_resource()
            .resource_type(ResourceTypeForTagging::ManagedInstance)
            .resource_id(id)
            .set_tags(Some(tags))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(AddTagsToResourceError::InvalidResourceId(_))) => {
                Err(VendError::NodeNotFound(id.to_owned()))
            }
            Err(e) => Err(classify("SSM.AddTagsToResource", e, Echo::Message)),
        }
    }

    /// Every hybrid (on-premises) node in the account and Region, ours or not: what
    /// counts against the standard tier's node quota.
    pub async fn hybrid_count(&self) -> Result<usize, VendError> {
        Ok(self
            .list(vec![filter("ResourceType", "ManagedInstance")?], None)
            .await?
            .len())
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
