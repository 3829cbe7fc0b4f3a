//! The send scenario: N sessions SEND to `/topic/<t>` with a `receipt` on
//! every frame, pipelined (a window of outstanding receipts per session).
//! stompgate sends a RECEIPT only after RabbitMQ's publisher confirm, so
//! receipts per second are confirmed publishes per second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{StompConn, Target};
use crate::util::{latency_histogram, now_ns, source_ip, thousands, Latency};
use crate::wire;

#[derive(Debug, Clone)]
pub struct SendConfig {
    pub target: Target,
    pub sessions: usize,
    pub duration: Duration,
    pub window: usize,
    pub body_bytes: usize,
    pub topic: String,
    pub source_ips: usize,
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    pub url: String,
    pub sessions: usize,
    pub connected: usize,
    pub window: usize,
    pub body_bytes: usize,
    pub duration_s: f64,
    pub sent: u64,
    pub receipts: u64,
    pub receipts_per_s: f64,
    /// Receipts still missing when the sessions gave up waiting.
    pub missing_receipts: u64,
    /// Sessions that got an ERROR or lost their connection.
    pub failed_sessions: usize,
    pub latency: Latency,
    pub errors: Vec<String>,
}

impl SendReport {
    pub fn print(&self) {
        println!(
            "send {}: {}/{} sessions, window {}, {} B bodies, {:.1} s",
            self.url, self.connected, self.sessions, self.window, self.body_bytes, self.duration_s
        );
        println!(
            "  sent {}  receipts {}  ({} receipts/s = confirmed publishes/s)  missing {}  failed sessions {}",
            thousands(self.sent as f64),
            thousands(self.receipts as f64),
            thousands(self.receipts_per_s),
            self.missing_receipts,
            self.failed_sessions
        );
        let l = &self.latency;
        println!(
            "  receipt latency µs  p50 {}  p90 {}  p99 {}  max {}  (n {})",
            l.p50_us, l.p90_us, l.p99_us, l.max_us, l.count
        );
        for e in &self.errors {
            println!("  error: {e}");
        }
    }

    pub fn clean(&self) -> bool {
        self.failed_sessions == 0
            && self.missing_receipts == 0
            && self.receipts > 0
            && self.connected == self.sessions
    }
}

struct Totals {
    sent: AtomicU64,
    receipts: AtomicU64,
    missing: AtomicU64,
    connected: AtomicUsize,
    failed: AtomicUsize,
    histogram: Mutex<Histogram<u64>>,
    errors: Mutex<Vec<String>>,
}

pub async fn run_send(cfg: &SendConfig) -> SendReport {
    let totals = Arc::new(Totals {
        sent: AtomicU64::new(0),
        receipts: AtomicU64::new(0),
        missing: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        histogram: Mutex::new(latency_histogram()),
        errors: Mutex::new(Vec::new()),
    });
    // All sessions connect first; then they start together.
    let go = Arc::new(Semaphore::new(0));
    let connecting = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..cfg.sessions {
        let (cfg, totals, go, connecting) = (
            cfg.clone(),
            Arc::clone(&totals),
            Arc::clone(&go),
            Arc::clone(&connecting),
        );
        tasks.push(tokio::spawn(async move {
            session(i, cfg, totals, go, connecting).await
        }));
    }
    let setup_start = Instant::now();
    while totals.connected.load(Ordering::Relaxed) + totals.failed.load(Ordering::Relaxed)
        < cfg.sessions
        && setup_start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = totals.connected.load(Ordering::Relaxed);
    eprintln!(
        "[{}] {connected}/{} sessions connected",
        cfg.label, cfg.sessions
    );
    let start = Instant::now();
    go.add_permits(cfg.sessions);
    let mut last = (Instant::now(), 0u64);
    while start.elapsed() < cfg.duration {
        tokio::time::sleep(
            Duration::from_secs(1).min(cfg.duration.saturating_sub(start.elapsed())),
        )
        .await;
        let receipts = totals.receipts.load(Ordering::Relaxed);
        eprintln!(
            "[{}] {:>5.1}s {:>9} receipts/s",
            cfg.label,
            start.elapsed().as_secs_f64(),
            thousands((receipts - last.1) as f64 / last.0.elapsed().as_secs_f64())
        );
        last = (Instant::now(), receipts);
    }
    let counted_secs = start.elapsed().as_secs_f64();
    let receipts_in_time = totals.receipts.load(Ordering::Relaxed);
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let histogram = totals
        .histogram
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| latency_histogram());
    SendReport {
        url: cfg.target.url.clone(),
        sessions: cfg.sessions,
        connected,
        window: cfg.window,
        body_bytes: cfg.body_bytes,
        duration_s: counted_secs,
        sent: totals.sent.load(Ordering::Relaxed),
        receipts: totals.receipts.load(Ordering::Relaxed),
        receipts_per_s: receipts_in_time as f64 / counted_secs,
        missing_receipts: totals.missing.load(Ordering::Relaxed),
        failed_sessions: totals.failed.load(Ordering::Relaxed),
        latency: Latency::from_histogram(&histogram),
        errors: totals.errors.lock().map(|e| e.clone()).unwrap_or_default(),
    }
}

