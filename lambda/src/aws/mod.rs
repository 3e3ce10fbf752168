//! One adapter per AWS service. Each turns SDK types into the domain's and SDK
//! errors into `VendError`, through `classify` below.

pub mod activations;
pub mod keys;
pub mod nodes;
pub mod parameters;
pub mod pool_store;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::error::VendError;

/// Error codes AWS uses for "slow down"; the SDK already retried these.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "TransactionInProgressException",
];

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
                    Echo::Message => DisplayErrorContext(&err).to_string(),
                    Echo::Nothing => "no answer".into(),
                },
            }
        }
        _ if THROTTLING_CODES.contains(&code.as_str()) => VendError::Throttled { operation },
        _ if code == "TransactionConflictException" => VendError::Contended { operation },
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
