//! Entry point: build configuration and AWS clients once, then serve the one router
//! under Lambda (`AWS_LAMBDA_RUNTIME_API` set) or as a plain HTTP server, or run one
//! of the operator's commands.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vending::{build_state, build_status_reader, build_sweeper, load_sdk_config, pool_configs, router, Config};

/// Hands on-prem servers an AWS Systems Manager hybrid activation at boot.
///
/// Without a command it runs under AWS Lambda (AWS_LAMBDA_RUNTIME_API set).
/// Configuration comes from VENDING_* environment variables (see docs/operating.md).
/// Exit codes: 0 done, 1 runtime failure (or, for `pools`, an invalid pool),
/// 2 bad usage or configuration.
#[derive(Parser)]
#[command(name = "vending", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP interface as a plain server (SIGTERM drains and stops).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Delete orphan and spent activations once (and, where a pool opts in, stale
    /// duplicate nodes); print a JSON report.
    Sweep {
        /// Decide and report; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Per pool: the current activation, slots, SSM's count, lease, last rotation and
    /// nodes by ping status; account-wide, hybrid nodes against VENDING_NODE_QUOTA
    /// (exit 1 if a pool is misconfigured or its rotations are failing).
    Status {
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List every pool with its effective settings and whether its config is valid
    /// (exit 1 if any is not).
    Pools {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the confirmed nodes (POST /registrations) with SSM's ping status now.
    Nodes {
        /// Only this pool's nodes.
        #[arg(long)]
        pool: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_none() && std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        eprintln!("vending: no command given and AWS_LAMBDA_RUNTIME_API is not set; see `vending --help`");
        return ExitCode::from(2);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vending: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(
        cli.command,
        Some(Command::Sweep { .. } | Command::Pools { .. } | Command::Status { .. } | Command::Nodes { .. })
    ) {
        // Their standard output is the report.
        vending::disable_metrics();
    }
    let json_logs = cli.command.is_none() || std::env::var("VENDING_LOG_FORMAT").is_ok_and(|f| f == "json");
    vending::init_logging(json_logs);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vending: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Option<Command>, config: Config) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    let sdk = load_sdk_config(&config).await;
    if matches!(command, None | Some(Command::Serve { .. })) {
        // Before anything is vended: a code must never go under a key that may not hold it.
        match vending::check_code_key(&config, &sdk).await {
            Ok(key) => {
                tracing::info!(key = key.arn.as_deref().unwrap_or(&key.key_id), key_manager = %key.key_manager, "the codes' KMS key is customer-managed and enabled")
            }
            Err(e @ vending::KeyCheckError::Refused(_)) => {
                tracing::error!(error = %e, "configuration error");
                eprintln!("vending: configuration error: {e}");
                return Ok(ExitCode::from(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    match command {
        None => {
            let sweeper = build_sweeper(&config, &sdk);
            if std::env::var_os("VENDING_BLOCK_MAX").is_some() && config.block_max > 1 {
                tracing::info!(
                    "VENDING_BLOCK_MAX applies to `vending serve`; under Lambda each request takes its own slot"
                );
            }
            // One request per environment: a block would only strand slots in
            // environments that go cold.
            let config = config.under_lambda();
            vending::run_lambda(router(build_state(config, &sdk)), sweeper).await?;
        }
        Some(Command::Sweep { dry_run }) => {
            let options = vending::SweepOptions { until: None, dry_run };
            let reports = build_sweeper(&config, &sdk)
                .sweep_all(vending::epoch_now(), options)
                .await?;
            println!("{}", serde_json::to_string_pretty(&reports)?);
        }
        Some(Command::Status { pool, json }) => {
            let status = build_status_reader(&config, &sdk)
                .read(&config, pool.as_deref())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.table());
            }
            return Ok(if status.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Some(Command::Pools { json }) => {
            let listing = vending::read_pools(&pool_configs(&config, &sdk), &config).await?;
            print!("{}", if json { listing.json()? } else { listing.table() });
            return Ok(if listing.all_valid() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Some(Command::Nodes { pool, json }) => {
            let nodes = vending::list_nodes(&config, &sdk, pool.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!("{}", vending::nodes_table(&nodes));
            }
        }
        Some(Command::Serve { listen }) => {
            let ready_pools = config.ready_pools;
            let state = build_state(config, &sdk);
            let vendor = state.vendor.clone();
            if ready_pools {
                vendor.ready_pools().await;
            }
            let limits = vending::ServeLimits::from_config(vendor.config());
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(
                listen = %listener.local_addr()?,
                max_connections = limits.max_connections,
                header_timeout_ms = limits.header_timeout.as_millis() as u64,
                idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
                shutdown_grace_ms = limits.shutdown_grace.as_millis() as u64,
                "serving"
            );
            let signalled = std::sync::Arc::new(std::sync::OnceLock::new());
            let on_signal = {
                let signalled = signalled.clone();
                async move {
                    shutdown_signal().await;
                    let _ = signalled.set(tokio::time::Instant::now());
                    tracing::info!("stopping: no new connections; the open ones are asked to finish");
                }
            };
            vending::serve(listener, router(state), limits, on_signal).await?;
            // The clean stop gets what the connections left of the grace.
            let since_signal = signalled.get().map_or(std::time::Duration::ZERO, |at| at.elapsed());
            vendor.stop(limits.shutdown_grace.saturating_sub(since_signal)).await;
        }
    }
    Ok(ExitCode::SUCCESS)
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
