//! The command line (clap): a full run (the options scripts/bench.sh passes), or
//! `load`, the load generator alone. Every flag keeps the spelling of the hand-written
//! parser it replaced; a repeated flag takes its last value (`scripts/bench.sh -- --clients 8`
//! overrides the script's own `--clients`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::scenario::Scenario;

#[derive(Parser, Debug)]
#[command(
    name = "vending-bench",
    about = "vending-bench: benchmarks activation vending against scripts/local.sh.",
    long_about = "vending-bench: benchmarks activation vending against scripts/local.sh \
                  (normally run by scripts/bench.sh). Writes summary.json and summary.txt, and \
                  <scenario>.json and .txt for each scenario, to --out.",
    after_help = "Environment: LOCAL_STATE_DIR, LOCAL_EMULATOR_PORT, LOCAL_VENDING_PORT and VENDING_BIN as \
                  scripts/local.sh reads them (the bench reads pid files from LOCAL_STATE_DIR).\n\
                  Exit codes: 0 done (targets are reported, not enforced), 1 the run failed, 2 bad usage.",
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Only the load: GET each URL round-robin, print latencies and the user/system CPU
    /// the given processes used (for profiling by hand)
    Load(LoadArgs),
    /// Only the Lambda-shaped stage: the `vending` binary as Lambda environments behind
    /// the stage throttle, on a loopback port it prints, until SIGINT/SIGTERM
    Stage(StageArgs),
}

/// What `--scenario` accepts: one scenario, or `all` of them in turn.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScenarioChoice {
    /// A boot storm on a pool that starts empty, limit 100
    Steady,
    /// Limit 10: a rotation every 10 vends, under load
    StormWithRotation,
    /// 30% ThrottlingException on every DynamoDB and SSM call of the main phase
    Throttled,
    /// The three in turn; summary.json holds the first plus "scenarios"
    All,
    /// The deployed shape: booting servers through a Lambda-shaped stage, quotas on,
    /// at the default and a raised throttle (lambda-storm.json; not part of `all`)
    LambdaStorm,
}

