//! The pools a process vends from: their configs read from Parameter Store, shared
//! through one DynamoDB item so that a storm of cold processes costs Parameter
//! Store (40 reads a second per account and Region by default) one read per
//! `VENDING_POOL_REFRESH`, not one per process.
//!
//! A process uses its copy until the read it came from is `VENDING_POOL_REFRESH`
//! old. Then it takes the shared copy if that is fresher; otherwise one process
//! claims the next read (a conditional write), reads, and shares it, while the
//! others keep using the copy they have. A pool whose config is bad answers
//! `PoolMisconfigured`; the other pools keep working.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::aws::parameters::PoolConfigSource;
use crate::aws::pool_store::PoolStore;
use crate::clock::{epoch_now, secs, EpochSecs};
use crate::config::Config;
use crate::error::VendError;
use crate::pool::settings::{ConfigProblem, PoolSettings};
use crate::pool::state::DEFAULT_POOL;

/// How long a claim on the next read of Parameter Store holds.
const CLAIM_SECS: i64 = 10;

/// How long a process with a stale copy waits before asking again while another
/// process reads Parameter Store (or after a failed read).
const RECHECK_WHILE_OTHERS_READ: Duration = Duration::from_secs(1);

/// At most one read of the configs per process this often for names it does not know.
const MISS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// A pool as the directory knows it.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub settings: Arc<PoolSettings>,
    pub fingerprint: String,
    /// When the config it came from was read from Parameter Store.
    pub config_at: EpochSecs,
}

/// One read of every pool's config, parsed.
#[derive(Debug)]
pub struct Snapshot {
    pub read_at: EpochSecs,
    pools: HashMap<String, Result<Pool, ConfigProblem>>,
    default_pool: DefaultPool,
}

/// Where the `default` pool (what a request without `pool=` asks for) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultPool {
    /// No pool has a config: `default` is the environment's settings.
    Environment,
    /// `default` has a config of its own.
    Config,
    /// Other pools have configs and `default` has none: it does not exist.
    None,
}

impl DefaultPool {
    /// The sentence the start-up log, `vending pools` and `vending status` print.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Environment => {
                "the default pool comes from the environment (VENDING_INSTANCE_ROLE, VENDING_DEFAULT_ALLOWED_CIDRS, ...): no pool has a config"
            }
            Self::Config => "the default pool comes from its own config parameter",
            Self::None => {
                "there is NO default pool: other pools have configs and `default` has none, so a request without pool= answers 404 PoolNotFound"
            }
        }
    }
}

impl Snapshot {
    /// Parses `configs` (pool name → JSON). `default` is the `environment` only
    /// while no pool has a config (`DefaultPool`).
    pub fn parse(configs: &BTreeMap<String, String>, read_at: EpochSecs, environment: &PoolSettings) -> Self {
        let mut pools: HashMap<String, Result<Pool, ConfigProblem>> = configs
            .iter()
            .filter(|(name, _)| crate::pool::state::valid_pool_name(name))
            .map(|(name, text)| {
                let pool = PoolSettings::from_json(name, text).map(|settings| Pool::new(name, settings, read_at));
                (name.clone(), pool)
            })
            .collect();
        if pools.is_empty() {
            pools.insert(
                DEFAULT_POOL.to_owned(),
                Ok(Pool::new(DEFAULT_POOL, environment.clone(), read_at)),
            );
            return Self {
                read_at,
                pools,
                default_pool: DefaultPool::Environment,
            };
        }
        let default_pool = if pools.contains_key(DEFAULT_POOL) {
            DefaultPool::Config
        } else {
            DefaultPool::None
        };
        Self {
            read_at,
            pools,
            default_pool,
        }
    }

    /// Where `default` comes from in this read.
    pub fn default_pool(&self) -> DefaultPool {
        self.default_pool
    }

    /// The pool a request may vend from, or why not.
    pub fn lookup(&self, name: &str) -> Result<Pool, VendError> {
        match self.pools.get(name) {
            None => Err(VendError::PoolNotFound(name.to_owned())),
            Some(Err(problem)) => Err(VendError::PoolMisconfigured {
                pool: name.to_owned(),
                problem: problem.to_string(),
            }),
            Some(Ok(pool)) if !pool.settings.enabled => Err(VendError::PoolDisabled(name.to_owned())),
            Some(Ok(pool)) => Ok(pool.clone()),
        }
    }

    /// Every pool with its verdict, sorted by name.
    pub fn all(&self) -> Vec<(&str, &Result<Pool, ConfigProblem>)> {
        let mut all: Vec<_> = self.pools.iter().map(|(name, pool)| (name.as_str(), pool)).collect();
        all.sort_by_key(|(name, _)| *name);
        all
    }
}

impl Pool {
    /// What an activation of this pool must have been made with.
    pub fn wanted(&self) -> crate::pool::state::Wanted<'_> {
        crate::pool::state::Wanted {
            fingerprint: &self.fingerprint,
            config_at: self.config_at,
        }
    }

    fn new(name: &str, settings: PoolSettings, config_at: EpochSecs) -> Self {
        Self {
            name: name.to_owned(),
            fingerprint: settings.fingerprint(),
            settings: Arc::new(settings),
            config_at,
        }
    }
}

