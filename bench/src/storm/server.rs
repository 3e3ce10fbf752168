//! One simulated server booting as scripts/bootstrap-linux.sh does: it fetches an
//! activation through the stage (`GET /activation?pool=&instance=` with
//! `X-Machine-Id`, retried as retry.rs decides, given up after `--max-wait`), registers
//! the code with SSM as the agent does (`RegisterManagedInstance` at the emulator), and
//! confirms the registration through the stage (`POST /registrations`, a warning when
//! that fails). A refusal SSM can heal is reported and the vend asked once more.
//!
//! The activation code stays in [`Vend`] (no `Debug`) and goes only into the
//! registration's body: never into a record, an error or a log line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::retry::{
    after_report_attempt, after_vend_attempt, healable_refusal, Answer, Backoff, Draws, Next, REPORT_WAIT,
};
use crate::load::{retry_after_secs, Jitter};

/// An RSA-2048 public key (base64 DER SubjectPublicKeyInfo, as the agent sends it),
/// made once with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048` and
/// `openssl pkey -pubout -outform DER | base64 -w0`; the private half was thrown away.
/// A public key is no secret. Every simulated server sends it (making 10,000 keys
/// would cost more than the storm), each with its own `Fingerprint`: the emulator
/// checks the key's form, and the fingerprint is what tells nodes apart.
pub const PUBLIC_KEY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvA77PEGwMKHB1GcAnD+AYU33Segv5q8PNvHnExmQRT8QtY6z2JQR+qYfFyxNJyEXuorHfdBk1F797GmIje5ZP7kFvPm6ePa9f9WB/nIHPxdpHfbeQFxQXmgjsJWQDp0LDGlFQmLgUAQU+kt/z8p6uiak0Lsdk4X5duBOmT0fYtcEeFX7oyGNITj0OGtVmoFl6x/z4Yj5b6pBI+g8mlz9jxUf6pvnxo5C0NQJ5ALCarpFVC7uj7fOWbQ7rVWtRe+j1qr/3pHzuvfADH7uo+ilVzjj7NEPcTAj0dxZEHIYqJWIBSrCwhFzFgXQnzrypNxB0qxJMZZXMKHSsE+9Q2M3DwIDAQAB";

/// Who one simulated server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `--instance` as the script sends it (a host name).
    pub instance: String,
    /// `X-Machine-Id`: 64 hex digits, as the script's SHA-256 of /etc/machine-id.
    pub machine_id: String,
    /// The agent's machine fingerprint, one per server.
    pub fingerprint: String,
}

impl Identity {
    /// Server `index` of run `run` (so that two runs never share a machine ID).
    pub fn new(run: u32, index: usize) -> Self {
        Self {
            instance: format!("storm-{run}-{index:05}"),
            machine_id: format!("{run:016x}{index:048x}"),
            fingerprint: format!("lambda-storm-{run}-{index:05}"),
        }
    }
}

/// What one server saw, in seconds since the run started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerRecord {
    /// When its first request left.
    pub first_request_s: Option<f64>,
    /// When its first activation arrived.
    pub code_s: Option<f64>,
    /// When SSM accepted its registration.
    pub registered_s: Option<f64>,
    /// Every HTTP answer from the stage (vends and reports), by status.
    pub statuses: BTreeMap<u16, u64>,
    /// The stage's 503s by the body's `error.code` (`none` when it had none).
    pub codes_503: BTreeMap<String, u64>,
    /// Attempts that got no HTTP answer.
    pub transport_errors: u64,
    /// The activation ID of each successful vend, in order.
    pub vended: Vec<String>,
    /// Refusals SSM gave its registrations.
    pub refused: u32,
    /// The stage confirmed its registration.
    pub confirmed: bool,
    /// Reports (confirmation or refusal) the stage did not take: the script's WARNINGs.
    pub report_warnings: u32,
    /// Why it ended unregistered; `None` when it registered.
    pub failure: Option<String>,
}

/// A vend's answer. Not `Debug`: it holds the code.
struct Vend {
    activation_id: String,
    code: String,
}

