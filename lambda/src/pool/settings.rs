//! Pools: who a pool's nodes are (role, tags, name) and how its activations behave
//! (limit, lifetime, margin), and who may ask. One `String` parameter per pool holds
//! its JSON; the pool `default` falls back to the environment. Everything here is
//! pure: parsing, validation, the settings fingerprint, the source check.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, MAX_ACTIVATION_TTL};
use crate::duration::parse_duration;

/// Tag key that marks activations (and so every node registered with them) with
/// their pool. Every activation carries it; a pool config may not set it.
pub const POOL_TAG: &str = "activation-vending:pool";

/// Tag key that names the deployment (its DynamoDB table) that made an activation, so
/// that two stacks in one account and Region never sweep or clean each other's.
pub const DEPLOYMENT_TAG: &str = "activation-vending:deployment";

/// Tag key a confirmation (`POST /registrations`) puts on the node: the digest of
/// the machine's ID, which the re-image clean-up finds the machine's older nodes by.
pub const MACHINE_TAG: &str = "activation-vending:machine-id";

/// Tag key a confirmation puts on the node: the instance name (Fleet Manager's name).
pub const NAME_TAG: &str = "Name";

/// What a pool's `config` parameter may say. Unknown fields are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub iam_role: Option<String>,
    pub registration_limit: Option<u32>,
    pub activation_ttl: Option<String>,
    pub expiry_margin: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub default_instance_name: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    pub enabled: Option<bool>,
    pub replace_stale_nodes_after: Option<String>,
    pub replace_reimaged_nodes: Option<bool>,
}

/// A pool's validated, effective settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolSettings {
    pub iam_role: String,
    pub registration_limit: u32,
    #[serde(serialize_with = "as_secs")]
    pub activation_ttl: Duration,
    #[serde(serialize_with = "as_secs")]
    pub expiry_margin: Duration,
    pub tags: BTreeMap<String, String>,
    pub default_instance_name: String,
    pub description: Option<String>,
    #[serde(serialize_with = "as_strings")]
    pub allowed_cidrs: Vec<IpNet>,
    pub enabled: bool,
    /// Opt-in clean-up: deregister older registrations of a name offline this long.
    #[serde(serialize_with = "as_optional_secs")]
    pub replace_stale_nodes_after: Option<Duration>,
    /// Opt-in clean-up: a confirmation deregisters the machine's older nodes that
    /// are not `Online` (found by the machine-id tag).
    pub replace_reimaged_nodes: bool,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}s", d.as_secs()))
}

fn as_optional_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => as_secs(d, s),
        None => s.serialize_none(),
    }
}

fn as_strings<S: serde::Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(ToString::to_string))
}

/// Why a pool's config was refused: the field and the problem, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigProblem {
    pub field: String,
    pub problem: String,
}

fn problem(field: impl Into<String>, problem: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The name SSM gives nodes registered with a pool's activations when the pool
/// config names none.
pub fn default_instance_name(pool: &str) -> String {
    format!("vending-{pool}")
}

/// The characters AWS allows in tag keys and values.
fn tag_text(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c))
}

/// An IAM role name as CreateActivation wants it (not an ARN or path).
fn valid_role_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

impl PoolSettings {
    /// The `default` pool when it has no config parameter: the environment's settings.
    pub fn from_environment(config: &Config) -> Self {
        Self {
            iam_role: config.instance_role.clone(),
            registration_limit: config.registration_limit,
            activation_ttl: config.activation_ttl,
            expiry_margin: config.expiry_margin,
            tags: BTreeMap::new(),
            default_instance_name: default_instance_name(crate::pool::state::DEFAULT_POOL),
            description: None,
            allowed_cidrs: config.default_allowed_cidrs.clone(),
            enabled: true,
            replace_stale_nodes_after: None,
            replace_reimaged_nodes: false,
        }
    }

    /// Parses and validates a pool's config parameter.
    pub fn from_json(pool: &str, text: &str) -> Result<Self, ConfigProblem> {
        if let Ok(serde_json::Value::Object(record)) = serde_json::from_str(text) {
            if let Some(why) = record.get(UNTRUSTED_WRITER) {
                return Err(problem(
                    "(writer)",
                    why.as_str()
                        .unwrap_or("written by someone VENDING_POOL_CONFIG_WRITERS does not name"),
                ));
            }
        }
        let raw: PoolConfig = serde_json::from_str(text).map_err(|e| {
            let message = e.to_string();
            // serde names the offending field in its message ("unknown field `x`").
            let field = message
                .split('`')
                .nth(1)
                .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
                .unwrap_or("(json)")
                .to_owned();
            problem(field, message)
        })?;
        Self::validate(pool, raw)
    }

