//! Every way a request can fail, and the one place each becomes an HTTP status.
//! Messages here reach callers and logs, so none of them may carry the code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `Clone`: the requests that waited on one failed read share its error (`vend/codes.rs`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum VendError {
    #[error("no pool named `{0}`")]
    PoolNotFound(String),
    #[error("pool `{0}` is disabled")]
    PoolDisabled(String),
    #[error("pool `{pool}` is misconfigured: {problem}")]
    PoolMisconfigured { pool: String, problem: String },
    #[error("pool `{pool}` does not admit requests from {source_address}")]
    Forbidden { pool: String, source_address: String },
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("{method} is not allowed here; use {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("{parameter}: {problem}")]
    InvalidParameter { parameter: &'static str, problem: String },
    /// A confirmation named a managed node SSM does not know.
    #[error("SSM knows no managed node `{0}`")]
    NodeNotFound(String),
    /// A confirmation that does not verify against SSM and the vend's record, or a
    /// refusal report about an activation the pool never vended.
    #[error("the registration cannot be confirmed: {0}")]
    NotConfirmable(String),
    #[error("no usable activation yet: another request is rotating it")]
    NoActivationYet,
    #[error("AWS is throttling {operation}")]
    Throttled { operation: &'static str },
    /// DynamoDB refused a write because a transaction on the same item was in flight.
    #[error("{operation} kept conflicting with a concurrent transaction")]
    Contended { operation: &'static str },
    /// The local clock is too far from AWS's to judge expiry margins.
    #[error("the local clock is {skew_s} s off AWS's (at most {allowed_s} s allowed)")]
    ClockSkew { skew_s: i64, allowed_s: i64 },
    #[error("AWS {operation} is unavailable: {detail}")]
    Unavailable { operation: &'static str, detail: String },
    #[error("AWS {operation} failed: {code}: {detail}")]
    Aws {
        operation: &'static str,
        code: String,
        detail: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl VendError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::PoolNotFound(_) | Self::RouteNotFound(_) | Self::NodeNotFound(_) => StatusCode::NOT_FOUND,
            Self::PoolDisabled(_) | Self::Forbidden { .. } | Self::NotConfirmable(_) => StatusCode::FORBIDDEN,
            Self::PoolMisconfigured { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidParameter { .. } => StatusCode::BAD_REQUEST,
            Self::NoActivationYet
            | Self::Throttled { .. }
            | Self::Contended { .. }
            | Self::Unavailable { .. }
            | Self::ClockSkew { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Aws { .. } | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::PoolNotFound(_) => "PoolNotFound",
            Self::PoolDisabled(_) => "PoolDisabled",
            Self::PoolMisconfigured { .. } => "PoolMisconfigured",
            Self::Forbidden { .. } => "Forbidden",
            Self::RouteNotFound(_) => "NotFound",
            Self::MethodNotAllowed { .. } => "MethodNotAllowed",
            Self::InvalidParameter { .. } => "InvalidParameter",
            Self::NodeNotFound(_) => "NodeNotFound",
            Self::NotConfirmable(_) => "NotConfirmable",
            Self::NoActivationYet => "NoActivationYet",
            Self::Throttled { .. } => "Throttled",
            Self::Contended { .. } => "Contended",
            Self::Unavailable { .. } => "ServiceUnavailable",
            Self::ClockSkew { .. } => "ClockSkew",
            Self::Aws { .. } | Self::Internal(_) => "InternalError",
        }
    }

    /// Seconds a caller should wait before trying again, for the 503s.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Self::NoActivationYet | Self::Contended { .. } => Some(1),
            Self::Throttled { .. } | Self::Unavailable { .. } => Some(2),
            Self::ClockSkew { .. } => Some(10),
            _ => None,
        }
    }

    /// What the caller reads. Server-side failures say what to do, not what broke inside.
    fn public_message(&self) -> String {
        match self {
            Self::Aws { .. } | Self::Internal(_) => "the service failed to vend an activation; see its logs".into(),
            Self::Unavailable { .. } => "an AWS dependency is unavailable; retry later".into(),
            Self::Contended { .. } => "the pool is busy with concurrent writes; retry shortly".into(),
            Self::ClockSkew { .. } => "the service's clock disagrees with AWS's; retry later".into(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for VendError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "request failed");
        }
        let body = json!({"error": {"code": self.code(), "message": self.public_message()}});
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Self::MethodNotAllowed { allow, .. } = self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_503_tells_the_caller_when_to_retry() {
        for e in [
            VendError::NoActivationYet,
            VendError::Throttled {
                operation: "DynamoDB.UpdateItem",
            },
            VendError::Contended {
                operation: "DynamoDB.UpdateItem",
            },
            VendError::Unavailable {
                operation: "SSM.GetParameter",
                detail: "timeout".into(),
            },
            VendError::ClockSkew {
                skew_s: -30,
                allowed_s: 2,
            },
        ] {
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            let response = e.into_response();
            assert!(response.headers().contains_key(header::RETRY_AFTER));
        }
    }

    #[test]
    fn server_failures_hide_their_internals_from_the_caller() {
        let e = VendError::Aws {
            operation: "SSM.PutParameter",
            code: "AccessDeniedException".into(),
            detail: "User arn:aws:iam::123:role/x is not authorized".into(),
        };
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.public_message().contains("arn:aws"));
    }
}
