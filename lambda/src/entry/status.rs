//! `vending status`: per pool, the current activation, its slots, SSM's count and
//! the nodes confirmed through it, the lease, the last rotation and failure, and the nodes it registered by ping
//! status; account-wide, the hybrid nodes against the standard tier's quota.

use std::collections::BTreeMap;

use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use serde::Serialize;

use crate::aws::activations::ActivationService;
use crate::aws::keys::{CodeKey, KeyFacts};
use crate::aws::nodes::ManagedNodes;
use crate::aws::parameters::PoolConfigSource;
use crate::aws::pool_store::PoolStore;
use crate::clock::{epoch_now, EpochSecs};
use crate::config::Config;
use crate::error::VendError;
use crate::pool::directory::{DefaultPool, Snapshot};
use crate::pool::settings::PoolSettings;

#[derive(Debug, Serialize)]
pub struct Status {
    /// The codes' KMS key and, when it may not hold them, why (`problem`).
    pub kms_key: KeyStatus,
    pub pools: Vec<PoolStatus>,
    /// Where the `default` pool comes from, or that there is none.
    pub default_pool: DefaultPool,
    pub account: AccountNodes,
    /// This machine's clock less AWS's, in seconds, from the `Date` of AWS's
    /// answers to these reads (`clock.rs`); `null` if none was dated.
    pub clock_skew_s: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct PoolStatus {
    pub pool: String,
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub enabled: bool,
    pub activation_id: Option<String>,
    pub expires_at: Option<String>,
    pub slots_handed_out: Option<u32>,
    pub limit: Option<u32>,
    /// SSM's own `RegistrationsCount` for the current activation.
    pub ssm_registrations: Option<u32>,
    /// Nodes confirmed (`POST /registrations`) through the current activation that
    /// SSM still knows (they carry the machine-id tag the confirmation put on them).
    pub confirmed_nodes: Option<usize>,
    pub lease_holder: Option<String>,
    pub lease_until: Option<String>,
    pub last_rotation_at: Option<String>,
    pub last_rotation_reason: Option<String>,
    pub last_failure_at: Option<String>,
    pub last_failure: Option<String>,
    /// A rotation failed after the current activation was committed.
    pub rotation_failing: bool,
    /// Nodes registered through the pool's activations, by `PingStatus`.
    pub nodes: BTreeMap<String, usize>,
    /// Registrations the sweep found unused on the activations it retired, in all.
    pub unused_registrations: u64,
}

#[derive(Debug, Serialize)]
pub struct KeyStatus {
    #[serde(flatten)]
    pub facts: KeyFacts,
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AccountNodes {
    pub hybrid_nodes: usize,
    pub quota: u32,
    pub percent_of_quota: f64,
    /// At or past 90% of the quota.
    pub warning: bool,
}

fn when(secs: EpochSecs) -> String {
    DateTime::from_secs(secs).fmt(Format::DateTime).unwrap_or_default()
}

pub struct StatusReader {
    pub store: PoolStore,
    pub activations: ActivationService,
    pub nodes: ManagedNodes,
    pub pool_configs: PoolConfigSource,
    pub key: CodeKey,
}

impl StatusReader {
    pub async fn read(&self, config: &Config, only: Option<&str>) -> Result<Status, VendError> {
        let configs = self.pool_configs.read_all().await?;
        let snapshot = Snapshot::parse(&configs, epoch_now(), &PoolSettings::from_environment(config));
        let mut pools = Vec::new();
        for (name, verdict) in snapshot.all() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let mut status = PoolStatus {
                pool: name.to_owned(),
                valid: verdict.is_ok(),
                problem: verdict.as_ref().err().map(ToString::to_string),
                enabled: verdict.as_ref().is_ok_and(|p| p.settings.enabled),
                ..PoolStatus::default()
            };
            self.fill(name, &mut status).await?;
            pools.push(status);
        }
        if let Some(only) = only {
            if pools.is_empty() {
                return Err(VendError::PoolNotFound(only.to_owned()));
            }
        }
        let facts = self.key.describe().await?;
        let kms_key = KeyStatus {
            problem: facts.refusal(),
            facts,
        };
        let hybrid_nodes = self.nodes.hybrid_count().await?;
        let percent_of_quota = 100.0 * hybrid_nodes as f64 / f64::from(config.node_quota);
        Ok(Status {
            kms_key,
            pools,
            default_pool: snapshot.default_pool(),
            account: AccountNodes {
                hybrid_nodes,
                quota: config.node_quota,
                percent_of_quota: (percent_of_quota * 10.0).round() / 10.0,
                warning: percent_of_quota >= 90.0,
            },
            clock_skew_s: crate::clock::skew_s().map(|s| (s * 10.0).round() / 10.0),
        })
    }

