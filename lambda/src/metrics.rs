//! Metrics as CloudWatch embedded metric format (EMF) lines on standard output:
//! CloudWatch Logs turns each line into metric data points, in Lambda and wherever
//! the container's output goes, with no call to CloudWatch on the request path.
//!
//! Namespace `ActivationVending`; per-pool figures carry the dimension `Pool`, the
//! account-wide node count none. The operator's commands (`sweep`, `pools`,
//! `status`) print reports on standard output and switch metrics off.
//! Specification: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

pub const NAMESPACE: &str = "ActivationVending";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Vends,
    Rotations,
    RotationFailures,
    NoActivationYet,
    Forbidden,
    SlotsRemaining,
    SlotsWasted,
    SweepDeleted,
    SweepFailures,
    StaleNodesDeregistered,
    ManagedNodes,
    PoolConfigUntrusted,
    /// Slots the sweep found never used on an activation it retired.
    UnusedRegistrations,
    /// How far the local clock is from AWS's, when it is too far to vend.
    ClockSkewSeconds,
    /// A server reported its code refused by SSM (dimension `Confirmed`: whether SSM agreed).
    RegistrationRefused,
    /// Registrations confirmed (`POST /registrations`), each node once.
    Registered,
    /// A re-imaged machine's offline predecessors deregistered on its confirmation.
    ReimagedNodesReplaced,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vends => "Vends",
            Self::Rotations => "Rotations",
            Self::RotationFailures => "RotationFailures",
            Self::NoActivationYet => "NoActivationYet",
            Self::Forbidden => "Forbidden",
            Self::SlotsRemaining => "SlotsRemaining",
            Self::SlotsWasted => "SlotsWasted",
            Self::SweepDeleted => "SweepDeleted",
            Self::SweepFailures => "SweepFailures",
            Self::StaleNodesDeregistered => "StaleNodesDeregistered",
            Self::ManagedNodes => "ManagedNodes",
            Self::PoolConfigUntrusted => "PoolConfigUntrusted",
            Self::UnusedRegistrations => "UnusedRegistrations",
            Self::ClockSkewSeconds => "ClockSkewSeconds",
            Self::RegistrationRefused => "RegistrationRefused",
            Self::Registered => "Registered",
            Self::ReimagedNodesReplaced => "ReimagedNodesReplaced",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::ClockSkewSeconds => "Seconds",
            _ => "Count",
        }
    }
}

/// Why slots were consumed and never handed out: `SlotsWasted`'s `Reason` dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasteReason {
    /// A reserve whose write may have landed but whose answer never came.
    LostAnswer,
    /// The request was cut off by `VENDING_DEADLINE` while holding its slot.
    Deadline,
    /// The activation entered the expiry margin before the slot was handed out.
    Margin,
    /// The process stopped with slots of a block in hand.
    Stopping,
    /// The activation was deleted out of band, or its code is gone.
    Deleted,
    /// The activation was made with outdated settings, or a newer block replaced it.
    Outdated,
}

impl WasteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LostAnswer => "lost_answer",
            Self::Deadline => "deadline",
            Self::Margin => "margin",
            Self::Stopping => "stopping",
            Self::Deleted => "deleted",
            Self::Outdated => "outdated",
        }
    }
}

impl std::fmt::Display for WasteReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts `slots` of `pool` consumed and never handed out, for `reason` (metric
/// `SlotsWasted` with the dimensions `Pool` and `Reason`, and a log line).
pub fn slots_wasted(pool: &str, activation_id: &str, slots: u32, reason: WasteReason) {
    if slots == 0 {
        return;
    }
    tracing::info!(pool, activation_id, slots, %reason, "slots wasted");
    emit_with(
        &[("Pool", pool), ("Reason", reason.as_str())],
        &[(Metric::SlotsWasted, f64::from(slots))],
    );
}

/// Counts a refusal report of `pool` (metric `RegistrationRefused` with the
/// dimensions `Pool` and `Confirmed`, `true` when SSM agreed the activation is unusable).
pub fn registration_refused(pool: &str, confirmed: bool) {
    emit_with(
        &refusal_dimensions(pool, confirmed),
        &[(Metric::RegistrationRefused, 1.0)],
    );
}

fn refusal_dimensions(pool: &str, confirmed: bool) -> [(&'static str, &str); 2] {
    [("Pool", pool), ("Confirmed", if confirmed { "true" } else { "false" })]
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns metric lines off (for commands whose standard output is a report).
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// One EMF document: `values` (all counts) for `pool`, or account-wide with `None`
/// (the tests' shorthand for `document_with`).
#[cfg(test)]
fn document(pool: Option<&str>, values: &[(Metric, f64)], timestamp_ms: u64) -> Value {
    match pool {
        Some(pool) => document_with(&[("Pool", pool)], values, timestamp_ms),
        None => document_with(&[], values, timestamp_ms),
    }
}

/// One EMF document of `values` with the dimensions `dimensions` (name, value).
pub fn document_with(dimensions: &[(&str, &str)], values: &[(Metric, f64)], timestamp_ms: u64) -> Value {
    let mut root = Map::new();
    let names: Vec<&str> = dimensions
        .iter()
        .map(|(name, value)| {
            root.insert((*name).into(), json!(value));
            *name
        })
        .collect();
    let metrics: Vec<Value> = values
        .iter()
        .map(|(metric, value)| {
            root.insert(metric.name().into(), json!(value));
            json!({"Name": metric.name(), "Unit": metric.unit()})
        })
        .collect();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [names], "Metrics": metrics}]
        }),
    );
    Value::Object(root)
}

