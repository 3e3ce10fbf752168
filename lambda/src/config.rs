//! Settings read once at start. Every problem names the variable that caused it,
//! so a bad deploy fails loudly in its first log line instead of at the first vend.

use std::time::Duration;

use crate::duration::parse_duration;

/// Where the process answers requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `vending serve`: a long-lived process with many requests at once.
    Server,
    /// One request per environment, frozen once it has answered: work a request
    /// starts finishes inside it, and slots are taken one at a time.
    Lambda,
}

/// AWS refuses activations that live longer than this.
pub const MAX_ACTIVATION_TTL: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, Clone)]
pub struct Config {
    pub table: String,
    pub parameter_prefix: String,
    pub kms_key_id: String,
    pub instance_role: String,
    pub region: String,
    pub registration_limit: u32,
    pub activation_ttl: Duration,
    /// A vend never hands out an activation that expires sooner than this.
    pub expiry_margin: Duration,
    /// How long a rotation may hold the pool before others may take over.
    pub lease: Duration,
    /// How long a request polls for another request's rotation before answering 503.
    pub wait: Duration,
    /// The most a whole vend may take; past it the answer is a JSON 503. Must stay
    /// below the function timeout (and API Gateway's 29 s).
    pub deadline: Duration,
    /// How often each process checks with SSM that the current activation still exists.
    pub verify_interval: Duration,
    /// Rotate ahead once this share (percent) of the slots is left.
    pub low_water_percent: u32,
    /// Age after which the sweep treats a never-committed activation as an orphan.
    pub sweep_grace: Duration,
    /// How long pool configs read from Parameter Store are used before reading again.
    pub pool_refresh: Duration,
    /// Proxies (an ALB's subnets) whose `X-Forwarded-For` names the caller.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Hybrid nodes the account may have in the standard tier (AWS: 1,000 per Region).
    pub node_quota: u32,
    /// The most slots one reserve takes for a process's queued requests (1: off).
    /// `vending serve` only: under Lambda it is always 1.
    pub block_max: u32,
    /// `vending serve` gives every enabled pool its activation and standby before
    /// it answers, so the first servers after a deploy wait for no rotation.
    pub ready_pools: bool,
    /// Who may ask for the environment's implicit `default` pool (empty: anyone).
    pub default_allowed_cidrs: Vec<ipnet::IpNet>,
    /// Principal ARN patterns (`*`, `?`) whose pool config writes the service
    /// trusts; empty: anyone's.
    pub pool_config_writers: Vec<String>,
    /// `vending serve`: how long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// `vending serve`: how long a connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// `vending serve`: connections open at once; more wait to be accepted.
    pub max_connections: u32,
    /// `vending serve`: from SIGTERM to exit, the clean stop included.
    pub shutdown_grace: Duration,
    /// How long a confirmed node's record lives (DynamoDB TTL from its confirmation).
    pub node_record_ttl: Duration,
    /// Set by the entry point, not the environment.
    pub runtime: Runtime,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn problem(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| -> Result<String, ConfigError> {
            match lookup(name).map(|v| v.trim().to_owned()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(problem(name, "is required but not set")),
            }
        };
        let duration = |name: &'static str, default: &str| -> Result<Duration, ConfigError> {
            let raw = lookup(name).unwrap_or_else(|| default.to_owned());
            parse_duration(&raw).map_err(|e| problem(name, e))
        };
        let number = |name: &'static str, default: u32, range: std::ops::RangeInclusive<u32>| {
            let raw = lookup(name).unwrap_or_else(|| default.to_string());
            match raw.trim().parse::<u32>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(problem(
                    name,
                    format!(
                        "`{raw}` must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            }
        };

        let table = required("VENDING_TABLE")?;
        let parameter_prefix = required("VENDING_PARAMETER_PREFIX")?;
        if !parameter_prefix.starts_with('/')
            || parameter_prefix.ends_with('/')
            || parameter_prefix.len() > 900
            || !parameter_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c))
        {
            return Err(problem(
                "VENDING_PARAMETER_PREFIX",
                format!("`{parameter_prefix}` must look like /activation-vending: a leading slash, no trailing slash, letters, digits and _ . -"),
            ));
        }
        let kms_key_id = required("VENDING_KMS_KEY_ID")?;
        let instance_role = required("VENDING_INSTANCE_ROLE")?;
        if instance_role.contains(':') || instance_role.contains('/') || instance_role.len() > 64 {
            return Err(problem(
                "VENDING_INSTANCE_ROLE",
                format!("`{instance_role}` must be an IAM role name (not an ARN or path), at most 64 characters"),
            ));
        }
        let region = lookup("AWS_REGION")
            .or_else(|| lookup("AWS_DEFAULT_REGION"))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| problem("AWS_REGION", "is required but not set"))?;

        let registration_limit = number("VENDING_REGISTRATION_LIMIT", 100, 1..=1000)?;
        let activation_ttl = duration("VENDING_ACTIVATION_TTL", "24h")?;
        let expiry_margin = duration("VENDING_EXPIRY_MARGIN", "15m")?;
        let lease = duration("VENDING_LEASE", "30s")?;
        let wait = duration("VENDING_WAIT", "5s")?;
        let deadline = duration("VENDING_DEADLINE", "20s")?;
        let verify_interval = duration("VENDING_VERIFY_INTERVAL", "60s")?;
        let node_record_ttl = duration("VENDING_NODE_RECORD_TTL", "400d")?;
        let low_water_percent = number("VENDING_LOW_WATER_PERCENT", 20, 0..=90)?;

        if activation_ttl > MAX_ACTIVATION_TTL {
            return Err(problem("VENDING_ACTIVATION_TTL", "must be at most 30d (AWS's limit)"));
        }
        if activation_ttl <= expiry_margin.saturating_mul(2) {
            return Err(problem(
                "VENDING_ACTIVATION_TTL",
                format!(
                    "must be more than twice VENDING_EXPIRY_MARGIN ({}s), or every activation is rotated as soon as it is made",
                    expiry_margin.as_secs()
                ),
            ));
        }
        let sweep_grace = match lookup("VENDING_SWEEP_GRACE") {
            Some(raw) => parse_duration(&raw).map_err(|e| problem("VENDING_SWEEP_GRACE", e))?,
            None => lease + Duration::from_secs(300),
        };
        if sweep_grace <= lease {
            return Err(problem(
                "VENDING_SWEEP_GRACE",
                "must be longer than VENDING_LEASE: a rotation may commit until its lease runs out",
            ));
        }
        if deadline < Duration::from_secs(1) {
            return Err(problem(
                "VENDING_DEADLINE",
                "must be at least 1s: a vend takes at least one AWS call",
            ));
        }
        if let Err(problem_text) = margin_outlasts_deadline(expiry_margin, deadline) {
            return Err(problem("VENDING_EXPIRY_MARGIN", problem_text));
        }
        if lease < Duration::from_secs(1) {
            return Err(problem(
                "VENDING_LEASE",
                "must be at least 1s: a rotation takes several AWS calls",
            ));
        }

        let node_quota = number("VENDING_NODE_QUOTA", 1000, 1..=1_000_000)?;
        let block_max = number("VENDING_BLOCK_MAX", 8, 1..=100)?;
        let ready_pools = match lookup("VENDING_READY_POOLS").as_deref().map(str::trim) {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(problem(
                    "VENDING_READY_POOLS",
                    format!("`{other}` must be true or false"),
                ))
            }
        };
        let pool_refresh = duration("VENDING_POOL_REFRESH", "60s")?;
        if pool_refresh < Duration::from_secs(1) {
            return Err(problem(
                "VENDING_POOL_REFRESH",
                "must be at least 1s: every read of the pools costs Parameter Store quota",
            ));
        }
        let cidrs = |name: &'static str| {
            lookup(name)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|cidr| !cidr.is_empty())
                .map(|cidr| {
                    cidr.parse::<ipnet::IpNet>()
                        .map(|net| net.trunc())
                        .map_err(|_| problem(name, format!("`{cidr}` is not a CIDR like 10.0.0.0/24")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let trusted_proxies = cidrs("VENDING_TRUSTED_PROXIES")?;
        let default_allowed_cidrs = cidrs("VENDING_DEFAULT_ALLOWED_CIDRS")?;
        let pool_config_writers = lookup("VENDING_POOL_CONFIG_WRITERS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|pattern| !pattern.is_empty())
            .map(|pattern| {
                if pattern.starts_with("arn:") && pattern.split(':').count() >= 6 {
                    Ok(pattern.to_owned())
                } else {
                    Err(problem(
                        "VENDING_POOL_CONFIG_WRITERS",
                        format!("`{pattern}` is not a principal ARN pattern like arn:aws:iam::123456789012:role/pool-admin or arn:aws:sts::123456789012:assumed-role/pool-admin/*"),
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let at_least_a_second = |name: &'static str, default: &str| {
            let value = duration(name, default)?;
            if value < Duration::from_secs(1) {
                return Err(problem(name, "must be at least 1s"));
            }
            Ok(value)
        };
        let header_timeout = at_least_a_second("VENDING_HEADER_TIMEOUT", "10s")?;
        let idle_timeout = at_least_a_second("VENDING_IDLE_TIMEOUT", "60s")?;
        let shutdown_grace = at_least_a_second("VENDING_SHUTDOWN_GRACE", "20s")?;
        let max_connections = number("VENDING_MAX_CONNECTIONS", 1024, 1..=1_000_000)?;

        Ok(Self {
            table,
            parameter_prefix,
            kms_key_id,
            instance_role,
            region,
            registration_limit,
            activation_ttl,
            expiry_margin,
            lease,
            wait,
            deadline,
            verify_interval,
            low_water_percent,
            sweep_grace,
            pool_refresh,
            trusted_proxies,
            node_quota,
            block_max,
            ready_pools,
            default_allowed_cidrs,
            pool_config_writers,
            header_timeout,
            idle_timeout,
            max_connections,
            shutdown_grace,
            node_record_ttl,
            runtime: Runtime::Server,
        })
    }

    /// The settings as they apply under Lambda.
    pub fn under_lambda(self) -> Self {
        Self {
            runtime: Runtime::Lambda,
            block_max: 1,
            ..self
        }
    }
}

/// An expiry margin must outlast `VENDING_DEADLINE`: a slot that clears the margin
/// when it is taken must still be good for SSM when the request that took it
/// answers, however long the request ran. `Err` says why not, naming the deadline.
pub fn margin_outlasts_deadline(margin: Duration, deadline: Duration) -> Result<(), String> {
    if margin > deadline {
        Ok(())
    } else {
        Err(format!(
            "must be larger than VENDING_DEADLINE ({} ms), or a slot judged good when taken may expire before it is handed out",
            deadline.as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            ("VENDING_TABLE", "t".to_owned()),
            ("VENDING_PARAMETER_PREFIX", "/activation-vending".to_owned()),
            ("VENDING_KMS_KEY_ID", "alias/k".to_owned()),
            ("VENDING_INSTANCE_ROLE", "managed".to_owned()),
            ("AWS_REGION", "eu-west-1".to_owned()),
        ])
    }

    fn load(env: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| env.get(k).cloned())
    }

    #[test]
    fn defaults_fill_everything_but_the_resources() {
        let config = load(&base()).unwrap();
        assert_eq!(config.registration_limit, 100);
        assert_eq!(config.activation_ttl, Duration::from_secs(86_400));
        assert_eq!(config.expiry_margin, Duration::from_secs(900));
        assert_eq!(config.deadline, Duration::from_secs(20));
        assert_eq!(config.block_max, 8);
        assert_eq!(config.header_timeout, Duration::from_secs(10));
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.max_connections, 1024);
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        assert!(config.default_allowed_cidrs.is_empty() && config.pool_config_writers.is_empty());
    }

    #[test]
    fn an_expiry_margin_not_larger_than_the_deadline_is_refused_naming_both() {
        for (margin, deadline) in [("20s", "20s"), ("10s", "20s")] {
            let mut env = base();
            env.insert("VENDING_EXPIRY_MARGIN", margin.to_owned());
            env.insert("VENDING_DEADLINE", deadline.to_owned());
            let err = load(&env).unwrap_err();
            assert_eq!(err.setting, "VENDING_EXPIRY_MARGIN");
            assert!(err.to_string().contains("VENDING_DEADLINE"), "{err}");
        }
        let mut env = base();
        env.insert("VENDING_EXPIRY_MARGIN", "4s".to_owned());
        env.insert("VENDING_ACTIVATION_TTL", "12s".to_owned());
        env.insert("VENDING_DEADLINE", "3s".to_owned());
        assert!(load(&env).is_ok());
    }

    #[test]
    fn a_missing_resource_names_its_variable() {
        for name in [
            "VENDING_TABLE",
            "VENDING_PARAMETER_PREFIX",
            "VENDING_KMS_KEY_ID",
            "VENDING_INSTANCE_ROLE",
            "AWS_REGION",
        ] {
            let mut env = base();
            env.remove(name);
            let err = load(&env).unwrap_err();
            assert_eq!(err.setting, name);
            assert!(err.to_string().starts_with(name));
        }
    }

    #[test]
    fn a_bad_value_fails_naming_the_setting() {
        let cases = [
            ("VENDING_REGISTRATION_LIMIT", "0"),
            ("VENDING_REGISTRATION_LIMIT", "1001"),
            ("VENDING_REGISTRATION_LIMIT", "lots"),
            ("VENDING_ACTIVATION_TTL", "31d"),
            ("VENDING_ACTIVATION_TTL", "20m"),
            ("VENDING_EXPIRY_MARGIN", "soon"),
            ("VENDING_LEASE", "100ms"),
            ("VENDING_DEADLINE", "500ms"),
            ("VENDING_DEADLINE", "soon"),
            ("VENDING_POOL_REFRESH", "0s"),
            ("VENDING_BLOCK_MAX", "0"),
            ("VENDING_BLOCK_MAX", "101"),
            ("VENDING_READY_POOLS", "yes"),
            ("VENDING_TRUSTED_PROXIES", "10.0.0.0/24, alb"),
            ("VENDING_DEFAULT_ALLOWED_CIDRS", "10.0.0.0/33"),
            ("VENDING_POOL_CONFIG_WRITERS", "pool-admin"),
            ("VENDING_HEADER_TIMEOUT", "0s"),
            ("VENDING_IDLE_TIMEOUT", "forever"),
            ("VENDING_SHUTDOWN_GRACE", "500ms"),
            ("VENDING_MAX_CONNECTIONS", "0"),
            ("VENDING_INSTANCE_ROLE", "arn:aws:iam::123456789012:role/x"),
            ("VENDING_PARAMETER_PREFIX", "no-leading-slash"),
            ("VENDING_PARAMETER_PREFIX", "/trailing/"),
        ];
        for (name, value) in cases {
            let mut env = base();
            env.insert(name, value.to_owned());
            let err = load(&env).unwrap_err();
            assert_eq!(err.setting, name, "{name}={value} gave {err}");
        }
    }
}
