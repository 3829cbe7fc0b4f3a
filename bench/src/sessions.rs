//! A set of subscriber sessions: N STOMP-over-WebSocket connections, each
//! subscribed once to `/topic/<topic>`, each served by one tokio task on a
//! runtime of a few worker threads (no thread per connection).
//!
//! Receivers keep their counts locally and publish only their progress (one
//! past the highest sequence number seen) in a cache-line-sized slot, which
//! the publisher reads to keep its window. The coordinator asks for the
//! counts with a flush epoch: every live task adds its deltas to the shared
//! per-phase totals and acknowledges the epoch.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{StompConn, Target};
use crate::stats::{PhaseAgg, Tracker, MAX_PHASES};
use crate::util::{now_ns, source_ip};
use crate::wire;

pub const CONNECTING: u8 = 0;
pub const LIVE: u8 = 1;
pub const FAILED: u8 = 2;
pub const DEAD: u8 = 3;

/// How the sessions connect.
#[derive(Debug, Clone)]
pub struct SessionOpts {
    /// Source addresses 127.0.0.1 .. 127.0.0.<source_ips>.
    pub source_ips: usize,
    /// Offset into the source addresses (child processes use their own).
    pub source_offset: usize,
    /// Handshakes in progress at once.
    pub concurrency: usize,
    /// Bound on one session's WebSocket handshake + CONNECT + SUBSCRIBE.
    pub setup_timeout: Duration,
    /// Label of progress lines on stderr.
    pub label: String,
}

#[repr(align(64))]
pub struct Slot {
    pub progress: AtomicU64,
    pub acked: AtomicU64,
    pub state: AtomicU8,
}

pub struct Shared {
    pub slots: Vec<Slot>,
    pub aggs: Vec<PhaseAgg>,
    pub errors: Mutex<Vec<String>>,
    pub error_count: AtomicUsize,
    pub first_error: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn error(&self, message: String) {
        let n = self.error_count.fetch_add(1, Ordering::Relaxed);
        if n < 10 {
            if let Ok(mut e) = self.errors.lock() {
                e.push(message);
            }
        }
    }
}

/// The running sessions.
pub struct SessionSet {
    pub shared: Arc<Shared>,
    pub requested: usize,
    pub setup_time: Duration,
    tasks: Vec<JoinHandle<()>>,
    flush_tx: watch::Sender<u64>,
    stop_tx: watch::Sender<bool>,
}

impl SessionSet {
    /// Opens `n` sessions subscribed to `destination` and waits (bounded)
    /// until each is live or has failed, printing progress every second.
    pub async fn open(
        target: &Target,
        n: usize,
        destination: &str,
        opts: &SessionOpts,
    ) -> SessionSet {
        SessionSet::open_over(target, n, destination, opts, Transport::WebSocket).await
    }

