//! `scale`: many sessions, each with topics of its own (issue 9).
//!
//! N sessions, each subscribed to `/topic/scale.<run>.<i>`; U of them (as U
//! distinct users, logins `u<i>`) also to `/user/queue/scale` (Web-STOMP has
//! no `/user/`: `/exchange/stompgate.user/u<i>.scale`, the same binding the
//! gateway makes); Q of them also consuming `/queue/scale.<run>`. Every
//! SUBSCRIBE carries a receipt. Then every session SENDs once, with a
//! receipt, to its own topic; an AMQP publisher sends one message per user
//! to `stompgate.user` (`u<i>.scale`) and Q messages to the queue. Each
//! delivery is checked: its subscription and body must name the session
//! (topic, user) or one queue message not seen before.
//!
//! Printed: subscribe time, p50/p99 per SUBSCRIBE receipt, server RSS and
//! RSS per session, and the broker side (`rabbitmqctl list_connections`,
//! `list_channels`, `list_queues` filtered to the gateway's connections;
//! `rabbitmq-diagnostics memory_breakdown`). For stompgate it asserts that
//! its channels stay within `plane_queues*2 + publish_channels +
//! consumer_channels + 1` (+ slack) and that it owns `plane_queues` queues.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Serialize;
use tokio::process::Command;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{StompConn, Target};
use crate::servers::{spawn_gateway, PrivateRabbit, Spawned};
use crate::util::{latency_histogram, rss_kib, source_ip, thousands, unique_name, Latency};
use crate::wire;

const CONNECTING: u8 = 0;
const LIVE: u8 = 1;
const FAILED: u8 = 2;
const DEAD: u8 = 3;

/// The user exchange (the gateway's `auth.user_exchange` default).
pub const USER_EXCHANGE: &str = "stompgate.user";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleTarget {
    Stompgate,
    Webstomp,
}

#[derive(Debug, Clone)]
pub struct ScaleConfig {
    pub target: ScaleTarget,
    pub sessions: usize,
    pub users: usize,
    pub queue_consumers: usize,
    pub gateway_bin: PathBuf,
    /// Used as is when given; its `[amqp]` sizes must match the ones below.
    pub gateway_config: Option<PathBuf>,
    pub amqp: String,
    pub plane_queues: usize,
    pub publish_channels: usize,
    pub consumer_channels: usize,
    pub channel_slack: usize,
    pub rabbit_script: PathBuf,
    pub rabbit_name: String,
    /// Environment for the script (its ports).
    pub rabbit_env: Vec<(String, String)>,
    pub out_dir: PathBuf,
    pub source_ips: usize,
    pub concurrency: usize,
    pub setup_timeout: Duration,
    /// Bound on the delivery of everything after the sends.
    pub deliver_timeout: Duration,
    /// `amqp.binding_mode` of the gateway (per-key, wildcard, auto).
    pub binding_mode: Option<String>,
    /// Filter phase: messages/s to keys nobody has, and for how long (0: none).
    pub filter_rate: u32,
    pub filter_secs: f64,
    /// Restart phase: the gateway runs on the private node (`rabbit_name`,
    /// `rabbit_env`), SIGKILLed and started again after the sends.
    pub restart: bool,
}

/// What the broker holds for the server under test.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BrokerSide {
    pub node: String,
    /// Connections of the server (stompgate: named `stompgate-<pid>-*`;
    /// Web-STOMP: every connection of the private node, network ones and
    /// the direct ones its sessions open, which only list_channels shows).
    pub connections: usize,
    /// Channels on those connections (`list_channels`).
    pub channels: usize,
    /// Queues those connections own (exclusive), or, for Web-STOMP, every
    /// queue of the private node.
    pub queues: usize,
    /// Other queues the run made (`/queue/scale.<run>`).
    pub shared_queues: usize,
    /// `memory_breakdown` in MB: total, connections (readers, writers,
    /// channels, other), queue processes, binaries.
    pub memory_total_mb: f64,
    pub memory_connections_mb: f64,
    pub memory_queues_mb: f64,
    pub memory_binary_mb: f64,
    pub seconds_to_query: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleReport {
    pub target: String,
    pub url: String,
    pub run: String,
    pub sessions: usize,
    pub users: usize,
    pub queue_consumers: usize,
    pub subscribed: usize,
    pub failed_sessions: usize,
    pub sessions_lost: usize,
    pub subscribe_receipts: usize,
    pub subscribes_expected: usize,
    pub subscribe_secs: f64,
    pub subscribe_receipt: Latency,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_per_session_kib: Option<f64>,
    pub broker_before: Option<BrokerSide>,
    pub broker_subscribed: Option<BrokerSide>,
    pub broker_after_send: Option<BrokerSide>,
    pub channel_bound: Option<usize>,
    pub send_receipts: usize,
    pub send_receipt: Latency,
    pub topic_delivered: u64,
    pub user_delivered: u64,
    pub queue_delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub misrouted: u64,
    pub deliver_secs: f64,
    pub binding_mode: String,
    /// Bindings of the gateway's queues on the broker once subscribed.
    pub broker_bindings: Option<usize>,
    pub filter: Option<crate::scale_restart::FilterReport>,
    pub restart: Option<crate::scale_restart::RestartReport>,
    /// After the restart, every message sent again: missing, duplicates.
    pub restart_missing: u64,
    pub restart_duplicates: u64,
    pub errors: Vec<String>,
    pub failures: Vec<String>,
}

