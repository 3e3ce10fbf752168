//! The HTTP contract (DESIGN.md): one router for Lambda, `vending serve` and tests.

use std::sync::Arc;
use std::time::Instant;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt;
use serde::{Deserialize, Serialize};

use crate::error::VendError;
use crate::pool::settings::client_address;
use crate::pool::state::{parse_machine_id, valid_instance_name, valid_pool_name, DEFAULT_POOL};
use crate::registration::verdict::Claim;
use crate::registration::Confirmer;
use crate::vend::refusal::parse_report;
use crate::vend::Vendor;

pub const INSTANCE_HEADER: &str = "x-instance-name";
pub const MACHINE_HEADER: &str = "x-machine-id";

/// Methods the vend routes answer. HEAD is not one: it would take a slot and throw
/// the code away (uptime monitors send HEAD all day).
const VEND_METHODS: &str = "GET";
const HEALTH_METHODS: &str = "GET, HEAD";
const REGISTRATION_METHODS: &str = "POST";

/// The most a registration report's body may hold.
const REGISTRATION_BODY_LIMIT: usize = 16 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub vendor: Arc<Vendor>,
    pub confirmer: Arc<Confirmer>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(vend)
                .head(vend_method_not_allowed)
                .fallback(vend_method_not_allowed),
        )
        .route(
            "/activation",
            get(vend)
                .head(vend_method_not_allowed)
                .fallback(vend_method_not_allowed),
        )
        .route(
            "/registrations",
            post(registrations).fallback(registration_method_not_allowed),
        )
        .route("/health", get(health).fallback(health_method_not_allowed))
        .fallback(not_found)
        .with_state(state)
}

/// The body the boot scripts read; the first two names are what the original jq reads.
#[derive(Serialize)]
struct ActivationBody<'a> {
    #[serde(rename = "ActivationId")]
    activation_id: &'a str,
    #[serde(rename = "ActivationCode")]
    activation_code: &'a str,
    #[serde(rename = "Region")]
    region: &'a str,
    #[serde(rename = "ExpirationDate")]
    expiration_date: String,
    #[serde(rename = "Pool")]
    pool: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub struct VendRequest {
    pub pool: String,
    pub instance: Option<String>,
    /// SHA-256 hex digest of the machine's own ID, lowercase.
    pub machine_id: Option<String>,
}

/// One value given as a query parameter and/or a header: at most once each, and the
/// two must agree (as `same` decides).
fn query_or_header(
    from_query: Option<String>,
    headers: &HeaderMap,
    header: &'static str,
    names: (&'static str, &'static str),
    same: fn(&str, &str) -> bool,
) -> Result<Option<String>, VendError> {
    let (parameter, header_name) = names;
    let mut values = headers.get_all(header).iter();
    let Some(value) = values.next() else {
        return Ok(from_query);
    };
    if values.next().is_some() {
        return Err(VendError::InvalidParameter {
            parameter: header_name,
            problem: "given more than once".into(),
        });
    }
    let from_header = value.to_str().map_err(|_| VendError::InvalidParameter {
        parameter: header_name,
        problem: "is not valid text".into(),
    })?;
    match from_query {
        Some(q) if !same(&q, from_header) => Err(VendError::InvalidParameter {
            parameter,
            problem: format!("the query parameter and the {header_name} header disagree"),
        }),
        _ => Ok(Some(from_header.to_owned())),
    }
}

/// Reads `pool`, `instance` and `machine` from the query, and `X-Instance-Name` and
/// `X-Machine-Id`, strictly: a malformed value is a 400, not a silent default.
pub fn parse_vend_request(query: Option<&str>, headers: &HeaderMap) -> Result<VendRequest, VendError> {
    let mut pool = None;
    let mut instance = None;
    let mut machine = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let (slot, parameter) = match key.as_ref() {
            "pool" => (&mut pool, "pool"),
            "instance" => (&mut instance, "instance"),
            "machine" => (&mut machine, "machine"),
            _ => continue,
        };
        if slot.is_some() {
            return Err(VendError::InvalidParameter {
                parameter,
                problem: "given more than once".into(),
            });
        }
        *slot = Some(value.into_owned());
    }
    let instance = query_or_header(
        instance,
        headers,
        INSTANCE_HEADER,
        ("instance", "X-Instance-Name"),
        |a, b| a.eq_ignore_ascii_case(b),
    )?;
    let machine = query_or_header(machine, headers, MACHINE_HEADER, ("machine", "X-Machine-Id"), |a, b| {
        a.eq_ignore_ascii_case(b)
    })?;
    let machine_id = match machine {
        None => None,
        Some(text) => Some(parse_machine_id(&text).ok_or_else(|| VendError::InvalidParameter {
            parameter: "machine",
            problem: "must be the SHA-256 hex digest (64 hex digits) of the machine's ID, not the ID itself".into(),
        })?),
    };
    let pool = pool.unwrap_or_else(|| DEFAULT_POOL.to_owned());
    if !valid_pool_name(&pool) {
        return Err(VendError::InvalidParameter {
            parameter: "pool",
            problem: "must be 1 to 64 letters, digits, '-' or '_'".into(),
        });
    }
    if let Some(name) = &instance {
        if !valid_instance_name(name) {
            return Err(VendError::InvalidParameter {
                parameter: "instance",
                problem:
                    "must be a host name: dot-separated labels of letters, digits, '-' or '_', at most 253 characters"
                        .into(),
            });
        }
    }
    Ok(VendRequest {
        pool,
        instance,
        machine_id,
    })
}

