//! Test kit: a private AWS emulator per test and real `vending serve` processes
//! pointed at it. The real SDK clients do all the talking; nothing is faked.
//!
//! Every code a test receives is remembered, and when the emulator is dropped the
//! logs of every server it ran are searched for those codes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn python() -> PathBuf {
    match std::env::var_os("VENDING_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(".venv/bin/python"),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_until_ok(url: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(resp) = ureq_get(url) {
            if resp.0 == 200 {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A tiny blocking GET for start-up probes (the tests themselves use reqwest).
fn ureq_get(url: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Emulator {
    pub url: String,
    pub env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    codes: Arc<Mutex<Vec<String>>>,
    logs: Arc<Mutex<Vec<PathBuf>>>,
    _process: Forked,
}

/// The warm emulator factory (scripts/emulator/zygote.py), one per test process: it
/// imports moto once and forks a fresh emulator per test, which then starts in
/// milliseconds instead of two CPU-seconds. It ends, and ends every emulator it
/// forked, when this process ends (its stdin closes).
struct Zygote {
    requests: std::process::ChildStdin,
    answers: std::io::BufReader<std::process::ChildStdout>,
    _process: Child,
}

impl Zygote {
    fn shared() -> &'static Mutex<Zygote> {
        static ZYGOTE: std::sync::OnceLock<Mutex<Zygote>> = std::sync::OnceLock::new();
        ZYGOTE.get_or_init(|| {
            let python = python();
            assert!(
                python.exists(),
                "no Python venv at {}: run scripts/setup.sh first",
                python.display()
            );
            let mut child = Command::new(&python)
                .arg(repo_root().join("scripts/emulator/zygote.py"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the emulator factory");
            Mutex::new(Zygote {
                requests: child.stdin.take().expect("stdin"),
                answers: std::io::BufReader::new(child.stdout.take().expect("stdout")),
                _process: child,
            })
        })
    }

    /// One request, one answer line (the factory answers in order).
    fn ask(request: Value) -> Value {
        use std::io::{BufRead, Write};
        let mut zygote = Self::shared().lock().unwrap_or_else(|p| p.into_inner());
        writeln!(zygote.requests, "{request}").expect("write to the emulator factory");
        let mut line = String::new();
        zygote.answers.read_line(&mut line).expect("read the emulator factory");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("the emulator factory answered {line:?}"))
    }
}

/// An emulator the factory forked; stopped when dropped.
struct Forked(u64);

impl Drop for Forked {
    fn drop(&mut self) {
        Zygote::ask(serde_json::json!({"stop": self.0}));
    }
}

impl Emulator {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let env_file = dir.path().join("provision.env");
        let answer = Zygote::ask(serde_json::json!({"start": {
            "port": port,
            "log": dir.path().join("emulator.log"),
            "env_file": env_file,
        }}));
        let process = Forked(answer["pid"].as_u64().expect("the emulator's pid"));
        let url = format!("http://127.0.0.1:{port}");
        // It provisions itself once it answers, then writes the settings, whole.
        let deadline = Instant::now() + Duration::from_secs(90);
        let provisioned = loop {
            if let Ok(text) = std::fs::read_to_string(&env_file) {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "the emulator did not start: {}",
                std::fs::read_to_string(dir.path().join("emulator.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!provisioned.starts_with("error:"), "provision failed: {provisioned}");
        let env = provisioned
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            url,
            env,
            dir,
            codes: Arc::default(),
            logs: Arc::default(),
            _process: process,
        }
    }

    pub fn env_value(&self, name: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .expect(name)
    }

    /// Starts `vending serve` with the provisioned settings plus `overrides`.
    pub fn serve(&self, overrides: &[(&str, &str)]) -> Server {
        let port = free_port();
        let index = self.logs.lock().unwrap().len();
        let log_path = self.dir.path().join(format!("vending-{index}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_vending"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "debug")
            // Tests watch the first vend rotate; `blocks.rs` tests readying on its own.
            .env("VENDING_READY_POOLS", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        for (k, v) in overrides {
            if v.is_empty() {
                command.env_remove(k);
            } else {
                command.env(k, v);
            }
        }
        let child = command.spawn().expect("start vending serve");
        self.logs.lock().unwrap().push(log_path.clone());
        let url = format!("http://127.0.0.1:{port}");
        let server = Server {
            url: url.clone(),
            log: log_path,
            process: Some(Killer(child)),
            codes: self.codes.clone(),
            http: reqwest::Client::new(),
        };
        assert!(
            wait_until_ok(&format!("{url}/health"), Duration::from_secs(30)),
            "vending serve did not start: {}",
            server.log_text()
        );
        server
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    pub async fn calls(&self) -> HashMap<String, u64> {
        reqwest::get(format!("{}/_emulator/calls", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (up to 10 s) until the emulator has seen `operation` at least once.
    pub async fn wait_for_call(&self, operation: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.calls().await.contains_key(operation) {
            assert!(Instant::now() < deadline, "{operation} was never called");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn reset_calls(&self) {
        self.client()
            .delete(format!("{}/_emulator/calls", self.url))
            .send()
            .await
            .unwrap();
    }

    pub async fn inject(&self, fault: Value) {
        let resp = self
            .client()
            .post(format!("{}/_emulator/faults", self.url))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    /// Network time added to every AWS call, outside the emulator's lock, so that
    /// in-flight requests interleave as they do against AWS.
    pub async fn set_latency(&self, ms: u64) {
        let resp = self
            .client()
            .post(format!("{}/_emulator/latency", self.url))
            .json(&serde_json::json!({ "ms": ms }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    pub async fn clear_faults(&self) {
        self.client()
            .delete(format!("{}/_emulator/faults", self.url))
            .send()
            .await
            .unwrap();
    }

    /// What the SSM agent does with an ID and code; `Err(reason)` when SSM refuses.
    pub async fn register(&self, activation_id: &str, code: &str, instance: &str) -> Result<String, String> {
        let resp = self
            .client()
            .post(format!("{}/_emulator/register", self.url))
            .json(&serde_json::json!({"ActivationId": activation_id, "ActivationCode": code, "InstanceName": instance}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        if status.is_success() {
            Ok(body["InstanceId"].as_str().unwrap().to_owned())
        } else {
            Err(body["error"].as_str().unwrap_or("?").to_owned())
        }
    }

    /// The tags this deployment's activations of `pool` carry (what a rotation that
    /// crashed after CreateActivation leaves on its orphan).
    pub fn our_tags(&self, pool: &str) -> Vec<aws_sdk_ssm::types::Tag> {
        [
            ("activation-vending:pool", pool.to_owned()),
            ("activation-vending:deployment", self.env_value("VENDING_TABLE")),
        ]
        .into_iter()
        .map(|(k, v)| aws_sdk_ssm::types::Tag::builder().key(k).value(v).build().unwrap())
        .collect()
    }

    /// Deletes an activation out of band, as an operator might.
    pub async fn delete_activation(&self, activation_id: &str) {
        self.ssm()
            .await
            .delete_activation()
            .activation_id(activation_id)
            .send()
            .await
            .expect("delete the activation");
    }

    /// Registers every answer's code like the SSM agent would, each under its own
    /// name, and asserts SSM refused none.
    pub async fn assert_all_register<'a>(&self, answers: impl IntoIterator<Item = &'a Answer>) {
        let registrations = answers.into_iter().enumerate().map(|(i, a)| {
            let (id, code) = (a.id(), a.code());
            async move { self.register(&id, &code, &format!("server-{i}")).await }
        });
        let refused: Vec<String> = futures::future::join_all(registrations)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert!(
            refused.is_empty(),
            "SSM refused {} registrations: {:?}",
            refused.len(),
            refused.first()
        );
    }

    /// A real SSM client on the emulator, for what an operator does out of band.
    pub async fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk_config().await)
    }

    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        self.sdk_config_as("test").await
    }

    /// The tests' own SDK configuration, signed with `access_key`, through the
    /// service's HTTPS client (the SDK crates carry none of their own).
    pub async fn sdk_config_as(&self, access_key: &str) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(vending::https_client())
            .endpoint_url(&self.url)
            .region(aws_config::Region::new(self.env_value("AWS_REGION")))
            .credentials_provider(aws_sdk_ssm::config::Credentials::new(
                access_key, "test", None, None, "tests",
            ))
            .load()
            .await
    }

    /// Service configuration as `vending` would read it from this emulator's settings.
    pub fn config(&self, overrides: &[(&str, &str)]) -> vending::Config {
        let mut env: HashMap<String, String> = self.env.iter().cloned().collect();
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        vending::Config::from_lookup(|k| env.get(k).cloned()).expect("valid config")
    }

    /// Activation IDs SSM knows about.
    pub async fn activation_ids(&self) -> Vec<String> {
        let out = self.ssm().await.describe_activations().send().await.unwrap();
        out.activation_list()
            .iter()
            .filter_map(|a| a.activation_id().map(str::to_owned))
            .collect()
    }

    /// Runs `vending sweep` with the provisioned settings plus `overrides`; its JSON report.
    pub fn sweep(&self, overrides: &[(&str, &str)]) -> Value {
        self.sweep_with(&[], overrides)
    }

    /// `vending sweep ARGS...`; its JSON report.
    pub fn sweep_with(&self, args: &[&str], overrides: &[(&str, &str)]) -> Value {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vending"));
        command.arg("sweep").args(args).env_clear().env("RUST_LOG", "warn");
        for (k, v) in self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(overrides.iter().copied())
        {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("a JSON report")
    }

    /// Writes a pool's config parameter, as an operator does with `aws ssm put-parameter`.
    pub async fn put_pool(&self, pool: &str, config: &Value) {
        self.put_pool_as("test", pool, config).await;
    }

    /// Maps an access key ID to the principal ARN the emulator records as the writer of
    /// what that key writes (`LastModifiedUser`).
    pub async fn set_principal(&self, access_key: &str, arn: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/_emulator/principals", self.url))
            .json(&serde_json::json!({ access_key: arn }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }

    /// `put_pool` signed with another access key.
    pub async fn put_pool_as(&self, access_key: &str, pool: &str, config: &Value) {
        let sdk = self.sdk_config_as(access_key).await;
        aws_sdk_ssm::Client::new(&sdk)
            .put_parameter()
            .name(format!(
                "{}/pools/{pool}/config",
                self.env_value("VENDING_PARAMETER_PREFIX")
            ))
            .value(config.to_string())
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .expect("put the pool config");
    }

    /// The emulator behind TLS, as AWS is: a certificate for `localhost` signed by a
    /// CA of its own (made with `openssl`). Returns the HTTPS endpoint, the CA file
    /// a client must trust to reach it, and the proxy (stopped when dropped).
    pub fn behind_tls(&self) -> (String, PathBuf, impl Drop) {
        let dir = self.dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let subject = |cn: &str| format!("/CN={cn}");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            &subject("test CA"),
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            &subject("localhost"),
        ]);
        std::fs::write(
            dir.join("tls.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write tls.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tls.pem",
            "-days",
            "1",
            "-extfile",
            "tls.ext",
        ]);
        let port = free_port();
        let target = self.url.rsplit(':').next().expect("the emulator's port").to_owned();
        let mut child = Command::new(python())
            .arg(repo_root().join("lambda/tests/integration/support/tls_proxy.py"))
            .args([&port.to_string(), &target, "tls.pem", "tls.key"])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the TLS proxy");
        let mut ready = [0u8; 10]; // "listening\n"
        child
            .stdout
            .take()
            .expect("stdout")
            .read_exact(&mut ready)
            .expect("the TLS proxy did not start");
        (format!("https://localhost:{port}"), dir.join("ca.pem"), Killer(child))
    }

    /// Creates another IAM role SSM may give nodes (what provision.py does for the
    /// default one).
    pub fn create_role(&self, role: &str) {
        let out = Command::new(python())
            .arg(repo_root().join("scripts/emulator/provision.py"))
            .args(["--endpoint", &self.url, "--role", role])
            .output()
            .expect("run provision.py");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Every activation SSM knows, with its role, limit and tags.
    pub async fn activations(&self) -> Vec<aws_sdk_ssm::types::Activation> {
        let ssm = self.ssm().await;
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let out = ssm.describe_activations().set_next_token(token).send().await.unwrap();
            all.extend(out.activation_list().iter().cloned());
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return all;
            }
        }
    }

    /// Remember a code seen by a test, to prove later it never reached a log.
    pub fn saw_code(&self, code: &str) {
        self.codes.lock().unwrap().push(code.to_owned());
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let codes = self.codes.lock().unwrap();
        if codes.is_empty() {
            return;
        }
        let finder = aho_corasick::AhoCorasick::new(codes.iter()).expect("code matcher");
        for log in self.logs.lock().unwrap().iter() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                !text.is_empty(),
                "{} is empty: the log check would prove nothing",
                log.display()
            );
            assert!(
                !finder.is_match(&text),
                "an activation code appeared in {}",
                log.display()
            );
        }
    }
}

pub struct Server {
    pub url: String,
    pub log: PathBuf,
    process: Option<Killer>,
    codes: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The body for an assertion message, with any activation code masked: test
    /// output must not carry codes either.
    pub fn shown(&self) -> String {
        match serde_json::from_str::<Value>(&self.body) {
            Ok(Value::Object(mut map)) if map.contains_key("ActivationCode") => {
                map.insert("ActivationCode".into(), Value::String("********".into()));
                Value::Object(map).to_string()
            }
            _ => self.body.clone(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn id(&self) -> String {
        self.json()["ActivationId"].as_str().expect("ActivationId").to_owned()
    }

    pub fn code(&self) -> String {
        self.json()["ActivationCode"]
            .as_str()
            .expect("ActivationCode")
            .to_owned()
    }
}

impl Server {
    pub async fn request(&self, method: reqwest::Method, path_and_query: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.http.request(method, format!("{}{path_and_query}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap();
        if status == 200 {
            if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&body) {
                if let Some(Value::String(code)) = map.get("ActivationCode") {
                    self.codes.lock().unwrap().push(code.clone());
                }
            }
        }
        Answer { status, headers, body }
    }

    pub async fn get(&self, path_and_query: &str) -> Answer {
        self.request(reqwest::Method::GET, path_and_query, &[]).await
    }

    /// What a boot script does: GET, and on 503 wait and try again, within `patience`.
    pub async fn vend_with_retries(&self, path_and_query: &str, patience: Duration) -> Answer {
        let deadline = Instant::now() + patience;
        loop {
            let answer = self.get(path_and_query).await;
            if answer.status != 503 || Instant::now() >= deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100 + rand_ms(200))).await;
        }
    }

    /// SIGKILL: no clean-up, no lease release.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
            std::mem::forget(p);
        }
    }

    /// `host:port` for raw TCP clients.
    pub fn address(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// SIGTERM (through `kill`, as ECS sends it) and the time until the process
    /// exited, or `None` if it still ran after `within` (it is then killed).
    pub fn terminate(&mut self, within: Duration) -> Option<Duration> {
        let mut process = self.process.take()?;
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &process.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        while started.elapsed() < within {
            if process.0.try_wait().expect("wait for vending").is_some() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(process);
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it contains `needle`, for what the server does beside a request
    /// (a standby prepared after the answer went out); panics after 10 s.
    pub async fn log_once_it_says(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "the log never said {needle:?}: {log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn rand_ms(max: u64) -> u64 {
    use std::time::SystemTime;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) % max
}
