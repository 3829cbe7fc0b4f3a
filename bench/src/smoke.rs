//! `smoke`: every scenario, tiny, against a gateway (spawned from a binary
//! on the machine's broker, or at a URL). Fails on loss, duplicates,
//! failed or dropped sessions and missing receipts, never on speed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::client::Target;
use crate::fanout::{run_fanout, FanoutConfig};
use crate::idle::{run_idle, IdleConfig};
use crate::publish::PublishVia;
use crate::send::{run_send, SendConfig};
use crate::servers::spawn_gateway;
use crate::sessions::SessionOpts;
use crate::util::unique_name;

#[derive(Debug, Clone)]
pub struct SmokeConfig {
    pub gateway_bin: PathBuf,
    pub gateway_config: Option<PathBuf>,
    pub url: Option<String>,
    pub amqp: String,
    pub subscribers: usize,
    pub duration: Duration,
    pub idle_sessions: usize,
    pub send_sessions: usize,
    pub out_dir: PathBuf,
    pub sessions: SessionOpts,
}

/// Runs the smoke; true when everything passed.
pub async fn run_smoke(cfg: &SmokeConfig) -> bool {
    let started = Instant::now();
    let (url, pid, gateway) = match &cfg.url {
        Some(url) => (url.clone(), None, None),
        None => match spawn_gateway(
            &cfg.gateway_bin,
            &cfg.amqp,
            &cfg.out_dir,
            cfg.gateway_config.as_deref(),
        )
        .await
        {
            Ok(g) => (g.url.clone(), Some(g.pid), Some(g)),
            Err(e) => {
                println!("smoke: FAIL: {e}");
                return false;
            }
        },
    };
    let target = match Target::resolve(&url, "guest", "guest", "/").await {
        Ok(t) => t,
        Err(e) => {
            println!("smoke: FAIL: {e}");
            return false;
        }
    };
    let mut failures: Vec<String> = Vec::new();
    let mut timings: Vec<String> = Vec::new();

    let t = Instant::now();
    let fanout = FanoutConfig {
        target: target.clone(),
        via: PublishVia::Amqp {
            url: cfg.amqp.clone(),
            confirms: true,
        },
        subscribers: cfg.subscribers,
        duration: cfg.duration,
        rate: None,
        window: 128,
        max_age: Duration::from_secs(1),
        body_bytes: 100,
        drain: Duration::from_secs(5),
        max_drain: Duration::from_secs(30),
        pid,
        topic: unique_name("smoke"),
        sessions: SessionOpts {
            label: "smoke fanout".into(),
            ..cfg.sessions.clone()
        },
    };
    match run_fanout(&fanout).await {
        Ok(report) => {
            report.print();
            let r = &report.result;
            if !r.clean() || report.failed_connections > 0 {
                failures.push(format!(
                    "fanout: loss {} duplicates {} malformed {} disconnected {} failed connections {} nacks {} published {}{}",
                    r.loss,
                    r.duplicates,
                    r.malformed,
                    r.disconnected,
                    report.failed_connections,
                    r.nacks,
                    r.published,
                    r.error.as_deref().map(|e| format!(" error {e}")).unwrap_or_default()
                ));
            }
        }
        Err(e) => failures.push(format!("fanout: {e}")),
    }
    timings.push(format!("fanout {:.1} s", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let idle = IdleConfig {
        target: target.clone(),
        subscribers: cfg.idle_sessions,
        hold: Duration::from_secs(1),
        pid,
        procs: 1,
        topic: unique_name("smoke-idle"),
        sessions: SessionOpts {
            label: "smoke idle".into(),
            ..cfg.sessions.clone()
        },
    };
    match run_idle(&idle).await {
        Ok(report) => {
            report.print();
            if !report.clean() {
                failures.push(format!(
                    "idle: {}/{} connected, {} failed, {} lost while held",
                    report.connected, report.requested, report.failed, report.lost_while_held
                ));
            }
        }
        Err(e) => failures.push(format!("idle: {e}")),
    }
    timings.push(format!("idle {:.1} s", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let send = SendConfig {
        target,
        sessions: cfg.send_sessions,
        duration: cfg.duration,
        window: 32,
        body_bytes: 100,
        topic: unique_name("smoke-send"),
        source_ips: cfg.sessions.source_ips,
        label: "smoke send".into(),
    };
    let report = run_send(&send).await;
    report.print();
    if !report.clean() {
        failures.push(format!(
            "send: {}/{} connected, {} receipts, {} missing, {} failed sessions",
            report.connected,
            report.sessions,
            report.receipts,
            report.missing_receipts,
            report.failed_sessions
        ));
    }
    timings.push(format!("send {:.1} s", t.elapsed().as_secs_f64()));

    if let Some(g) = gateway {
        if !failures.is_empty() {
            println!("gateway log (last lines):\n{}", g.log_tail());
        }
        g.stop().await;
    }
    println!(
        "smoke: {} ({:.1} s total)",
        timings.join(", "),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        println!("smoke: PASS");
        true
    } else {
        for f in &failures {
            println!("smoke: FAIL: {f}");
        }
        false
    }
}
