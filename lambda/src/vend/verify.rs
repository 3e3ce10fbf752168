//! Whether SSM still honours an activation, asked at most once per verify interval
//! per process, with concurrent checks of one activation collapsed into one call.
//!
//! Three rules (DESIGN.md, "Trusting an activation"):
//! * a bad verdict is remembered for as long as the process lives: a pool that has
//!   moved on never asks about that activation again, and one that has not yet
//!   (lease busy, CreateActivation failing) must not hand it out meanwhile;
//! * an activation committed less than an interval ago counts as checked at its
//!   commit, so a storm of cold processes right after a rotation costs no calls;
//!   an older one is checked before this process first hands it out;
//! * the check is advisory: when SSM cannot answer (throttled, unavailable), the
//!   vend goes ahead and the check is tried again after a short pause.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::aws::activations::ActivationService;
use crate::clock::EpochSecs;
use crate::error::VendError;
use crate::pool::state::RotationReason;

/// How long a failed check is not repeated (at most the verify interval).
const FAILED_CHECK_PAUSE: Duration = Duration::from_secs(5);

/// Activations a process keeps verdicts on; only the current one and a few retired
/// ones ever matter.
const CAPACITY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Handed out without asking until `until`; `asked_at`: when SSM said it works
    /// (`None`: trusted on its commit, never asked).
    Good {
        until: Instant,
        asked_at: Option<Instant>,
    },
    /// SSM could not answer at `at`: vends go ahead until `until`.
    Unanswered {
        until: Instant,
        at: Instant,
    },
    Dead(RotationReason),
}

/// How old an SSM answer a refusal report may be answered with: what SSM said at
/// most this long before the report arrived (or after it: the check the report
/// waited behind). Longer would trust a "good" answer the refusal contradicts;
/// shorter would ask SSM once per report of one burst.
pub const REPORT_FRESHNESS: Duration = Duration::from_secs(5);

/// Whether an answer SSM gave at `asked_at` is fresh enough for a report that
/// arrived at `arrived`.
pub fn fresh_for_report(asked_at: Instant, arrived: Instant) -> bool {
    asked_at + REPORT_FRESHNESS >= arrived
}

type Slot = Arc<tokio::sync::Mutex<Option<Verdict>>>;

/// How a usable activation passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Without a call: a verdict or a trusted time within the interval, or SSM could
    /// not answer (the vend goes ahead).
    Trusted,
    /// SSM said just now that it works.
    Asked,
}

/// When the service last knew the current activation good without this process
/// asking: its commit, or a check another process noted on the pool item, whichever
/// is later. A note from a predecessor's check is older than this activation's
/// commit, so it never lends trust beyond the commit's (the promotion drops it).
pub fn trust_anchor(committed_at: EpochSecs, checked_at: EpochSecs) -> EpochSecs {
    committed_at.max(checked_at)
}

pub struct ActivationChecks {
    activations: ActivationService,
    interval: Duration,
    verdicts: Mutex<HashMap<String, Slot>>,
    failed_checks: AtomicU64,
}

/// How long an activation committed at `committed_at` may go unchecked from `now`:
/// the rest of one interval after its commit, or nothing for an older (or unknown)
/// commit.
pub fn trusted_for(committed_at: EpochSecs, now: EpochSecs, interval: Duration) -> Duration {
    if committed_at <= 0 || committed_at > now {
        return Duration::ZERO;
    }
    let age = Duration::from_secs(u64::try_from(now - committed_at).unwrap_or(u64::MAX));
    interval.saturating_sub(age)
}

impl ActivationChecks {
    pub fn new(activations: ActivationService, interval: Duration) -> Self {
        Self {
            activations,
            interval,
            verdicts: Mutex::new(HashMap::new()),
            failed_checks: AtomicU64::new(0),
        }
    }

