//! `scale --filter-rate` and `scale --restart` (issue 20): what a binding
//! mode costs and what it buys.
//!
//! - **Filter phase**: an AMQP publisher sends `--filter-rate` messages/s
//!   for `--filter-secs` to keys no session has (`scale.<run>.nobody.<j>`).
//!   Per-key bindings keep them on the broker; a catch-all brings each one to
//!   the gateway, which drops it after matching. Printed: the gateway's CPU
//!   (user+sys of its process) over
//!   the phase, per message and as a share of one core, and the bytes the
//!   broker sent on its connections (`send_oct`), per message.
//! - **Restart phase** (needs the private node the run started): the node is
//!   SIGKILLed and started again with its data (as after a crash). From the
//!   moment it accepts TCP connections again: when the gateway's AMQP
//!   connections are up, when a probe subscription (`/topic/scale.<run>.probe`,
//!   published to every 5 ms) receives its first message, and when the
//!   gateway's `stompgate_routing_keys_waiting` is 0 again (every local key
//!   served by a binding the broker confirmed: its own or its exchange's
//!   catch-all). Then every
//!   topic, user and queue message is sent again and must reach exactly its
//!   subscriber once (loss, duplicates and misrouting fail the run).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{StompConn, Target};
use crate::servers::PrivateRabbit;
use crate::util::cpu_seconds;

#[derive(Debug, Clone, Default, Serialize)]
pub struct FilterReport {
    pub rate: f64,
    pub secs: f64,
    pub messages: u64,
    pub gateway_cpu_secs: f64,
    pub cpu_us_per_message: f64,
    /// Of one core, over the phase.
    pub cpu_share: f64,
    /// Sent by the broker on the gateway's connections (`send_oct`).
    pub bytes_read: u64,
    pub bytes_per_message: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartReport {
    /// Bindings of the gateway's queues on the broker (`list_bindings`).
    pub broker_bindings_before: usize,
    pub broker_bindings_after: usize,
    /// `stompgate_amqp_bindings` before the kill.
    pub gateway_bindings: f64,
    /// `stompgate_routing_keys` (the keys to serve again).
    pub routing_keys: f64,
    /// From SIGKILL to the restarted node accepting connections (its boot).
    pub secs_down: f64,
    /// From the node accepting connections to:
    pub secs_to_connections_up: f64,
    pub secs_to_first_delivery: f64,
    pub secs_to_all_bound: f64,
}

/// Bindings (other than the default exchange's) of the queues owned by the
/// gateway's connections (named `stompgate-<pid>-*`) on `node`.
pub async fn gateway_queue_bindings(node: Option<&str>, gateway_pid: u32) -> Result<usize, String> {
    use super::scale::ctl;
    let q = "--silent";
    let prefix = format!("stompgate-{gateway_pid}-");
    let conns = ctl(
        "rabbitmqctl",
        node,
        &["list_connections", q, "pid", "client_properties"],
    )
    .await?;
    let pids: std::collections::HashSet<&str> = conns
        .lines()
        .filter(|l| l.contains(&prefix))
        .filter_map(|l| l.split('\t').next())
        .collect();
    let queues = ctl(
        "rabbitmqctl",
        node,
        &["list_queues", q, "name", "owner_pid"],
    )
    .await?;
    let owned: std::collections::HashSet<&str> = queues
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, owner)| pids.contains(owner.trim()))
        .map(|(name, _)| name)
        .collect();
    let bindings = ctl(
        "rabbitmqctl",
        node,
        &["list_bindings", q, "source_name", "destination_name"],
    )
    .await?;
    // The default exchange's implicit binding of every queue has an empty
    // source (the line starts with the tab).
    Ok(bindings
        .lines()
        .filter(|l| !l.starts_with('\t'))
        .filter(|l| {
            l.split('\t')
                .nth(1)
                .is_some_and(|d| owned.contains(d.trim()))
        })
        .count())
}

/// One series of the gateway's `/metrics` (0 when absent).
pub async fn metric(addr: SocketAddr, series: &str) -> Result<f64, String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| "metrics: timed out".to_owned())?
        .map_err(|e| format!("metrics: {e}"))?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| name.trim() == series)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Bytes the broker has sent on the gateway's connections (`send_oct` of