    fn validate(pool: &str, raw: PoolConfig) -> Result<Self, ConfigProblem> {
        let iam_role = raw
            .iam_role
            .ok_or_else(|| problem("iam_role", "is required: the IAM role name nodes of this pool get"))?;
        if !valid_role_name(&iam_role) {
            return Err(problem(
                "iam_role",
                format!("`{iam_role}` must be an IAM role name (not an ARN or path), at most 64 characters"),
            ));
        }
        let registration_limit = raw.registration_limit.unwrap_or(100);
        if !(1..=1000).contains(&registration_limit) {
            return Err(problem("registration_limit", "must be from 1 to 1000"));
        }
        let duration = |field: &str, value: Option<String>, default: &str| {
            parse_duration(value.as_deref().unwrap_or(default)).map_err(|e| problem(field, e))
        };
        let activation_ttl = duration("activation_ttl", raw.activation_ttl, "24h")?;
        let expiry_margin = duration("expiry_margin", raw.expiry_margin, "15m")?;
        if activation_ttl > MAX_ACTIVATION_TTL {
            return Err(problem("activation_ttl", "must be at most 30d (AWS's limit)"));
        }
        if activation_ttl <= expiry_margin.saturating_mul(2) {
            return Err(problem("activation_ttl", "must be more than twice expiry_margin"));
        }
        if raw.tags.len() > 40 {
            return Err(problem("tags", "at most 40 tags"));
        }
        for (key, value) in &raw.tags {
            let field = format!("tags.{key}");
            if !(1..=128).contains(&key.chars().count()) || !tag_text(key) {
                return Err(problem(
                    field,
                    "keys are 1 to 128 letters, digits, spaces or _ . : / = + - @",
                ));
            }
            if key.to_ascii_lowercase().starts_with("aws:") {
                return Err(problem(field, "the aws: prefix is reserved by AWS"));
            }
            if key == POOL_TAG || key == DEPLOYMENT_TAG || key == MACHINE_TAG {
                return Err(problem(field, "is set by the service on every activation"));
            }
            if value.chars().count() > 256 || !tag_text(value) {
                return Err(problem(
                    field,
                    "values are 0 to 256 letters, digits, spaces or _ . : / = + - @",
                ));
            }
        }
        let default_instance_name = raw.default_instance_name.unwrap_or_else(|| default_instance_name(pool));
        if default_instance_name.is_empty() || default_instance_name.chars().count() > 256 {
            return Err(problem("default_instance_name", "must be 1 to 256 characters"));
        }
        if raw.description.as_ref().is_some_and(|d| d.chars().count() > 256) {
            return Err(problem("description", "at most 256 characters"));
        }
        let allowed_cidrs = raw
            .allowed_cidrs
            .iter()
            .map(|text| {
                text.trim().parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
                    problem(
                        "allowed_cidrs",
                        format!("`{text}` is not a CIDR like 10.0.0.0/8 or fd00::/8"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let replace_stale_nodes_after = match raw.replace_stale_nodes_after {
            None => None,
            Some(text) => {
                let after = parse_duration(&text).map_err(|e| problem("replace_stale_nodes_after", e))?;
                if after < Duration::from_secs(3_600) {
                    return Err(problem(
                        "replace_stale_nodes_after",
                        "must be at least 1h: a node briefly offline is not stale",
                    ));
                }
                Some(after)
            }
        };
        Ok(Self {
            iam_role,
            registration_limit,
            activation_ttl,
            expiry_margin,
            tags: raw.tags,
            default_instance_name,
            description: raw.description,
            allowed_cidrs,
            enabled: raw.enabled.unwrap_or(true),
            replace_stale_nodes_after,
            replace_reimaged_nodes: raw.replace_reimaged_nodes.unwrap_or(false),
        })
    }

    /// A digest of what an activation is made with (role, limit, lifetime, tags,
    /// default name): when it changes, the pool's activation is stale.
    pub fn fingerprint(&self) -> String {
        let mut canonical = format!(
            "role={}\nlimit={}\nttl={}\nname={}\n",
            self.iam_role,
            self.registration_limit,
            self.activation_ttl.as_secs(),
            self.default_instance_name
        );
        for (key, value) in &self.tags {
            let _ = writeln!(canonical, "tag={key:?}={value:?}");
        }
        hex::encode(&Sha256::digest(canonical.as_bytes())[..12])
    }

    /// Whether a caller at `source` may ask. No list means anyone who can reach the
    /// service; a list and no known source address means no.
    pub fn admits(&self, source: Option<IpAddr>) -> bool {
        if self.allowed_cidrs.is_empty() {
            return true;
        }
        let Some(source) = source.map(|ip| ip.to_canonical()) else {
            return false;
        };
        self.allowed_cidrs.iter().any(|net| net.contains(&source))
    }
}

/// The key of the record `PoolConfigSource` shares in place of a config whose last
/// writer `VENDING_POOL_CONFIG_WRITERS` does not name (`untrusted_config`).
const UNTRUSTED_WRITER: &str = "(untrusted writer)";

/// What stands in for an untrusted config's text in every copy of the configs, the
/// shared one included: any process that parses it finds the pool misconfigured.
pub fn untrusted_config(why: &str) -> String {
    serde_json::json!({ UNTRUSTED_WRITER: why }).to_string()
}

/// Whether `arn` matches `pattern` as IAM's `ArnLike` does: component by component
/// (the six `:`-separated parts), `*` any run of characters and `?` one, within a part.
pub fn arn_like(pattern: &str, arn: &str) -> bool {
    let pattern: Vec<&str> = pattern.splitn(6, ':').collect();
    let arn: Vec<&str> = arn.splitn(6, ':').collect();
    pattern.len() == 6 && arn.len() == 6 && pattern.iter().zip(&arn).all(|(p, a)| glob(p.as_bytes(), a.as_bytes()))
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// Whether a config last written by `writer` may be used: anyone's when no writers
/// are named (`VENDING_POOL_CONFIG_WRITERS` empty).
pub fn trusted_writer(writers: &[String], writer: &str) -> bool {
    writers.is_empty() || writers.iter().any(|pattern| arn_like(pattern, writer))
}

/// The caller's address behind a proxy: the peer, or, when the peer is a trusted
/// proxy, the one hop that proxy appended to `X-Forwarded-For` (an ALB appends the
/// address it saw as the last entry). Nothing further left is looked at: every
/// earlier entry is whatever the caller chose to send. The peer when the last entry
/// is missing or not an address.
pub fn client_address(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    if !trusted.iter().any(|net| net.contains(&peer.to_canonical())) {
        return peer;
    }
    forwarded_for
        .last()
        .and_then(|header| header.rsplit(',').next())
        .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PoolSettings, ConfigProblem> {
        PoolSettings::from_json("linux-prod", json)
    }

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let settings = parse(r#"{"iam_role": "ssm-nodes"}"#).unwrap();
        assert_eq!(settings.registration_limit, 100);
        assert_eq!(settings.activation_ttl, Duration::from_secs(86_400));
        assert_eq!(settings.expiry_margin, Duration::from_secs(900));
        assert_eq!(settings.default_instance_name, "vending-linux-prod");
        assert!(settings.enabled);
        assert!(settings.admits(None), "no list: anyone");
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (r#"{}"#, "iam_role"),
            (r#"{"iam_role": "arn:aws:iam::1:role/x"}"#, "iam_role"),
            (r#"{"iam_role": "r", "registration_limit": 0}"#, "registration_limit"),
            (r#"{"iam_role": "r", "registration_limit": 1001}"#, "registration_limit"),
            (r#"{"iam_role": "r", "activation_ttl": "31d"}"#, "activation_ttl"),
            (r#"{"iam_role": "r", "activation_ttl": "20m"}"#, "activation_ttl"),
            (r#"{"iam_role": "r", "expiry_margin": "soon"}"#, "expiry_margin"),
            (r#"{"iam_role": "r", "tags": {"aws:x": "y"}}"#, "tags.aws:x"),
            (
                r#"{"iam_role": "r", "tags": {"activation-vending:pool": "y"}}"#,
                "tags.activation-vending:pool",
            ),
            (r#"{"iam_role": "r", "tags": {"env": "a;b"}}"#, "tags.env"),
            (r#"{"iam_role": "r", "tags": {"": "y"}}"#, "tags."),
            (
                r#"{"iam_role": "r", "allowed_cidrs": ["10.0.0.0/33"]}"#,
                "allowed_cidrs",
            ),
            (r#"{"iam_role": "r", "colour": "blue"}"#, "colour"),
            (
                r#"{"iam_role": "r", "default_instance_name": ""}"#,
                "default_instance_name",
            ),
            (r#"not json"#, "(json)"),
            (
                r#"{"iam_role": "r", "replace_stale_nodes_after": "5m"}"#,
                "replace_stale_nodes_after",
            ),
            (
                r#"{"iam_role": "r", "replace_stale_nodes_after": "a week"}"#,
                "replace_stale_nodes_after",
            ),
        ];
        for (json, field) in cases {
            let err = parse(json).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
        }
        let too_many: BTreeMap<String, String> = (0..41).map(|i| (format!("k{i}"), String::new())).collect();
        let json = serde_json::json!({"iam_role": "r", "tags": too_many}).to_string();
        assert_eq!(parse(&json).unwrap_err().field, "tags");
    }

    #[test]
    fn the_fingerprint_follows_what_activations_are_made_with() {
        let base = parse(r#"{"iam_role": "r", "tags": {"env": "prod"}}"#).unwrap();
        let same =
            parse(r#"{"tags": {"env": "prod"}, "iam_role": "r", "description": "x", "allowed_cidrs": ["10.0.0.0/8"]}"#)
                .unwrap();
        assert_eq!(
            base.fingerprint(),
            same.fingerprint(),
            "description and sources change no activation"
        );
        for changed in [
            r#"{"iam_role": "r2", "tags": {"env": "prod"}}"#,
            r#"{"iam_role": "r", "tags": {"env": "test"}}"#,
            r#"{"iam_role": "r", "tags": {"env": "prod", "os": "linux"}}"#,
            r#"{"iam_role": "r", "tags": {"env": "prod"}, "registration_limit": 10}"#,
            r#"{"iam_role": "r", "tags": {"env": "prod"}, "activation_ttl": "12h"}"#,
            r#"{"iam_role": "r", "tags": {"env": "prod"}, "default_instance_name": "web"}"#,
        ] {
            assert_ne!(parse(changed).unwrap().fingerprint(), base.fingerprint(), "{changed}");
        }
    }

    #[test]
    fn only_listed_networks_may_ask() {
        let settings = parse(r#"{"iam_role": "r", "allowed_cidrs": ["10.0.0.0/8", "fd00::/8"]}"#).unwrap();
        assert!(settings.admits(Some("10.1.2.3".parse().unwrap())));
        assert!(
            settings.admits(Some("::ffff:10.1.2.3".parse().unwrap())),
            "IPv4-mapped IPv6"
        );
        assert!(settings.admits(Some("fd12::1".parse().unwrap())));
        assert!(!settings.admits(Some("192.168.1.1".parse().unwrap())));
        assert!(
            !settings.admits(None),
            "an unknown source is refused when a list is set"
        );
    }

    #[test]
    fn the_client_behind_a_trusted_proxy_is_the_hop_that_proxy_appended() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let alb: IpAddr = "10.0.0.5".parse().unwrap();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_address(alb, &["198.51.100.1, 192.0.2.7"], &trusted), client);
        assert_eq!(
            client_address(alb, &["198.51.100.1", "192.0.2.7"], &trusted),
            client,
            "the last of several headers"
        );
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_address(stranger, &["10.1.1.1"], &trusted),
            stranger,
            "an untrusted peer cannot claim another address"
        );
        assert_eq!(client_address(alb, &[], &trusted), alb);
        assert_eq!(client_address(alb, &["not-an-ip"], &trusted), alb);
        assert_eq!(client_address(alb, &["192.0.2.7, not-an-ip"], &trusted), alb);
    }

    #[test]
    fn writers_match_like_iam_arn_like_one_component_at_a_time() {
        let writers = vec![
            "arn:aws:sts::123456789012:assumed-role/pool-admin/*".to_owned(),
            "arn:aws:iam::123456789012:user/ops-?".to_owned(),
        ];
        for ok in [
            "arn:aws:sts::123456789012:assumed-role/pool-admin/alice",
            "arn:aws:iam::123456789012:user/ops-1",
        ] {
            assert!(trusted_writer(&writers, ok), "{ok}");
        }
        for refused in [
            "arn:aws:sts::123456789012:assumed-role/other/alice",
            "arn:aws:sts::999999999999:assumed-role/pool-admin/alice",
            "arn:aws:iam::123456789012:user/ops-12",
            "N/A",
            "",
        ] {
            assert!(!trusted_writer(&writers, refused), "{refused}");
        }
        assert!(
            !arn_like("arn:*", "arn:aws:iam::1:user/x"),
            "a * stays inside its component"
        );
        assert!(trusted_writer(&[], "N/A"), "no writers named: anyone, as before");
    }

    #[test]
    fn an_untrusted_config_is_a_misconfigured_pool_naming_its_writer() {
        let text = untrusted_config("last written by arn:aws:iam::1:user/mallory");
        let err = PoolSettings::from_json("web", &text).unwrap_err();
        assert_eq!(err.field, "(writer)");
        assert!(err.problem.contains("mallory"), "{err}");
    }

    #[test]
    fn a_trusted_hop_never_vouches_for_the_entries_left_of_it() {
        // Something inside the trusted range (a NAT, a task in a shared subnet) that
        // sends its own X-Forwarded-For through the proxy claims nothing.
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(client_address(peer, &["10.20.1.1, 127.0.0.1"], &trusted), peer);
        let alb_subnet: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let alb: IpAddr = "10.0.0.5".parse().unwrap();
        let nat: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(client_address(alb, &["192.0.2.7, 10.0.0.9"], &alb_subnet), nat);
    }
}
