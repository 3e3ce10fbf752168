//! Entry point: build configuration and AWS clients once, then serve the one router
//! under Lambda (`AWS_LAMBDA_RUNTIME_API` set) or as a plain HTTP server.

use std::net::SocketAddr;
use std::process::ExitCode;

use vending::app::{build_state, build_sweeper, load_sdk_config};
use vending::config::Config;
use vending::http::router;

const USAGE: &str = "\
vending: hands on-prem servers an AWS Systems Manager hybrid activation at boot.

Usage:
  vending                       under AWS Lambda (AWS_LAMBDA_RUNTIME_API set)
  vending serve [--listen ADDR] plain HTTP server (default 127.0.0.1:8080)
  vending sweep                 delete orphan and spent activations once, print a JSON report
  vending --help

Configuration comes from VENDING_* environment variables (see README).
Exit codes: 0 stopped cleanly, 1 runtime failure, 2 bad usage or configuration.";

enum Mode {
    Lambda,
    Serve(SocketAddr),
    Sweep,
}

fn parse_args(args: &[String]) -> Result<Option<Mode>, String> {
    match args.first().map(String::as_str) {
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Ok(Some(Mode::Lambda)),
        None => Err("no command given and AWS_LAMBDA_RUNTIME_API is not set".into()),
        Some("-h" | "--help" | "help") => Ok(None),
        Some("sweep") if args.len() == 1 => Ok(Some(Mode::Sweep)),
        Some("serve") => {
            let mut listen = "127.0.0.1:8080".to_owned();
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--listen" => {
                        listen = rest
                            .next()
                            .ok_or("--listen needs an address like 127.0.0.1:8080")?
                            .clone()
                    }
                    other if other.starts_with("--listen=") => listen = other["--listen=".len()..].to_owned(),
                    other => return Err(format!("unknown argument `{other}`")),
                }
            }
            let addr = listen
                .parse()
                .map_err(|_| format!("--listen: `{listen}` is not an address like 127.0.0.1:8080"))?;
            Ok(Some(Mode::Serve(addr)))
        }
        Some(other) => Err(format!("unknown command `{other}`")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse_args(&args) {
        Ok(Some(mode)) => mode,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("vending: {problem}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vending: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    vending::logging::init(
        matches!(mode, Mode::Lambda) || std::env::var("VENDING_LOG_FORMAT").is_ok_and(|f| f == "json"),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vending: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(mode, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(mode: Mode, config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let sdk = load_sdk_config(&config).await;
    let sweeper = build_sweeper(&config, &sdk);
    let app = router(build_state(config, &sdk));
    match mode {
        Mode::Lambda => vending::lambda_entry::run(app, sweeper).await,
        Mode::Sweep => {
            let reports = sweeper.sweep_all(vending::vend::epoch_now(), None).await?;
            println!("{}", serde_json::to_string_pretty(&reports)?);
            Ok(())
        }
        Mode::Serve(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(listen = %listener.local_addr()?, "serving");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
