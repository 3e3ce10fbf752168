//! The sample API Gateway events in events/ through the path Lambda takes:
//! `lambda_http::request::from_str` turns each one into the request that
//! `lambda_http::run` hands to the real router, here backed by the emulator.
//!
//! One test function on purpose: it sets AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH, as
//! template.yaml does for the function, before anything else in this process runs.

#[path = "integration/support/mod.rs"]
mod support;

use std::path::PathBuf;

use lambda_http::request::RequestContext;
use lambda_http::RequestExt;
use serde_json::Value;
use support::{repo_root, Emulator};
use tower::ServiceExt;

struct Answer {
    status: u16,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn event_path(name: &str) -> PathBuf {
    repo_root().join("events").join(format!("{name}.json"))
}

fn event(name: &str) -> lambda_http::Request {
    let text = std::fs::read_to_string(event_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{name} is not an API Gateway event: {e}"))
}

async fn send(app: &axum::Router, name: &str) -> Answer {
    let request = event(name);
    let response = app.clone().oneshot(request).await.expect("the router answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body");
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

fn assert_error(answer: &Answer, name: &str, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{name}: {}", answer.body);
    assert_eq!(answer.json()["error"]["code"], code, "{name}");
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{name}: an error message"
    );
}

#[test]
fn every_sample_event_gets_the_contract_answer_from_the_real_router() {
    // What template.yaml sets; without it lambda_http routes /prod/activation.
    std::env::set_var("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        // Every event is a private REST API (stage prod) event with the stage stripped.
        for name in [
            "vend",
            "vend-pool-instance",
            "root",
            "health",
            "unknown-path",
            "wrong-method",
            "unknown-pool",
            "bad-parameter",
        ] {
            let request = event(name);
            assert!(
                !request.uri().path().starts_with("/prod"),
                "{name}: stage left in {}",
                request.uri()
            );
            match request.request_context_ref() {
                Some(RequestContext::ApiGatewayV1(context)) => {
                    assert_eq!(context.stage.as_deref(), Some("prod"), "{name}");
                }
                other => panic!("{name}: not a REST API event: {other:?}"),
            }
        }

        let emulator = Emulator::start();
        let sdk = emulator.sdk_config().await;
        let app = vending::router(vending::build_state(emulator.config(&[]), &sdk));

        for name in ["vend", "root"] {
            let answer = send(&app, name).await;
            assert_eq!(answer.status, 200, "{name}: {}", answer.body);
            assert_eq!(answer.header("cache-control"), Some("no-store"), "{name}");
            let body = answer.json();
            for field in ["ActivationId", "ActivationCode", "Region", "ExpirationDate", "Pool"] {
                assert!(body[field].is_string(), "{name}: {field} missing from {body}");
            }
            assert_eq!(body["Pool"], "default");
            emulator.saw_code(body["ActivationCode"].as_str().unwrap());
        }

        let first = send(&app, "vend-pool-instance").await;
        assert_eq!(first.status, 200, "vend-pool-instance: {}", first.body);
        let again = send(&app, "vend-pool-instance").await;
        assert_eq!(
            (&again.json()["ActivationId"], &again.json()["ActivationCode"]),
            (&first.json()["ActivationId"], &first.json()["ActivationCode"]),
            "a named instance gets the same activation again"
        );
        assert_eq!(first.json()["Pool"], "default");
        emulator.saw_code(first.json()["ActivationCode"].as_str().unwrap());
        let registered = emulator
            .register(
                first.json()["ActivationId"].as_str().unwrap(),
                first.json()["ActivationCode"].as_str().unwrap(),
                "web-01.example.internal",
            )
            .await;
        assert!(registered.is_ok(), "the vended code registers: {registered:?}");

        let health = send(&app, "health").await;
        assert_eq!(health.status, 200);
        assert_eq!(health.body, "OK");
        assert!(health
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")));

        let unknown = send(&app, "unknown-path").await;
        assert_error(&unknown, "unknown-path", 404, "NotFound");

        let wrong = send(&app, "wrong-method").await;
        assert_error(&wrong, "wrong-method", 405, "MethodNotAllowed");
        assert_eq!(wrong.header("allow"), Some("GET"));

        let pool = send(&app, "unknown-pool").await;
        assert_error(&pool, "unknown-pool", 404, "PoolNotFound");

        let bad = send(&app, "bad-parameter").await;
        assert_error(&bad, "bad-parameter", 400, "InvalidParameter");
    });
}
