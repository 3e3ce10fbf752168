//! The load generator: `clients` concurrent callers share `vends` vends, spread
//! round-robin over the servers. Each caller behaves like the boot scripts: it retries
//! a 503/429 after the server's `Retry-After` (and a connection failure or other 5xx
//! after a short backoff), a bounded number of times.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub urls: Vec<String>,
    pub clients: usize,
    pub vends: usize,
    /// Retries after the first attempt, per vend.
    pub max_retries: u32,
    /// Longest `Retry-After` honoured, in seconds.
    pub max_retry_after: u64,
    /// The whole phase stops issuing vends after this.
    pub deadline: Duration,
    /// False for a calibration run against /health: any 200 counts, no activation.
    pub vend: bool,
}

#[derive(Default, Debug)]
pub struct LoadResult {
    /// Per successful vend, first attempt to 200, retries included (ms).
    pub vend_ms: Vec<f64>,
    /// Per HTTP attempt that got an answer (ms).
    pub attempt_ms: Vec<f64>,
    pub per_activation: HashMap<String, u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub retries: u64,
    pub failed: u64,
    /// Vends never issued because the deadline passed.
    pub not_issued: u64,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn ok(&self) -> u64 {
        self.vend_ms.len() as u64
    }

    fn merge(&mut self, other: LoadResult) {
        self.vend_ms.extend(other.vend_ms);
        self.attempt_ms.extend(other.attempt_ms);
        for (id, n) in other.per_activation {
            *self.per_activation.entry(id).or_default() += n;
        }
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.retries += other.retries;
        self.failed += other.failed;
        self.not_issued += other.not_issued;
    }
}

/// A cheap xorshift for retry jitter (no need for a crate).
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A `Retry-After` in whole seconds, as the boot scripts read it.
pub fn retry_after_secs(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("http client: {e}"))
}

enum Outcome {
    Vended(String),
    /// Try again after this long.
    Retry(Duration),
    /// Not worth retrying (a 4xx other than 429, or a 200 without an ActivationId).
    Fatal,
}

async fn attempt(
    http: &reqwest::Client,
    url: &str,
    spec: &LoadSpec,
    tries: u32,
    result: &mut LoadResult,
    jitter: &mut Jitter,
) -> Outcome {
    let backoff = Duration::from_millis((100u64 << tries.min(4)) + jitter.below(100));
    let started = Instant::now();
    let resp = match http.get(url).send().await {
        Ok(resp) => resp,
        Err(_) => {
            result.transport_errors += 1;
            return Outcome::Retry(backoff);
        }
    };
    let status = resp.status().as_u16();
    let retry_after = retry_after_secs(resp.headers());
    let body = resp.bytes().await;
    result.attempt_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    *result.statuses.entry(status).or_default() += 1;
    let Ok(body) = body else {
        result.transport_errors += 1;
        return Outcome::Retry(backoff);
    };
    match status {
        200 if !spec.vend => Outcome::Vended(String::new()),
        200 => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["ActivationId"].as_str().map(str::to_owned))
            .map_or(Outcome::Fatal, Outcome::Vended),
        503 | 429 => {
            let secs = retry_after.unwrap_or(1).min(spec.max_retry_after);
            Outcome::Retry(Duration::from_secs(secs) + Duration::from_millis(jitter.below(250)))
        }
        s if s >= 500 => Outcome::Retry(backoff),
        _ => Outcome::Fatal,
    }
}

async fn client_loop(
    http: reqwest::Client,
    spec: Arc<LoadSpec>,
    next: Arc<AtomicUsize>,
    started: Instant,
    seed: u64,
) -> LoadResult {
    let mut result = LoadResult::default();
    let mut jitter = Jitter::new(seed);
    let stop_at = started + spec.deadline;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= spec.vends {
            break;
        }
        if Instant::now() >= stop_at {
            result.not_issued += 1;
            continue;
        }
        let url = &spec.urls[i % spec.urls.len()];
        let vend_started = Instant::now();
        let mut tries = 0;
        loop {
            match attempt(&http, url, &spec, tries, &mut result, &mut jitter).await {
                Outcome::Vended(id) => {
                    result.vend_ms.push(vend_started.elapsed().as_secs_f64() * 1000.0);
                    if spec.vend {
                        *result.per_activation.entry(id).or_default() += 1;
                    }
                    break;
                }
                Outcome::Retry(pause) if tries < spec.max_retries && Instant::now() + pause < stop_at => {
                    tries += 1;
                    result.retries += 1;
                    tokio::time::sleep(pause).await;
                }
                Outcome::Retry(_) | Outcome::Fatal => {
                    result.failed += 1;
                    break;
                }
            }
        }
    }
    result
}

/// Runs the load against `spec.urls` (full vend URLs, e.g. `http://127.0.0.1:1/activation`).
pub async fn run(spec: &LoadSpec) -> Result<LoadResult, String> {
    if spec.urls.is_empty() {
        return Err("no server URLs".into());
    }
    let http = http_client()?;
    let spec = Arc::new(spec.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let seed = started.elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
    let tasks: Vec<_> = (0..spec.clients.max(1))
        .map(|c| {
            tokio::spawn(client_loop(
                http.clone(),
                Arc::clone(&spec),
                Arc::clone(&next),
                started,
                seed.wrapping_add((c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ))
        })
        .collect();
    let mut total = LoadResult::default();
    for task in tasks {
        total.merge(task.await.map_err(|e| format!("a client task failed: {e}"))?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_below_its_bound() {
        let mut j = Jitter::new(42);
        assert!((0..1000).all(|_| j.below(250) < 250));
        assert_eq!(j.below(0), 0);
    }
}
