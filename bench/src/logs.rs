//! What the servers' logs (`LOCAL_STATE_DIR/logs/vending-N.log`) say about a phase:
//! the rotations they made and the vends that waited for one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::local::Local;
use crate::scenario::Scenario;
use crate::stats::latency_summary;
use crate::summary::Rotations;

fn log_path(local: &Local, server: usize) -> PathBuf {
    local.state_dir.join(format!("logs/vending-{server}.log"))
}

fn read_log(local: &Local, server: usize) -> String {
    std::fs::read_to_string(log_path(local, server)).unwrap_or_default()
}

/// The rotations the servers logged (`rotated` lines): how many, why, and how long
/// CreateActivation → PutParameter → commit took.
pub fn rotations_logged(local: &Local, servers: usize) -> Rotations {
    let text: String = (1..=servers).map(|i| read_log(local, i)).collect::<Vec<_>>().join("\n");
    let (by_reason, elapsed) = parse_rotations(&text);
    Rotations {
        count: elapsed.len(),
        by_reason,
        create_to_commit_ms: latency_summary(&elapsed),
    }
}

/// `rotated` log lines → (count by reason, elapsed_ms of each).
fn parse_rotations(text: &str) -> (BTreeMap<String, u64>, Vec<f64>) {
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut elapsed = Vec::new();
    for line in text.lines().filter(|l| l.contains(" rotated ")) {
        if let Some(start) = line.find(" reason=") {
            let rest = &line[start + " reason=".len()..];
            let reason = rest.find(" limit=").map_or(rest, |end| &rest[..end]);
            *reasons.entry(reason.trim_matches('"').to_owned()).or_default() += 1;
        }
        if let Some(start) = line.find(" elapsed_ms=") {
            let rest = &line[start + " elapsed_ms=".len()..];
            if let Ok(ms) = rest.split_whitespace().next().unwrap_or_default().parse::<f64>() {
                elapsed.push(ms);
            }
        }
    }
    (reasons, elapsed)
}

/// The servers' logs as they stand, to read only what a phase adds.
pub fn log_lengths(local: &Local, servers: usize) -> Vec<usize> {
    (1..=servers).map(|i| read_log(local, i).len()).collect()
}

/// The next phase restarts the servers over their logs: keep the main phase's as
/// `logs/<scenario>-vending-N.log` for reading afterwards.
pub fn keep_main_phase_logs(local: &Local, scenario: Scenario, servers: usize) {
    for i in 1..=servers {
        let kept = local
            .state_dir
            .join(format!("logs/{}-vending-{i}.log", scenario.name()));
        let _ = std::fs::copy(log_path(local, i), kept);
    }
}

/// `vended` lines written since `from` (one length per server, from [`log_lengths`])
/// that say the request waited for a rotation.
pub fn vends_waited(local: &Local, from: &[usize]) -> u64 {
    from.iter()
        .enumerate()
        .map(|(i, start)| waited_lines(read_log(local, i + 1).get(*start..).unwrap_or_default()))
        .sum()
}

fn waited_lines(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains("vended") && l.contains("waited_for_rotation=true"))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_lines_are_read_from_the_logs() {
        let log = "\
2026-11-26T23:55:42Z  INFO rotated pool=\"default\" activation_id=a reason=no activation limit=100 expires_at=1 parameter_version=1 elapsed_ms=73
2026-11-26T23:55:43Z  INFO vended pool=default activation_id=a instance=\"-\" elapsed_ms=5
2026-11-26T23:55:44Z  INFO rotated pool=\"default\" activation_id=b reason=low-water mark limit=100 expires_at=1 parameter_version=2 elapsed_ms=21";
        let (reasons, elapsed) = parse_rotations(log);
        assert_eq!(elapsed, vec![73.0, 21.0]);
        assert_eq!(reasons.get("no activation"), Some(&1));
        assert_eq!(reasons.get("low-water mark"), Some(&1));
    }

    #[test]
    fn only_vended_lines_that_waited_count() {
        let log = "\
x INFO vended pool=default activation_id=a waited_for_rotation=true elapsed_ms=50
x INFO vended pool=default activation_id=a waited_for_rotation=false elapsed_ms=5
x INFO rotated pool=default waited_for_rotation=true";
        assert_eq!(waited_lines(log), 1);
    }

    #[test]
    fn a_phase_reads_only_what_it_added_to_the_logs() {
        let dir = std::env::temp_dir().join(format!("vending-bench-logs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let local = Local {
            root: dir.clone(),
            state_dir: dir.clone(),
        };
        let waited = "x INFO vended waited_for_rotation=true\n";
        std::fs::write(log_path(&local, 1), waited).unwrap();
        let before = log_lengths(&local, 2);
        assert_eq!(before, [waited.len(), 0], "a missing log is empty");
        std::fs::write(log_path(&local, 1), waited.repeat(3)).unwrap();
        std::fs::write(log_path(&local, 2), waited).unwrap();
        assert_eq!(vends_waited(&local, &before), 3);
        keep_main_phase_logs(&local, Scenario::Steady, 2);
        assert!(dir.join("logs/steady-vending-2.log").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
