//! `vending pools`: every pool as the service would see it, read with the caller's
//! credentials, for an operator checking a config before servers ask.

use serde::Serialize;

use crate::aws::parameters::PoolConfigSource;
use crate::clock::epoch_now;
use crate::config::Config;
use crate::error::VendError;
use crate::pool::directory::{DefaultPool, Snapshot};
use crate::pool::settings::PoolSettings;

#[derive(Debug, Serialize)]
pub struct PoolListing {
    pub pools: Vec<PoolEntry>,
    /// Where the `default` pool comes from, or that there is none.
    pub default_pool: DefaultPool,
}

#[derive(Debug, Serialize)]
pub struct PoolEntry {
    pub pool: String,
    pub valid: bool,
    /// Where its settings come from: its `config` parameter, or the environment.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<PoolSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

pub async fn read(source: &PoolConfigSource, config: &Config) -> Result<PoolListing, VendError> {
    let configs = source.read_all().await?;
    let snapshot = Snapshot::parse(&configs, epoch_now(), &PoolSettings::from_environment(config));
    let pools = snapshot
        .all()
        .into_iter()
        .map(|(name, verdict)| {
            let origin = if configs.contains_key(name) {
                format!("{}{name}/config", source.path())
            } else {
                "environment".to_owned()
            };
            let margin_problem = verdict.as_ref().ok().and_then(|pool| {
                crate::config::margin_outlasts_deadline(pool.settings.expiry_margin, config.deadline)
                    .err()
                    .map(|problem| format!("expiry_margin: {problem}"))
            });
            match verdict {
                Ok(_) if margin_problem.is_some() => PoolEntry {
                    pool: name.to_owned(),
                    valid: false,
                    source: origin,
                    settings: None,
                    fingerprint: None,
                    problem: margin_problem,
                },
                Ok(pool) => PoolEntry {
                    pool: name.to_owned(),
                    valid: true,
                    source: origin,
                    settings: Some((*pool.settings).clone()),
                    fingerprint: Some(pool.fingerprint.clone()),
                    problem: None,
                },
                Err(problem) => PoolEntry {
                    pool: name.to_owned(),
                    valid: false,
                    source: origin,
                    settings: None,
                    fingerprint: None,
                    problem: Some(problem.to_string()),
                },
            }
        })
        .collect();
    Ok(PoolListing {
        pools,
        default_pool: snapshot.default_pool(),
    })
}

impl PoolListing {
    pub fn all_valid(&self) -> bool {
        self.pools.iter().all(|p| p.valid)
    }

    pub fn json(&self) -> Result<String, serde_json::Error> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<24} {:<8} {:<28} {:>6} {:>6} {:>6} {:<5} {}\n",
            "POOL", "VALID", "ROLE", "LIMIT", "TTL", "MARGIN", "TAGS", "SOURCES / PROBLEM"
        );
        for p in &self.pools {
            let line = match (&p.settings, &p.problem) {
                (Some(s), _) => format!(
                    "{:<24} {:<8} {:<28} {:>6} {:>6} {:>6} {:<5} {}\n",
                    p.pool,
                    if s.enabled { "yes" } else { "disabled" },
                    s.iam_role,
                    s.registration_limit,
                    format!("{}s", s.activation_ttl.as_secs()),
                    format!("{}s", s.expiry_margin.as_secs()),
                    s.tags.len(),
                    if s.allowed_cidrs.is_empty() {
                        "any".to_owned()
                    } else {
                        s.allowed_cidrs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    }
                ),
                (None, problem) => format!(
                    "{:<24} {:<8} {}\n",
                    p.pool,
                    "NO",
                    problem.as_deref().unwrap_or("invalid")
                ),
            };
            out.push_str(&line);
        }
        out.push_str(&format!("\n{}\n", self.default_pool.explain()));
        out
    }
}
