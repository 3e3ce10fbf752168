//! Figures computed from what a phase counted: CPU and memory of the servers, AWS
//! calls per vend, and the slots of activations the run left unused.

use std::collections::{BTreeMap, HashMap};

use crate::emulator::Calls;
use crate::procfs;
use crate::stats::per;
use crate::summary::PerVend;

/// Every vend of the run so far, by activation ID.
pub type VendCounts = HashMap<String, u64>;

/// User + system CPU of the processes, in microseconds.
pub fn cpu_total(pids: &[u32], ticks: u64) -> Result<u64, String> {
    pids.iter()
        .map(|&pid| procfs::cpu_us(pid, ticks).ok_or_else(|| format!("cannot read /proc/{pid}/stat")))
        .sum()
}

/// The largest peak RSS (VmHWM) of the processes, in MiB.
pub fn peak_rss_mb(pids: &[u32]) -> f64 {
    let kb = pids
        .iter()
        .filter_map(|&pid| procfs::peak_rss_kb(pid))
        .max()
        .unwrap_or(0);
    kb as f64 / 1024.0
}

/// All calls of a window.
pub fn total(calls: &Calls) -> u64 {
    calls.values().sum()
}

/// AWS calls per vend, in all and by operation.
pub fn per_vend(calls: &Calls, vends: u64) -> PerVend {
    let by_operation: BTreeMap<String, f64> = calls
        .iter()
        .map(|(op, n)| (op.clone(), per(*n as f64, vends, 4)))
        .collect();
    PerVend {
        total: per(total(calls) as f64, vends, 4),
        by_operation,
    }
}

/// Slots of activations the run moved past that nobody was handed: every vended
/// activation but the newest, its limit minus its vends.
pub fn slots_wasted(order: &[(String, u64)], vended: &VendCounts) -> u64 {
    let used: Vec<&(String, u64)> = order.iter().filter(|(id, _)| vended.contains_key(id)).collect();
    used.iter()
        .take(used.len().saturating_sub(1))
        .map(|(id, limit)| limit.saturating_sub(vended[id]))
        .sum()
}

/// Conditional writes DynamoDB took.
pub fn dynamodb_writes(calls: &Calls) -> u64 {
    [
        "DynamoDB.UpdateItem",
        "DynamoDB.PutItem",
        "DynamoDB.TransactWriteItems",
        "DynamoDB.DeleteItem",
    ]
    .iter()
    .filter_map(|op| calls.get(*op))
    .sum()
}

pub fn add_counts(into: &mut VendCounts, from: &VendCounts) {
    for (id, n) in from {
        *into.entry(id.clone()).or_default() += n;
    }
}

/// Activations that received more vends than their own limit (`limits` by ID).
pub fn over_their_limit(counts: &VendCounts, limits: &HashMap<String, u64>) -> usize {
    counts
        .iter()
        .filter(|(id, n)| limits.get(*id).is_some_and(|l| **n > *l))
        .count()
}

/// The most vends any activation of limit `limit` received.
pub fn max_vends_at_limit(counts: &VendCounts, limits: &HashMap<String, u64>, limit: u32) -> u64 {
    counts
        .iter()
        .filter(|(id, _)| limits.get(*id) == Some(&u64::from(limit)))
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(pairs: &[(&str, u64)]) -> Calls {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn counts(pairs: &[(&str, u64)]) -> VendCounts {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn only_the_slots_of_activations_the_run_moved_past_are_wasted() {
        let order = vec![
            ("a".to_owned(), 10),
            ("b".to_owned(), 10),
            ("standby".to_owned(), 10),
            ("c".to_owned(), 10),
        ];
        let vended = counts(&[("a", 10), ("b", 7), ("c", 2)]);
        assert_eq!(
            slots_wasted(&order, &vended),
            3,
            "b retired with 3 slots unused; c is current"
        );
        assert_eq!(slots_wasted(&order, &HashMap::new()), 0);
    }

    #[test]
    fn dynamodb_writes_count_every_write_operation_and_no_read() {
        let c = calls(&[
            ("DynamoDB.UpdateItem", 10),
            ("DynamoDB.TransactWriteItems", 2),
            ("DynamoDB.GetItem", 5),
            ("SSM.GetParameter", 3),
        ]);
        assert_eq!(dynamodb_writes(&c), 12);
    }

    #[test]
    fn calls_per_vend_are_rounded_to_four_places() {
        let p = per_vend(&calls(&[("DynamoDB.UpdateItem", 2), ("SSM.GetParameter", 1)]), 3);
        assert_eq!(p.total, 1.0);
        assert_eq!(p.by_operation["DynamoDB.UpdateItem"], 0.6667);
        assert_eq!(per_vend(&Calls::new(), 0).total, 0.0);
    }

    #[test]
    fn every_vend_counts_against_its_own_activation_s_limit() {
        let limits: HashMap<String, u64> = counts(&[("a", 10), ("b", 10), ("hot", 1000)]);
        let mut run = counts(&[("a", 10), ("b", 4)]);
        add_counts(&mut run, &counts(&[("b", 7), ("hot", 600)]));
        assert_eq!(run["b"], 11);
        assert_eq!(over_their_limit(&run, &limits), 1, "b got 11 of 10");
        assert_eq!(max_vends_at_limit(&run, &limits, 10), 11);
        assert_eq!(max_vends_at_limit(&run, &limits, 100), 0);
    }

    #[test]
    fn this_process_is_measurable() {
        let pid = std::process::id();
        assert!(cpu_total(&[pid], procfs::clock_ticks()).is_ok());
        assert!(peak_rss_mb(&[pid]) > 0.0);
        assert!(cpu_total(&[u32::MAX], 100).is_err());
    }
}