    /// `Ok` when the activation may be handed out (`Asked`: SSM just said so, worth
    /// noting for other processes), else why the pool must rotate. `trusted_since`:
    /// when this service last knew it good without this process asking, its commit
    /// or another process's check (`trust_anchor`).
    pub async fn usable(
        &self,
        activation_id: &str,
        trusted_since: EpochSecs,
        now: EpochSecs,
    ) -> Result<Checked, RotationReason> {
        let slot = self.slot(activation_id);
        // Held across the call to SSM: a concurrent check of the same activation waits
        // here and then reads the verdict this one wrote.
        let mut verdict = slot.lock().await;
        let at = Instant::now();
        match *verdict {
            Some(Verdict::Dead(reason)) => return Err(reason),
            Some(Verdict::Good { until, .. } | Verdict::Unanswered { until, .. }) if at < until => {
                return Ok(Checked::Trusted)
            }
            // Nothing of our own, or ours ran out: a commit or another process's
            // check within the interval is trusted as our own answer would be.
            _ => {
                let trust = trusted_for(trusted_since, now, self.interval);
                if !trust.is_zero() {
                    *verdict = Some(Verdict::Good {
                        until: at + trust,
                        asked_at: None,
                    });
                    return Ok(Checked::Trusted);
                }
            }
        }
        match self.activations.still_works(activation_id).await {
            Ok(true) => {
                *verdict = Some(Verdict::Good {
                    until: at + self.interval,
                    asked_at: Some(Instant::now()),
                });
                Ok(Checked::Asked)
            }
            Ok(false) => {
                tracing::warn!(
                    activation_id,
                    "SSM no longer honours this activation (deleted, expired or full); rotating"
                );
                *verdict = Some(Verdict::Dead(RotationReason::DeletedOutOfBand));
                Err(RotationReason::DeletedOutOfBand)
            }
            Err(e) => {
                let failed_checks = self.failed_checks.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    activation_id,
                    error = %e,
                    failed_checks,
                    "could not check the activation with SSM; vending it anyway"
                );
                *verdict = Some(Verdict::Unanswered {
                    until: at + self.interval.min(FAILED_CHECK_PAUSE),
                    at: Instant::now(),
                });
                Ok(Checked::Trusted)
            }
        }
    }

    /// A refusal report's check: `Ok(true)` when SSM still honours the activation,
    /// `Ok(false)` when it does not (remembered, as `usable` remembers it). Asks SSM
    /// unless an answer fresh for a report that `arrived` then is known
    /// (`fresh_for_report`): concurrent reports wait for one call and share its
    /// answer, its failure included (`Err`).
    pub async fn recheck(&self, activation_id: &str, arrived: Instant) -> Result<bool, VendError> {
        let slot = self.slot(activation_id);
        let mut verdict = slot.lock().await;
        // Condemned for another reason (its code is gone): still SSM's to confirm,
        // and still never handed out here.
        let condemned = matches!(*verdict, Some(Verdict::Dead(_)));
        match *verdict {
            Some(Verdict::Dead(RotationReason::DeletedOutOfBand)) => return Ok(false),
            Some(Verdict::Good {
                asked_at: Some(asked_at),
                ..
            }) if fresh_for_report(asked_at, arrived) => return Ok(true),
            Some(Verdict::Unanswered { at, .. }) if at >= arrived => return Err(unanswered()),
            _ => {}
        }
        let asked = Instant::now();
        match self.activations.still_works(activation_id).await {
            Ok(true) if condemned => Ok(true),
            Ok(true) => {
                *verdict = Some(Verdict::Good {
                    until: asked + self.interval,
                    asked_at: Some(Instant::now()),
                });
                Ok(true)
            }
            Ok(false) => {
                *verdict = Some(Verdict::Dead(RotationReason::DeletedOutOfBand));
                Ok(false)
            }
            Err(e) => {
                let failed_checks = self.failed_checks.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    activation_id,
                    error = %e,
                    failed_checks,
                    "could not check a refused activation with SSM"
                );
                if !condemned {
                    *verdict = Some(Verdict::Unanswered {
                        until: asked + self.interval.min(FAILED_CHECK_PAUSE),
                        at: Instant::now(),
                    });
                }
                Err(e)
            }
        }
    }

    /// Records that the activation cannot be handed out, for `reason`.
    pub async fn condemn(&self, activation_id: &str, reason: RotationReason) {
        *self.slot(activation_id).lock().await = Some(Verdict::Dead(reason));
    }

    fn slot(&self, activation_id: &str) -> Slot {
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = verdicts.get(activation_id) {
            return slot.clone();
        }
        if verdicts.len() >= CAPACITY {
            // Forget good verdicts first (they cost one call to learn again); bad ones
            // are what keeps a dead activation from being handed out.
            verdicts.retain(|_, slot| {
                !matches!(
                    slot.try_lock().map(|v| *v),
                    Ok(Some(Verdict::Good { .. } | Verdict::Unanswered { .. }))
                )
            });
            if verdicts.len() >= CAPACITY {
                verdicts.clear();
            }
        }
        verdicts.entry(activation_id.to_owned()).or_default().clone()
    }
}