/// What every server of a run shares.
pub struct Boot {
    pub http: reqwest::Client,
    /// The stage's base URL.
    pub stage: String,
    /// The emulator's URL (SSM's endpoint for the agent).
    pub emulator: String,
    pub pool: String,
    pub max_wait: Duration,
    /// The run's start: every time in a record is measured from it.
    pub started: Instant,
    /// Requests in flight to the stage at once (file descriptors: the stage runs in
    /// this process, so each connection costs two).
    pub stage_gate: Arc<Semaphore>,
    /// Registrations in flight to the emulator at once (it serves one call at a time).
    pub emulator_gate: Arc<Semaphore>,
}

enum Registration {
    Registered(String),
    Refused(String),
    Failed(String),
}

/// One attempt's answer, parsed: status, `Retry-After`, `error.code`, body.
struct Reply {
    status: u16,
    retry_after: Option<u64>,
    code: Option<String>,
    body: Value,
}

impl Boot {
    fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The server boots: vend, register, confirm (or report a refusal and vend again).
    pub async fn server(&self, who: &Identity, seed: u64) -> ServerRecord {
        let mut rec = ServerRecord::default();
        let mut jitter = Jitter::new(seed);
        for round in 0..2 {
            let vend = match self.fetch(who, &mut rec, &mut jitter).await {
                Ok(v) => v,
                Err(why) => {
                    rec.failure = Some(why);
                    return rec;
                }
            };
            rec.code_s.get_or_insert(self.now_s());
            rec.vended.push(vend.activation_id.clone());
            match self.register(who, &vend).await {
                Registration::Registered(instance_id) => {
                    rec.registered_s = Some(self.now_s());
                    let body = json!({"InstanceId": instance_id, "ActivationId": vend.activation_id, "Instance": who.instance});
                    if self.report(who, &body, &mut rec).await {
                        rec.confirmed = true;
                    }
                    return rec;
                }
                Registration::Refused(code) => {
                    rec.refused += 1;
                    if round == 1 || !healable_refusal(&code) {
                        rec.failure = Some(format!("refused: {code}"));
                        return rec;
                    }
                    let body = json!({"ActivationId": vend.activation_id, "Error": code});
                    self.report(who, &body, &mut rec).await;
                }
                Registration::Failed(why) => {
                    rec.failure = Some(why);
                    return rec;
                }
            }
        }
        rec
    }

    /// One request to the stage, counted in `rec`; `None` when no answer came.
    async fn send(&self, request: reqwest::RequestBuilder, rec: &mut ServerRecord) -> Option<Reply> {
        let _permit = self.stage_gate.acquire().await.ok()?;
        rec.first_request_s.get_or_insert(self.now_s());
        let answer = async {
            let resp = request.send().await.ok()?;
            let status = resp.status().as_u16();
            let retry_after = retry_after_secs(resp.headers());
            let bytes = resp.bytes().await.ok()?;
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().map(str::to_owned);
            Some(Reply {
                status,
                retry_after,
                code,
                body,
            })
        }
        .await;
        match &answer {
            Some(reply) => {
                *rec.statuses.entry(reply.status).or_default() += 1;
                if reply.status == 503 {
                    let code = reply.code.clone().unwrap_or_else(|| "none".into());
                    *rec.codes_503.entry(code).or_default() += 1;
                }
            }
            None => rec.transport_errors += 1,
        }
        answer
    }

