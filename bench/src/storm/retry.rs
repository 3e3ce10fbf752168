//! What a booting server does after each answer, as scripts/bootstrap-linux.sh decides
//! it: pure functions of the answer, the time left and the random draws (passed in), so
//! the tests need no network and no clock.

use std::time::Duration;

/// What an attempt got: an HTTP status with its `Retry-After` (whole seconds) and the
/// JSON body's `error.code`, or no answer at all (a connection failure or time-out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    Http {
        status: u16,
        retry_after: Option<u64>,
        code: Option<&'a str>,
    },
    NoAnswer,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A 200: the step is done.
    Done,
    /// Ask again after this long.
    Wait(Duration),
    /// Stop: the script exits (a vend) or warns (a report).
    GiveUp(&'static str),
}

/// The script's backoff for connection failures and 5xx: equal jitter (half fixed,
/// half random), starting at 1 s and doubling up to 16 s (`backoff_next_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    next_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next_ms: 1000 }
    }
}

impl Backoff {
    /// The next pause; `random` is bash's `$RANDOM` (0..32768).
    pub fn next(&mut self, random: u64) -> Duration {
        let half = self.next_ms / 2;
        let wait = half + random.min(32_767) * half / 32_768;
        self.next_ms = if self.next_ms < 16_000 {
            self.next_ms * 2
        } else {
            16_000
        };
        Duration::from_millis(wait)
    }
}

/// The random draws one decision may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draws {
    /// 0..1000: added to a `Retry-After` ("up to 1 s of jitter").
    pub jitter_ms: u64,
    /// 0..32768: the backoff's random half.
    pub random: u64,
}

/// After one `GET /activation` (`fetch_activation`): a 200 is done; the pool's own
/// verdicts (404 PoolNotFound, 403 PoolDisabled/Forbidden, 500 PoolMisconfigured) and
/// every other 4xx are final; 429 and 503 wait `Retry-After` plus up to 1 s of jitter
/// (the backoff when there is no header); 500, 502, 504 and no answer take the backoff.
/// A pause never runs past the `--max-wait` deadline (`remaining`).
pub fn after_vend_attempt(answer: Answer, backoff: &mut Backoff, draws: Draws, remaining: Duration) -> Next {
    let wait = match answer {
        Answer::Http { status: 200, .. } => return Next::Done,
        Answer::Http {
            status: 404,
            code: Some("PoolNotFound"),
            ..
        } => return Next::GiveUp("404 PoolNotFound"),
        Answer::Http {
            status: 403,
            code: Some("PoolDisabled"),
            ..
        } => return Next::GiveUp("403 PoolDisabled"),
        Answer::Http {
            status: 500,
            code: Some("PoolMisconfigured"),
            ..
        } => return Next::GiveUp("500 PoolMisconfigured"),
        Answer::Http {
            status: 429 | 503,
            retry_after: Some(seconds),
            ..
        } => Duration::from_secs(seconds) + Duration::from_millis(draws.jitter_ms.min(999)),
        Answer::Http {
            status: 429 | 503 | 500 | 502 | 504,
            ..
        }
        | Answer::NoAnswer => backoff.next(draws.random),
        Answer::Http { status: 400..=499, .. } => return Next::GiveUp("refused by the service (4xx)"),
        Answer::Http { .. } => return Next::GiveUp("unexpected answer from the service"),
    };
    // The script: a pause of at least the whole seconds left is cut to what is left.
    if wait.as_secs() >= remaining.as_secs() {
        Next::Wait(remaining)
    } else {
        Next::Wait(wait)
    }
}

/// The script's whole budget for one report (`REPORT_WAIT`), retries included.
pub const REPORT_WAIT: Duration = Duration::from_secs(6);

/// After one `POST /registrations` (`post_registration`): 200 done; 429 and 503 wait
/// `Retry-After` (1 s without one), no answer 1 s; anything else is the answer (a
/// warning). A pause that would not end before the report's deadline gives up.
pub fn after_report_attempt(answer: Answer, remaining: Duration) -> Next {
    let pause = match answer {
        Answer::Http { status: 200, .. } => return Next::Done,
        Answer::Http {
            status: 429 | 503,
            retry_after,
            ..
        } => Duration::from_secs(retry_after.unwrap_or(1)),
        Answer::Http { .. } => return Next::GiveUp("the service did not take the report"),
        Answer::NoAnswer => Duration::from_secs(1),
    };
    if pause.as_secs() < remaining.as_secs() {
        Next::Wait(pause)
    } else {
        Next::GiveUp("no answer within the report's 6 s")
    }
}