/// the connections named `stompgate-<pid>-*`).
async fn bytes_to_gateway(node: Option<&str>, gateway_pid: u32) -> Option<u64> {
    let out = super::scale::ctl(
        "rabbitmqctl",
        node,
        &[
            "list_connections",
            "--silent",
            "send_oct",
            "client_properties",
        ],
    )
    .await
    .ok()?;
    let prefix = format!("stompgate-{gateway_pid}-");
    Some(
        out.lines()
            .filter(|l| l.contains(&prefix))
            .filter_map(|l| l.split('\t').next()?.trim().parse::<u64>().ok())
            .sum(),
    )
}

async fn publisher(url: &str) -> Result<(Connection, lapin::Channel), String> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "AMQP connect timed out".to_owned())?
    .map_err(|e| format!("AMQP connect: {e}"))?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    Ok((conn, ch))
}

/// Publishes `rate`/s for `secs` to keys nobody has; measures the gateway.
pub async fn filter_phase(
    node: Option<&str>,
    amqp_url: &str,
    run: &str,
    gateway_pid: u32,
    rate: u32,
    secs: f64,
) -> Result<FilterReport, String> {
    let (conn, ch) = publisher(amqp_url).await?;
    let body = vec![b'x'; 100];
    let tick = Duration::from_millis(10);
    let per_tick = (rate as f64 / 100.0).max(1.0);
    let (cpu0, io0) = (
        cpu_seconds(gateway_pid),
        bytes_to_gateway(node, gateway_pid).await,
    );
    let started = Instant::now();
    let mut sent = 0u64;
    let mut interval = tokio::time::interval(tick);
    while started.elapsed().as_secs_f64() < secs {
        interval.tick().await;
        let due = (started.elapsed().as_secs_f64() * 100.0 * per_tick) as u64;
        while sent < due {
            ch.basic_publish(
                "amq.topic".into(),
                format!("scale.{run}.nobody.{}", sent % 1000)
                    .as_str()
                    .into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .map_err(|e| format!("publish: {e}"))?;
            sent += 1;
        }
    }
    // Let the gateway drain what it was sent (and the broker's connection
    // statistics, emitted every 5 s by default, catch up).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu_end = cpu_seconds(gateway_pid);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let cpu = match (cpu0, cpu_end) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let bytes = match (io0, bytes_to_gateway(node, gateway_pid).await) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    let _ = conn.close(200, "bye".into()).await;
    Ok(FilterReport {
        rate: rate as f64,
        secs,
        messages: sent,
        gateway_cpu_secs: cpu,
        cpu_us_per_message: cpu * 1e6 / sent.max(1) as f64,
        cpu_share: cpu / wall,
        bytes_read: bytes,
        bytes_per_message: bytes as f64 / sent.max(1) as f64,
    })
}

/// A STOMP session on the probe topic; resolves with the instant of its
/// first MESSAGE.
pub async fn probe_session(
    target: &Target,
    topic: &str,
) -> Result<tokio::sync::oneshot::Receiver<Instant>, String> {
    let mut conn = StompConn::connect(
        target,
        std::net::Ipv4Addr::LOCALHOST,
        Duration::from_secs(30),
    )
    .await?;
    conn.subscribe("probe", topic, Duration::from_secs(30))
        .await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Some(Ok(message)) = conn.ws.next().await {
            let data = match message {
                Message::Text(t) => t.into(),
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let mut got = false;
            if conn
                .feed(&data, &mut |frame| got |= frame.is("MESSAGE"))
                .is_err()
            {
                break;
            }
            if got {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Instant::now());
                }
            }
        }
    });
    Ok(rx)
}

