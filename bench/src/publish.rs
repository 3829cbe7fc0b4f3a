//! The publishing side of a fan-out run: an AMQP publisher (lapin, to
//! `amq.topic` with the topic as routing key, publisher confirms pipelined
//! or off) or a STOMP publisher (SEND frames over WebSocket, for the ceiling
//! server), driven at a fixed rate or as fast as the slowest subscriber
//! keeps up with (a window of messages in flight).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};

use crate::client::{StompConn, Target};
use crate::sessions::SessionSet;
use crate::util::{now_ns, source_ip, thousands};
use crate::wire;

/// How messages get to the server.
#[derive(Debug, Clone)]
pub enum PublishVia {
    /// AMQP 0-9-1 to `amq.topic`, routing key = topic.
    Amqp { url: String, confirms: bool },
    /// STOMP SEND to `/topic/<topic>` over WebSocket.
    Stomp { target: Target },
}

/// Confirms awaited at most; older ones are awaited first.
const CONFIRM_WINDOW: usize = 4096;

pub struct Publisher {
    inner: Inner,
    body: Vec<u8>,
    pub nacks: u64,
}

enum Inner {
    Amqp {
        connection: Box<Connection>,
        channel: Box<Channel>,
        confirms: bool,
        pending: VecDeque<PublisherConfirm>,
        key: String,
    },
    Stomp {
        conn: Box<StompConn>,
        destination: String,
    },
}

impl Publisher {
    pub async fn connect(via: &PublishVia, topic: &str) -> Result<Publisher, String> {
        let inner = match via {
            PublishVia::Amqp { url, confirms } => {
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
                if *confirms {
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await
                        .map_err(|e| format!("confirm.select: {e}"))?;
                }
                Inner::Amqp {
                    connection: Box::new(connection),
                    channel: Box::new(channel),
                    confirms: *confirms,
                    pending: VecDeque::new(),
                    key: topic.to_owned(),
                }
            }
            PublishVia::Stomp { target } => {
                let conn =
                    StompConn::connect(target, source_ip(0, 1), Duration::from_secs(10)).await?;
                Inner::Stomp {
                    conn: Box::new(conn),
                    destination: format!("/topic/{topic}"),
                }
            }
        };
        Ok(Publisher {
            inner,
            body: Vec::new(),
            nacks: 0,
        })
    }