    async fn fill(&self, pool: &str, status: &mut PoolStatus) -> Result<(), VendError> {
        let state = self.store.pool(pool).await?;
        status.unused_registrations = state.unused_registrations;
        if let Some(a) = &state.activation {
            status.activation_id = Some(a.id.clone());
            status.expires_at = Some(when(a.expires_at));
            status.slots_handed_out = Some(a.reserved.min(a.limit));
            status.limit = Some(a.limit);
            status.ssm_registrations = self.activations.describe(&a.id).await?.map(|info| info.registrations);
            let confirmed = self.nodes.confirmed_of_pool(pool).await?;
            status.confirmed_nodes = Some(confirmed.iter().filter(|n| n.activation_id == a.id).count());
            if a.committed_at > 0 {
                status.last_rotation_at = Some(when(a.committed_at));
            }
        }
        status.last_rotation_reason = state.last_rotation_reason.clone();
        if let Some(lease) = &state.lease {
            if lease.until >= epoch_now() {
                status.lease_holder = Some(lease.owner.clone());
                status.lease_until = Some(when(lease.until));
            }
        }
        if let Some(failure) = &state.last_failure {
            status.last_failure_at = Some(when(failure.at));
            status.last_failure = Some(failure.error.clone());
            let committed_at = state.activation.as_ref().map_or(0, |a| a.committed_at);
            status.rotation_failing = failure.at >= committed_at;
        }
        for node in self.nodes.of_pool(pool).await? {
            *status.nodes.entry(node.ping_status).or_default() += 1;
        }
        Ok(())
    }
}

impl Status {
    /// Exit 1 when the key may not hold the codes, or a pool is misconfigured or its
    /// rotations have been failing.
    pub fn healthy(&self) -> bool {
        self.kms_key.problem.is_none() && self.pools.iter().all(|p| p.valid && !p.rotation_failing)
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<20} {:<38} {:<21} {:>11} {:>5} {:>9} {:<24} {:<22} {}\n",
            "POOL", "ACTIVATION", "EXPIRES", "SLOTS", "SSM", "CONFIRMED", "LAST ROTATION", "NODES", "PROBLEM"
        );
        for p in &self.pools {
            let slots = match (p.slots_handed_out, p.limit) {
                (Some(used), Some(limit)) => format!("{used}/{limit}"),
                _ => "-".into(),
            };
            let nodes = if p.nodes.is_empty() {
                "0".to_owned()
            } else {
                p.nodes
                    .iter()
                    .map(|(s, n)| format!("{s}:{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let problem = match (&p.problem, p.rotation_failing, &p.last_failure) {
                (Some(problem), _, _) => format!("misconfigured: {problem}"),
                (None, true, Some(error)) => format!("rotation failing: {error}"),
                _ if !p.enabled => "disabled".into(),
                _ => String::new(),
            };
            out.push_str(&format!(
                "{:<20} {:<38} {:<21} {:>11} {:>5} {:>9} {:<24} {:<22} {}\n",
                p.pool,
                p.activation_id.as_deref().unwrap_or("-"),
                p.expires_at.as_deref().unwrap_or("-"),
                slots,
                p.ssm_registrations.map_or("-".into(), |n| n.to_string()),
                p.confirmed_nodes.map_or("-".into(), |n| n.to_string()),
                p.last_rotation_reason.as_deref().unwrap_or("-"),
                nodes,
                problem
            ));
        }
        out.push_str(&format!("\n{}\n", self.default_pool.explain()));
        let key = &self.kms_key;
        out.push_str(&format!(
            "kms key: {} ({}, {}){}\n",
            key.facts.arn.as_deref().unwrap_or(&key.facts.key_id),
            key.facts.key_manager,
            key.facts.key_state,
            key.problem
                .as_deref()
                .map_or_else(String::new, |p| format!(" - REFUSED: {p}"))
        ));
        let a = &self.account;
        out.push_str(&format!(
            "account: {} hybrid nodes of a quota of {} ({}%){}\n",
            a.hybrid_nodes,
            a.quota,
            a.percent_of_quota,
            if a.warning {
                " - WARNING: at 90% or more; past the quota, registration needs the advanced tier"
            } else {
                ""
            }
        ));
        if let Some(skew) = self.clock_skew_s {
            out.push_str(&format!("clock: {skew} s off AWS's\n"));
        }
        let unused: u64 = self.pools.iter().map(|p| p.unused_registrations).sum();
        if unused > 0 {
            out.push_str(&format!(
                "unused registrations on retired activations: {unused} (per pool: --json)\n"
            ));
        }
        out
    }
}