    /// `fetch_activation`: until a 200, a final answer, or `--max-wait`.
    async fn fetch(&self, who: &Identity, rec: &mut ServerRecord, jitter: &mut Jitter) -> Result<Vend, String> {
        let url = format!("{}/activation", self.stage);
        let deadline = Instant::now() + self.max_wait;
        let mut backoff = Backoff::default();
        let mut attempts = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(format!("gave up after --max-wait ({attempts} attempts)"));
            }
            attempts += 1;
            let request = self
                .http
                .get(&url)
                .query(&[("pool", self.pool.as_str()), ("instance", who.instance.as_str())])
                .header("Accept", "application/json")
                .header("X-Machine-Id", &who.machine_id)
                .timeout(remaining.min(Duration::from_secs(30)));
            let reply = self.send(request, rec).await;
            let answer = reply.as_ref().map_or(Answer::NoAnswer, |r| Answer::Http {
                status: r.status,
                retry_after: r.retry_after,
                code: r.code.as_deref(),
            });
            let draws = Draws {
                jitter_ms: jitter.below(1000),
                random: jitter.below(32_768),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            match after_vend_attempt(answer, &mut backoff, draws, remaining) {
                Next::Done => {
                    let body = reply.map(|r| r.body).unwrap_or_default();
                    let (Some(activation_id), Some(code)) =
                        (body["ActivationId"].as_str(), body["ActivationCode"].as_str())
                    else {
                        return Err("malformed response from the service".into());
                    };
                    return Ok(Vend {
                        activation_id: activation_id.to_owned(),
                        code: code.to_owned(),
                    });
                }
                Next::Wait(pause) => tokio::time::sleep(pause).await,
                Next::GiveUp(why) => return Err(why.to_owned()),
            }
        }
    }

    /// `RegisterManagedInstance` as the agent sends it: unsigned JSON 1.1 to SSM's
    /// endpoint. A transport failure or 5xx is tried again (the agent's SDK retries),
    /// five times in all.
    async fn register(&self, who: &Identity, vend: &Vend) -> Registration {
        let body = json!({
            "ActivationCode": vend.code,
            "ActivationId": vend.activation_id,
            "PublicKey": PUBLIC_KEY,
            "PublicKeyType": "Rsa",
            "Fingerprint": who.fingerprint,
        })
        .to_string();
        let mut last = String::new();
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
            }
            let Ok(_permit) = self.emulator_gate.acquire().await else {
                return Registration::Failed("the run is stopping".into());
            };
            let sent = self
                .http
                .post(format!("{}/", self.emulator))
                .header("Content-Type", "application/x-amz-json-1.1")
                .header("X-Amz-Target", "AmazonSSM.RegisterManagedInstance")
                .body(body.clone())
                .timeout(Duration::from_secs(60))
                .send()
                .await;
            let Ok(resp) = sent else {
                last = "RegisterManagedInstance: no answer".into();
                continue;
            };
            let status = resp.status();
            let answer: Value = resp.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return match answer["InstanceId"].as_str() {
                    Some(id) => Registration::Registered(id.to_owned()),
                    None => Registration::Failed("RegisterManagedInstance: no InstanceId".into()),
                };
            }
            // SSM's error code (JSON 1.1 `__type`), never the message: it could echo input.
            let code = answer["__type"].as_str().unwrap_or("unknown");
            let code = code.rsplit('#').next().unwrap_or(code).to_owned();
            if status.is_server_error() {
                last = format!("RegisterManagedInstance: HTTP {status} {code}");
                continue;
            }
            return if healable_refusal(&code) {
                Registration::Refused(code)
            } else {
                Registration::Failed(format!("RegisterManagedInstance: HTTP {status} {code}"))
            };
        }
        Registration::Failed(last)
    }

    /// `post_registration`: POST /registrations within 6 s; `true` on a 200, else the
    /// script's WARNING (counted).
    async fn report(&self, who: &Identity, body: &Value, rec: &mut ServerRecord) -> bool {
        let url = format!("{}/registrations", self.stage);
        let deadline = Instant::now() + REPORT_WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let request = self
                .http
                .post(&url)
                .query(&[("pool", self.pool.as_str())])
                .header("Accept", "application/json")
                .header("X-Machine-Id", &who.machine_id)
                .json(body)
                .timeout(remaining);
            let reply = self.send(request, rec).await;
            let answer = reply.as_ref().map_or(Answer::NoAnswer, |r| Answer::Http {
                status: r.status,
                retry_after: r.retry_after,
                code: r.code.as_deref(),
            });
            let remaining = deadline.saturating_duration_since(Instant::now());
            match after_report_attempt(answer, remaining) {
                Next::Done => return true,
                Next::Wait(pause) => tokio::time::sleep(pause).await,
                Next::GiveUp(_) => break,
            }
        }
        rec.report_warnings += 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_valid_for_the_service_and_distinct_between_runs() {
        let a = Identity::new(1, 42);
        assert_eq!(a.instance, "storm-1-00042");
        assert_eq!(a.machine_id.len(), 64);
        assert!(a.machine_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(Identity::new(2, 42).machine_id, a.machine_id);
        assert_ne!(Identity::new(1, 43).fingerprint, a.fingerprint);
    }

    #[test]
    fn the_public_key_is_long_enough_for_ssm_s_model() {
        // RegisterManagedInstance's PublicKey: at least 392 characters, base64.
        assert!(PUBLIC_KEY.len() >= 392);
        assert!(PUBLIC_KEY
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
    }
}
