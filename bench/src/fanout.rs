//! The fan-out scenario: N subscribers on one topic, one publisher, loss,
//! duplicates, reordering and latency per delivered message.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Target;
use crate::publish::{run_phase, PhasePlan, PhaseRun, PublishVia, Publisher};
use crate::sessions::{SessionOpts, SessionSet};
use crate::util::{thousands, CpuMark, Latency, RssReport, RssSampler};

/// One publishing phase's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FanoutResult {
    /// `max` (as fast as the slowest subscriber keeps up) or `fixed`.
    pub mode: String,
    pub target_rate: Option<f64>,
    pub subscribers: usize,
    /// Subscribers live when publishing started.
    pub live: usize,
    /// Subscribers the server disconnected (or that failed) during the phase.
    pub disconnected: usize,
    pub duration_s: f64,
    pub body_bytes: usize,
    pub published: u64,
    pub publish_rate: f64,
    /// published x live subscribers.
    pub expected: u64,
    /// Distinct messages received, over all subscribers.
    pub delivered: u64,
    /// delivered / (first publish .. last delivery).
    pub delivered_rate: f64,
    /// Deliveries per second once warmed up, while publishing (see
    /// `PhaseRun::steady_rate`); the headline number at max rate.
    pub steady_rate: Option<f64>,
    pub loss: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub malformed: u64,
    /// The server delivered at least 90% of the rate asked for (published x
    /// live subscribers per second of publishing); when not, its latency is
    /// mostly queueing.
    pub kept_up: bool,
    /// Live subscribers that had not seen the last message after the drain.
    pub lagging_subscribers: usize,
    pub nacks: u64,
    pub latency: Latency,
    /// CPU seconds the server used from the first publish to the end of the
    /// drain (when its pid is known), and per delivered message.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// CPU seconds this benchmark process used meanwhile (subscribers and
    /// publisher share the machine with the server).
    pub client_cpu_s: Option<f64>,
    pub error: Option<String>,
}

impl FanoutResult {
    /// Collects the counts of `run` from `sessions`.
    pub async fn collect(sessions: &SessionSet, run: &PhaseRun, plan: &PhasePlan) -> FanoutResult {
        sessions.flush().await;
        let agg = &sessions.shared.aggs[plan.phase as usize];
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let unique = load(&agg.unique);
        let expected = run.published * run.live_at_start as u64;
        let last_ns = load(&agg.last_ns);
        let span = if last_ns > run.start_ns {
            (last_ns - run.start_ns) as f64 / 1e9
        } else {
            run.publish_secs
        };
        let (_, _, dead) = sessions.counts();
        FanoutResult {
            mode: if plan.rate.is_some() { "fixed" } else { "max" }.to_owned(),
            target_rate: plan.rate,
            subscribers: sessions.requested,
            live: run.live_at_start,
            disconnected: dead.saturating_sub(run.dead_at_start),
            duration_s: run.publish_secs,
            body_bytes: plan.body_bytes,
            published: run.published,
            publish_rate: run.published as f64 / run.publish_secs.max(1e-9),
            expected,
            delivered: unique,
            steady_rate: run.steady_rate,
            delivered_rate: if span > 0.0 {
                unique as f64 / span
            } else {
                0.0
            },
            loss: expected.saturating_sub(unique),
            duplicates: load(&agg.duplicates),
            reorders: load(&agg.reorders),
            malformed: load(&agg.malformed),
            kept_up: span > 0.0
                && unique as f64 / span >= 0.9 * expected as f64 / run.publish_secs.max(1e-9),
            lagging_subscribers: sessions.lagging(run.end_seq),
            nacks: run.nacks,
            latency: Latency::from_histogram(&agg.histogram()),
            server_cpu_s: None,
            server_cpu_us_per_delivery: None,
            client_cpu_s: None,
            error: run.error.clone(),
        }
    }

    /// Records the CPU used since `mark`.
    pub fn set_cpu(&mut self, mark: &CpuMark, server_pid: Option<u32>) {
        let (server, client) = mark.since(server_pid);
        self.server_cpu_s = server;
        self.client_cpu_s = client;
        self.server_cpu_us_per_delivery = server
            .filter(|_| self.delivered > 0)
            .map(|s| s * 1e6 / self.delivered as f64);
    }

    /// No loss, no duplicates, nothing malformed, nobody disconnected.
    pub fn clean(&self) -> bool {
        self.loss == 0
            && self.duplicates == 0
            && self.malformed == 0
            && self.disconnected == 0
            && self.nacks == 0
            && self.error.is_none()
            && self.published > 0
    }