async fn session(
    index: usize,
    cfg: SendConfig,
    totals: Arc<Totals>,
    go: Arc<Semaphore>,
    connecting: Arc<Semaphore>,
) {
    let fail = |e: String| {
        totals.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut errors) = totals.errors.lock() {
            if errors.len() < 10 {
                errors.push(format!("session {index}: {e}"));
            }
        }
    };
    let conn = {
        let _permit = connecting.acquire().await;
        StompConn::connect(
            &cfg.target,
            source_ip(index, cfg.source_ips),
            Duration::from_secs(10),
        )
        .await
    };
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    totals.connected.fetch_add(1, Ordering::Relaxed);
    let Ok(permit) = go.acquire().await else {
        return;
    };
    permit.forget();
    let destination = format!("/topic/{}", cfg.topic);
    let deadline = Instant::now() + cfg.duration;
    let mut outstanding: VecDeque<(u64, u64)> = VecDeque::new();
    let mut next = 0u64;
    let mut body = Vec::new();
    let mut local = latency_histogram();
    let mut skipped = 0u64;
    let mut error: Option<String> = None;
    loop {
        let sending = Instant::now() < deadline;
        if sending && outstanding.len() < cfg.window {
            while outstanding.len() < cfg.window {
                let sent = now_ns();
                wire::encode_body(&mut body, 0, next, sent, cfg.body_bytes);
                let frame = wire::send_frame(&destination, Some(&format!("r{next}")), &body);
                if let Err(e) = conn.feed_bytes(frame).await {
                    error = Some(e);
                    break;
                }
                outstanding.push_back((next, sent));
                next += 1;
                totals.sent.fetch_add(1, Ordering::Relaxed);
            }
            if error.is_none() {
                if let Err(e) = conn.flush().await {
                    error = Some(e);
                }
            }
            if error.is_some() {
                break;
            }
        }
        if outstanding.is_empty() {
            break;
        }
        // Wait for receipts; after the deadline, for the last ones (bounded).
        let wait = if sending {
            deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1)
        } else {
            Duration::from_secs(10)
        };
        let message = match tokio::time::timeout(wait, conn.ws.next()).await {
            Err(_) if sending => continue,
            Err(_) => break,
            Ok(None) => {
                error = Some("connection closed by the server".to_owned());
                break;
            }
            Ok(Some(Err(e))) => {
                error = Some(format!("websocket: {e}"));
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        let data: bytes::Bytes = match message {
            Message::Text(t) => t.into(),
            Message::Binary(b) => b,
            Message::Close(c) => {
                error = Some(format!("closed by the server: {c:?}"));
                break;
            }
            _ => continue,
        };
        let now = now_ns();
        let mut got = Vec::new();
        let result = conn.feed(&data, &mut |f| {
            if f.is("RECEIPT") {
                if let Some(id) = f.header("receipt-id") {
                    if let Some(n) = std::str::from_utf8(id)
                        .ok()
                        .and_then(|s| s.strip_prefix('r'))
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        got.push(n);
                    }
                }
            } else if f.is("ERROR") {
                error = Some(f.describe_error());
            }
        });
        if let Err(e) = result {
            error = Some(e);
        }
        let mut answered = 0u64;
        for n in got {
            // Receipts come in order; a receipt covers nothing but its own
            // frame, so one skipped stays missing.
            while let Some(&(k, sent)) = outstanding.front() {
                if k > n {
                    break;
                }
                outstanding.pop_front();
                if k == n {
                    local.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                    answered += 1;
                } else {
                    skipped += 1;
                }
            }
        }
        totals.receipts.fetch_add(answered, Ordering::Relaxed);
        if error.is_some() {
            break;
        }
    }
    totals
        .missing
        .fetch_add(outstanding.len() as u64 + skipped, Ordering::Relaxed);
    if let Ok(mut h) = totals.histogram.lock() {
        let _ = h.add(&local);
    }
    match error {
        Some(e) => fail(e),
        None => conn.close().await,
    }
}
