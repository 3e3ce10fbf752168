//! The measured windows after the main phase: the hot path on servers that cannot
//! rotate, and the same again behind a keep-alive proxy.

use std::time::Duration;

use serde_json::Value;

use crate::emulator::{Calls, Emulator};
use crate::figures::{add_counts, cpu_total, peak_rss_mb, total, VendCounts};
use crate::load::{self, LoadResult, LoadSpec};
use crate::run::Context;
use crate::scenario::STEADY_LIMIT;
use crate::stats::{latency_summary, per, round};
use crate::summary::{HotPathPhase, KeepAlivePhase};
use crate::{local, proxy};

/// A measured window of vends.
pub struct Measured {
    pub result: LoadResult,
    /// The emulator's calls over the window, counted from a reset.
    pub calls: Calls,
    /// The servers' user + system CPU over the window, in microseconds.
    pub cpu_us: u64,
}

impl Context {
    /// The vend load of a measured window: the run's clients, retries and deadline.
    pub fn vend_load(&self, urls: Vec<String>, vends: usize) -> LoadSpec {
        LoadSpec {
            urls,
            clients: self.opts.clients,
            vends,
            max_retries: self.opts.max_retries,
            max_retry_after: 10,
            deadline: self.opts.timeout,
            vend: true,
        }
    }

    /// Hot path: servers with a limit of 1000, warmed until the pool holds a fresh
    /// limit-1000 activation that every server has already vended from (code cached),
    /// then `steady_vends` vends that stay below the low-water mark: no rotation can
    /// happen inside the measured window.
    pub async fn steady_phase(&self, counts: &mut VendCounts) -> Result<HotPathPhase, String> {
        let o = &self.opts;
        let low_water_slot = u64::from(STEADY_LIMIT * (100 - self.low_water_percent) / 100);
        let steady_vends = o.steady_vends.min(low_water_slot.saturating_sub(50) as usize).max(1);
        let up = self.local.up(o.servers, STEADY_LIMIT).await?;
        let emu = Emulator::new(&up.emulator, &self.table().await?)?;
        let urls: Vec<String> = up.urls.iter().map(|u| format!("{u}/activation")).collect();
        let http = load::http_client()?;
        let mut warm: Vec<bool> = vec![false; urls.len()];
        let mut warm_for: Option<String> = None;
        let mut warmup_vends: u64 = 0;
        let mut ready = false;
        for i in 0..4 * STEADY_LIMIT as usize {
            let k = i % urls.len();
            let resp = http
                .get(&urls[k])
                .send()
                .await
                .map_err(|e| format!("warm-up vend: {e}"))?;
            if !resp.status().is_success() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let body: Value = resp.json().await.map_err(|e| format!("warm-up vend: {e}"))?;
            let id = body["ActivationId"].as_str().unwrap_or_default().to_owned();
            *counts.entry(id.clone()).or_default() += 1;
            warmup_vends += 1;
            let Some(pool) = emu.pool_item("default").await? else {
                continue;
            };
            if pool.limit != u64::from(STEADY_LIMIT) {
                continue;
            }
            if warm_for.as_deref() != Some(pool.activation_id.as_str()) {
                warm.iter_mut().for_each(|w| *w = false);
                warm_for = Some(pool.activation_id.clone());
            }
            if id == pool.activation_id {
                warm[k] = true;
            }
            if warm.iter().all(|w| *w) && pool.reserved + (steady_vends as u64) + 10 < low_water_slot {
                ready = true;
                break;
            }
        }
        if !ready {
            return Err("the hot-path phase never reached a fresh limit-1000 activation".into());
        }
        let pids = self.local.server_pids(o.servers)?;
        let Measured { result, calls, cpu_us } = self.measure_vends(&emu, &pids, urls, steady_vends).await?;
        add_counts(counts, &result.per_activation);
        let ok = result.ok();
        // Calibration: the same servers answering /health, i.e. the inbound HTTP
        // stack alone, with no AWS call.
        let health_urls: Vec<String> = up.urls.iter().map(|u| format!("{u}/health")).collect();
        let h0 = cpu_total(&pids, self.ticks)?;
        let health = load::run(&LoadSpec {
            urls: health_urls,
            clients: o.clients,
            vends: 10_000,
            max_retries: 0,
            max_retry_after: 1,
            deadline: o.timeout,
            vend: false,
        })
        .await?;
        let h1 = cpu_total(&pids, self.ticks)?;
        Ok(HotPathPhase {
            registration_limit: STEADY_LIMIT,
            warmup_vends,
            vends: ok,
            failed_requests: result.failed + result.not_issued,
            activations_seen: result.per_activation.len(),
            aws_calls_per_vend: per(total(&calls) as f64, ok, 4),
            calls,
            duration_s: round(result.elapsed.as_secs_f64(), 2),
            vends_per_s: round(ok as f64 / result.elapsed.as_secs_f64().max(1e-9), 1),
            latency_ms: latency_summary(&result.vend_ms),
            server_cpu_us_per_vend: per(cpu_us as f64, ok, 1),
            server_peak_rss_mb: round(peak_rss_mb(&pids), 1),
            health_requests: health.ok(),
            server_cpu_us_per_health_request: per((h1 - h0) as f64, health.ok(), 1),
        })
    }

