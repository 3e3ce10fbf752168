//! The HTTP contract (DESIGN.md): one router for Lambda, `vending serve` and tests.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::error::VendError;
use crate::pool::{valid_instance_name, valid_pool_name, DEFAULT_POOL};
use crate::vend::Vendor;

pub const INSTANCE_HEADER: &str = "x-instance-name";

#[derive(Clone)]
pub struct AppState {
    pub vendor: Arc<Vendor>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(vend).fallback(method_not_allowed))
        .route("/activation", get(vend).fallback(method_not_allowed))
        .route("/health", get(health).fallback(method_not_allowed))
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
}

/// Reads `pool` and `instance` from the query and `X-Instance-Name`, strictly:
/// a malformed value is a 400, not a silent default.
pub fn parse_vend_request(query: Option<&str>, headers: &HeaderMap) -> Result<VendRequest, VendError> {
    let mut pool = None;
    let mut instance = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match key.as_ref() {
            "pool" => &mut pool,
            "instance" => &mut instance,
            _ => continue,
        };
        if slot.is_some() {
            return Err(VendError::InvalidParameter {
                parameter: if key == "pool" { "pool" } else { "instance" },
                problem: "given more than once".into(),
            });
        }
        *slot = Some(value.into_owned());
    }
    if let Some(value) = headers.get(INSTANCE_HEADER) {
        let from_header = value.to_str().map_err(|_| VendError::InvalidParameter {
            parameter: "X-Instance-Name",
            problem: "is not valid text".into(),
        })?;
        match &instance {
            Some(from_query) if !from_query.eq_ignore_ascii_case(from_header) => {
                return Err(VendError::InvalidParameter {
                    parameter: "instance",
                    problem: "the query parameter and the X-Instance-Name header disagree".into(),
                })
            }
            _ => instance = Some(from_header.to_owned()),
        }
    }
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
    Ok(VendRequest { pool, instance })
}

async fn vend(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, VendError> {
    let started = Instant::now();
    let request = parse_vend_request(query.as_deref(), &headers)?;
    let vended = state.vendor.vend(&request.pool, request.instance.as_deref()).await?;
    tracing::info!(
        pool = %vended.pool,
        activation_id = %vended.activation_id,
        instance = request.instance.as_deref().unwrap_or("-"),
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

async fn health() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "OK")
}

async fn method_not_allowed(method: Method) -> VendError {
    VendError::MethodNotAllowed {
        method: method.to_string(),
        allow: "GET, HEAD",
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
                instance: None
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
    fn unknown_parameters_are_ignored() {
        assert_eq!(parse("foo=bar&pool=default").unwrap().pool, "default");
    }
}
