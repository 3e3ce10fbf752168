//! The local clock against AWS's. Every condition on expiry uses the local clock:
//! a process whose clock is behind by more than the margin would hand out expired
//! activations, one ahead would take old pool configs for newer ones. So every AWS
//! answer's `Date` header is compared with the local clock (an SDK interceptor on
//! every client), and a process whose clock is off by more than the larger of 2 s
//! (the header's resolution is one second) and a quarter of the smallest expiry
//! margin in use stops vending (`503 ClockSkew`) until it agrees again.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;

use crate::error::VendError;

/// Below this, a difference is the header's one-second resolution and the answer's
/// travel time, not a wrong clock.
const MIN_ALLOWED_MS: i64 = 2_000;

/// The local clock less AWS's, in milliseconds, as of the last answer with a `Date`.
static SKEW_MS: AtomicI64 = AtomicI64::new(0);
static MEASURED: AtomicBool = AtomicBool::new(false);
/// The smallest expiry margin in use, in seconds (`i64::MAX` until one is known).
static SMALLEST_MARGIN_S: AtomicI64 = AtomicI64::new(i64::MAX);
/// Whether vending is stopped for skew, to log each change once.
static STOPPED: AtomicBool = AtomicBool::new(false);
static MEASURED_AT: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// Seconds since the Unix epoch. DynamoDB conditions compare these as numbers.
pub type EpochSecs = i64;

/// Seconds since the Unix epoch, by the local clock.
pub fn epoch_now() -> EpochSecs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as EpochSecs)
        .unwrap_or(0)
}

/// A duration in whole seconds, as the epoch arithmetic counts them.
pub(crate) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn local_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The local clock less the time of an answer dated `date` (an HTTP date, whole
/// seconds, so the middle of its second) that arrived at `local_ms`.
pub fn skew_ms(date: &str, local_ms: i64) -> Option<i64> {
    let server = DateTime::from_str(date, Format::HttpDate).ok()?;
    Some(local_ms - (server.secs() * 1_000 + 500))
}

/// How far the clock may be off with `smallest_margin_s` the smallest margin in use.
pub fn allowed_ms(smallest_margin_s: i64) -> i64 {
    MIN_ALLOWED_MS.max(smallest_margin_s.saturating_mul(1_000) / 4)
}

/// The decision, pure: `Err` when a measured skew is beyond what is allowed.
pub fn judge(skew_ms: Option<i64>, smallest_margin_s: i64) -> Result<(), VendError> {
    let allowed = allowed_ms(smallest_margin_s);
    match skew_ms {
        Some(skew) if skew.abs() > allowed => Err(VendError::ClockSkew {
            skew_s: skew / 1_000,
            allowed_s: allowed / 1_000,
        }),
        _ => Ok(()),
    }
}

/// Records an answer's `Date` header.
pub fn observe(date: &str) {
    if let Some(skew) = skew_ms(date, local_now_ms()) {
        SKEW_MS.store(skew, Ordering::Relaxed);
        MEASURED.store(true, Ordering::Relaxed);
        *MEASURED_AT.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

/// The last measured skew in seconds (local less AWS), if any answer was dated.
pub fn skew_s() -> Option<f64> {
    MEASURED
        .load(Ordering::Relaxed)
        .then(|| SKEW_MS.load(Ordering::Relaxed) as f64 / 1_000.0)
}

/// Counts `margin_s` among the margins in use.
pub fn margin_in_use(margin_s: i64) {
    SMALLEST_MARGIN_S.fetch_min(margin_s, Ordering::Relaxed);
}

/// How long ago the skew was last measured.
pub fn measured_ago() -> Option<std::time::Duration> {
    MEASURED_AT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|at| at.elapsed())
}

/// Whether this process may vend now; logs and counts each change of verdict.
pub fn check() -> Result<(), VendError> {
    let skew = MEASURED
        .load(Ordering::Relaxed)
        .then(|| SKEW_MS.load(Ordering::Relaxed));
    let verdict = judge(skew, SMALLEST_MARGIN_S.load(Ordering::Relaxed));
    let stopped = verdict.is_err();
    if STOPPED.swap(stopped, Ordering::Relaxed) != stopped {
        let skew_s = skew.unwrap_or(0) as f64 / 1_000.0;
        if stopped {
            tracing::error!(
                clock_skew_s = skew_s,
                "the local clock disagrees with AWS's; vending stops until it agrees"
            );
        } else {
            tracing::warn!(
                clock_skew_s = skew_s,
                "the local clock agrees with AWS's again; vending resumes"
            );
        }
    }
    if stopped {
        crate::metrics::emit(
            None,
            &[(
                crate::metrics::Metric::ClockSkewSeconds,
                skew.unwrap_or(0) as f64 / 1_000.0,
            )],
        );
    }
    verdict
}

/// Reads the `Date` header of every AWS answer (added to every client).
#[derive(Debug, Default)]
pub struct DateHeaderInterceptor;

impl Intercept for DateHeaderInterceptor {
    fn name(&self) -> &'static str {
        "DateHeaderInterceptor"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            observe(date);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skew_is_the_local_clock_less_the_middle_of_the_answer_s_second() {
        // 2026-12-07T01:00:00Z is 1_796_605_200.
        let date = "Mon, 07 Dec 2026 01:00:00 GMT";
        assert_eq!(skew_ms(date, 1_796_605_200_500), Some(0));
        assert_eq!(skew_ms(date, 1_796_605_170_500), Some(-30_000));
        assert_eq!(skew_ms("yesterday", 0), None);
    }

    #[test]
    fn at_least_2_s_or_a_quarter_of_the_smallest_margin_is_allowed() {
        assert_eq!(allowed_ms(4), 2_000);
        assert_eq!(allowed_ms(900), 225_000);
        assert_eq!(allowed_ms(i64::MAX), i64::MAX / 4);
        assert!(judge(Some(1_900), 4).is_ok());
        assert!(judge(None, 4).is_ok(), "nothing measured yet");
        match judge(Some(-30_000), 60) {
            Err(VendError::ClockSkew { skew_s, allowed_s }) => assert_eq!((skew_s, allowed_s), (-30, 15)),
            other => panic!("{other:?}"),
        }
        assert!(judge(Some(200_000), 900).is_ok());
    }
}
