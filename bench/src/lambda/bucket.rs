//! A token bucket with the time passed in: API Gateway's stage throttle (rate, burst)
//! and Lambda's scaling rate (1,000 new environments per 10 s) are both one.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// Full at `now`: a burst of `burst` passes at once, then `rate` a second.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if now > self.updated {
            let gained = now.duration_since(self.updated).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + gained).min(self.burst);
            self.updated = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn taken(bucket: &mut TokenBucket, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| bucket.take(now)).count()
    }

    #[test]
    fn a_full_bucket_passes_its_burst_then_refuses() {
        let start = Instant::now();
        let mut stage = TokenBucket::new(20.0, 50.0, start);
        assert_eq!(taken(&mut stage, start, 80), 50);
    }

    #[test]
    fn an_empty_bucket_gains_its_rate_a_second_and_never_more_than_its_burst() {
        let start = Instant::now();
        let mut stage = TokenBucket::new(20.0, 50.0, start);
        taken(&mut stage, start, 50);
        assert_eq!(taken(&mut stage, start + Duration::from_millis(500), 100), 10);
        assert_eq!(taken(&mut stage, start + Duration::from_secs(60), 100), 50);
    }

    #[test]
    fn lambdas_scaling_rate_starts_a_thousand_at_once_then_a_hundred_a_second() {
        let start = Instant::now();
        let mut scaling = TokenBucket::new(100.0, 1000.0, start);
        assert_eq!(taken(&mut scaling, start, 1500), 1000);
        assert_eq!(taken(&mut scaling, start + Duration::from_secs(2), 1500), 200);
    }
}
