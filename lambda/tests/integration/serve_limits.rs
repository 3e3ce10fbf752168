//! `vending serve` as a server facing many clients: slow heads are cut, idle
//! connections closed, connections capped, and SIGTERM bounded by the grace.
//! Raw TCP clients, since an HTTP client library would not misbehave on purpose.

use crate::support;

use std::time::{Duration, Instant};

use support::Emulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: vending\r\n\r\n";

/// Reads one `/health` answer (`... OK`) off a keep-alive connection; its status.
async fn read_health(stream: &mut TcpStream) -> Option<u16> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if text.contains("\r\n\r\n") && text.ends_with("OK") {
            return text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        }
    }
}

async fn health_on(stream: &mut TcpStream) -> Option<u16> {
    stream.write_all(HEALTH).await.ok()?;
    read_health(stream).await
}

/// How long until the server closes `stream` (reads end or fail), up to `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.ok().map(|()| started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_head_is_cut_at_the_header_timeout() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_HEADER_TIMEOUT", "1s"), ("VENDING_IDLE_TIMEOUT", "30s")]);
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: vending\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One more header line every 200 ms, never the blank line that ends the head.
    let trickle = tokio::spawn(async move {
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(format!("X-Slow-{i}: y\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    let took = started.elapsed();
    assert!(closed.is_ok(), "a head trickled for 6 s was not cut");
    assert!(took < Duration::from_secs(3), "cut after {took:?}, not about 1 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed_at_the_idle_timeout_and_not_before() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_HEADER_TIMEOUT", "1s"), ("VENDING_IDLE_TIMEOUT", "3s")]);
    let mut kept_alive = TcpStream::connect(server.address()).await.unwrap();
    assert_eq!(health_on(&mut kept_alive).await, Some(200));
    // Longer than the header timeout: an idle keep-alive connection (a load
    // balancer's pool) is not a slow head, and still serves.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    assert_eq!(
        health_on(&mut kept_alive).await,
        Some(200),
        "closed at the header timeout"
    );
    let idle_for = closed_within(&mut kept_alive, Duration::from_secs(8))
        .await
        .expect("an idle connection stayed open past the idle timeout");
    assert!(idle_for >= Duration::from_millis(2_500), "closed after {idle_for:?}");

    // A connection that never sends a byte is idle too.
    let mut silent = TcpStream::connect(server.address()).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(8)).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_wait_while_the_admitted_ones_keep_answering() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_MAX_CONNECTIONS", "2")]);
    let mut first = TcpStream::connect(server.address()).await.unwrap();
    let mut second = TcpStream::connect(server.address()).await.unwrap();
    assert_eq!(health_on(&mut first).await, Some(200));
    assert_eq!(health_on(&mut second).await, Some(200));

    let mut third = TcpStream::connect(server.address()).await.unwrap();
    third.write_all(HEALTH).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(1_500), read_health(&mut third)).await;
    assert!(waiting.is_err(), "a third connection was served past a cap of 2");

    let admitted = tokio::time::timeout(Duration::from_secs(2), health_on(&mut first)).await;
    assert_eq!(
        admitted.ok().flatten(),
        Some(200),
        "an admitted connection stopped answering"
    );

    drop(second);
    let served = tokio::time::timeout(Duration::from_secs(5), read_health(&mut third)).await;
    assert_eq!(
        served.ok().flatten(),
        Some(200),
        "the waiting connection is served once one closes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_slow_client_exits_within_the_shutdown_grace() {
    let emulator = Emulator::start();
    let mut server = emulator.serve(&[
        ("VENDING_HEADER_TIMEOUT", "60s"),
        ("VENDING_IDLE_TIMEOUT", "60s"),
        ("VENDING_SHUTDOWN_GRACE", "2s"),
    ]);
    assert_eq!(server.get("/activation").await.status, 200);
    // A client in the middle of its head, which would hold a drain forever.
    let mut slow = TcpStream::connect(server.address()).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: vending\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(server.address()).await.unwrap();
    assert_eq!(health_on(&mut idle).await, Some(200));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let took = server.terminate(Duration::from_secs(6));
    let log = server.log_text();
    let took = took.unwrap_or_else(|| panic!("still running 6 s after SIGTERM: {log}"));
    assert!(took < Duration::from_millis(3_500), "exited after {took:?}: {log}");
    assert!(log.contains("stopped vending"), "the clean stop ran: {log}");
    drop(slow);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_over_64_kib_is_refused_so_slow_heads_hold_little_memory() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[]);
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    let filler = "a".repeat(100 * 1024);
    let head = format!("GET /health HTTP/1.1\r\nHost: vending\r\nX-Filler: {filler}\r\n\r\n");
    // The server may close before it has read everything: a write error is an answer too.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "a 100 KiB head was answered: {text:.80}"
    );
}