    /// Publishes one benchmark message (queued, not necessarily flushed);
    /// returns its send time.
    async fn publish(&mut self, phase: u8, seq: u64, body_bytes: usize) -> Result<u64, String> {
        let sent = now_ns();
        wire::encode_body(&mut self.body, phase, seq, sent, body_bytes);
        match &mut self.inner {
            Inner::Amqp {
                channel,
                confirms,
                pending,
                key,
                ..
            } => {
                let confirm = channel
                    .basic_publish(
                        "amq.topic".into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        &self.body,
                        BasicProperties::default().with_content_type("text/plain".into()),
                    )
                    .await
                    .map_err(|e| format!("basic.publish: {e}"))?;
                if *confirms {
                    pending.push_back(confirm);
                    while pending.len() > CONFIRM_WINDOW {
                        if let Some(c) = pending.pop_front() {
                            match c.await {
                                Ok(c) if c.is_ack() => {}
                                _ => self.nacks += 1,
                            }
                        }
                    }
                }
                Ok(sent)
            }
            Inner::Stomp { conn, destination } => {
                let frame = wire::send_frame(destination, None, &self.body);
                conn.feed_bytes(frame).await.map(|()| sent)
            }
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        match &mut self.inner {
            Inner::Amqp { .. } => Ok(()),
            Inner::Stomp { conn, .. } => conn.flush().await,
        }
    }

    /// Waits for every outstanding confirm.
    async fn settle(&mut self) {
        if let Inner::Amqp { pending, .. } = &mut self.inner {
            while let Some(c) = pending.pop_front() {
                match tokio::time::timeout(Duration::from_secs(10), c).await {
                    Ok(Ok(c)) if c.is_ack() => {}
                    _ => self.nacks += 1,
                }
            }
        }
    }

    pub async fn close(self) {
        match self.inner {
            Inner::Amqp {
                connection,
                channel,
                ..
            } => {
                let _ = channel.close(200, "bye".into()).await;
                let _ = connection.close(200, "bye".into()).await;
            }
            Inner::Stomp { conn, .. } => conn.close().await,
        }
    }
}

/// One publishing phase.
#[derive(Debug, Clone)]
pub struct PhasePlan {
    pub phase: u8,
    /// Messages per second; None: as fast as the window allows.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Max rate: messages published but not yet seen by the slowest live
    /// subscriber.
    pub window: u64,
    /// Max rate: no new message while the oldest one in flight is older than
    /// this (keeps the backlog of a slow server to about this long).
    pub max_age: Duration,
    pub body_bytes: usize,
    pub start_seq: u64,
    /// After the last publish, wait for deliveries until every live
    /// subscriber has the last message, or nothing arrived for this long
    /// (and `max_drain` at most).
    pub drain: Duration,
    pub max_drain: Duration,
}

/// What a phase did.
#[derive(Debug, Clone)]
pub struct PhaseRun {
    pub published: u64,
    pub end_seq: u64,
    pub publish_secs: f64,
    pub start_ns: u64,
    pub live_at_start: usize,
    pub dead_at_start: usize,
    pub nacks: u64,
    /// Deliveries per second after the warm-up (a fifth of the duration,
    /// 0.5 to 3 s) until the end of publishing, from the subscribers'
    /// progress: the steady rate, without slow start and drain.
    pub steady_rate: Option<f64>,
    pub error: Option<String>,
}

/// Publishes for `plan.duration`, then drains (bounded), printing progress
/// every second.
pub async fn run_phase(
    publisher: &mut Publisher,
    plan: &PhasePlan,
    sessions: &SessionSet,
    label: &str,
) -> PhaseRun {
    let (live_at_start, _, dead_at_start) = sessions.counts();
    let start = Instant::now();
    let start_ns = now_ns();
    let mut seq = plan.start_seq;
    let mut error = None;
    let nacks_before = publisher.nacks;
    let mut last_print = Instant::now();
    let mut printed_seq = seq;
    let mut printed_delivered = 0u64;
    // Max rate: a congestion window (slow start up to `window`, halved when
    // the oldest message in flight gets older than `max_age`).
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut cwnd: f64 = 16f64.min(plan.window as f64);
    let warm_up = (plan.duration / 5).clamp(Duration::from_millis(500), Duration::from_secs(3));
    let mut warm_mark: Option<(Instant, u64)> = None;
    let mut last_decrease = Instant::now();
    let max_age_ns = plan.max_age.as_nanos() as u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= plan.duration {
            break;
        }
        if warm_mark.is_none() && elapsed >= warm_up && elapsed + warm_up <= plan.duration {
            warm_mark = Some((Instant::now(), sessions.delivered_since(plan.start_seq)));
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let secs = last_print.elapsed().as_secs_f64();
            let delivered = sessions.delivered_since(plan.start_seq);
            let (live, _, dead) = sessions.counts();
            eprintln!(
                "[{label}] {:>5.1}s published {:>9} msg/s  delivered {:>11} msg/s  live {live}{}{}",
                elapsed.as_secs_f64(),
                thousands((seq - printed_seq) as f64 / secs),
                thousands(delivered.saturating_sub(printed_delivered) as f64 / secs),
                if plan.rate.is_none() {
                    format!("  window {cwnd:.0}")
                } else {
                    String::new()
                },
                if dead > dead_at_start {
                    format!(" ({} disconnected)", dead - dead_at_start)
                } else {
                    String::new()
                }
            );
            printed_seq = seq;
            printed_delivered = delivered;
            last_print = Instant::now();
        }
        let sent = seq - plan.start_seq;
        let budget: u64 = match plan.rate {
            Some(rate) => {
                let due = (elapsed.as_secs_f64() * rate).floor() as u64 + 1;
                due.saturating_sub(sent).min(1024)
            }
            None => {
                let Some(min) = sessions.min_progress() else {
                    error = Some("no live subscriber left".to_owned());
                    break;
                };
                let min = min.max(plan.start_seq);
                let mut completed = 0u64;
                while in_flight.front().is_some_and(|&(s, _)| s < min) {
                    in_flight.pop_front();
                    completed += 1;
                }
                let too_old = in_flight
                    .front()
                    .is_some_and(|&(_, t)| now_ns().saturating_sub(t) > max_age_ns);
                if too_old {
                    // Multiplicative decrease, once per max_age.
                    if last_decrease.elapsed() >= plan.max_age {
                        cwnd = (cwnd / 2.0).max(2.0);
                        last_decrease = Instant::now();
                    }
                    0
                } else {
                    // Slow start: one more in flight per message completed.
                    cwnd = (cwnd + completed as f64).min(plan.window as f64);
                    (cwnd as u64).saturating_sub(seq - min).min(256)
                }
            }
        };
        if budget == 0 {
            let pause = match plan.rate {
                Some(rate) => {
                    let next_due = Duration::from_secs_f64((sent as f64) / rate);
                    next_due
                        .saturating_sub(elapsed)
                        .clamp(Duration::from_micros(100), Duration::from_millis(50))
                }
                None => Duration::from_millis(1),
            };
            tokio::time::sleep(pause).await;
            continue;
        }
        for _ in 0..budget {
            match publisher.publish(plan.phase, seq, plan.body_bytes).await {
                Ok(sent_ns) => {
                    if plan.rate.is_none() {
                        in_flight.push_back((seq, sent_ns));
                    }
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            seq += 1;
        }
        if error.is_some() {
            break;
        }
        if let Err(e) = publisher.flush().await {
            error = Some(e);
            break;
        }
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let steady_rate = warm_mark.map(|(at, delivered)| {
        let now = sessions.delivered_since(plan.start_seq);
        now.saturating_sub(delivered) as f64 / at.elapsed().as_secs_f64().max(1e-9)
    });
    publisher.settle().await;
    // Drain: until every live subscriber saw the last message, or nothing
    // arrived for `drain`, or `max_drain`.
    let drain_start = Instant::now();
    let mut seen = sessions.delivered_since(plan.start_seq);
    let mut last_change = Instant::now();
    let mut last_print = Instant::now();
    loop {
        match sessions.min_progress() {
            Some(min) if min < seq => {}
            _ => break,
        }
        if last_change.elapsed() >= plan.drain || drain_start.elapsed() >= plan.max_drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = sessions.delivered_since(plan.start_seq);
        if now != seen {
            seen = now;
            last_change = Instant::now();
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[{label}] draining: {} subscribers behind the last message ({:.0} s)",
                sessions.lagging(seq),
                drain_start.elapsed().as_secs_f64()
            );
        }
    }
    PhaseRun {
        published: seq - plan.start_seq,
        end_seq: seq,
        publish_secs,
        start_ns,
        live_at_start,
        dead_at_start,
        nacks: publisher.nacks - nacks_before,
        steady_rate,
        error,
    }
}
