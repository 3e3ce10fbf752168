//! `vending-bench stage`: the Lambda-shaped stage alone, for trying it by hand (curl its
//! URL) or driving it with `vending-bench load`. Prints `STAGE_URL=...`, then on
//! SIGINT/SIGTERM what it counted (JSON).

use std::time::Duration;

use crate::cli::StageArgs;
use crate::lambda::{Stage, StageSpec};

/// `NAME=value` pairs from `export NAME=value` lines (blank lines and comments skipped;
/// one level of single or double quotes taken off).
pub fn parse_env_lines(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let assignment = line.strip_prefix("export ").unwrap_or(line);
        let (name, value) = assignment
            .split_once('=')
            .filter(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| format!("line {}: not NAME=value", n + 1))?;
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        pairs.push((name.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

pub async fn stage_only(args: StageArgs, stop: impl std::future::Future<Output = &'static str>) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.env_file).map_err(|e| format!("{}: {e}", args.env_file.display()))?;
    let env = parse_env_lines(&text).map_err(|e| format!("{}: {e}", args.env_file.display()))?;
    let stage = Stage::start(StageSpec {
        vending_bin: args.vending_bin,
        env,
        throttle_rps: args.throttle_rps as f64,
        throttle_burst: args.throttle_burst as f64,
        max_environments: args.max_environments,
        idle_reap: args.idle_reap_s,
        function_timeout: Duration::from_secs(25),
        log_dir: args.log_dir,
    })
    .await?;
    println!("STAGE_URL={}", stage.url());
    let signal = stop.await;
    eprintln!("vending-bench stage: stopped by {signal}");
    let counts = stage.counts();
    stage.stop().await;
    println!("{}", serde_json::to_string_pretty(&counts).map_err(|e| e.to_string())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines_become_pairs_with_quotes_taken_off() {
        let text = "# made by provision.py\nexport A=1\n\nB='two words'\nexport C=\"x=y\"\n";
        assert_eq!(
            parse_env_lines(text).unwrap(),
            [("A", "1"), ("B", "two words"), ("C", "x=y")].map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert!(parse_env_lines("export =1").is_err());
        assert!(parse_env_lines("no assignment").is_err());
    }
}