    /// The hot path again, on fresh servers whose AWS endpoint is a keep-alive proxy in
    /// front of the emulator: what a vend costs when the SDK can reuse connections, as it
    /// does against AWS. Diagnostic only; the headline figures come from local.sh's servers.
    pub async fn keepalive_phase(
        &self,
        emulator_url: &str,
        env: &[(String, String)],
        first_port: u16,
        counts: &mut VendCounts,
    ) -> Result<KeepAlivePhase, String> {
        let o = &self.opts;
        let proxy = proxy::start(emulator_url).await?;
        let mut env = env.to_vec();
        env.push(("AWS_ENDPOINT_URL".into(), proxy.url.clone()));
        env.push(("VENDING_REGISTRATION_LIMIT".into(), STEADY_LIMIT.to_string()));
        let probe = local::probe_client()?;
        let mut servers = Vec::new();
        for i in 0..o.servers {
            let port = first_port + u16::try_from(i).map_err(|_| "too many servers")?;
            let log = self.local.state_dir.join(format!("logs/keepalive-{}.log", i + 1));
            let pid_file = self.local.state_dir.join(format!("vending-keepalive-{}.pid", i + 1));
            let mut server = local::spawn_server(&self.bin, &env, port, &log, &pid_file)?;
            server.wait_healthy(&probe).await?;
            servers.push(server);
        }
        let urls: Vec<String> = servers.iter().map(|s| format!("{}/activation", s.base)).collect();
        // Warm each server (connection, code cache) before measuring.
        let warm = load::run(&LoadSpec {
            clients: o.servers,
            ..self.vend_load(urls.clone(), 4 * o.servers)
        })
        .await?;
        add_counts(counts, &warm.per_activation);
        let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
        let emu = Emulator::new(emulator_url, &self.table().await?)?;
        let (conns0, reqs0) = proxy.counts();
        let Measured { result, calls, cpu_us } = self.measure_vends(&emu, &pids, urls, o.steady_vends).await?;
        let (conns1, reqs1) = proxy.counts();
        add_counts(counts, &result.per_activation);
        let ok = result.ok();
        drop(servers);
        drop(proxy);
        Ok(KeepAlivePhase {
            vends: ok,
            failed_requests: result.failed + result.not_issued,
            aws_calls_per_vend: per(total(&calls) as f64, ok, 4),
            calls,
            latency_ms: latency_summary(&result.vend_ms),
            server_cpu_us_per_vend: per(cpu_us as f64, ok, 1),
            connections_to_proxy: conns1 - conns0,
            requests_through_proxy: reqs1 - reqs0,
        })
    }

    /// A measured window of vends: the emulator's calls (counted from a reset) and the
    /// servers' CPU, over exactly that window.
    pub async fn measure_vends(
        &self,
        emu: &Emulator,
        pids: &[u32],
        urls: Vec<String>,
        vends: usize,
    ) -> Result<Measured, String> {
        emu.reset_calls().await?;
        let cpu0 = cpu_total(pids, self.ticks)?;
        let result = load::run(&self.vend_load(urls, vends)).await?;
        let cpu1 = cpu_total(pids, self.ticks)?;
        let calls = emu.calls().await?;
        Ok(Measured {
            result,
            calls,
            cpu_us: cpu1 - cpu0,
        })
    }
}