pub struct PoolDirectory {
    store: PoolStore,
    source: PoolConfigSource,
    environment: PoolSettings,
    refresh_secs: i64,
    current: tokio::sync::Mutex<Current>,
    /// `VENDING_DEADLINE`, which every pool's expiry margin must outlast.
    deadline: Duration,
    /// When a pool-name miss last read the configs.
    last_miss_refresh: std::sync::Mutex<Option<Instant>>,
}

/// This process's copy, and when a stale copy may next ask for a fresher one.
#[derive(Default)]
struct Current {
    snapshot: Option<Arc<Snapshot>>,
    recheck_at: Option<Instant>,
}

impl PoolDirectory {
    pub fn new(store: PoolStore, source: PoolConfigSource, config: &Config) -> Self {
        Self {
            store,
            source,
            environment: PoolSettings::from_environment(config),
            refresh_secs: secs(config.pool_refresh).max(1),
            current: tokio::sync::Mutex::new(Current::default()),
            last_miss_refresh: std::sync::Mutex::new(None),
            deadline: config.deadline,
        }
    }

    /// The pool named `name`. A name this process's copy does not know triggers
    /// one read of the configs first (at most one such read every
    /// `MISS_REFRESH_INTERVAL` per process), so that a pool an operator just added
    /// is found at once rather than after `VENDING_POOL_REFRESH`.
    pub async fn lookup(&self, name: &str) -> Result<Pool, VendError> {
        let found = match self.snapshot().await?.lookup(name) {
            Err(VendError::PoolNotFound(_)) if self.may_refresh_on_miss() => {
                tracing::info!(
                    pool = name,
                    "no such pool in the configs read before; reading them again"
                );
                self.refresh_on_miss().await?.lookup(name)
            }
            other => other,
        }?;
        crate::config::margin_outlasts_deadline(found.settings.expiry_margin, self.deadline).map_err(|problem| {
            VendError::PoolMisconfigured {
                pool: name.to_owned(),
                problem: format!("expiry_margin: {problem}"),
            }
        })?;
        Ok(found)
    }

    /// Whether a miss may read the configs now; if so, the next may not for a while.
    fn may_refresh_on_miss(&self) -> bool {
        let mut last = self.last_miss_refresh.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < MISS_REFRESH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Reads Parameter Store now (the shared copy may be as old as
    /// `VENDING_POOL_REFRESH`), shares the read and makes it this process's copy.
    async fn refresh_on_miss(&self) -> Result<Arc<Snapshot>, VendError> {
        let mut current = self.current.lock().await;
        let now = epoch_now();
        let configs = self.source.read_all().await?;
        if let Err(e) = self.store.save_directory_snapshot(&configs, now).await {
            tracing::debug!(error = %e, "could not share the pool configs read on a miss");
        }
        let snapshot = Arc::new(Snapshot::parse(&configs, now, &self.environment));
        *current = Current {
            snapshot: Some(snapshot.clone()),
            recheck_at: None,
        };
        Ok(snapshot)
    }

    /// Drops this process's copy if it is older than `read_at` (another process
    /// made an activation from a newer read of the configs).
    pub async fn outdated_by(&self, read_at: EpochSecs) {
        let mut current = self.current.lock().await;
        if current.snapshot.as_ref().is_some_and(|s| s.read_at < read_at) {
            *current = Current::default();
        }
    }

    /// The configs to use now, refreshed when they are `VENDING_POOL_REFRESH` old.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, VendError> {
        let now = epoch_now();
        // One refresh per process at a time; the others wait for it.
        let mut current = self.current.lock().await;
        if let Some(snapshot) = current.snapshot.as_ref() {
            let fresh = now < snapshot.read_at + self.refresh_secs;
            if fresh || current.recheck_at.is_some_and(|t| Instant::now() < t) {
                return Ok(snapshot.clone());
            }
        }
        match self.refresh(now, current.snapshot.as_deref()).await {
            Ok(Some(snapshot)) => {
                let before = current.snapshot.as_ref().map(|s| s.default_pool());
                if before != Some(snapshot.default_pool()) {
                    log_default_pool(snapshot.default_pool());
                }
                let snapshot = Arc::new(snapshot);
                *current = Current {
                    snapshot: Some(snapshot.clone()),
                    recheck_at: None,
                };
                Ok(snapshot)
            }
            // Someone else is reading Parameter Store: keep what we have meanwhile, and
            // do not ask again on every request while they read.
            Ok(None) => {
                current.recheck_at = Some(Instant::now() + RECHECK_WHILE_OTHERS_READ);
                current.snapshot.clone().ok_or(VendError::NoActivationYet)
            }
            Err(e) => match current.snapshot.clone() {
                Some(stale) => {
                    current.recheck_at = Some(Instant::now() + RECHECK_WHILE_OTHERS_READ);
                    tracing::warn!(error = %e, read_at = stale.read_at, "could not refresh the pools; using the configs read before");
                    Ok(stale)
                }
                None => Err(e),
            },
        }
    }

    /// A fresher snapshot, or `None` when another process is reading Parameter Store
    /// and this one has a copy to go on with.
    async fn refresh(&self, now: EpochSecs, have: Option<&Snapshot>) -> Result<Option<Snapshot>, VendError> {
        let stale_before = now - self.refresh_secs;
        let shared = self.store.directory_snapshot().await?;
        if let Some(shared) = &shared {
            if shared.read_at > stale_before {
                return Ok(Some(Snapshot::parse(
                    &shared.configs,
                    shared.read_at,
                    &self.environment,
                )));
            }
        }
        if self
            .store
            .claim_directory_refresh(now, stale_before, now + CLAIM_SECS)
            .await?
        {
            let configs = self.source.read_all().await?;
            self.store.save_directory_snapshot(&configs, now).await?;
            tracing::info!(pools = configs.len(), "read the pool configs from Parameter Store");
            return Ok(Some(Snapshot::parse(&configs, now, &self.environment)));
        }
        match (have, shared) {
            (Some(_), _) => Ok(None),
            // A cold process: the shared copy, stale as it is, beats nothing; with no
            // copy anywhere, wait for the claimant's read briefly, then read ourselves.
            (None, Some(shared)) => Ok(Some(Snapshot::parse(
                &shared.configs,
                shared.read_at,
                &self.environment,
            ))),
            (None, None) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(shared) = self.store.directory_snapshot().await? {
                    return Ok(Some(Snapshot::parse(
                        &shared.configs,
                        shared.read_at,
                        &self.environment,
                    )));
                }
                let configs = self.source.read_all().await?;
                Ok(Some(Snapshot::parse(&configs, now, &self.environment)))
            }
        }
    }
}