struct Slot {
    state: AtomicU8,
    topic: AtomicU32,
    user: AtomicU32,
    queue: AtomicU32,
    send_receipt: AtomicU8,
}

struct Shared {
    slots: Vec<Slot>,
    /// Receptions of each queue message.
    queue_seen: Vec<AtomicU32>,
    delivered: AtomicU64,
    misrouted: AtomicU64,
    subscribe_receipts: AtomicUsize,
    sub_hist: Mutex<Histogram<u64>>,
    send_hist: Mutex<Histogram<u64>>,
    errors: Mutex<Vec<String>>,
    error_count: AtomicUsize,
}

impl Shared {
    fn error(&self, message: String) {
        if self.error_count.fetch_add(1, Ordering::Relaxed) < 10 {
            if let Ok(mut e) = self.errors.lock() {
                e.push(message);
            }
        }
    }

    fn counts(&self) -> (usize, usize, usize) {
        let (mut live, mut failed, mut dead) = (0, 0, 0);
        for slot in &self.slots {
            match slot.state.load(Ordering::Relaxed) {
                LIVE => live += 1,
                FAILED => failed += 1,
                DEAD => dead += 1,
                _ => {}
            }
        }
        (live, failed, dead)
    }
}

/// Which subscriptions session `i` has.
#[derive(Debug, Clone, Copy)]
struct Role {
    user: bool,
    queue: bool,
}

fn role(i: usize, cfg: &ScaleConfig) -> Role {
    // Users are the first U sessions; queue consumers every (N/Q)-th
    // session from 0, so some sessions hold all three subscriptions.
    let stride = (cfg.sessions / cfg.queue_consumers.max(1)).max(1);
    Role {
        user: i < cfg.users,
        queue: cfg.queue_consumers > 0
            && i.is_multiple_of(stride)
            && i / stride < cfg.queue_consumers,
    }
}

/// The gateway configuration of the run: guest plus U users, no frame
/// rate limit, the plane's sizes written out (the bound is computed from
/// them).
fn gateway_config(cfg: &ScaleConfig, metrics: Option<SocketAddr>) -> String {
    let mut out = String::from("# Written by stompgate-bench scale.\n");
    if let Some(m) = metrics {
        out.push_str(&format!("metrics_listen = \"{m}\"\n"));
    }
    out.push_str("[auth]\nusers = [\n  { login = \"guest\", passcode = \"guest\" },\n");
    for u in 0..cfg.users {
        out.push_str(&format!("  {{ login = \"u{u}\", passcode = \"p{u}\" }},\n"));
    }
    out.push_str("]\n\n[security]\nmax_frames_per_second = 0\n\n[amqp]\n");
    out.push_str(&format!(
        "plane_queues = {}\npublish_channels = {}\nconsumer_channels = {}\n",
        cfg.plane_queues, cfg.publish_channels, cfg.consumer_channels
    ));
    if let Some(mode) = &cfg.binding_mode {
        out.push_str(&format!("binding_mode = \"{mode}\"\n"));
    }
    out
}

pub async fn run_scale(cfg: &ScaleConfig) -> Result<ScaleReport, String> {
    std::fs::create_dir_all(&cfg.out_dir)
        .map_err(|e| format!("create {}: {e}", cfg.out_dir.display()))?;
    let mut gateway: Option<Spawned> = None;
    let mut rabbit: Option<PrivateRabbit> = None;
    let mut metrics = None;
    let (url, pid, amqp_url, node) = match cfg.target {
        ScaleTarget::Stompgate => {
            // --restart: on the private node, which may be killed.
            let (amqp, node) = if cfg.restart {
                let mut env = cfg.rabbit_env.clone();
                env.push(("PRIVATE_RABBIT_PLUGINS".into(), String::new()));
                let r = PrivateRabbit::start_with_env(&cfg.rabbit_script, &cfg.rabbit_name, &env)
                    .await?;
                let out = (r.amqp_url(), Some(r.node.clone()));
                rabbit = Some(r);
                out
            } else {
                (cfg.amqp.clone(), None)
            };
            let m = SocketAddr::from((
                [127, 0, 0, 1],
                crate::util::free_port().map_err(|e| format!("free port: {e}"))?,
            ));
            metrics = Some(m);
            let config = match &cfg.gateway_config {
                Some(c) => c.clone(),
                None => {
                    let path = cfg.out_dir.join("stompgate-scale.toml");
                    std::fs::write(&path, gateway_config(cfg, Some(m)))
                        .map_err(|e| format!("write {}: {e}", path.display()))?;
                    path
                }
            };
            let g = spawn_gateway(&cfg.gateway_bin, &amqp, &cfg.out_dir, Some(&config)).await?;
            let r = (g.url.clone(), g.pid, amqp, node);
            gateway = Some(g);
            r
        }
        ScaleTarget::Webstomp => {
            let r = PrivateRabbit::start_with_env(
                &cfg.rabbit_script,
                &cfg.rabbit_name,
                &cfg.rabbit_env,
            )
            .await?;
            let out = (r.ws_url(), r.pid, r.amqp_url(), Some(r.node.clone()));
            rabbit = Some(r);
            out
        }
    };
    let result = run_against(
        cfg,
        &url,
        pid,
        &amqp_url,
        node.as_deref(),
        metrics,
        &mut rabbit,
    )
    .await;
    if let Some(g) = gateway {
        if result
            .as_ref()
            .map(|r| !r.failures.is_empty())
            .unwrap_or(true)
        {
            eprintln!("gateway log (last lines):\n{}", g.log_tail());
        }
        g.stop().await;
    }
    if let Some(r) = rabbit {
        r.stop().await;
    }
    result
}