    pub fn print(&self, label: &str) {
        let rate = match self.target_rate {
            Some(r) => format!("fixed {r} msg/s"),
            None => "max rate".to_owned(),
        };
        println!(
            "{label}: fan-out to {} subscribers ({} live), {rate}, {:.1} s, {} B bodies",
            self.subscribers, self.live, self.duration_s, self.body_bytes
        );
        println!(
            "  published  {:>12} msgs  {:>12} msg/s{}",
            thousands(self.published as f64),
            thousands(self.publish_rate),
            if self.nacks > 0 {
                format!("  ({} nacked)", self.nacks)
            } else {
                String::new()
            }
        );
        println!(
            "  delivered  {:>12} msgs  {:>12} msg/s   expected {}{}",
            thousands(self.delivered as f64),
            thousands(self.delivered_rate),
            thousands(self.expected as f64),
            self.steady_rate
                .map(|s| format!("   steady {} msg/s", thousands(s)))
                .unwrap_or_default()
        );
        println!(
            "  loss {}  duplicates {}  reorders {}  malformed {}  disconnected {}  lagging {}",
            self.loss,
            self.duplicates,
            self.reorders,
            self.malformed,
            self.disconnected,
            self.lagging_subscribers
        );
        let l = &self.latency;
        println!(
            "  latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0}, n {})",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.count
        );
        if let Some(cpu) = self.client_cpu_s {
            println!(
                "  CPU s: server {} ({} µs/delivery), this process {cpu:.2}",
                self.server_cpu_s
                    .map(|s| format!("{s:.2}"))
                    .unwrap_or_else(|| "-".into()),
                self.server_cpu_us_per_delivery
                    .map(|s| format!("{s:.2}"))
                    .unwrap_or_else(|| "-".into())
            );
        }
        if let Some(e) = &self.error {
            println!("  error: {e}");
        }
    }
}

/// A standalone fan-out run.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub target: Target,
    pub via: PublishVia,
    pub subscribers: usize,
    pub duration: Duration,
    pub rate: Option<f64>,
    pub window: u64,
    pub max_age: Duration,
    pub body_bytes: usize,
    pub drain: Duration,
    pub max_drain: Duration,
    pub pid: Option<u32>,
    pub topic: String,
    pub sessions: SessionOpts,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub url: String,
    pub topic: String,
    pub subscribers: usize,
    pub connected: usize,
    pub failed_connections: usize,
    pub setup_secs: f64,
    pub rss: Option<RssReport>,
    pub result: FanoutResult,
    pub errors: Vec<String>,
}

impl FanoutReport {
    pub fn print(&self) {
        println!(
            "connections: {}/{} subscribed in {:.1} s ({} failed)",
            self.connected, self.subscribers, self.setup_secs, self.failed_connections
        );
        self.result.print(&format!("fanout {}", self.url));
        if let Some(r) = &self.rss {
            println!(
                "  server RSS (pid {}): before {} KiB, after connecting {} KiB, peak {} KiB, {:.1} KiB/session",
                r.pid,
                opt(r.before_connect_kib),
                opt(r.after_connect_kib),
                opt(r.peak_kib),
                r.per_session_kib.unwrap_or(f64::NAN)
            );
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
    }
}

pub fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

pub async fn run_fanout(cfg: &FanoutConfig) -> Result<FanoutReport, String> {
    let sampler = cfg.pid.map(RssSampler::start);
    let before = sampler.as_ref().and_then(|s| s.now());
    let destination = format!("/topic/{}", cfg.topic);
    let sessions =
        SessionSet::open(&cfg.target, cfg.subscribers, &destination, &cfg.sessions).await;
    let (live, failed, _) = sessions.counts();
    if live == 0 {
        let errors = sessions.errors();
        sessions.close().await;
        return Err(format!("no session could subscribe: {}", errors.join("; ")));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = sampler.as_ref().and_then(|s| s.now());
    let mut publisher = match Publisher::connect(&cfg.via, &cfg.topic).await {
        Ok(p) => p,
        Err(e) => {
            sessions.close().await;
            return Err(e);
        }
    };
    let plan = PhasePlan {
        phase: 0,
        rate: cfg.rate,
        duration: cfg.duration,
        window: cfg.window,
        max_age: cfg.max_age,
        body_bytes: cfg.body_bytes,
        start_seq: 0,
        drain: cfg.drain,
        max_drain: cfg.max_drain,
    };
    let mark = CpuMark::now(cfg.pid);
    let run = run_phase(&mut publisher, &plan, &sessions, &cfg.sessions.label).await;
    let mut result = FanoutResult::collect(&sessions, &run, &plan).await;
    result.set_cpu(&mark, cfg.pid);
    let errors = sessions.errors();
    publisher.close().await;
    let setup_secs = sessions.setup_time.as_secs_f64();
    sessions.close().await;
    let rss = sampler.as_ref().map(|s| RssReport {
        pid: cfg.pid.unwrap_or(0),
        before_connect_kib: before,
        after_connect_kib: after,
        peak_kib: Some(s.peak()),
        per_session_kib: RssReport::per_session(before, after, live),
    });
    Ok(FanoutReport {
        url: cfg.target.url.clone(),
        topic: cfg.topic.clone(),
        subscribers: cfg.subscribers,
        connected: live,
        failed_connections: failed,
        setup_secs,
        rss,
        result,
        errors,
    })
}
