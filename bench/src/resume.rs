//! `resume`: many clients reconnecting at once, each resuming what it
//! missed from a `[history]` stream (src/bridge/history.rs).
//!
//! One spawned gateway with a history pattern `/topic/<run>.*`. `clients`
//! sessions on `topics` topics each get one message (their position), then
//! lose their sockets; `missed` messages per topic are published; then every
//! client reconnects at once and subscribes with `x-resume-from`. Reported:
//! the time until every client had all it missed (and was live), checked per
//! message (order, gaps, duplicates, `x-resumed:true`); the gateway's
//! broker channels and queues before and after (they must not change); and
//! the fan-out rate of live traffic to `live` other subscribers of a topic
//! of the same stream at a fixed publish rate, in a window before the storm
//! and during it. Non-zero exit on loss, duplicates, disorder, a failed
//! session or a channel/queue count that changed (never on speed).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{StompConn, Target};
use crate::scale::broker_side;
use crate::servers::spawn_gateway;
use crate::util::{cpu_seconds, source_ip, unique_name};

#[derive(Debug, Clone)]
pub struct ResumeConfig {
    pub gateway_bin: PathBuf,
    pub amqp: String,
    pub out_dir: PathBuf,
    pub clients: usize,
    pub topics: usize,
    pub missed: usize,
    pub live: usize,
    pub live_rate: f64,
    pub memory_messages: usize,
    pub concurrency: usize,
    pub source_ips: usize,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ResumeReport {
    pub clients: usize,
    pub topics: usize,
    pub missed_per_client: usize,
    pub stream_messages_missed: usize,
    pub seconds_until_all_live: f64,
    pub p50_client_seconds: f64,
    pub p99_client_seconds: f64,
    pub resumed_messages: u64,
    pub failed_clients: usize,
    pub bad_clients: usize,
    pub channels_before: usize,
    pub channels_after: usize,
    pub queues_before: usize,
    pub queues_after: usize,
    pub live_subscribers: usize,
    pub live_rate: f64,
    pub live_deliveries_per_s_before: f64,
    pub live_deliveries_per_s_during: f64,
    pub gateway_cpu_seconds_storm: Option<f64>,
    pub errors: Vec<String>,
}

/// One client's session: its topic index and the position it had.
struct Client {
    topic: usize,
    position: String,
}

fn topic_key(run: &str, t: usize) -> String {
    format!("{run}.t{t}")
}

pub async fn run_resume(cfg: &ResumeConfig) -> Result<ResumeReport, String> {
    let run = unique_name("resume").replace(['-', ':'], "_");
    let stream = format!("stompgate.history.{run}");
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| e.to_string())?;
    let config_path = cfg.out_dir.join("stompgate-resume.toml");
    let max_resume = (cfg.topics * (cfg.missed + 2)) as u64 + 10_000;
    std::fs::write(
        &config_path,
        format!(
            "{}\n[limits]\nmax_subscriptions = 4\n[history]\nmax_resume_messages = {max_resume}\nmemory_messages = {}\nmemory_bytes = 268435456\n\n[[history.patterns]]\nname = \"{run}\"\ndestination = \"/topic/{run}.*\"\n",
            crate::servers::GATEWAY_CONFIG,
            cfg.memory_messages
        ),
    )
    .map_err(|e| e.to_string())?;
    let gateway = spawn_gateway(
        &cfg.gateway_bin,
        &cfg.amqp,
        &cfg.out_dir,
        Some(&config_path),
    )
    .await?;
    let result = storm(cfg, &run, &gateway).await;
    gateway.stop().await;
    let _ = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "delete_queue", &stream])
        .output()
        .await;
    result
}