    /// [`SessionSet::open`] over `transport`.
    pub async fn open_over(
        target: &Target,
        n: usize,
        destination: &str,
        opts: &SessionOpts,
        transport: Transport,
    ) -> SessionSet {
        let shared = Arc::new(Shared {
            slots: (0..n)
                .map(|_| Slot {
                    progress: AtomicU64::new(0),
                    acked: AtomicU64::new(0),
                    state: AtomicU8::new(CONNECTING),
                })
                .collect(),
            aggs: (0..MAX_PHASES).map(|_| PhaseAgg::default()).collect(),
            errors: Mutex::new(Vec::new()),
            error_count: AtomicUsize::new(0),
            first_error: Mutex::new(None),
        });
        let (flush_tx, _) = watch::channel(0u64);
        let (stop_tx, _) = watch::channel(false);
        let semaphore = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for index in 0..n {
            let local = source_ip(index + opts.source_offset, opts.source_ips);
            let task = TaskArgs {
                index,
                target: target.clone(),
                local,
                destination: destination.to_owned(),
                shared: Arc::clone(&shared),
                semaphore: Arc::clone(&semaphore),
                setup_timeout: opts.setup_timeout,
                flush_rx: flush_tx.subscribe(),
                stop_rx: stop_tx.subscribe(),
            };
            tasks.push(match &transport {
                Transport::WebSocket => tokio::spawn(session_task(task)),
                Transport::XhrStreaming { prefix } => {
                    tokio::spawn(crate::sockjs::xhr_streaming_task(task, prefix.clone()))
                }
            });
        }
        let mut set = SessionSet {
            shared,
            requested: n,
            setup_time: Duration::ZERO,
            tasks,
            flush_tx,
            stop_tx,
        };
        // Every session either gets live or fails within its own timeout,
        // which starts once it has a handshake slot.
        let bound = opts.setup_timeout * (1 + (n / opts.concurrency.max(1)) as u32)
            + Duration::from_secs(5);
        let mut last_print = Instant::now();
        loop {
            let (live, failed, dead) = set.counts();
            if live + failed + dead >= n || started.elapsed() > bound {
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                eprintln!(
                    "[{}] connecting: {live}/{n} subscribed, {failed} failed ({:.0}/s)",
                    opts.label,
                    live as f64 / started.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        set.setup_time = started.elapsed();
        let (live, failed, _) = set.counts();
        eprintln!(
            "[{}] {live}/{n} sessions subscribed in {:.1} s ({failed} failed)",
            opts.label,
            set.setup_time.as_secs_f64()
        );
        if failed > 0 {
            for e in set.errors() {
                eprintln!("[{}]   error: {e}", opts.label);
            }
        }
        set
    }

    /// (live, failed, dead) sessions.
    pub fn counts(&self) -> (usize, usize, usize) {
        let (mut live, mut failed, mut dead) = (0, 0, 0);
        for slot in &self.shared.slots {
            match slot.state.load(Ordering::Relaxed) {
                LIVE => live += 1,
                FAILED => failed += 1,
                DEAD => dead += 1,
                _ => {}
            }
        }
        (live, failed, dead)
    }

    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Lowest progress among live sessions (None when none is live).
    pub fn min_progress(&self) -> Option<u64> {
        self.shared
            .slots
            .iter()
            .filter(|s| s.state.load(Ordering::Relaxed) == LIVE)
            .map(|s| s.progress.load(Ordering::Relaxed))
            .min()
    }

    /// Sum over live sessions of progress past `from`: roughly the messages
    /// delivered since sequence number `from` (for progress lines).
    pub fn delivered_since(&self, from: u64) -> u64 {
        self.shared
            .slots
            .iter()
            .map(|s| s.progress.load(Ordering::Relaxed).saturating_sub(from))
            .sum()
    }

    /// Live sessions whose progress is below `seq`.
    pub fn lagging(&self, seq: u64) -> usize {
        self.shared
            .slots
            .iter()
            .filter(|s| {
                s.state.load(Ordering::Relaxed) == LIVE && s.progress.load(Ordering::Relaxed) < seq
            })
            .count()
    }

    /// Makes every live session add its counts to the shared totals.
    pub async fn flush(&self) {
        let epoch = *self.flush_tx.borrow() + 1;
        self.flush_tx.send_replace(epoch);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let waiting = self.shared.slots.iter().any(|s| {
                s.state.load(Ordering::Acquire) == LIVE && s.acked.load(Ordering::Acquire) < epoch
            });
            if !waiting {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!("warning: some sessions did not report their counts within 10 s");
    }

    /// Closes every session (DISCONNECT, WebSocket close), bounded.
    pub async fn close(self) {
        self.stop_tx.send_replace(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// How the sessions of a set reach the server.
#[derive(Debug, Clone)]
pub enum Transport {
    /// STOMP over WebSocket at the target's URL.
    WebSocket,
    /// STOMP over SockJS xhr-streaming under `prefix` (e.g. `/sockjs`) on
    /// the target's address.
    XhrStreaming { prefix: String },
}

/// What one session's task gets.
pub struct TaskArgs {
    pub index: usize,
    pub target: Target,
    pub local: std::net::Ipv4Addr,
    pub destination: String,
    pub shared: Arc<Shared>,
    pub semaphore: Arc<Semaphore>,
    pub setup_timeout: Duration,
    pub flush_rx: watch::Receiver<u64>,
    pub stop_rx: watch::Receiver<bool>,
}

async fn session_task(task: TaskArgs) {
    let TaskArgs {
        index,
        target,
        local,
        destination,
        shared,
        semaphore,
        setup_timeout,
        mut flush_rx,
        mut stop_rx,
    } = task;
    let slot = &shared.slots[index];
    let setup = async {
        let _permit = semaphore.acquire().await.map_err(|e| e.to_string())?;
        tokio::time::timeout(setup_timeout, async {
            let mut conn = StompConn::connect(&target, local, setup_timeout).await?;
            conn.subscribe("sub-0", &destination, setup_timeout).await?;
            Ok::<_, String>(conn)
        })
        .await
        .map_err(|_| format!("setup took longer than {} ms", setup_timeout.as_millis()))?
    };
    let mut conn = match setup.await {
        Ok(conn) => conn,
        Err(error) => {
            shared.error(format!("session {index}: {error}"));
            slot.state.store(FAILED, Ordering::Release);
            return;
        }
    };
    slot.state.store(LIVE, Ordering::Release);
    let mut tracker = Tracker::new(index);
    let aggs = &shared.aggs[..];
    let mut phase_hint = 0u8;
    let mut failure: Option<String> = None;
    loop {
        tokio::select! {
            biased;
            changed = stop_rx.changed() => {
                let _ = changed;
                break;
            }
            changed = flush_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                tracker.flush(aggs);
                let epoch = *flush_rx.borrow_and_update();
                slot.acked.store(epoch, Ordering::Release);
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
                        match wire::decode_body(frame.body) {
                            Some((phase, seq, sent)) => {
                                phase_hint = phase;
                                tracker.record(phase, seq, sent, now_ns(), aggs);
                            }
                            None => tracker.malformed(phase_hint),
                        }
                    } else if frame.is("ERROR") {
                        server_error = Some(frame.describe_error());
                    }
                });
                slot.progress.store(tracker.progress(), Ordering::Relaxed);
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
    tracker.flush(aggs);
    slot.acked.store(u64::MAX, Ordering::Release);
    match failure {
        Some(error) => {
            shared.error(format!("session {index}: {error}"));
            if let Ok(mut first) = shared.first_error.lock() {
                first.get_or_insert(error);
            }
            slot.state.store(DEAD, Ordering::Release);
        }
        None => conn.close().await,
    }
}
