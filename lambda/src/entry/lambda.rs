//! What Lambda invokes: API Gateway events go to the router (through lambda_http's
//! own adapter, so every event shape it knows keeps working), and the scheduled
//! `{"sweep": true}` event runs the sweep. One function, one binary, one build.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, LambdaEvent, Service};
use serde_json::Value;

use crate::clock::epoch_now;
use crate::sweep::{SweepOptions, Sweeper};

pub type BoxError = lambda_http::Error;

pub fn is_sweep_event(payload: &Value) -> bool {
    payload.get("sweep").and_then(Value::as_bool) == Some(true)
}

pub async fn handle_event(app: Router, sweeper: Arc<Sweeper>, event: LambdaEvent<Value>) -> Result<Value, BoxError> {
    let LambdaEvent { payload, context } = event;
    if is_sweep_event(&payload) {
        let reports = sweeper
            .sweep_all(
                epoch_now(),
                SweepOptions {
                    until: Some(sweep_budget(context.deadline)),
                    dry_run: false,
                },
            )
            .await?;
        return Ok(serde_json::to_value(reports)?);
    }
    let request: LambdaRequest =
        serde_json::from_value(payload).map_err(|e| format!("not an API Gateway, ALB or sweep event: {e}"))?;
    let mut adapter = Adapter::from(app);
    let response = adapter.call(LambdaEvent::new(request, context)).await?;
    Ok(serde_json::to_value(response)?)
}

/// When the sweep stops starting new work: a few seconds before Lambda's deadline
/// (`deadline_ms` since the epoch), so its report is always returned.
fn sweep_budget(deadline_ms: u64) -> Instant {
    const REPORT_MARGIN: Duration = Duration::from_secs(3);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    Instant::now() + left.saturating_sub(REPORT_MARGIN)
}

pub async fn run(app: Router, sweeper: Sweeper) -> Result<(), BoxError> {
    let sweeper = Arc::new(sweeper);
    lambda_http::lambda_runtime::run(lambda_http::service_fn(move |event: LambdaEvent<Value>| {
        handle_event(app.clone(), sweeper.clone(), event)
    }))
    .await
}