/// Writes one EMF line to standard output (one `write` call, so lines from
/// concurrent requests never interleave).
pub fn emit(pool: Option<&str>, values: &[(Metric, f64)]) {
    match pool {
        Some(pool) => emit_with(&[("Pool", pool)], values),
        None => emit_with(&[], values),
    }
}

/// Like `emit`, with any dimensions.
pub fn emit_with(dimensions: &[(&str, &str)], values: &[(Metric, f64)]) {
    if !ENABLED.load(Ordering::Relaxed) || values.is_empty() {
        return;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut line = document_with(dimensions, values, now_ms).to_string();
    line.push('\n');
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

pub fn count(pool: &str, metric: Metric) {
    emit(Some(pool), &[(metric, 1.0)]);
}

/// Checks a document against the EMF specification's rules: `_aws` with an
/// integer millisecond `Timestamp` and `CloudWatchMetrics` directives, each with a
/// `Namespace` (1..=1024 characters), `Dimensions` (arrays of at most 30 names, each
/// a string member of the root) and `Metrics` (at most 100, each name a numeric
/// member of the root, the unit one of CloudWatch's).
pub fn check_emf(doc: &Value) -> Result<(), String> {
    const UNITS: &[&str] = &[
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];
    let root = doc.as_object().ok_or("not an object")?;
    let aws = root.get("_aws").and_then(Value::as_object).ok_or("no _aws object")?;
    if !aws.get("Timestamp").is_some_and(Value::is_u64) {
        return Err("_aws.Timestamp is not integer milliseconds".into());
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty())
        .ok_or("no CloudWatchMetrics directives")?;
    for directive in directives {
        let namespace = directive["Namespace"].as_str().unwrap_or_default();
        if namespace.is_empty() || namespace.len() > 1024 {
            return Err(format!("bad Namespace {namespace:?}"));
        }
        for set in directive["Dimensions"].as_array().ok_or("no Dimensions")? {
            let set = set.as_array().ok_or("a dimension set is not an array")?;
            if set.len() > 30 {
                return Err("more than 30 dimensions in a set".into());
            }
            for name in set {
                let name = name.as_str().ok_or("a dimension name is not a string")?;
                if !root.get(name).is_some_and(Value::is_string) {
                    return Err(format!("dimension {name} is not a string member of the root"));
                }
            }
        }
        let metrics = directive["Metrics"].as_array().ok_or("no Metrics")?;
        if metrics.len() > 100 {
            return Err("more than 100 metrics".into());
        }
        for metric in metrics {
            let name = metric["Name"].as_str().ok_or("a metric without a Name")?;
            if !root.get(name).is_some_and(Value::is_number) {
                return Err(format!("metric {name} is not a numeric member of the root"));
            }
            if let Some(unit) = metric.get("Unit") {
                if !UNITS.contains(&unit.as_str().unwrap_or_default()) {
                    return Err(format!("unit {unit} is not one of CloudWatch's"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_document_follows_the_emf_specification() {
        let doc = document(
            Some("linux-prod"),
            &[(Metric::Vends, 1.0), (Metric::SlotsRemaining, 41.0)],
            1_764_000_000_000,
        );
        assert_eq!(check_emf(&doc), Ok(()));
        assert_eq!(doc["Pool"], "linux-prod");
        assert_eq!(doc["Vends"], 1.0);
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Pool"]]));
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], "ActivationVending");
    }

    #[test]
    fn the_account_wide_document_has_an_empty_dimension_set() {
        let doc = document(None, &[(Metric::ManagedNodes, 912.0)], 1);
        assert_eq!(check_emf(&doc), Ok(()));
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([[]]));
        assert!(doc.get("Pool").is_none());
    }

    #[test]
    fn wasted_slots_carry_their_reason_as_a_second_dimension() {
        let doc = document_with(
            &[("Pool", "web"), ("Reason", WasteReason::Margin.as_str())],
            &[(Metric::SlotsWasted, 3.0)],
            1,
        );
        assert_eq!(check_emf(&doc), Ok(()));
        assert_eq!(doc["Reason"], "margin");
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Pool", "Reason"]])
        );
        let skew = document(None, &[(Metric::ClockSkewSeconds, 31.0)], 1);
        assert_eq!(check_emf(&skew), Ok(()));
        assert_eq!(skew["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"], "Seconds");
    }

    #[test]
    fn a_refusal_report_is_counted_by_pool_and_whether_ssm_confirmed_it() {
        for (confirmed, value) in [(true, "true"), (false, "false")] {
            let doc = document_with(
                &refusal_dimensions("web", confirmed),
                &[(Metric::RegistrationRefused, 1.0)],
                1,
            );
            assert_eq!(check_emf(&doc), Ok(()));
            assert_eq!(
                doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
                json!([["Pool", "Confirmed"]])
            );
            assert_eq!(doc["Confirmed"], value);
            assert_eq!(doc["RegistrationRefused"], 1.0);
        }
    }

    #[test]
    fn the_checker_refuses_what_the_specification_refuses() {
        let good = document(Some("p"), &[(Metric::Vends, 1.0)], 1);
        let mut no_value = good.clone();
        no_value.as_object_mut().unwrap().remove("Vends");
        let mut string_timestamp = good.clone();
        string_timestamp["_aws"]["Timestamp"] = json!("now");
        let mut missing_dimension = good.clone();
        missing_dimension.as_object_mut().unwrap().remove("Pool");
        let mut bad_unit = good.clone();
        bad_unit["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = json!("Things");
        for bad in [no_value, string_timestamp, missing_dimension, bad_unit] {
            assert!(check_emf(&bad).is_err(), "{bad}");
        }
    }
}