/// Which refused activations this process has retired (`vend/refusal.rs`): one
/// report per activation retires it and drops its records; the others of its burst
/// wait for that one and do nothing again. Past `CAPACITY` activations it forgets
/// them all (one more report then costs one more look at the pool and the records).
#[derive(Default)]
pub struct Retirements {
    activations: Mutex<HashMap<String, Arc<tokio::sync::Mutex<bool>>>>,
}

impl Retirements {
    /// The activation's flag (`true` once retired), behind the mutex its retirement holds.
    pub fn slot(&self, activation_id: &str) -> Arc<tokio::sync::Mutex<bool>> {
        let mut activations = self.activations.lock().unwrap_or_else(|p| p.into_inner());
        if activations.len() >= CAPACITY && !activations.contains_key(activation_id) {
            activations.clear();
        }
        activations.entry(activation_id.to_owned()).or_default().clone()
    }
}

/// What the reports that waited behind a check SSM did not answer are told.
fn unanswered() -> VendError {
    VendError::Unavailable {
        operation: "SSM.DescribeActivations",
        detail: "the check of the refused activation got no answer".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_fresh_commit_is_trusted_for_the_rest_of_one_interval() {
        assert_eq!(trusted_for(1_000, 1_000, MINUTE), MINUTE);
        assert_eq!(trusted_for(1_000, 1_045, MINUTE), Duration::from_secs(15));
    }

    #[test]
    fn another_process_s_recent_check_is_trusted_as_a_fresh_commit_is() {
        let anchor = trust_anchor(1_000, 1_100);
        assert_eq!(trusted_for(anchor, 1_120, MINUTE), Duration::from_secs(40));
        assert_eq!(
            trust_anchor(1_000, 900),
            1_000,
            "a predecessor's check, older than the commit, lends nothing"
        );
        assert_eq!(trust_anchor(1_000, 0), 1_000, "never checked");
    }

    #[test]
    fn a_report_is_answered_with_what_ssm_said_shortly_before_or_after_it_arrived() {
        let arrived = Instant::now() + Duration::from_secs(60);
        assert!(fresh_for_report(arrived, arrived));
        assert!(
            fresh_for_report(arrived + MINUTE, arrived),
            "the check it waited behind"
        );
        assert!(fresh_for_report(arrived - REPORT_FRESHNESS, arrived));
        assert!(
            !fresh_for_report(arrived - REPORT_FRESHNESS - Duration::from_millis(1), arrived),
            "an older good answer is asked again"
        );
    }

    #[test]
    fn an_old_or_unknown_commit_is_checked_before_first_use() {
        assert_eq!(trusted_for(1_000, 1_060, MINUTE), Duration::ZERO);
        assert_eq!(trusted_for(1_000, 9_000, MINUTE), Duration::ZERO);
        assert_eq!(
            trusted_for(0, 1_000, MINUTE),
            Duration::ZERO,
            "written before commits were timed"
        );
        assert_eq!(
            trusted_for(2_000, 1_000, MINUTE),
            Duration::ZERO,
            "a clock in the future"
        );
        assert_eq!(trusted_for(1_000, 1_000, Duration::ZERO), Duration::ZERO);
    }
}