/// The caller's address as the pool's `allowed_cidrs` sees it: API Gateway's
/// `sourceIp` under Lambda, the right-most `X-Forwarded-For` entry behind an ALB
/// that invokes Lambda, and under `vending serve` the peer, or behind a trusted
/// proxy (`VENDING_TRUSTED_PROXIES`) the one hop that proxy appended (the last entry).
pub fn source_address(extensions: &Extensions, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if let Some(context) = extensions.request_context_ref() {
        let reported = match context {
            RequestContext::ApiGatewayV1(c) => c.identity.source_ip.as_deref(),
            RequestContext::ApiGatewayV2(c) => c.http.source_ip.as_deref(),
            // The ALB appends the address it saw to X-Forwarded-For.
            RequestContext::Alb(_) => forwarded.last().and_then(|h| h.rsplit(',').next()).map(str::trim),
            _ => None,
        };
        return reported.and_then(|ip| ip.parse().ok());
    }
    let peer = extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(client_address(peer, &forwarded, trusted))
}

async fn vend(State(state): State<AppState>, request: Request) -> Result<Response, VendError> {
    let started = Instant::now();
    let (parts, _) = request.into_parts();
    let source = source_address(
        &parts.extensions,
        &parts.headers,
        &state.vendor.config().trusted_proxies,
    );
    let request = parse_vend_request(parts.uri.query(), &parts.headers)?;
    let vended = state
        .vendor
        .vend(
            &request.pool,
            request.instance.as_deref(),
            request.machine_id.as_deref(),
            source,
        )
        .await?;
    tracing::info!(
        pool = %vended.pool,
        activation_id = %vended.activation_id,
        instance = request.instance.as_deref().unwrap_or("-"),
        machine_id = request.machine_id.as_deref().unwrap_or("-"),
        source = %source.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
        waited_for_rotation = vended.waited_for_rotation,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "vended"
    );
    let body = ActivationBody {
        activation_id: &vended.activation_id,
        activation_code: vended.code.expose(),
        region: &state.vendor.config().region,
        expiration_date: aws_smithy_types::DateTime::from_secs(vended.expires_at)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default(),
        pool: &vended.pool,
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /registrations`'s body: a confirmation (`InstanceId`, `ActivationId`,
/// `Instance`) or a refusal report (`ActivationId`, `Error`); nothing else.
#[derive(Debug, PartialEq, Eq)]
pub enum RegistrationReport {
    Confirmation(ConfirmationBody),
    Refusal(RefusalBody),
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationBody {
    #[serde(rename = "InstanceId")]
    pub instance_id: String,
    #[serde(rename = "ActivationId")]
    pub activation_id: String,
    #[serde(rename = "Instance")]
    pub instance: String,
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalBody {
    #[serde(rename = "ActivationId")]
    pub activation_id: String,
    #[serde(rename = "Error")]
    pub error: String,
}

fn invalid_body(problem: impl Into<String>) -> VendError {
    VendError::InvalidParameter {
        parameter: "body",
        problem: problem.into(),
    }
}

/// A managed node's ID as SSM spells a hybrid one: `mi-` and 17 hex digits.
fn valid_managed_instance_id(id: &str) -> bool {
    id.strip_prefix("mi-")
        .is_some_and(|hex| hex.len() == 17 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// An activation ID as SSM spells it: 1 to 64 letters, digits and `-`.
fn valid_activation_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Reads a registration report strictly: a JSON object of exactly one of the two
/// shapes, every field a well-formed string; anything else is a 400.
pub fn parse_registration_report(body: &[u8]) -> Result<RegistrationReport, VendError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid_body(format!("is not JSON: {e}")))?;
    let Some(fields) = value.as_object() else {
        return Err(invalid_body("must be a JSON object"));
    };
    let report = if fields.contains_key("Error") {
        RegistrationReport::Refusal(serde_json::from_value(value).map_err(|e| {
            invalid_body(format!(
                "a refusal report is {{\"ActivationId\", \"Error\"}} (strings): {e}"
            ))
        })?)
    } else if fields.contains_key("InstanceId") {
        RegistrationReport::Confirmation(serde_json::from_value(value).map_err(|e| {
            invalid_body(format!(
                "a confirmation is {{\"InstanceId\", \"ActivationId\", \"Instance\"}} (strings): {e}"
            ))
        })?)
    } else {
        return Err(invalid_body(
            "must be a confirmation {\"InstanceId\", \"ActivationId\", \"Instance\"} or a refusal report {\"ActivationId\", \"Error\"}",
        ));
    };
    let activation_id = match &report {
        RegistrationReport::Confirmation(c) => &c.activation_id,
        RegistrationReport::Refusal(r) => &r.activation_id,
    };
    if !valid_activation_id(activation_id) {
        return Err(invalid_body("ActivationId must be 1 to 64 letters, digits or '-'"));
    }
    if let RegistrationReport::Confirmation(c) = &report {
        if !valid_managed_instance_id(&c.instance_id) {
            return Err(invalid_body(
                "InstanceId must be a hybrid node's ID: mi- and 17 lowercase hex digits",
            ));
        }
        if !valid_instance_name(&c.instance) {
            return Err(invalid_body(
                "Instance must be a host name: dot-separated labels of letters, digits, '-' or '_', at most 253 characters",
            ));
        }
    }
    Ok(report)
}

/// The answer to a confirmation.
#[derive(Serialize)]
struct ConfirmedBody<'a> {
    #[serde(rename = "InstanceId")]
    instance_id: &'a str,
    #[serde(rename = "Tags")]
    tags: &'a std::collections::BTreeMap<String, String>,
    #[serde(rename = "Replaced")]
    replaced: &'a [String],
}

/// The answer to a refusal report.
#[derive(Serialize)]
struct RefusalAnswer<'a> {
    #[serde(rename = "ActivationId")]
    activation_id: &'a str,
    #[serde(rename = "Confirmed")]
    confirmed: bool,
}

async fn registrations(State(state): State<AppState>, request: Request) -> Result<Response, VendError> {
    let (parts, body) = request.into_parts();
    let source = source_address(
        &parts.extensions,
        &parts.headers,
        &state.vendor.config().trusted_proxies,
    );
    let request = parse_vend_request(parts.uri.query(), &parts.headers)?;
    let body = axum::body::to_bytes(body, REGISTRATION_BODY_LIMIT)
        .await
        .map_err(|_| invalid_body(format!("must be at most {REGISTRATION_BODY_LIMIT} bytes")))?;
    let confirmation = match parse_registration_report(&body)? {
        RegistrationReport::Confirmation(confirmation) => confirmation,
        RegistrationReport::Refusal(refusal) => {
            let report = parse_report(&refusal.activation_id, &refusal.error)?;
            let confirmed = state
                .vendor
                .report_refusal(&request.pool, &report, request.machine_id.as_deref(), source)
                .await?;
            let answer = Json(RefusalAnswer {
                activation_id: &report.activation_id,
                confirmed,
            });
            return Ok(no_store(answer.into_response()));
        }
    };
    if let Some(named) = &request.instance {
        if !named.eq_ignore_ascii_case(&confirmation.instance) {
            return Err(VendError::InvalidParameter {
                parameter: "instance",
                problem: "the instance named in the query or X-Instance-Name and the body's Instance disagree".into(),
            });
        }
    }
    let claim = Claim {
        pool: request.pool,
        instance_id: confirmation.instance_id,
        activation_id: confirmation.activation_id,
        instance: confirmation.instance,
        machine_id: request.machine_id,
    };
    let confirmed = state.confirmer.confirm(&claim, source).await?;
    let answer = Json(ConfirmedBody {
        instance_id: &confirmed.instance_id,
        tags: &confirmed.tags,
        replaced: &confirmed.replaced,
    });
    Ok(no_store(answer.into_response()))
}

/// Reports' answers are about one node or activation at one moment: never cached.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn registration_method_not_allowed(method: Method) -> VendError {
    VendError::MethodNotAllowed {
        method: method.to_string(),
        allow: REGISTRATION_METHODS,
    }
}

async fn health() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "OK")
}

async fn vend_method_not_allowed(method: Method) -> VendError {
    VendError::MethodNotAllowed {
        method: method.to_string(),
        allow: VEND_METHODS,
    }
}

async fn health_method_not_allowed(method: Method) -> VendError {
    VendError::MethodNotAllowed {
        method: method.to_string(),
        allow: HEALTH_METHODS,
    }
}

async fn not_found(uri: Uri) -> VendError {
    VendError::RouteNotFound(uri.path().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<VendRequest, VendError> {
        parse_vend_request(Some(query), &HeaderMap::new())
    }

    #[test]
    fn no_parameters_mean_the_default_pool_and_no_name() {
        assert_eq!(
            parse_vend_request(None, &HeaderMap::new()).unwrap(),
            VendRequest {
                pool: "default".into(),
                instance: None,
                machine_id: None,
            }
        );
    }

    #[test]
    fn the_instance_comes_from_the_query_or_the_header() {
        assert_eq!(parse("instance=web-01").unwrap().instance.as_deref(), Some("web-01"));
        let mut headers = HeaderMap::new();
        headers.insert(INSTANCE_HEADER, HeaderValue::from_static("web-02"));
        assert_eq!(
            parse_vend_request(None, &headers).unwrap().instance.as_deref(),
            Some("web-02")
        );
        assert!(parse_vend_request(Some("instance=web-01"), &headers).is_err());
    }

    #[test]
    fn malformed_parameters_are_rejected_as_bad_requests() {
        for bad in [
            "pool=",
            "pool=a/b",
            "instance=",
            "instance=web%2001",
            "instance=..",
            "pool=a&pool=b",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn a_repeated_header_is_a_bad_request_like_a_repeated_query_parameter() {
        for header in [INSTANCE_HEADER, MACHINE_HEADER] {
            let mut headers = HeaderMap::new();
            let value = if header == MACHINE_HEADER {
                "a".repeat(64)
            } else {
                "web-01".into()
            };
            headers.append(header, HeaderValue::from_str(&value).unwrap());
            headers.append(header, HeaderValue::from_str(&value).unwrap());
            let err = parse_vend_request(None, &headers).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{header}");
        }
    }

    #[test]
    fn the_machine_id_comes_from_the_query_or_the_header_as_a_digest() {
        let digest = "0123456789abcdef".repeat(4);
        assert_eq!(
            parse(&format!("machine={}", digest.to_uppercase())).unwrap().machine_id,
            Some(digest.clone())
        );
        let mut headers = HeaderMap::new();
        headers.insert(MACHINE_HEADER, HeaderValue::from_str(&digest).unwrap());
        assert_eq!(
            parse_vend_request(None, &headers).unwrap().machine_id,
            Some(digest.clone())
        );
        let other = "f".repeat(64);
        assert!(parse_vend_request(Some(&format!("machine={other}")), &headers).is_err());
        for bad in [
            "machine=",
            "machine=4c4c4544-0042-3510-8051-b7c04f4d3832",
            "machine=xyz",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn a_confirmation_and_a_refusal_report_are_told_apart_by_their_fields() {
        let confirmation =
            br#"{"InstanceId": "mi-0123456789abcdef0", "ActivationId": "5e3b-41aa", "Instance": "web-01"}"#;
        assert_eq!(
            parse_registration_report(confirmation).unwrap(),
            RegistrationReport::Confirmation(ConfirmationBody {
                instance_id: "mi-0123456789abcdef0".into(),
                activation_id: "5e3b-41aa".into(),
                instance: "web-01".into(),
            })
        );
        let refusal = br#"{"ActivationId": "5e3b-41aa", "Error": "InvalidActivation"}"#;
        assert_eq!(
            parse_registration_report(refusal).unwrap(),
            RegistrationReport::Refusal(RefusalBody {
                activation_id: "5e3b-41aa".into(),
                error: "InvalidActivation".into(),
            })
        );
    }

    #[test]
    fn a_malformed_registration_report_is_a_bad_request() {
        for bad in [
            &b""[..],
            b"not json",
            b"[]",
            b"{}",
            br#"{"ActivationId": "a"}"#,
            br#"{"InstanceId": "mi-0123456789abcdef0", "ActivationId": "a"}"#,
            br#"{"InstanceId": "mi-0123456789abcdef0", "ActivationId": "a", "Instance": "web-01", "Extra": 1}"#,
            br#"{"InstanceId": "i-0123456789abcdef0", "ActivationId": "a", "Instance": "web-01"}"#,
            br#"{"InstanceId": "mi-0123456789ABCDEF0", "ActivationId": "a", "Instance": "web-01"}"#,
            br#"{"InstanceId": "mi-0123456789abcdef0", "ActivationId": "a b", "Instance": "web-01"}"#,
            br#"{"InstanceId": "mi-0123456789abcdef0", "ActivationId": "a", "Instance": "web 01"}"#,
            br#"{"InstanceId": 7, "ActivationId": "a", "Instance": "web-01"}"#,
            br#"{"ActivationId": "a", "Error": "InvalidActivation", "InstanceId": "mi-0123456789abcdef0"}"#,
            br#"{"ActivationId": "", "Error": "InvalidActivation"}"#,
        ] {
            let err = parse_registration_report(bad).unwrap_err();
            assert_eq!(
                err.status(),
                axum::http::StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(err.code(), "InvalidParameter");
        }
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        assert_eq!(parse("foo=bar&pool=default").unwrap().pool, "default");
    }
}
