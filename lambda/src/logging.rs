//! Log set-up. The AWS SDK and its HTTP stack print whole requests and responses at
//! `debug` and `trace`, and neither CreateActivation's answer nor PutParameter's
//! request is marked sensitive: the activation code would be in the log. Those
//! targets are capped at `info`, whatever `RUST_LOG` says.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Target prefixes of the crates that log what goes over the wire.
const WIRE_TARGETS: &[&str] = &[
    "aws_smithy",
    "aws_sdk",
    "aws_config",
    "aws_runtime",
    "aws_sigv4",
    "aws_credential",
    "hyper",
    "h2",
    "rustls",
    "tower",
    "reqwest",
    "lambda_runtime",
    "lambda_http",
];

/// Whether an event may be logged at all: nothing below `info` from the wire crates.
pub fn allowed(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO || !WIRE_TARGETS.iter().any(|prefix| meta.target().starts_with(prefix))
}

/// JSON lines (Lambda, or `VENDING_LOG_FORMAT=json`) or plain text on standard
/// error, filtered by
/// `RUST_LOG` (default `info`) and then by `allowed`.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Standard error: standard output carries the sweep's JSON report (and, later,
    // embedded metrics), never log lines.
    let format = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr);
    let format = if json {
        format.json().flatten_event(true).without_time().boxed()
    } else {
        format.with_ansi(false).boxed()
    };
    tracing_subscriber::registry()
        .with(format.with_filter(filter).with_filter(filter_fn(allowed)))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;

    struct Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!()
        }
    }
    static SITE: Site = Site;

    fn meta(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&SITE)),
            Kind::EVENT,
        )
    }

    #[test]
    fn the_wire_crates_never_log_below_info() {
        for target in [
            "aws_smithy_runtime::client::orchestrator",
            "aws_sdk_ssm::operation",
            "hyper_util::client",
            "aws_smithy_http_client::hyper_legacy",
        ] {
            assert!(!allowed(&meta(target, Level::TRACE)), "{target}");
            assert!(!allowed(&meta(target, Level::DEBUG)), "{target}");
            assert!(allowed(&meta(target, Level::WARN)), "{target}");
        }
        assert!(
            allowed(&meta("vending::vend", Level::TRACE)),
            "our own code logs no codes"
        );
    }
}