/// Said with a process's first read of the pools, and again whenever it changes.
fn log_default_pool(default_pool: DefaultPool) {
    match default_pool {
        DefaultPool::None => tracing::warn!(default_pool = ?default_pool, "{}", default_pool.explain()),
        _ => tracing::info!(default_pool = ?default_pool, "{}", default_pool.explain()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn environment() -> PoolSettings {
        PoolSettings {
            iam_role: "env-role".into(),
            registration_limit: 100,
            activation_ttl: Duration::from_secs(86_400),
            expiry_margin: Duration::from_secs(900),
            tags: BTreeMap::new(),
            default_instance_name: "vending-default".into(),
            description: None,
            allowed_cidrs: Vec::new(),
            enabled: true,
            replace_stale_nodes_after: None,
            replace_reimaged_nodes: false,
        }
    }

    fn snapshot(configs: &[(&str, &str)]) -> Snapshot {
        let configs = configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Snapshot::parse(&configs, 1_000, &environment())
    }

    #[test]
    fn the_default_pool_comes_from_the_environment_until_it_has_a_config() {
        let without = snapshot(&[]);
        assert_eq!(without.lookup("default").unwrap().settings.iam_role, "env-role");
        assert_eq!(without.default_pool(), DefaultPool::Environment);
        let with = snapshot(&[("default", r#"{"iam_role": "from-parameter"}"#)]);
        assert_eq!(with.lookup("default").unwrap().settings.iam_role, "from-parameter");
        assert_eq!(with.default_pool(), DefaultPool::Config);
    }

    #[test]
    fn once_any_pool_has_a_config_default_exists_only_with_its_own() {
        let restricted = snapshot(&[("site-a", r#"{"iam_role": "r", "allowed_cidrs": ["10.20.0.0/16"]}"#)]);
        assert!(matches!(restricted.lookup("default"), Err(VendError::PoolNotFound(_))));
        assert_eq!(restricted.default_pool(), DefaultPool::None);
        assert_eq!(restricted.all().len(), 1, "only site-a is listed");
        let broken = snapshot(&[("site-a", "not json")]);
        assert!(
            matches!(broken.lookup("default"), Err(VendError::PoolNotFound(_))),
            "a misconfigured pool is still a pool config"
        );
    }

    #[test]
    fn a_bad_config_isolates_only_its_own_pool() {
        let s = snapshot(&[
            ("good", r#"{"iam_role": "r"}"#),
            ("bad", r#"{"iam_role": "r", "registration_limit": 5000}"#),
            ("off", r#"{"iam_role": "r", "enabled": false}"#),
        ]);
        assert!(s.lookup("good").is_ok());
        match s.lookup("bad").unwrap_err() {
            VendError::PoolMisconfigured { pool, problem } => {
                assert_eq!(pool, "bad");
                assert!(problem.starts_with("registration_limit"), "{problem}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.lookup("off"), Err(VendError::PoolDisabled(_))));
        assert!(matches!(s.lookup("absent"), Err(VendError::PoolNotFound(_))));
    }
}
