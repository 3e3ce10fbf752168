//! `vending serve`'s HTTP server: the router on hyper's HTTP/1 connections, with the
//! limits a server that faces many clients needs (DESIGN.md section 8, "`vending
//! serve` as a server"):
//!
//! - at most `VENDING_MAX_CONNECTIONS` connections: a semaphore permit is taken
//!   before each `accept`, so the ones beyond wait in the kernel's backlog, unread,
//!   and those admitted keep their sockets and memory;
//! - `VENDING_HEADER_TIMEOUT` from a request's first byte to its last header byte;
//! - `VENDING_IDLE_TIMEOUT` for a connection with no request under way (before its
//!   first, between keep-alive requests, or while a client leaves its answer unread);
//! - on the shutdown signal: no more accepts, every connection told to finish, and
//!   at most half of `VENDING_SHUTDOWN_GRACE` to let them; the caller's clean stop
//!   gets the rest.
//!
//! hyper's own `header_read_timeout` is not used: it runs whenever a connection
//! waits for a request head, idle keep-alive included, so it would close the load
//! balancer's pooled connections after 10 s, well inside the ALB's idle timeout, and
//! the ALB answers 502 to a request that meets a connection the target just closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::Config;

/// The most a connection buffers of a request head (hyper's default is about 400
/// KB): a vend's head is well under 1 KB, and a larger one is answered 431. It bounds
/// what slow heads can hold: 1024 connections at most 64 MiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The connection limits of `vending serve`.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl ServeLimits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
            shutdown_grace: config.shutdown_grace,
        }
    }

    /// How long the connections may take to finish after the signal.
    pub fn drain(&self) -> Duration {
        self.shutdown_grace / 2
    }
}

/// Where a connection stands, as the bytes and the router see it.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Requests handed to the router and not answered yet.
    in_flight: u32,
    /// When the first byte of a request whose head is not complete arrived.
    head_since: Option<Instant>,
    /// When the connection last had no request under way.
    idle_since: Instant,
}

/// What the watchdog does next with a connection.
#[derive(Debug, PartialEq, Eq)]
enum Watch {
    /// Look again at this time.
    Until(Instant),
    /// Close it: the reason, for the log.
    Close(&'static str),
}

/// The pure rule: a head must be complete `header_timeout` after its first byte; a
/// connection with no request under way lives `idle_timeout`; a request the router
/// is answering is bounded by `VENDING_DEADLINE`, not here.
fn watch(progress: Progress, now: Instant, limits: &ServeLimits) -> Watch {
    if progress.in_flight > 0 {
        return Watch::Until(now + limits.header_timeout.min(limits.idle_timeout));
    }
    let (deadline, reason) = match progress.head_since {
        Some(since) => (
            since + limits.header_timeout,
            "the request head took longer than VENDING_HEADER_TIMEOUT",
        ),
        None => (
            progress.idle_since + limits.idle_timeout,
            "idle longer than VENDING_IDLE_TIMEOUT",
        ),
    };
    if now >= deadline {
        Watch::Close(reason)
    } else if progress.head_since.is_none() {
        // Idle now, but a head may start before the idle deadline, and nothing wakes
        // this watch when it does: look again within the header timeout, so a head is
        // cut at most one header timeout late, never only at the idle deadline.
        Watch::Until(deadline.min(now + limits.header_timeout))
    } else {
        Watch::Until(deadline)
    }
}

#[derive(Debug)]
struct Activity(Mutex<Progress>);

impl Activity {
    fn new(now: Instant) -> Self {
        Self(Mutex::new(Progress {
            in_flight: 0,
            head_since: None,
            idle_since: now,
        }))
    }

    fn progress(&self) -> Progress {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    fn bytes_read(&self) {
        self.update(|p| {
            if p.in_flight == 0 && p.head_since.is_none() {
                p.head_since = Some(Instant::now());
            }
        });
    }

    fn request_started(&self) {
        self.update(|p| {
            p.in_flight += 1;
            p.head_since = None;
        });
    }

    fn request_answered(&self) {
        self.update(|p| {
            p.in_flight = p.in_flight.saturating_sub(1);
            if p.in_flight == 0 {
                p.idle_since = Instant::now();
            }
        });
    }
}

/// The client's socket, telling the connection's `Activity` when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the connections
/// finish for at most `limits.drain()`, cuts the rest and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept:
                    // pause rather than spin, and go on.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let closing_seen = closing_seen.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, app, limits, closing_seen).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(limits.drain(), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open_at_signal = open,
            cut = connections.len(),
            grace_ms = limits.drain().as_millis() as u64,
            "closed the connections that did not finish within half of VENDING_SHUTDOWN_GRACE"
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ServeLimits,
    mut closing: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            activity.request_started();
            let activity = activity.clone();
            let answer = app.clone().oneshot(request);
            async move {
                let response = answer.await;
                activity.request_answered();
                response
            }
        })
    };
    let mut connection = pin!(hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, service));
    let mut check_at = Instant::now();
    let mut told_to_close = *closing.borrow();
    if told_to_close {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(check_at) => match watch(activity.progress(), Instant::now(), &limits) {
                Watch::Until(next) => check_at = next,
                Watch::Close(reason) => {
                    tracing::debug!(peer = %peer, reason, "closed a connection");
                    return;
                }
            },
            changed = closing.changed(), if !told_to_close => {
                told_to_close = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServeLimits {
        ServeLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 8,
            shutdown_grace: Duration::from_secs(20),
        }
    }

    #[test]
    fn a_head_must_be_complete_within_the_header_timeout_of_its_first_byte() {
        let start = Instant::now();
        let progress = Progress {
            in_flight: 0,
            head_since: Some(start),
            idle_since: start,
        };
        assert_eq!(
            watch(progress, start + Duration::from_secs(9), &limits()),
            Watch::Until(start + Duration::from_secs(10))
        );
        assert!(matches!(
            watch(progress, start + Duration::from_secs(10), &limits()),
            Watch::Close(reason) if reason.contains("VENDING_HEADER_TIMEOUT")
        ));
    }

    #[test]
    fn a_connection_with_nothing_under_way_lives_the_idle_timeout_not_the_header_timeout() {
        let start = Instant::now();
        let idle = Progress {
            in_flight: 0,
            head_since: None,
            idle_since: start,
        };
        assert!(matches!(
            watch(idle, start + Duration::from_secs(55), &limits()),
            Watch::Until(_)
        ));
        assert!(matches!(
            watch(idle, start + Duration::from_secs(60), &limits()),
            Watch::Close(reason) if reason.contains("VENDING_IDLE_TIMEOUT")
        ));
    }

    #[test]
    fn an_idle_connection_is_looked_at_again_within_the_header_timeout() {
        // A head that starts just after this look must not wait for the idle deadline
        // to be judged (the slowloris test once saw no cut in 6 s for this reason).
        let start = Instant::now();
        let idle = Progress {
            in_flight: 0,
            head_since: None,
            idle_since: start,
        };
        assert_eq!(
            watch(idle, start, &limits()),
            Watch::Until(start + Duration::from_secs(10))
        );
        assert_eq!(
            watch(idle, start + Duration::from_secs(55), &limits()),
            Watch::Until(start + Duration::from_secs(60))
        );
    }

    #[test]
    fn a_request_being_answered_is_never_cut_by_the_watchdog() {
        let start = Instant::now();
        let busy = Progress {
            in_flight: 1,
            head_since: None,
            idle_since: start,
        };
        let later = start + Duration::from_secs(600);
        assert!(matches!(watch(busy, later, &limits()), Watch::Until(_)));
    }
}