async fn storm(
    cfg: &ResumeConfig,
    run: &str,
    gateway: &crate::servers::Spawned,
) -> Result<ResumeReport, String> {
    let target = Target::resolve(&gateway.url, "guest", "guest", "/").await?;
    let within = Duration::from_secs(60);
    let amqp = Connection::connect(&cfg.amqp, ConnectionProperties::default())
        .await
        .map_err(|e| format!("AMQP {}: {e}", cfg.amqp))?;
    let ch = amqp.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let publish = |key: String, body: String| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "amq.topic".into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
            .map(|_| ())
        }
    };

    // Wait until the gateway consumes its stream: a probe gets a message.
    let mut probe = StompConn::connect(&target, source_ip(0, 1), within).await?;
    let probe_dest = format!("/topic/{}", topic_key(run, 999_999));
    probe.subscribe("p", &probe_dest, within).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publish(topic_key(run, 999_999), "probe".into()).await?;
        if first_message(&mut probe, Duration::from_millis(500))
            .await
            .is_some()
        {
            break;
        }
        if Instant::now() > deadline {
            return Err("the gateway did not consume its history stream within 30 s".into());
        }
    }
    probe.close().await;

    // Live subscribers on another topic of the same stream.
    let live_key = format!("{run}.live");
    let live_count = Arc::new(AtomicU64::new(0));
    let mut live_tasks = Vec::new();
    for i in 0..cfg.live {
        let mut conn = StompConn::connect(&target, source_ip(i, cfg.source_ips), within).await?;
        conn.subscribe("l", &format!("/topic/{live_key}"), within)
            .await?;
        let count = Arc::clone(&live_count);
        live_tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = conn.ws.next().await {
                let data = match &m {
                    Message::Text(t) => t.as_bytes().to_vec(),
                    Message::Binary(b) => b.to_vec(),
                    _ => continue,
                };
                let mut n = 0;
                let _ = conn.feed(&data, &mut |f| {
                    if f.is("MESSAGE") {
                        n += 1;
                    }
                });
                count.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    let stop_live = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live_publisher = {
        let (ch, key, stop, rate) = (
            ch.clone(),
            live_key.clone(),
            Arc::clone(&stop_live),
            cfg.live_rate,
        );
        tokio::spawn(async move {
            if rate <= 0.0 {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let _ = ch
                    .basic_publish(
                        "amq.topic".into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        format!("live-{n}").as_bytes(),
                        BasicProperties::default(),
                    )
                    .await;
            }
        })
    };

    // Phase 1: clients subscribe and get one message each (their position).
    eprintln!(
        "resume: {} clients subscribing on {} topics",
        cfg.clients, cfg.topics
    );
    let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut opening = Vec::new();
    for i in 0..cfg.clients {
        let (target, gate) = (target.clone(), Arc::clone(&gate));
        let topic = i % cfg.topics;
        let dest = format!("/topic/{}", topic_key(run, topic));
        let ip = source_ip(i, cfg.source_ips);
        opening.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let mut conn = StompConn::connect(&target, ip, within).await?;
            conn.subscribe("r", &dest, within).await?;
            drop(permit);
            Ok::<_, String>((topic, conn))
        }));
    }
    let mut conns = Vec::new();
    for o in opening {
        conns.push(o.await.map_err(|e| e.to_string())??);
    }
    for t in 0..cfg.topics {
        publish(topic_key(run, t), format!("t{t}-0")).await?;
    }
    let mut positions = Vec::new();
    let mut reading = Vec::new();
    for (topic, mut conn) in conns {
        reading.push(tokio::spawn(async move {
            let pos = first_message(&mut conn, within)
                .await
                .ok_or_else(|| "no first message".to_string())?;
            // The socket is lost, without DISCONNECT.
            drop(conn);
            Ok::<_, String>(Client {
                topic,
                position: pos,
            })
        }));
    }
    for r in reading {
        positions.push(r.await.map_err(|e| e.to_string())??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = broker_side(None, Some(gateway.pid), "").await?;
    // Baseline live rate, sockets gone, nothing resuming.
    let window = Duration::from_secs(3);
    let c0 = live_count.load(Ordering::Relaxed);
    tokio::time::sleep(window).await;
    let live_before = (live_count.load(Ordering::Relaxed) - c0) as f64 / window.as_secs_f64();

    // Phase 2: what they miss.
    eprintln!("resume: publishing {} messages per topic", cfg.missed);
    for n in 1..=cfg.missed {
        for t in 0..cfg.topics {
            publish(topic_key(run, t), format!("t{t}-{n}")).await?;
        }
    }

    // Phase 3: everyone reconnects at once and resumes.
    eprintln!("resume: {} clients reconnecting at once", cfg.clients);
    let resumed = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu_seconds(gateway.pid);
    let c1 = live_count.load(Ordering::Relaxed);
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = Vec::new();
    for (i, client) in positions.into_iter().enumerate() {
        let (target, gate, resumed, bad) = (
            target.clone(),
            Arc::clone(&gate),
            Arc::clone(&resumed),
            Arc::clone(&bad),
        );
        let missed = cfg.missed;
        let run = run.to_owned();
        let ip = source_ip(i, cfg.source_ips);
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let mut conn = StompConn::connect(&target, ip, within).await?;
            let dest = format!("/topic/{}", topic_key(&run, client.topic));
            conn.send_text(format!(
                "SUBSCRIBE\nid:r\ndestination:{dest}\nack:auto\nx-resume-from:{}\n\n\0",
                client.position
            ))
            .await?;
            drop(permit);
            let got = messages(&mut conn, missed, within).await?;
            let took = started.elapsed();
            resumed.fetch_add(got.len() as u64, Ordering::Relaxed);
            let want: Vec<String> = (1..=missed)
                .map(|n| format!("t{}-{n}", client.topic))
                .collect();
            let bodies: Vec<String> = got.iter().map(|(b, _, _)| b.clone()).collect();
            let flagged = got
                .first()
                .is_some_and(|(_, r, _)| r.as_deref() == Some("true"));
            if bodies != want || !flagged {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            conn.close().await;
            Ok::<_, String>(took)
        }));
    }
    let mut times = Vec::new();
    let mut errors: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        match t.await.map_err(|e| e.to_string())? {
            Ok(d) => times.push(d.as_secs_f64()),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let storm_time = started.elapsed();
    let cpu1 = cpu_seconds(gateway.pid);
    let live_during =
        (live_count.load(Ordering::Relaxed) - c1) as f64 / storm_time.as_secs_f64().max(1e-3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = broker_side(None, Some(gateway.pid), "").await?;
    stop_live.store(true, Ordering::Relaxed);
    let _ = live_publisher.await;
    for t in live_tasks {
        t.abort();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if times.is_empty() {
            0.0
        } else {
            times[((times.len() - 1) as f64 * p).round() as usize]
        }
    };
    Ok(ResumeReport {
        clients: cfg.clients,
        topics: cfg.topics,
        missed_per_client: cfg.missed,
        stream_messages_missed: cfg.topics * cfg.missed,
        seconds_until_all_live: times.last().copied().unwrap_or(0.0),
        p50_client_seconds: pct(0.5),
        p99_client_seconds: pct(0.99),
        resumed_messages: resumed.load(Ordering::Relaxed),
        failed_clients: errors.values().sum(),
        bad_clients: bad.load(Ordering::Relaxed),
        channels_before: before.channels,
        channels_after: after.channels,
        queues_before: before.queues,
        queues_after: after.queues,
        live_subscribers: cfg.live,
        live_rate: cfg.live_rate,
        live_deliveries_per_s_before: live_before,
        live_deliveries_per_s_during: live_during,
        gateway_cpu_seconds_storm: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        errors: errors
            .into_iter()
            .map(|(e, n)| format!("{n} × {e}"))
            .collect(),
    })
}

/// The position (`<epoch>:<offset>`) of the next MESSAGE, within `within`.
async fn first_message(conn: &mut StompConn, within: Duration) -> Option<String> {
    let got = messages(conn, 1, within).await.ok()?;
    got.into_iter().next().and_then(|m| m.2)
}

/// One MESSAGE: (body, `x-resumed`, position).
type Got = (String, Option<String>, Option<String>);

/// The next `n` MESSAGEs (other frames skipped; an ERROR fails).
async fn messages(conn: &mut StompConn, n: usize, within: Duration) -> Result<Vec<Got>, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out: Vec<Got> = Vec::new();
    let mut error = None;
    while out.len() < n {
        let message = match tokio::time::timeout_at(deadline, conn.ws.next()).await {
            Err(_) => {
                return Err(format!(
                    "{} of {n} messages in {} s",
                    out.len(),
                    within.as_secs()
                ))
            }
            Ok(None) => return Err("connection closed".into()),
            Ok(Some(Err(e))) => return Err(format!("websocket: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        let data = match &message {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            Message::Close(c) => return Err(format!("closed by the server: {c:?}")),
            _ => continue,
        };
        conn.feed(&data, &mut |f| {
            if f.is("MESSAGE") {
                let position = match (
                    f.header_str("x-stream-epoch"),
                    f.header_str("x-stream-offset"),
                ) {
                    (Some(e), Some(o)) => Some(format!("{e}:{o}")),
                    _ => None,
                };
                out.push((
                    String::from_utf8_lossy(f.body).into_owned(),
                    f.header_str("x-resumed"),
                    position,
                ));
            } else if f.is("ERROR") {
                error = Some(f.describe_error());
            }
        })?;
        if let Some(e) = error.take() {
            return Err(e);
        }
    }
    Ok(out)
}
