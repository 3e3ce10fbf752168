//! A keep-alive front for the emulator. The emulator (werkzeug) answers every request
//! with `Connection: close`, so the servers' AWS SDK opens a new TCP connection per
//! call, which AWS's endpoints never make it do. Servers pointed at this proxy keep
//! their connections; the proxy pays the reconnects to the emulator instead, in the
//! bench's process, whose CPU is not counted as the servers'.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub url: String,
    task: JoinHandle<()>,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Proxy {
    /// (connections accepted, requests forwarded) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on an ephemeral loopback port and forwards every request to `upstream`.
pub async fn start(upstream: &str) -> Result<Proxy, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    let port = listener.local_addr().map_err(|e| format!("proxy: {e}"))?.port();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("proxy: {e}"))?;
    let upstream = upstream.trim_end_matches('/').to_owned();
    let connections = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve(socket, http.clone(), upstream.clone(), Arc::clone(&r)));
        }
    });
    Ok(Proxy {
        url: format!("http://127.0.0.1:{port}"),
        task,
        connections,
        requests,
    })
}

/// One client connection: HTTP/1.1 requests with a Content-Length body, in sequence.
async fn serve(socket: TcpStream, http: reqwest::Client, upstream: String, requests: Arc<AtomicU64>) {
    let _ = socket.set_nodelay(true);
    let mut conn = BufReader::new(socket);
    loop {
        let mut line = String::new();
        match conn.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
            return;
        };
        let target = target.to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            match conn.read_line(&mut header).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                return;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
            match name.as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                // Chunked uploads do not happen on these APIs; refuse rather than guess.
                "transfer-encoding" => return,
                "host" | "connection" | "keep-alive" => {}
                _ => headers.push((name, value)),
            }
        }
        let mut body = vec![0u8; length];
        if conn.read_exact(&mut body).await.is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        let mut request = http.request(method, format!("{upstream}{target}")).body(body);
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let (status, resp_headers, resp_body) = match request.send().await {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                match resp.bytes().await {
                    Ok(body) => (status, headers, body),
                    Err(_) => return,
                }
            }
            Err(_) => return,
        };
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        for (name, value) in &resp_headers {
            if matches!(
                name.as_str(),
                "connection" | "content-length" | "transfer-encoding" | "keep-alive"
            ) {
                continue;
            }
            if let Ok(value) = value.to_str() {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", resp_body.len()));
        let socket = conn.get_mut();
        if socket.write_all(head.as_bytes()).await.is_err() || socket.write_all(&resp_body).await.is_err() {
            return;
        }
    }
}