async fn run_against(
    cfg: &ScaleConfig,
    url: &str,
    pid: u32,
    amqp_url: &str,
    node: Option<&str>,
    metrics: Option<SocketAddr>,
    rabbit: &mut Option<PrivateRabbit>,
) -> Result<ScaleReport, String> {
    let n = cfg.sessions;
    let run = unique_name("scale").replace('-', "_");
    let queue_name = format!("scale.{run}");
    let base = Target::resolve(url, "guest", "guest", "/").await?;
    let mut report = ScaleReport {
        target: format!("{:?}", cfg.target).to_lowercase(),
        url: url.to_owned(),
        run: run.clone(),
        sessions: n,
        users: cfg.users.min(n),
        queue_consumers: (0..n).filter(|&i| role(i, cfg).queue).count(),
        binding_mode: cfg
            .binding_mode
            .clone()
            .unwrap_or_else(|| "per-key".to_owned()),
        ..ScaleReport::default()
    };
    let gateway_pid = (cfg.target == ScaleTarget::Stompgate).then_some(pid);
    // The user exchange must exist before anything binds to it (Web-STOMP
    // does not declare it; the gateway does, identically). On a connection
    // of its own, closed before the broker is measured.
    {
        let (connection, channel) = amqp_publisher(amqp_url).await?;
        let declared = channel
            .exchange_declare(
                USER_EXCHANGE.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "bye".into()).await;
        let _ = connection.close(200, "bye".into()).await;
        declared.map_err(|e| format!("declaring exchange {USER_EXCHANGE}: {e}"))?;
    }
    report.broker_before = broker_side(node, gateway_pid, &queue_name).await.ok();
    report.rss_before_kib = rss_kib(pid);

    let shared = Arc::new(Shared {
        slots: (0..n)
            .map(|_| Slot {
                state: AtomicU8::new(CONNECTING),
                topic: AtomicU32::new(0),
                user: AtomicU32::new(0),
                queue: AtomicU32::new(0),
                send_receipt: AtomicU8::new(0),
            })
            .collect(),
        queue_seen: (0..cfg.queue_consumers)
            .map(|_| AtomicU32::new(0))
            .collect(),
        delivered: AtomicU64::new(0),
        misrouted: AtomicU64::new(0),
        subscribe_receipts: AtomicUsize::new(0),
        sub_hist: Mutex::new(latency_histogram()),
        send_hist: Mutex::new(latency_histogram()),
        errors: Mutex::new(Vec::new()),
        error_count: AtomicUsize::new(0),
    });
    let (go_tx, _) = watch::channel(false);
    let (stop_tx, _) = watch::channel(false);
    let semaphore = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let label = format!("scale {}", report.target);
    eprintln!("[{label}] opening {n} sessions on {url} (run {run})");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let r = role(i, cfg);
        if r.user {
            report.subscribes_expected += 1;
        }
        if r.queue {
            report.subscribes_expected += 1;
        }
        report.subscribes_expected += 1;
        let mut target = base.clone();
        if r.user && cfg.target == ScaleTarget::Stompgate {
            target.login = format!("u{i}");
            target.passcode = format!("p{i}");
        }
        let subs = subscriptions(i, r, cfg.target, &run, &queue_name);
        tasks.push(tokio::spawn(session_task(
            i,
            target,
            source_ip(i, cfg.source_ips),
            subs,
            format!("/topic/scale.{run}.{i}"),
            Arc::clone(&shared),
            Arc::clone(&semaphore),
            cfg.setup_timeout,
            go_tx.subscribe(),
            stop_tx.subscribe(),
        )));
    }
    let bound = cfg.setup_timeout * (2 + (n / cfg.concurrency.max(1)) as u32);
    let mut last_print = Instant::now();
    loop {
        let (live, failed, dead) = shared.counts();
        if live + failed + dead >= n || started.elapsed() > bound {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[{label}] {live}/{n} subscribed, {failed} failed, {} receipts ({:.0} sessions/s)",
                shared.subscribe_receipts.load(Ordering::Relaxed),
                live as f64 / started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.subscribe_secs = started.elapsed().as_secs_f64();
    let (live, failed, _) = shared.counts();
    report.subscribed = live;
    report.failed_sessions = failed;
    report.subscribe_receipts = shared.subscribe_receipts.load(Ordering::Relaxed);
    if let Ok(h) = shared.sub_hist.lock() {
        report.subscribe_receipt = Latency::from_histogram(&h);
    }
    eprintln!(
        "[{label}] {live}/{n} sessions subscribed in {:.1} s ({failed} failed)",
        report.subscribe_secs
    );
    if failed > 0 && live == 0 {
        if let Ok(e) = shared.errors.lock() {
            report.errors = e.clone();
        }
        report.failures.push("no session subscribed".into());
        return Ok(report);
    }

    // Settle, then measure the cost of the subscribed sessions.
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.rss_after_kib = rss_kib(pid);
    report.rss_per_session_kib = match (report.rss_before_kib, report.rss_after_kib) {
        (Some(b), Some(a)) if live > 0 => Some((a as f64 - b as f64) / live as f64),
        _ => None,
    };
    match broker_side(node, gateway_pid, &queue_name).await {
        Ok(b) => report.broker_subscribed = Some(b),
        Err(e) => report.failures.push(format!("broker figures: {e}")),
    }
    if let Some(gpid) = gateway_pid {
        report.broker_bindings = crate::scale_restart::gateway_queue_bindings(node, gpid)
            .await
            .ok();
    }
    // The probe of the restart phase subscribes before the sends.
    let probe_key = format!("scale.{run}.probe");
    let probe = match (cfg.restart, gateway_pid) {
        (true, Some(_)) => {
            Some(crate::scale_restart::probe_session(&base, &format!("/topic/{probe_key}")).await?)
        }
        _ => None,
    };

    // Sends, user pushes and queue messages.
    let (publisher, channel) = amqp_publisher(amqp_url).await?;
    let expected: u64 = live as u64
        + (0..n)
            .filter(|&i| role(i, cfg).user && shared.slots[i].state.load(Ordering::Relaxed) == LIVE)
            .count() as u64
        + cfg.queue_consumers as u64;
    let sent_at = Instant::now();
    go_tx.send_replace(true);
    let mut confirms = Vec::new();
    let props = BasicProperties::default().with_content_type("text/plain".into());
    for u in 0..report.users {
        let body = format!("U:{u}");
        match channel
            .basic_publish(
                USER_EXCHANGE.into(),
                format!("u{u}.scale").as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props.clone(),
            )
            .await
        {
            Ok(c) => confirms.push(c),
            Err(e) => {
                report.failures.push(format!("publish to user u{u}: {e}"));
                break;
            }
        }
    }
    for k in 0..cfg.queue_consumers {
        let body = format!("Q:{k}");
        match channel
            .basic_publish(
                "".into(),
                queue_name.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props.clone(),
            )
            .await
        {
            Ok(c) => confirms.push(c),
            Err(e) => {
                report.failures.push(format!("publish to the queue: {e}"));
                break;
            }
        }
    }
    let mut nacks = 0;
    for c in confirms {
        match tokio::time::timeout(Duration::from_secs(30), c).await {
            Ok(Ok(c)) if c.is_ack() => {}
            _ => nacks += 1,
        }
    }
    if nacks > 0 {
        report
            .failures
            .push(format!("{nacks} AMQP publishes not confirmed"));
    }
    // The publisher is not part of the server's figures.
    let _ = channel.close(200, "bye".into()).await;
    let _ = publisher.close(200, "bye".into()).await;
    let deadline = sent_at + cfg.deliver_timeout;
    let mut last_print = Instant::now();
    loop {
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let receipts = shared
            .slots
            .iter()
            .filter(|s| s.send_receipt.load(Ordering::Relaxed) > 0)
            .count();
        if (delivered >= expected && receipts >= live) || Instant::now() > deadline {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[{label}] delivered {delivered}/{expected}, SEND receipts {receipts}/{live}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.deliver_secs = sent_at.elapsed().as_secs_f64();
    // Anything extra (duplicates, misrouted) gets a moment to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    match broker_side(node, gateway_pid, &queue_name).await {
        Ok(b) => report.broker_after_send = Some(b),
        Err(e) => report.failures.push(format!("broker figures: {e}")),
    }

    // Tally.
    let (live_end, _, _) = shared.counts();
    report.sessions_lost = live.saturating_sub(live_end);
    let (mut missing, mut duplicates) = (0u64, 0u64);
    for (i, slot) in shared.slots.iter().enumerate() {
        let state = slot.state.load(Ordering::Relaxed);
        if state == FAILED || state == CONNECTING {
            continue;
        }
        let r = role(i, cfg);
        let t = slot.topic.load(Ordering::Relaxed) as u64;
        report.topic_delivered += t.min(1);
        missing += 1u64.saturating_sub(t);
        duplicates += t.saturating_sub(1);
        let u = slot.user.load(Ordering::Relaxed) as u64;
        if r.user {
            report.user_delivered += u.min(1);
            missing += 1u64.saturating_sub(u);
            duplicates += u.saturating_sub(1);
        }
        report.send_receipts += usize::from(slot.send_receipt.load(Ordering::Relaxed) > 0);
    }
    for seen in &shared.queue_seen {
        let s = seen.load(Ordering::Relaxed) as u64;
        report.queue_delivered += s.min(1);
        missing += 1u64.saturating_sub(s);
        duplicates += s.saturating_sub(1);
    }
    report.missing = missing;
    report.duplicates = duplicates;

    if let (Some(gpid), true) = (gateway_pid, cfg.filter_rate > 0) {
        eprintln!(
            "[{label}] filter phase: {} msgs/s for {} s to keys nobody has",
            cfg.filter_rate, cfg.filter_secs
        );
        match crate::scale_restart::filter_phase(
            node,
            amqp_url,
            &run,
            gpid,
            cfg.filter_rate,
            cfg.filter_secs,
        )
        .await
        {
            Ok(f) => report.filter = Some(f),
            Err(e) => report.failures.push(format!("filter phase: {e}")),
        }
    }
    if let (Some(probe), Some(metrics), Some(r)) = (probe, metrics, rabbit.take()) {
        eprintln!(
            "[{label}] restart phase: SIGKILL {} and start it again",
            r.node
        );
        let mut env = cfg.rabbit_env.clone();
        env.push(("PRIVATE_RABBIT_PLUGINS".into(), String::new()));
        match crate::scale_restart::restart_phase(
            &r,
            &cfg.rabbit_script,
            &env,
            metrics,
            pid,
            2,
            &probe_key,
            probe,
        )
        .await
        {
            Ok((restart, restarted)) => {
                *rabbit = Some(restarted);
                report.restart = Some(restart);
                let (m, d) = resend_all(cfg, &shared, amqp_url, &queue_name, &label).await;
                report.restart_missing = m;
                report.restart_duplicates = d;
            }
            Err(e) => {
                *rabbit = Some(r);
                report.failures.push(format!("restart phase: {e}"));
            }
        }
    }
    report.misrouted = shared.misrouted.load(Ordering::Relaxed);
    if let Ok(h) = shared.send_hist.lock() {
        report.send_receipt = Latency::from_histogram(&h);
    }
    if let Ok(e) = shared.errors.lock() {
        report.errors = e.clone();
    }

    // Close the sessions, remove the queue.
    stop_tx.send_replace(true);
    let close_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(close_deadline, task).await.is_err() {
            abort.abort();
        }
    }
    if let Ok((connection, channel)) = amqp_publisher(amqp_url).await {
        let _ = channel
            .queue_delete(queue_name.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel.close(200, "bye".into()).await;
        let _ = connection.close(200, "bye".into()).await;
    }

    report.check(cfg);
    Ok(report)
}

/// After the restart: every topic, user and queue message once more; each
/// subscriber must now have exactly two. Returns (missing, duplicates).
async fn resend_all(
    cfg: &ScaleConfig,
    shared: &Shared,
    amqp_url: &str,
    queue: &str,
    label: &str,
) -> (u64, u64) {
    let live: Vec<usize> = (0..cfg.sessions)
        .filter(|&i| shared.slots[i].state.load(Ordering::Relaxed) == LIVE)
        .collect();
    let mut expected = 0u64;
    if let Ok((conn, ch)) = amqp_publisher(amqp_url).await {
        let props = BasicProperties::default().with_content_type("text/plain".into());
        let mut confirms = Vec::new();
        let mut out = Vec::new();
        // The queue name is `scale.<run>`, the topics `scale.<run>.<i>`.
        for &i in &live {
            out.push((
                "amq.topic".to_owned(),
                format!("{queue}.{i}"),
                format!("T:{i}"),
            ));
            if role(i, cfg).user {
                out.push((
                    USER_EXCHANGE.to_owned(),
                    format!("u{i}.scale"),
                    format!("U:{i}"),
                ));
            }
        }
        for k in 0..cfg.queue_consumers {
            out.push((String::new(), queue.to_owned(), format!("Q:{k}")));
        }
        for (exchange, key, body) in &out {
            if let Ok(c) = ch
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props.clone(),
                )
                .await
            {
                confirms.push(c);
            }
        }
        expected = out.len() as u64;
        for c in confirms {
            let _ = tokio::time::timeout(Duration::from_secs(30), c).await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    let count = || {
        let mut got = 0u64;
        for &i in &live {
            got += u64::from(shared.slots[i].topic.load(Ordering::Relaxed).min(2));
            if role(i, cfg).user {
                got += u64::from(shared.slots[i].user.load(Ordering::Relaxed).min(2));
            }
        }
        got + shared
            .queue_seen
            .iter()
            .map(|s| u64::from(s.load(Ordering::Relaxed).min(2)))
            .sum::<u64>()
    };
    let deadline = Instant::now() + cfg.deliver_timeout;
    let want = expected * 2;
    while count() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "[{label}] after the restart: {}/{want} of all messages (both rounds)",
        count()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut missing, mut duplicates) = (0u64, 0u64);
    let mut tally = |n: u32| {
        missing += 2u64.saturating_sub(u64::from(n));
        duplicates += u64::from(n).saturating_sub(2);
    };
    for &i in &live {
        tally(shared.slots[i].topic.load(Ordering::Relaxed));
        if role(i, cfg).user {
            tally(shared.slots[i].user.load(Ordering::Relaxed));
        }
    }
    for s in &shared.queue_seen {
        tally(s.load(Ordering::Relaxed));
    }
    (missing, duplicates)
}

fn subscriptions(
    i: usize,
    r: Role,
    target: ScaleTarget,
    run: &str,
    queue: &str,
) -> Vec<(&'static str, String)> {
    let mut subs = vec![("t", format!("/topic/scale.{run}.{i}"))];
    if r.user {
        subs.push((
            "u",
            match target {
                ScaleTarget::Stompgate => "/user/queue/scale".to_owned(),
                // Web-STOMP has no /user/: the binding the gateway makes.
                ScaleTarget::Webstomp => format!("/exchange/{USER_EXCHANGE}/u{i}.scale"),
            },
        ));
    }
    if r.queue {
        subs.push(("q", format!("/queue/{queue}")));
    }
    subs
}

async fn amqp_publisher(url: &str) -> Result<(Connection, lapin::Channel), String> {
    let connection = tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| format!("AMQP connect to {url} timed out"))?
    .map_err(|e| format!("AMQP connect to {url}: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("AMQP channel: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("confirm.select: {e}"))?;
    Ok((connection, channel))
}

#[allow(clippy::too_many_arguments)]
async fn session_task(
    index: usize,
    target: Target,
    local: std::net::Ipv4Addr,
    subs: Vec<(&'static str, String)>,
    own_topic: String,
    shared: Arc<Shared>,
    semaphore: Arc<Semaphore>,
    setup_timeout: Duration,
    mut go_rx: watch::Receiver<bool>,
    mut stop_rx: watch::Receiver<bool>,
) {
    let slot = &shared.slots[index];
    let setup = async {
        let _permit = semaphore.acquire().await.map_err(|e| e.to_string())?;
        tokio::time::timeout(setup_timeout, async {
            let mut conn = StompConn::connect(&target, local, setup_timeout).await?;
            let mut waits = Vec::with_capacity(subs.len());
            for (id, destination) in &subs {
                let t = Instant::now();
                conn.subscribe(id, destination, setup_timeout).await?;
                waits.push(t.elapsed().as_micros() as u64);
                shared.subscribe_receipts.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>((conn, waits))
        })
        .await
        .map_err(|_| format!("setup took longer than {} ms", setup_timeout.as_millis()))?
    };
    let mut conn = match setup.await {
        Ok((conn, waits)) => {
            if let Ok(mut h) = shared.sub_hist.lock() {
                for w in waits {
                    let _ = h.record(w.max(1));
                }
            }
            conn
        }
        Err(error) => {
            shared.error(format!("session {index}: {error}"));
            slot.state.store(FAILED, Ordering::Release);
            return;
        }
    };
    slot.state.store(LIVE, Ordering::Release);
    let own_body = format!("T:{index}");
    let user_body = format!("U:{index}");
    let mut sent_at: Option<Instant> = None;
    let mut failure: Option<String> = None;
    let mut go_seen = *go_rx.borrow();
    loop {
        if go_seen && sent_at.is_none() {
            let frame = wire::send_frame(&own_topic, Some("send"), own_body.as_bytes());
            sent_at = Some(Instant::now());
            if let Err(e) = async {
                conn.feed_bytes(frame).await?;
                conn.flush().await
            }
            .await
            {
                failure = Some(e);
                break;
            }
        }
        tokio::select! {
            biased;
            _ = stop_rx.changed() => break,
            changed = go_rx.changed(), if !go_seen => {
                if changed.is_err() {
                    break;
                }
                go_seen = *go_rx.borrow_and_update();
            }
            message = conn.ws.next() => {
                let data = match message {
                    Some(Ok(Message::Text(t))) => t.into(),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(frame))) => {
                        failure = Some(format!("closed by the server: {frame:?}"));
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        failure = Some(format!("websocket: {e}"));
                        break;
                    }
                    None => {
                        failure = Some("connection closed by the server".to_owned());
                        break;
                    }
                };
                let mut server_error: Option<String> = None;
                let result = conn.feed(&data, &mut |frame| {
                    if frame.is("MESSAGE") {
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                        let sub = frame.header("subscription").unwrap_or(b"");
                        let ok = match sub {
                            b"t" if frame.body == own_body.as_bytes() => {
                                slot.topic.fetch_add(1, Ordering::Relaxed);
                                true
                            }
                            b"u" if frame.body == user_body.as_bytes() => {
                                slot.user.fetch_add(1, Ordering::Relaxed);
                                true
                            }
                            b"q" => match std::str::from_utf8(frame.body)
                                .ok()
                                .and_then(|b| b.strip_prefix("Q:"))
                                .and_then(|k| k.parse::<usize>().ok())
                                .and_then(|k| shared.queue_seen.get(k))
                            {
                                Some(seen) => {
                                    seen.fetch_add(1, Ordering::Relaxed);
                                    slot.queue.fetch_add(1, Ordering::Relaxed);
                                    true
                                }
                                None => false,
                            },
                            _ => false,
                        };
                        if !ok {
                            shared.misrouted.fetch_add(1, Ordering::Relaxed);
                            shared.error(format!(
                                "session {index}: misrouted MESSAGE subscription {:?} body {:?}",
                                String::from_utf8_lossy(sub),
                                String::from_utf8_lossy(&frame.body[..frame.body.len().min(80)])
                            ));
                        }
                    } else if frame.is("RECEIPT") {
                        if frame.header("receipt-id") == Some(&b"send"[..]) {
                            if let Some(t) = sent_at {
                                if let Ok(mut h) = shared.send_hist.lock() {
                                    let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                                }
                            }
                            slot.send_receipt.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if frame.is("ERROR") {
                        server_error = Some(frame.describe_error());
                    }
                });
                if let Err(e) = result {
                    failure = Some(e);
                    break;
                }
                if let Some(e) = server_error {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    match failure {
        Some(error) => {
            shared.error(format!("session {index}: {error}"));
            slot.state.store(DEAD, Ordering::Release);
        }
        None => conn.close().await,
    }
}

impl ScaleReport {
    /// Fills `failures`: loss, duplicates, misrouting, failed sessions,
    /// missing receipts, and (stompgate) an exceeded channel or queue bound.
    fn check(&mut self, cfg: &ScaleConfig) {
        if self.failed_sessions > 0 || self.subscribed < self.sessions {
            self.failures.push(format!(
                "{}/{} sessions subscribed ({} failed)",
                self.subscribed, self.sessions, self.failed_sessions
            ));
        }
        if self.subscribe_receipts < self.subscribes_expected && self.failed_sessions == 0 {
            self.failures.push(format!(
                "{}/{} SUBSCRIBE receipts",
                self.subscribe_receipts, self.subscribes_expected
            ));
        }
        if self.sessions_lost > 0 {
            self.failures.push(format!(
                "{} sessions dropped after subscribing",
                self.sessions_lost
            ));
        }
        if self.restart_missing > 0 || self.restart_duplicates > 0 {
            self.failures.push(format!(
                "after the broker restart: {} missing, {} duplicates",
                self.restart_missing, self.restart_duplicates
            ));
        }
        if self.missing > 0 || self.duplicates > 0 || self.misrouted > 0 {
            self.failures.push(format!(
                "deliveries: {} missing, {} duplicates, {} misrouted",
                self.missing, self.duplicates, self.misrouted
            ));
        }
        if self.send_receipts < self.subscribed {
            self.failures.push(format!(
                "{}/{} SEND receipts",
                self.send_receipts, self.subscribed
            ));
        }
        if cfg.target == ScaleTarget::Stompgate {
            let bound = cfg.plane_queues * 2 + cfg.publish_channels + cfg.consumer_channels + 1;
            self.channel_bound = Some(bound + cfg.channel_slack);
            for (when, b) in [
                ("subscribed", &self.broker_subscribed),
                ("after the sends", &self.broker_after_send),
            ] {
                let Some(b) = b else { continue };
                if b.connections == 0 {
                    self.failures
                        .push(format!("{when}: no connection of the gateway found"));
                }
                if b.channels > bound + cfg.channel_slack {
                    self.failures.push(format!(
                        "{when}: the gateway holds {} channels, bound {bound} (+{} slack)",
                        b.channels, cfg.channel_slack
                    ));
                }
                if b.queues != cfg.plane_queues {
                    self.failures.push(format!(
                        "{when}: the gateway owns {} queues, amqp.plane_queues = {}",
                        b.queues, cfg.plane_queues
                    ));
                }
            }
        }
    }

    pub fn print(&self) {
        println!(
            "scale {} ({}), run {}: {} sessions ({} users on {}, {} queue consumers), {} subscribed in {:.1} s ({} failed), {}/{} SUBSCRIBE receipts",
            self.target,
            self.url,
            self.run,
            thousands(self.sessions as f64),
            thousands(self.users as f64),
            if self.target == "webstomp" {
                format!("/exchange/{USER_EXCHANGE}/u<i>.scale")
            } else {
                "/user/queue/scale".to_owned()
            },
            self.queue_consumers,
            thousands(self.subscribed as f64),
            self.subscribe_secs,
            self.failed_sessions,
            self.subscribe_receipts,
            self.subscribes_expected
        );
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "  SUBSCRIBE receipt: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(self.subscribe_receipt.p50_us),
            ms(self.subscribe_receipt.p99_us),
            ms(self.subscribe_receipt.max_us)
        );
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "  server RSS: {} KiB before, {} KiB subscribed; {} KiB per session",
            opt(self.rss_before_kib),
            opt(self.rss_after_kib),
            self.rss_per_session_kib
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into())
        );
        for (when, b) in [
            ("before", &self.broker_before),
            ("subscribed", &self.broker_subscribed),
            ("after sends", &self.broker_after_send),
        ] {
            if let Some(b) = b {
                println!(
                    "  broker {} ({when}): {} connections, {} channels, {} queues of the server (+{} /queue), memory {:.1} MB (connections {:.1}, queues {:.1}, binaries {:.1})",
                    b.node,
                    b.connections,
                    b.channels,
                    b.queues,
                    b.shared_queues,
                    b.memory_total_mb,
                    b.memory_connections_mb,
                    b.memory_queues_mb,
                    b.memory_binary_mb
                );
            }
        }
        if let Some(bound) = self.channel_bound {
            println!("  channel bound (plane_queues*2 + publish + consumer + 1 + slack): {bound}");
        }
        println!(
            "  delivered within {:.1} s: topic {}/{}, user {}/{}, queue {}/{}; missing {}, duplicates {}, misrouted {}; SEND receipts {} (p50 {:.1} ms, p99 {:.1} ms)",
            self.deliver_secs,
            self.topic_delivered,
            self.subscribed,
            self.user_delivered,
            self.users,
            self.queue_delivered,
            self.queue_consumers,
            self.missing,
            self.duplicates,
            self.misrouted,
            self.send_receipts,
            ms(self.send_receipt.p50_us),
            ms(self.send_receipt.p99_us)
        );
        if let Some(b) = self.broker_bindings {
            println!(
                "  binding mode {}: {} bindings on the gateway's queues (list_bindings)",
                self.binding_mode,
                thousands(b as f64)
            );
        }
        if let Some(f) = &self.filter {
            println!(
                "  filter: {} msgs/s for {:.0} s to keys nobody has ({} msgs): gateway CPU {:.2} s = {:.1} us/msg, {:.1}% of a core; read {} bytes = {:.0} B/msg",
                thousands(f.rate),
                f.secs,
                thousands(f.messages as f64),
                f.gateway_cpu_secs,
                f.cpu_us_per_message,
                f.cpu_share * 100.0,
                thousands(f.bytes_read as f64),
                f.bytes_per_message
            );
        }
        if let Some(r) = &self.restart {
            println!(
                "  broker restart (SIGKILL, down {:.1} s): from accepting connections: connections up {:.3} s, first delivery {:.3} s, all {} keys served again {:.3} s; broker bindings {} before, {} after; resent: {} missing, {} duplicates",
                r.secs_down,
                r.secs_to_connections_up,
                r.secs_to_first_delivery,
                r.routing_keys,
                r.secs_to_all_bound,
                r.broker_bindings_before,
                r.broker_bindings_after,
                self.restart_missing,
                self.restart_duplicates
            );
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
        if self.failures.is_empty() {
            println!("scale: PASS");
        } else {
            for f in &self.failures {
                println!("scale: FAIL: {f}");
            }
        }
    }
}

/// Runs `rabbitmqctl`/`rabbitmq-diagnostics` (bounded) and returns stdout.
pub(crate) async fn ctl(tool: &str, node: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(tool);
    if let Some(node) = node {
        command.args(["-n", node]);
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .map_err(|_| format!("{tool} {} timed out", args[0]))?
        .map_err(|e| format!("{tool}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{tool} {} failed: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The broker's figures for the server: with `gateway_pid`, only the
/// connections named `stompgate-<pid>-*` and what they own; otherwise
/// everything on `node`.
pub(crate) async fn broker_side(
    node: Option<&str>,
    gateway_pid: Option<u32>,
    shared_queue: &str,
) -> Result<BrokerSide, String> {
    let started = Instant::now();
    let mut side = BrokerSide {
        node: node.unwrap_or("machine's broker").to_owned(),
        ..BrokerSide::default()
    };
    let q = ["-q", "--no-table-headers"];
    let conns = ctl(
        "rabbitmqctl",
        node,
        &[
            "list_connections",
            q[0],
            q[1],
            "pid",
            "channels",
            "client_properties",
        ],
    )
    .await?;
    let prefix = gateway_pid.map(|p| format!("stompgate-{p}-"));
    let mut pids: HashSet<String> = HashSet::new();
    for line in conns.lines() {
        let Some(conn_pid) = line.split('\t').next() else {
            continue;
        };
        if prefix.as_deref().is_none_or(|p| line.contains(p)) {
            pids.insert(conn_pid.to_owned());
        }
    }
    side.connections = pids.len();
    let channels = ctl(
        "rabbitmqctl",
        node,
        &["list_channels", q[0], q[1], "connection"],
    )
    .await?;
    side.channels = channels
        .lines()
        .filter(|l| prefix.is_none() || pids.contains(l.trim()))
        .count();
    if prefix.is_none() {
        // Web-STOMP's connections are direct (in-VM) ones, which
        // list_connections does not show: count their channels' owners.
        for line in channels.lines() {
            pids.insert(line.trim().to_owned());
        }
        side.connections = pids.len();
    }
    let queues = ctl(
        "rabbitmqctl",
        node,
        &["list_queues", q[0], q[1], "name", "owner_pid"],
    )
    .await?;
    for line in queues.lines() {
        let mut f = line.split('\t');
        let (name, owner) = (f.next().unwrap_or(""), f.next().unwrap_or("").trim());
        if name == shared_queue {
            side.shared_queues += 1;
        } else if prefix.is_none() || pids.contains(owner) {
            side.queues += 1;
        }
    }
    let memory = ctl(
        "rabbitmq-diagnostics",
        node,
        &["-q", "memory_breakdown", "--unit", "MB"],
    )
    .await?;
    for line in memory.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(mb) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        side.memory_total_mb += mb;
        match key.trim() {
            k if k.starts_with("connection_") => side.memory_connections_mb += mb,
            "queue_procs" | "queue_slave_procs" => side.memory_queues_mb += mb,
            "binary" => side.memory_binary_mb += mb,
            _ => {}
        }
    }
    side.seconds_to_query = started.elapsed().as_secs_f64();
    Ok(side)
}

/// `scripts/private-rabbitmq.sh` environment for the given base port
/// (AMQP `base`, Web-STOMP 10000+base, distribution 20000+base, STOMP
/// 56000+base: 5710 gives 5710/15710/25710/61710).
pub fn rabbit_env(amqp_port: u16) -> Vec<(String, String)> {
    let p = amqp_port as u32;
    vec![
        ("PRIVATE_RABBIT_AMQP_PORT".into(), p.to_string()),
        (
            "PRIVATE_RABBIT_WEB_STOMP_PORT".into(),
            (p + 10000).to_string(),
        ),
        ("PRIVATE_RABBIT_DIST_PORT".into(), (p + 20000).to_string()),
        ("PRIVATE_RABBIT_STOMP_PORT".into(), (p + 56000).to_string()),
    ]
}
