//! One environment's Lambda Runtime API, as the `lambda_runtime` crate calls it: the
//! function asks for its next invocation (and waits, frozen, until there is one), then
//! posts its answer or its error. Each environment has its own listener, so the address
//! in `AWS_LAMBDA_RUNTIME_API` names the environment.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

/// What the function answered.
#[derive(Debug)]
pub enum Reply {
    /// `/response`: the proxy result.
    Response(Value),
    /// `/error`: the function failed this invocation.
    Error(String),
}

pub struct Invocation {
    pub request_id: String,
    pub event: Value,
    pub deadline_ms: u64,
    pub reply: oneshot::Sender<Reply>,
}

/// What the fleet hears from an environment's Runtime API.
pub trait Lifecycle: Send + Sync + 'static {
    /// The function asked for its next invocation: it has nothing to do.
    fn waiting(&self, env: u64);
    /// The function answered its invocation.
    fn answered(&self, env: u64);
    /// The function's init failed (`/runtime/init/error`).
    fn init_failed(&self, env: u64);
}

#[derive(Default)]
struct Inbox {
    next: Option<Invocation>,
    in_flight: Option<(String, oneshot::Sender<Reply>)>,
    dead: bool,
}

/// The environment's side of the Runtime API: its one inbox.
pub struct Mailbox {
    pub env: u64,
    inbox: Mutex<Inbox>,
    wake: Notify,
}

impl Mailbox {
    pub fn new(env: u64) -> Self {
        Self {
            env,
            inbox: Mutex::new(Inbox::default()),
            wake: Notify::new(),
        }
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `invocation` to the function's next `/next`; gives it back when the
    /// environment is gone.
    pub fn deliver(&self, invocation: Invocation) -> Result<(), Invocation> {
        let mut inbox = self.inbox();
        if inbox.dead || inbox.next.is_some() || inbox.in_flight.is_some() {
            return Err(invocation);
        }
        inbox.next = Some(invocation);
        drop(inbox);
        self.wake.notify_one();
        Ok(())
    }

    /// The process is gone: what it held is dropped, so its caller hears at once.
    pub fn close(&self) {
        let mut inbox = self.inbox();
        inbox.dead = true;
        inbox.next = None;
        inbox.in_flight = None;
        drop(inbox);
        self.wake.notify_waiters();
    }

    async fn next(&self) -> Option<Invocation> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inbox = self.inbox();
                if inbox.dead {
                    return None;
                }
                if let Some(invocation) = inbox.next.take() {
                    return Some(invocation);
                }
            }
            notified.await;
        }
    }

    fn start(&self, request_id: String, reply: oneshot::Sender<Reply>) {
        self.inbox().in_flight = Some((request_id, reply));
    }

    fn finish(&self, request_id: &str, reply: Reply) -> bool {
        let mut inbox = self.inbox();
        match inbox.in_flight.take() {
            Some((id, sender)) if id == request_id => {
                let _ = sender.send(reply);
                true
            }
            other => {
                inbox.in_flight = other;
                false
            }
        }
    }
}

struct Api {
    mailbox: Arc<Mailbox>,
    lifecycle: Arc<dyn Lifecycle>,
}

pub fn router(mailbox: Arc<Mailbox>, lifecycle: Arc<dyn Lifecycle>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(Arc::new(Api { mailbox, lifecycle }))
}

async fn next(State(api): State<Arc<Api>>) -> Response {
    api.lifecycle.waiting(api.mailbox.env);
    let Some(invocation) = api.mailbox.next().await else {
        return StatusCode::GONE.into_response();
    };
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("lambda-runtime-aws-request-id", invocation.request_id.clone());
    set("lambda-runtime-deadline-ms", invocation.deadline_ms.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:eu-west-1:123456789012:function:vending".into(),
    );
    set(
        "lambda-runtime-trace-id",
        format!("Root=1-00000000-{}", invocation.request_id),
    );
    set("content-type", "application/json".into());
    let body = invocation.event.to_string();
    api.mailbox.start(invocation.request_id, invocation.reply);
    (headers, body).into_response()
}

async fn response(State(api): State<Arc<Api>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let reply = match serde_json::from_slice(&body) {
        Ok(value) => Reply::Response(value),
        Err(e) => Reply::Error(format!("the function's answer is not JSON: {e}")),
    };
    answer(&api, &id, reply)
}

async fn error(State(api): State<Arc<Api>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let kind = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("errorType").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    answer(&api, &id, Reply::Error(format!("the function failed: {kind}")))
}

fn answer(api: &Api, id: &str, reply: Reply) -> StatusCode {
    if api.mailbox.finish(id, reply) {
        api.lifecycle.answered(api.mailbox.env);
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    }
}

async fn init_error(State(api): State<Arc<Api>>) -> StatusCode {
    api.lifecycle.init_failed(api.mailbox.env);
    StatusCode::ACCEPTED
}