/// The refusals the script reports and then asks for an activation once more.
pub fn healable_refusal(code: &str) -> bool {
    matches!(
        code,
        "InvalidActivation" | "ActivationExpired" | "RegistrationLimitExceeded"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_DRAWS: Draws = Draws {
        jitter_ms: 0,
        random: 0,
    };
    const PLENTY: Duration = Duration::from_secs(120);

    fn http(status: u16, retry_after: Option<u64>, code: Option<&str>) -> Answer<'_> {
        Answer::Http {
            status,
            retry_after,
            code,
        }
    }

    fn vend(answer: Answer, draws: Draws) -> Next {
        after_vend_attempt(answer, &mut Backoff::default(), draws, PLENTY)
    }

    #[test]
    fn a_throttled_vend_waits_retry_after_plus_up_to_a_second_of_jitter() {
        let draws = Draws {
            jitter_ms: 250,
            random: 0,
        };
        assert_eq!(
            vend(http(429, Some(1), Some("Throttled")), draws),
            Next::Wait(Duration::from_millis(1250))
        );
        assert_eq!(
            vend(http(503, Some(3), Some("NoActivationYet")), draws),
            Next::Wait(Duration::from_millis(3250))
        );
        let most = Draws {
            jitter_ms: 5000,
            random: 0,
        };
        assert_eq!(
            vend(http(503, Some(2), None), most),
            Next::Wait(Duration::from_millis(2999))
        );
    }

    #[test]
    fn a_503_without_retry_after_and_other_5xx_and_no_answer_take_the_doubling_backoff() {
        let mut backoff = Backoff::default();
        let all = Draws {
            jitter_ms: 0,
            random: 32_767,
        };
        let waits: Vec<Next> = [
            http(503, None, None),
            http(500, None, None),
            http(502, None, None),
            http(504, None, None),
            Answer::NoAnswer,
            Answer::NoAnswer,
        ]
        .into_iter()
        .map(|a| after_vend_attempt(a, &mut backoff, NO_DRAWS, PLENTY))
        .collect();
        let ms = |m| Next::Wait(Duration::from_millis(m));
        assert_eq!(waits, vec![ms(500), ms(1000), ms(2000), ms(4000), ms(8000), ms(8000)]);
        let mut fresh = Backoff::default();
        assert_eq!(
            fresh.next(all.random),
            Duration::from_millis(999),
            "half fixed, half random"
        );
    }

    #[test]
    fn the_pool_s_verdicts_and_other_4xx_are_final() {
        for answer in [
            http(404, None, Some("PoolNotFound")),
            http(403, None, Some("PoolDisabled")),
            http(403, None, Some("Forbidden")),
            http(500, None, Some("PoolMisconfigured")),
            http(400, None, Some("InvalidParameter")),
            http(401, None, None),
            http(404, None, None),
            http(301, None, None),
        ] {
            assert!(matches!(vend(answer, NO_DRAWS), Next::GiveUp(_)), "{answer:?}");
        }
        assert_eq!(vend(http(200, None, None), NO_DRAWS), Next::Done);
    }

    #[test]
    fn a_pause_never_runs_past_max_wait() {
        let left = Duration::from_millis(2500);
        assert_eq!(
            after_vend_attempt(http(429, Some(5), None), &mut Backoff::default(), NO_DRAWS, left),
            Next::Wait(left)
        );
        assert_eq!(
            after_vend_attempt(http(429, Some(1), None), &mut Backoff::default(), NO_DRAWS, left),
            Next::Wait(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_report_follows_retry_after_within_six_seconds_and_takes_anything_else_as_its_answer() {
        let six = REPORT_WAIT;
        assert_eq!(after_report_attempt(http(200, None, None), six), Next::Done);
        assert_eq!(
            after_report_attempt(http(429, Some(2), None), six),
            Next::Wait(Duration::from_secs(2))
        );
        assert_eq!(
            after_report_attempt(http(503, None, None), six),
            Next::Wait(Duration::from_secs(1))
        );
        assert_eq!(
            after_report_attempt(Answer::NoAnswer, six),
            Next::Wait(Duration::from_secs(1))
        );
        assert!(matches!(
            after_report_attempt(http(429, Some(6), None), six),
            Next::GiveUp(_)
        ));
        assert!(matches!(
            after_report_attempt(http(403, None, Some("NotConfirmable")), six),
            Next::GiveUp(_)
        ));
        assert!(matches!(
            after_report_attempt(http(500, None, None), six),
            Next::GiveUp(_)
        ));
    }

    #[test]
    fn only_ssm_s_healable_refusals_are_asked_again() {
        assert!(healable_refusal("InvalidActivation"));
        assert!(healable_refusal("ActivationExpired"));
        assert!(healable_refusal("RegistrationLimitExceeded"));
        assert!(!healable_refusal("ValidationException"));
    }
}