impl ScenarioChoice {
    pub fn scenarios(self) -> Vec<Scenario> {
        match self {
            ScenarioChoice::Steady => vec![Scenario::Steady],
            ScenarioChoice::StormWithRotation => vec![Scenario::StormWithRotation],
            ScenarioChoice::Throttled => vec![Scenario::Throttled],
            ScenarioChoice::All => Scenario::ALL.to_vec(),
            // Its own runner (storm/), not a phase of run.rs.
            ScenarioChoice::LambdaStorm => Vec::new(),
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Which scenario(s) to run
    #[arg(long, value_name = "S", value_enum, default_value = "steady")]
    pub scenario: ScenarioChoice,
    /// `vending serve` processes
    #[arg(long, value_name = "N", default_value = "2", value_parser = at_least_one)]
    pub servers: usize,
    /// Concurrent clients
    #[arg(long, value_name = "N", default_value = "64", value_parser = at_least_one)]
    pub clients: usize,
    /// Vends in the main phase
    #[arg(long, value_name = "N", default_value = "5000", value_parser = at_least_one)]
    pub vends: usize,
    /// Registration limit of the main phase [default: 100; 10 for storm-with-rotation]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Vends in the hot-path phase (limit 1000, no rotation)
    #[arg(long, value_name = "N", default_value = "600", value_parser = at_least_one)]
    pub steady_vends: usize,
    /// Fresh processes timed for cold_start_ms/first_vend_ms
    #[arg(long, value_name = "N", default_value = "5", value_parser = at_least_one)]
    pub cold_runs: usize,
    /// Bare UpdateItems timed for emulator_call_ms_p50
    #[arg(long, value_name = "N", default_value = "200", value_parser = at_least_one)]
    pub probe_samples: usize,
    /// Client retries per vend after 503/429/5xx/connection errors
    #[arg(long, value_name = "N", default_value = "10")]
    pub max_retries: u32,
    /// A load phase stops issuing vends after this many seconds
    #[arg(long = "timeout", value_name = "SECS", default_value = "900", value_parser = seconds)]
    pub timeout: Duration,
    /// Repository root
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
    /// Where summary.json and summary.txt go [default: ROOT/target/bench]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub storm: StormArgs,
}

/// Which of lambda-storm's two runs to make.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StormRuns {
    /// Both, back to back: default-throttle, then raised-throttle
    Both,
    /// The template's default stage throttle only
    DefaultThrottle,
    /// The raised throttle only
    RaisedThrottle,
}

/// `--scenario lambda-storm`'s own flags (the others are ignored by it).
#[derive(Args, Debug)]
pub struct StormArgs {
    /// lambda-storm: which runs to make
    #[arg(long, value_name = "R", value_enum, default_value = "both")]
    pub storm_runs: StormRuns,
    /// lambda-storm: servers booting in the default-throttle run
    #[arg(long, value_name = "N", default_value = "1000", value_parser = at_least_one)]
    pub storm_servers: usize,
    /// lambda-storm: servers booting in the raised-throttle run
    #[arg(long, value_name = "N", default_value = "10000", value_parser = at_least_one)]
    pub storm_raised_servers: usize,
    /// lambda-storm: the default-throttle run's stage rate (template.yaml's ThrottlingRateLimit)
    #[arg(long, value_name = "RPS", default_value = "20", value_parser = above_zero)]
    pub default_throttle_rps: f64,
    /// lambda-storm: the default-throttle run's stage burst (ThrottlingBurstLimit)
    #[arg(long, value_name = "N", default_value = "50", value_parser = above_zero)]
    pub default_throttle_burst: f64,
    /// lambda-storm: the raised-throttle run's stage rate
    #[arg(long, value_name = "RPS", default_value = "1000", value_parser = above_zero)]
    pub raised_throttle_rps: f64,
    /// lambda-storm: the raised-throttle run's stage burst
    #[arg(long, value_name = "N", default_value = "2000", value_parser = above_zero)]
    pub raised_throttle_burst: f64,
    /// lambda-storm: at most this many Lambda environments at once
    #[arg(long, value_name = "N", default_value = "200", value_parser = at_least_one)]
    pub max_environments: usize,
    /// lambda-storm: the registration limit at the default throttle (template.yaml's RegistrationLimit default)
    #[arg(long, value_name = "N", default_value = "100", value_parser = limit_value)]
    pub default_limit: u32,
    /// lambda-storm: the registration limit at the raised throttle: SSM's maximum, what docs/DESIGN.md
    /// section 15 tells a pool taking hundreds of vends a second to use
    #[arg(long, value_name = "N", default_value = "1000", value_parser = limit_value)]
    pub raised_limit: u32,
    /// lambda-storm: the servers' first requests spread over this many seconds
    #[arg(long = "boot-spread-s", value_name = "SECS", default_value = "3", value_parser = non_negative)]
    pub boot_spread_s: f64,
    /// lambda-storm: a server gives up fetching an activation after this long (bootstrap-linux.sh's
    /// --max-wait, 120 by default there; 900 here, the emulator's floor for 10,000 servers: docs/performance.md)
    #[arg(long = "max-wait", value_name = "SECS", default_value = "900", value_parser = seconds)]
    pub max_wait: Duration,
    /// lambda-storm: an environment idle this long is reaped
    #[arg(long = "idle-reap-s", value_name = "SECS", default_value = "60", value_parser = seconds)]
    pub idle_reap: Duration,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Full vend URLs, e.g. http://127.0.0.1:27680/activation (`/health` URLs: any 200 counts)
    #[arg(value_name = "URL[,URL...]", required = true, num_args = 1, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// Requests to make
    #[arg(long, value_name = "N", default_value = "1000")]
    pub vends: usize,
    /// Concurrent clients
    #[arg(long, value_name = "N", default_value = "64")]
    pub clients: usize,
    /// Processes whose user/system CPU is reported per request
    #[arg(long, value_name = "PID[,PID...]", value_delimiter = ',')]
    pub pids: Vec<u32>,
}

#[derive(Args, Debug)]
pub struct StageArgs {
    /// `export NAME=value` lines every environment gets (what `scripts/local.sh env` prints)
    #[arg(long, value_name = "FILE")]
    pub env_file: PathBuf,
    /// The function's binary
    #[arg(long, value_name = "PATH", default_value = "target/release/vending")]
    pub vending_bin: PathBuf,
    /// The stage's steady rate, requests a second (template.yaml's ThrottlingRateLimit)
    #[arg(long, value_name = "RPS", default_value = "20", value_parser = at_least_one)]
    pub throttle_rps: usize,
    /// The stage's burst (template.yaml's ThrottlingBurstLimit)
    #[arg(long, value_name = "N", default_value = "50", value_parser = at_least_one)]
    pub throttle_burst: usize,
    /// At most this many environments at once
    #[arg(long, value_name = "N", default_value = "200", value_parser = at_least_one)]
    pub max_environments: usize,
    /// Seconds an environment may stay idle before it is shut down
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = seconds)]
    pub idle_reap_s: Duration,
    /// Where each environment's output goes (env-<n>.log)
    #[arg(long, value_name = "DIR", default_value = "target/bench/stage")]
    pub log_dir: PathBuf,
}

