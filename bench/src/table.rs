//! The readable table (`summary.txt`, `<scenario>.txt`, printed): one line a figure,
//! its target where the issue sets one, and whether this run met it. Targets are
//! reported, never enforced.

use serde::Serialize;
use serde_json::Value;

use crate::summary::Summary;

/// A figure as it appears in the JSON: `-` for `null`, strings bare, numbers and the
/// rest as JSON writes them.
fn show<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v).unwrap_or(Value::Null) {
        Value::Null => "-".into(),
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    }
}

/// One line of the table: name, value, target, verdict.
type Row = (&'static str, String, &'static str, &'static str);

fn rows(r: &Summary) -> Vec<Row> {
    let vends = r.vends as f64;
    // In `steady` no vend should wait for a rotation; elsewhere under 5%.
    let steady = r.scenario == "steady";
    let waited = r.vends_waited_for_rotation as f64;
    let (waited_target, waited_ok) = if steady {
        ("0", waited == 0.0)
    } else {
        ("< 5% vends", waited < 0.05 * vends.max(1.0))
    };
    let met = |ok: bool| verdict(Some(ok));
    vec![
        ("vends", show(&r.vends), "", ""),
        (
            "failed_requests",
            show(&r.failed_requests),
            "0",
            met(r.failed_requests == 0),
        ),
        ("activations_created", show(&r.activations_created), "", ""),
        (
            "max_vends_per_activation",
            show(&r.max_vends_per_activation),
            "<= limit",
            met(r.max_vends_per_activation <= u64::from(r.registration_limit)),
        ),
        ("registration_limit", show(&r.registration_limit), "", ""),
        (
            "hot_path_aws_calls_per_vend",
            show(&r.hot_path_aws_calls_per_vend),
            "<= 1.05",
            met(r.hot_path_aws_calls_per_vend <= 1.05),
        ),
        (
            "aws_calls_per_vend_overall",
            show(&r.aws_calls_per_vend_overall.total),
            "",
            "",
        ),
        ("latency_ms p50", show(&r.latency_ms.p50), "", ""),
        ("latency_ms p90", show(&r.latency_ms.p90), "", ""),
        ("latency_ms p99", show(&r.latency_ms.p99), "", ""),
        ("latency_ms max", show(&r.latency_ms.max), "", ""),
        ("emulator_call_ms_p50", show(&r.emulator_call_ms_p50), "", ""),
        (
            "server_cpu_us_per_vend",
            show(&r.server_cpu_us_per_vend),
            "< 300",
            met(r.server_cpu_us_per_vend < 300.0),
        ),
        (
            "server_peak_rss_mb",
            show(&r.server_peak_rss_mb),
            "< 40",
            met(r.server_peak_rss_mb < 40.0),
        ),
        (
            "cold_start_ms",
            show(&r.cold_start_ms),
            "< 100",
            verdict(r.cold_start_ms.map(|v| v < 100.0)),
        ),
        ("first_vend_ms", show(&r.first_vend_ms), "", ""),
        (
            "vends_waited_for_rotation",
            show(&r.vends_waited_for_rotation),
            waited_target,
            met(waited_ok),
        ),
        (
            "slots_wasted",
            show(&r.slots_wasted),
            "< 2% vends",
            met((r.slots_wasted as f64) < 0.02 * vends.max(1.0)),
        ),
        (
            "dynamodb_writes_per_vend",
            show(&r.dynamodb_writes_per_vend),
            "<= 0.3",
            met(r.dynamodb_writes_per_vend <= 0.3),
        ),
    ]
}

/// The table of one scenario, with a header line and two lines of details below.
pub fn table(r: &Summary) -> String {
    let mut out = format!(
        "scenario {} · {} servers · {} clients · {} · {} cores, {}\n",
        r.scenario, r.servers, r.clients, r.date, r.machine.cores, r.machine.cpu_model,
    );
    out.push_str(&format!("{:<36} {:>10}  {:<9} verdict\n", "figure", "value", "target"));
    for (name, value, target, verdict) in rows(r) {
        let line = format!("{name:<36} {value:>10}  {target:<9} {verdict}");
        out.push_str(line.trim_end());
        out.push('\n');
        if name == "aws_calls_per_vend_overall" {
            for (op, v) in &r.aws_calls_per_vend_overall.by_operation {
                out.push_str(&format!("  {:<34} {:>10}\n", format!("{op} per vend"), show(v)));
            }
        }
    }
    let d = &r.details;
    out.push_str(&format!(
        "main phase {} s ({} vends/s), client retries {}, HTTP {}; hot-path phase {} vends, {} s\n",
        show(&d.duration_s),
        show(&d.vends_per_s),
        d.client_retries,
        show(&d.http_statuses),
        d.hot_path_phase.vends,
        show(&d.hot_path_phase.duration_s),
    ));
    out.push_str(&format!(
        "server CPU per request (us): hot-path vend {}, /health alone {}, vend with keep-alive to AWS {}\n",
        show(&d.hot_path_phase.server_cpu_us_per_vend),
        show(&d.hot_path_phase.server_cpu_us_per_health_request),
        show(&d.keepalive_upstream_phase.server_cpu_us_per_vend),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_of<'a>(table: &'a str, figure: &str) -> &'a str {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{figure} ")))
            .unwrap_or_else(|| panic!("no {figure} line in\n{table}"));
        line.rsplit(' ').next().unwrap_or_default()
    }

    fn sample() -> Summary {
        Summary {
            scenario: "steady",
            vends: 10,
            failed_requests: 1,
            registration_limit: 100,
            max_vends_per_activation: 100,
            hot_path_aws_calls_per_vend: 1.0,
            server_cpu_us_per_vend: 400.0,
            server_peak_rss_mb: 10.0,
            cold_start_ms: Some(5.0),
            ..Summary::default()
        }
    }

    #[test]
    fn the_table_marks_missed_targets() {
        let t = table(&sample());
        assert_eq!(verdict_of(&t, "failed_requests"), "MISSED");
        assert_eq!(verdict_of(&t, "server_cpu_us_per_vend"), "MISSED");
        assert_eq!(verdict_of(&t, "hot_path_aws_calls_per_vend"), "met");
        assert_eq!(verdict_of(&t, "max_vends_per_activation"), "met");
        assert_eq!(verdict_of(&t, "cold_start_ms"), "met");
    }

    #[test]
    fn waiting_for_a_rotation_is_a_miss_in_steady_only() {
        let mut r = sample();
        r.vends = 100;
        r.vends_waited_for_rotation = 4;
        assert_eq!(verdict_of(&table(&r), "vends_waited_for_rotation"), "MISSED");
        r.scenario = "storm-with-rotation";
        assert_eq!(
            verdict_of(&table(&r), "vends_waited_for_rotation"),
            "met",
            "4 of 100 < 5%"
        );
    }

    #[test]
    fn values_read_as_in_the_json_and_a_missing_one_as_a_dash() {
        let mut r = sample();
        r.cold_start_ms = None;
        r.details.http_statuses.insert(200, 10);
        let t = table(&r);
        let line = |figure: &str| t.lines().find(|l| l.starts_with(figure)).unwrap().to_owned();
        assert!(line("cold_start_ms").contains(" - "), "{}", line("cold_start_ms"));
        assert!(line("cold_start_ms").ends_with("< 100"), "no verdict without a value");
        assert!(line("server_cpu_us_per_vend").contains("400.0"), "floats keep their .0");
        assert!(t.contains(r#"HTTP {"200":10}"#), "{t}");
    }
}
