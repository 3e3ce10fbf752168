//! One adapter per AWS service. Each turns SDK types into the domain's and SDK
//! errors into `VendError`, through `classify` below.

pub mod activations;
pub mod keys;
pub mod nodes;
pub mod parameters;
pub mod pool_store;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use rand::Rng;

use crate::error::VendError;

/// Error codes AWS uses for "slow down" (the SDK's own list; the SDK already
/// retried these, with backoff, before they reach `classify`).
const THROTTLING_CODES: &[&str] = aws_runtime::retries::classifiers::THROTTLING_ERRORS;

/// Error codes that say another write to the same thing was in flight: retried by
/// `retrying_conflicts`, then `Contended`. DynamoDB's `TransactionConflictException`
/// and Parameter Store's `TooManyUpdates` (a parameter written too often at once).
const CONTENTION_CODES: &[&str] = &["TransactionConflictException", "TooManyUpdates"];

/// Attempts at a write that meets a concurrent write on the same thing. DynamoDB
/// answers `TransactionConflictException`, Parameter Store `TooManyUpdates`; the
/// SDK retries neither.
const CONFLICT_ATTEMPTS: u32 = 8;

/// Runs a write again while it meets concurrent writes (`Contended`), backing off
/// with full jitter; past the last attempt the caller gets `Contended` (a 503).
pub(crate) async fn retrying_conflicts<T, F, Fut>(mut attempt: F) -> Result<T, VendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, VendError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(VendError::Contended { .. }) if tries < CONFLICT_ATTEMPTS => {
                back_off(tries, 250).await;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Sleeps before attempt `tries + 1`: full jitter under a ceiling that doubles from
/// 20 ms up to `max_ms`.
pub(crate) async fn back_off(tries: u32, max_ms: u64) {
    let ceiling_ms = (10u64 << tries.min(7)).min(max_ms);
    let pause = rand::rng().random_range(1..=ceiling_ms);
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

/// Counts the attempts of one request (the SDK's retries included) that got no
/// answer or a 5xx: a write among them may have landed all the same. Added to a
/// request with `.customize().interceptor(...)`.
#[derive(Debug, Clone, Default)]
pub(crate) struct UnansweredAttempts(Arc<AtomicU32>);

impl UnansweredAttempts {
    pub(crate) fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Intercept for UnansweredAttempts {
    fn name(&self) -> &'static str {
        "UnansweredAttempts"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.response().is_none_or(|r| r.status().as_u16() >= 500) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// How much of an AWS error message may be repeated in our logs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Echo {
    Message,
    /// The request carried the activation code: AWS may echo input in a message.
    Nothing,
}

pub(crate) fn classify<E>(operation: &'static str, err: SdkError<E, HttpResponse>, echo: Echo) -> VendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or("Unknown").to_owned();
    let detail = match echo {
        Echo::Message => err.message().unwrap_or_default().to_owned(),
        Echo::Nothing => String::new(),
    };
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            VendError::Unavailable {
                operation,
                detail: match echo {
                    // The error chain's messages, never the SDK error's `Debug`: it holds
                    // AWS's raw answer, and CreateActivation's carries the code.
                    Echo::Message => std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": "),
                    Echo::Nothing => "no answer".into(),
                },
            }
        }
        _ if THROTTLING_CODES.contains(&code.as_str()) => VendError::Throttled { operation },
        _ if CONTENTION_CODES.contains(&code.as_str()) => VendError::Contended { operation },
        _ if status.is_some_and(|s| s >= 500) => VendError::Unavailable {
            operation,
            detail: code,
        },
        _ => VendError::Aws {
            operation,
            code,
            detail,
        },
    }
}