/// A registration limit: 1 to 1,000, as SSM takes it.
fn limit_value(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| "must be a whole number from 1 to 1000 (SSM's registration limit)".to_owned())
}

/// A whole number of at least 1.
fn at_least_one(value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| "must be a whole number of at least 1".to_owned())
}

/// A number above 0 (a rate or a burst).
fn above_zero(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| "must be a number above 0".to_owned())
}

/// A number of seconds, 0 or more.
fn non_negative(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| "must be a number of seconds, 0 or more".to_owned())
}

/// Whole seconds, at least 1.
fn seconds(value: &str) -> Result<Duration, String> {
    at_least_one(value).map(|s| Duration::from_secs(s as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vending-bench").chain(args.split_whitespace()))
    }

    fn run_args(args: &str) -> RunArgs {
        let cli = parse(args).unwrap();
        assert!(cli.command.is_none());
        cli.run
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_issue_s() {
        let o = run_args("");
        assert_eq!((o.servers, o.clients, o.vends), (2, 64, 5000));
        assert_eq!(o.scenario.scenarios(), vec![Scenario::Steady]);
        assert_eq!(o.limit, None);
        assert_eq!(
            (o.steady_vends, o.cold_runs, o.probe_samples, o.max_retries),
            (600, 5, 200, 10)
        );
        assert_eq!(o.timeout, Duration::from_secs(900));
        assert_eq!((o.root, o.out), (PathBuf::from("."), None));
    }

    #[test]
    fn the_flags_scripts_bench_sh_passes_parse_with_a_space_or_an_equals_sign() {
        let o = run_args(
            "--root /r --scenario storm-with-rotation --servers 3 --clients=8 --vends 10 --limit=7 \
             --steady-vends 700 --cold-runs=9 --probe-samples 20 --max-retries 0 --timeout 30 --out /o",
        );
        assert_eq!(o.scenario.scenarios(), vec![Scenario::StormWithRotation]);
        assert_eq!((o.servers, o.clients, o.vends, o.limit), (3, 8, 10, Some(7)));
        assert_eq!(
            (o.steady_vends, o.cold_runs, o.probe_samples, o.max_retries),
            (700, 9, 20, 0)
        );
        assert_eq!(o.timeout, Duration::from_secs(30));
        assert_eq!((o.root, o.out), (PathBuf::from("/r"), Some(PathBuf::from("/o"))));
        assert_eq!(run_args("--scenario all").scenario.scenarios(), Scenario::ALL.to_vec());
    }

    #[test]
    fn lambda_storm_is_its_own_runner_with_the_issue_s_defaults() {
        let o = run_args("--scenario lambda-storm");
        assert_eq!(o.scenario, ScenarioChoice::LambdaStorm);
        assert!(
            o.scenario.scenarios().is_empty(),
            "not a scenario of run.rs, nor of `all`"
        );
        assert!(!ScenarioChoice::All.scenarios().is_empty());
        let s = o.storm;
        assert_eq!(s.storm_runs, StormRuns::Both);
        assert_eq!(
            (s.storm_servers, s.storm_raised_servers, s.max_environments),
            (1000, 10_000, 200)
        );
        assert_eq!(
            (
                s.default_throttle_rps,
                s.default_throttle_burst,
                s.raised_throttle_rps,
                s.raised_throttle_burst
            ),
            (20.0, 50.0, 1000.0, 2000.0)
        );
        assert_eq!(
            (s.boot_spread_s, s.max_wait, s.idle_reap),
            (3.0, Duration::from_secs(900), Duration::from_secs(60))
        );
        let small = run_args(
            "--scenario lambda-storm --storm-runs raised-throttle --storm-raised-servers 50 --boot-spread-s 0.5",
        );
        assert_eq!(
            (small.storm.storm_runs, small.storm.storm_raised_servers),
            (StormRuns::RaisedThrottle, 50)
        );
        assert_eq!(small.storm.boot_spread_s, 0.5);
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        assert_eq!(run_args("--clients 64 --vends 5000 --clients 8").clients, 8);
    }

    #[test]
    fn bad_values_and_unknown_flags_are_usage_errors() {
        for bad in [
            "--scenario nope",
            "--servers 0",
            "--clients -1",
            "--vends x",
            "--limit 0",
            "--limit 1001",
            "--steady-vends 0",
            "--cold-runs 0",
            "--probe-samples 0",
            "--max-retries -1",
            "--timeout 0",
            "--servers",
            "--storm-servers 0",
            "--storm-raised-servers x",
            "--storm-runs nope",
            "--default-throttle-rps 0",
            "--raised-throttle-burst -5",
            "--max-environments 0",
            "--boot-spread-s -1",
            "--max-wait 0",
            "--idle-reap-s 0",
        ] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
        assert_eq!(parse("--bogus 1").unwrap_err().kind(), ErrorKind::UnknownArgument);
        assert_eq!(parse("--limit 1000").unwrap().run.limit, Some(1000));
    }

    #[test]
    fn help_is_not_an_error_and_names_every_flag() {
        let e = parse("--help").unwrap_err();
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::DisplayHelp, 0));
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--scenario",
            "--servers",
            "--clients",
            "--vends",
            "--limit",
            "--steady-vends",
            "--cold-runs",
            "--probe-samples",
            "--max-retries",
            "--timeout",
            "--root",
            "--out",
            "storm-with-rotation",
            "load",
            "lambda-storm",
            "--storm-runs",
            "--storm-servers",
            "--storm-raised-servers",
            "--default-throttle-rps",
            "--raised-throttle-rps",
            "--max-environments",
            "--boot-spread-s",
            "--max-wait",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn load_takes_comma_separated_urls_and_pids() {
        let cli = parse("load http://a/activation,http://b/activation --vends 5 --pids 1,2").unwrap();
        let Some(Command::Load(l)) = cli.command else {
            panic!("not load")
        };
        assert_eq!(l.urls, ["http://a/activation", "http://b/activation"]);
        assert_eq!((l.vends, l.clients, l.pids), (5, 64, vec![1, 2]));
        assert!(parse("load").is_err(), "load needs its URLs");
        assert!(parse("load http://a --pids x").is_err());
        assert!(
            parse("--clients 8 load http://a").is_err(),
            "run flags belong to the run"
        );
    }
}
