//! Small numeric helpers: percentiles, medians, rounding, latency summaries.

use serde::Serialize;

/// Nearest-rank percentile of `sorted` (ascending); `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Rounds to `places` decimals, for JSON that people read.
pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// `{"p50","p90","p99","max"}` in milliseconds (two decimals), `null`s when there were
/// no samples.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

pub fn latency_summary(samples_ms: &[f64]) -> Latency {
    let mut sorted = samples_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| percentile(&sorted, p).map(|v| round(v, 2));
    Latency {
        p50: at(50.0),
        p90: at(90.0),
        p99: at(99.0),
        max: sorted.last().map(|v| round(*v, 2)),
    }
}

/// `part / whole` rounded to `places`, a zero `whole` counted as one (a per-vend figure
/// of a phase that vended nothing is its total).
pub fn per(part: f64, whole: u64, places: i32) -> f64 {
    round(part / whole.max(1) as f64, places)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_latency_summary_rounds_to_two_places_and_is_null_without_samples() {
        let l = latency_summary(&[3.0, 1.0, 2.004_9, 10.0]);
        assert_eq!(
            (l.p50, l.p90, l.p99, l.max),
            (Some(2.0), Some(10.0), Some(10.0), Some(10.0))
        );
        assert_eq!(latency_summary(&[]), Latency::default());
        assert_eq!(
            serde_json::to_string(&Latency::default()).unwrap(),
            r#"{"p50":null,"p90":null,"p99":null,"max":null}"#
        );
    }

    #[test]
    fn per_vend_figures_divide_by_at_least_one() {
        assert_eq!(per(7.0, 2, 1), 3.5);
        assert_eq!(per(7.0, 0, 1), 7.0);
        assert_eq!(per(1.0, 3, 4), 0.3333);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
