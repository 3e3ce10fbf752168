//! The stage in front of the function: API Gateway's stage throttle (a token bucket per
//! API method at the template's ThrottlingRateLimit/ThrottlingBurstLimit, answering
//! the template's THROTTLED gateway response), then the Lambda proxy integration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::bucket::TokenBucket;
use super::environments::{Environments, InvokeError};
use super::event::{api_method, http_answer, rest_proxy_event, Incoming};
use super::StageCounts;

/// template.yaml's `GatewayResponses.THROTTLED`: status 429, `Retry-After: 1`, this body.
pub const THROTTLED_BODY: &str = r#"{"error":{"code":"Throttled","message":"too many requests, retry later"}}"#;
pub const THROTTLED_RETRY_AFTER: &str = "1";
/// API Gateway's default 5XX body, for a throttled invocation (500) or a function that
/// failed (502): the template defines no gateway response for either.
const INTERNAL_ERROR_BODY: &str = r#"{"message": "Internal server error"}"#;
/// API Gateway's payload limit for a request.
const MAX_BODY: usize = 10 * 1024 * 1024;

/// The stage throttle's rate and burst, each API method's bucket.
pub struct Throttle {
    pub rate: f64,
    pub burst: f64,
    pub buckets: HashMap<(&'static str, &'static str), TokenBucket>,
}

impl Throttle {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Whether this API method's bucket admits one more request now.
    pub fn admit(&mut self, method: (&'static str, &'static str), now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(method)
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .take(now)
    }
}

pub struct Gateway {
    pub throttle: Mutex<Throttle>,
    pub environments: Arc<Environments>,
    pub counts: Arc<Mutex<StageCounts>>,
}

impl Gateway {
    fn count(&self, change: impl FnOnce(&mut StageCounts)) {
        change(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new().fallback(stage).with_state(gateway)
}

fn json_answer(status: StatusCode, body: &'static str) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

/// API Gateway's own 5XX (no gateway response in the template for these), with the
/// error type header it sets.
fn internal_error(status: StatusCode) -> Response {
    let mut answer = json_answer(status, INTERNAL_ERROR_BODY);
    answer.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_static("InternalServerErrorException"),
    );
    answer
}

async fn stage(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    // The request's number (its ID's tail) is its place in the stage's count.
    let mut n = 0;
    gateway.count(|c| {
        n = c.requests;
        c.requests += 1;
    });
    let method = api_method(request.uri().path(), request.method().as_str());
    let admitted = gateway
        .throttle
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(method, Instant::now());
    if !admitted {
        gateway.count(|c| c.http_429 += 1);
        let mut answer = json_answer(StatusCode::TOO_MANY_REQUESTS, THROTTLED_BODY);
        answer
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static(THROTTLED_RETRY_AFTER));
        return answer;
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return json_answer(StatusCode::PAYLOAD_TOO_LARGE, r#"{"message":"Request Too Long"}"#);
    };
    let epoch_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let incoming = Incoming {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect(),
        body: body.to_vec(),
        source_ip: peer.ip().to_string(),
        request_id: format!("00000000-0000-4000-8000-{n:012x}"),
        epoch_ms,
    };
    let event = rest_proxy_event(&incoming);
    match gateway.environments.invoke(incoming.request_id, event, epoch_ms).await {
        Ok(result) => match http_answer(&result) {
            Ok(answer) => {
                let mut response = Response::new(Body::from(answer.body));
                *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
                for (name, value) in answer.headers {
                    if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                        response.headers_mut().append(name, value);
                    }
                }
                response
            }
            Err(_) => internal_error(StatusCode::BAD_GATEWAY),
        },
        Err(InvokeError::Throttled) => internal_error(StatusCode::INTERNAL_SERVER_ERROR),
        Err(InvokeError::Function(_)) => internal_error(StatusCode::BAD_GATEWAY),
    }
}

#[cfg(test)]
mod tests {
    use super::super::environments::TEMPLATE_FUNCTION_ENV;
    use super::*;

    fn template() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml")).unwrap()
    }

    #[test]
    fn environments_get_the_functions_fixed_settings_from_the_template() {
        let template = template();
        for (name, value) in TEMPLATE_FUNCTION_ENV {
            let quoted = format!("          {name}: '{value}'");
            let plain = format!("          {name}: {value}");
            assert!(
                template.lines().any(|l| l == quoted || l == plain),
                "template.yaml sets {name}: {value}"
            );
        }
    }

    #[test]
    fn the_throttled_answer_is_the_templates_gateway_response() {
        let template = template();
        let block: String = template
            .split("        THROTTLED:\n")
            .nth(1)
            .expect("template.yaml has a THROTTLED gateway response")
            .lines()
            .take_while(|l| l.starts_with("          "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(block.contains("StatusCode: '429'"), "{block}");
        assert!(
            block.contains(&format!("Retry-After: \"'{THROTTLED_RETRY_AFTER}'\"")),
            "{block}"
        );
        assert!(
            block.contains(&format!("application/json: '{THROTTLED_BODY}'")),
            "{block}"
        );
    }
}