/// SIGKILLs the private node, starts it again with its data, and times the
/// gateway's recovery (see the module doc).
#[allow(clippy::too_many_arguments)]
pub async fn restart_phase(
    rabbit: &PrivateRabbit,
    script: &Path,
    env: &[(String, String)],
    metrics: SocketAddr,
    gateway_pid: u32,
    connections: usize,
    probe_key: &str,
    probe: tokio::sync::oneshot::Receiver<Instant>,
) -> Result<(RestartReport, PrivateRabbit), String> {
    let node = rabbit.node.clone();
    let mut report = RestartReport {
        broker_bindings_before: gateway_queue_bindings(Some(&node), gateway_pid).await?,
        gateway_bindings: metric(metrics, "stompgate_amqp_bindings").await?,
        routing_keys: metric(metrics, "stompgate_routing_keys").await?,
        ..RestartReport::default()
    };
    let killed = Instant::now();
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &rabbit.pid.to_string()])
        .status()
        .await
        .map_err(|e| format!("kill: {e}"))?;
    if !status.success() {
        return Err(format!("kill -KILL {} failed", rabbit.pid));
    }
    while Path::new(&format!("/proc/{}", rabbit.pid)).exists() {
        if killed.elapsed() > Duration::from_secs(30) {
            return Err("the killed node is still there".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The gateway has seen it: no connection, no binding left, every key
    // waiting.
    loop {
        let up = metric(metrics, "stompgate_amqp_connections_up").await?;
        let bound = metric(metrics, "stompgate_amqp_bindings").await?;
        let waiting = metric(metrics, "stompgate_routing_keys_waiting").await?;
        if up == 0.0 && bound == 0.0 && waiting > 0.0 {
            break;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "the gateway still reports {up} connections, {bound} bindings"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut env = env.to_vec();
    env.push(("PRIVATE_RABBIT_KEEP_DATA".into(), "1".into()));
    let (script, name) = (script.to_owned(), rabbit.name.clone());
    let restart =
        tokio::spawn(async move { PrivateRabbit::start_with_env(&script, &name, &env).await });
    let port = rabbit.amqp_port;
    let accepting = loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break Instant::now();
        }
        if killed.elapsed() > Duration::from_secs(150) {
            return Err("the node did not accept connections again".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    report.secs_down = (accepting - killed).as_secs_f64();
    // The probe publisher: every 5 ms from as soon as it can connect.
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher_task = {
        let (url, key, stop) = (rabbit.amqp_url(), probe_key.to_owned(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Ok((conn, ch)) = publisher(&url).await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                while !stop.is_cancelled() {
                    if ch
                        .basic_publish(
                            "amq.topic".into(),
                            key.as_str().into(),
                            BasicPublishOptions::default(),
                            b"probe",
                            BasicProperties::default(),
                        )
                        .await
                        .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = conn.close(200, "bye".into()).await;
            }
        })
    };
    let first = Arc::new(std::sync::Mutex::new(None::<Instant>));
    {
        let first = Arc::clone(&first);
        tokio::spawn(async move {
            if let Ok(at) = probe.await {
                *first.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
            }
        });
    }
    let (mut connected, mut all_bound) = (None, None);
    let deadline = accepting + Duration::from_secs(300);
    loop {
        let now = Instant::now();
        if connected.is_none()
            && metric(metrics, "stompgate_amqp_connections_up").await? >= connections as f64
        {
            connected = Some(now);
        }
        if all_bound.is_none()
            && metric(metrics, "stompgate_amqp_bindings").await? > 0.0
            && metric(metrics, "stompgate_routing_keys_waiting").await? == 0.0
        {
            all_bound = Some(now);
        }
        let probed = *first.lock().unwrap_or_else(|e| e.into_inner());
        if connected.is_some() && all_bound.is_some() && probed.is_some() {
            break;
        }
        if now > deadline {
            stop.cancel();
            return Err(format!(
                "not recovered within 300 s: connections {connected:?}, bound {all_bound:?}, probe {probed:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let _ = publisher_task.await;
    let since = |t: Option<Instant>| t.map(|t| (t - accepting).as_secs_f64()).unwrap_or(-1.0);
    report.secs_to_connections_up = since(connected);
    report.secs_to_all_bound = since(all_bound);
    report.secs_to_first_delivery = since(*first.lock().unwrap_or_else(|e| e.into_inner()));
    let rabbit = restart.await.map_err(|e| format!("restart task: {e}"))??;
    report.broker_bindings_after = gateway_queue_bindings(Some(&node), gateway_pid).await?;
    Ok((report, rabbit))
}
