//! `compare`: the same fan-out scenario, in one invocation, against
//! stompgate (release binary on the machine's broker), RabbitMQ's own
//! Web-STOMP (a private node), and the ceiling server; a side-by-side table,
//! results JSON and an SVG plot.
//!
//! Per server and subscriber count, one set of sessions is opened and used
//! for everything: server RSS before/after subscribing (memory per idle
//! session), queues bound to the topic on the broker, then a max-rate phase
//! (delivered msgs/s) and a fixed-rate phase (latency).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::Target;
use crate::fanout::{opt, FanoutResult};
use crate::publish::{run_phase, PhasePlan, PublishVia, Publisher};
use crate::servers::{spawn_ceiling, spawn_gateway, topic_queues, PrivateRabbit, Spawned};
use crate::sessions::{SessionOpts, SessionSet};
use crate::svg;
use crate::util::{thousands, unique_name, CpuMark, RssSampler};

#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub subscribers: Vec<usize>,
    pub duration: Duration,
    pub fixed_rate: f64,
    pub body_bytes: usize,
    pub window: u64,
    pub max_age: Duration,
    pub drain: Duration,
    pub max_drain: Duration,
    pub confirms: bool,
    pub gateway_bin: PathBuf,
    pub gateway_config: Option<PathBuf>,
    pub amqp: String,
    pub rabbit_script: PathBuf,
    pub rabbit_name: String,
    pub out_dir: PathBuf,
    pub servers: Vec<String>,
    pub coalesce: bool,
    pub sessions: SessionOpts,
}

/// One server at one subscriber count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CompareRow {
    pub server: String,
    pub subscribers: usize,
    pub connected: usize,
    pub failed_connections: usize,
    pub setup_secs: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_per_session_kib: Option<f64>,
    /// Queues bound to amq.topic with the topic's key while subscribed
    /// (None for the ceiling, which has no broker).
    pub topic_queues: Option<usize>,
    pub max_rate: Option<FanoutResult>,
    pub fixed_rate: Option<FanoutResult>,
    pub seconds: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub cores: usize,
    pub duration_s: f64,
    pub fixed_rate: f64,
    pub body_bytes: usize,
    pub window: u64,
    #[serde(default)]
    pub max_age_s: f64,
    /// The ceiling joined the frames of a batch into one WebSocket message.
    #[serde(default)]
    pub ceiling_coalesce: bool,
    pub publisher_confirms: bool,
    pub rows: Vec<CompareRow>,
    pub notes: Vec<String>,
    pub total_seconds: f64,
}

/// The server processes of one round.
#[derive(Default)]
struct Running {
    gateway: Option<Spawned>,
    ceiling: Option<Spawned>,
    rabbit: Option<PrivateRabbit>,
}

impl Running {
    async fn stop(self) {
        if let Some(g) = self.gateway {
            g.stop().await;
        }
        if let Some(c) = self.ceiling {
            c.stop().await;
        }
        if let Some(r) = self.rabbit {
            r.stop().await;
        }
    }
}

async fn start_servers(cfg: &CompareConfig, notes: &mut Vec<String>) -> (Vec<Server>, Running) {
    let wants = |s: &str| cfg.servers.iter().any(|x| x == s);
    let mut running = Running::default();
    let mut servers = Vec::new();
    if wants("stompgate") {
        match spawn_gateway(
            &cfg.gateway_bin,
            &cfg.amqp,
            &cfg.out_dir,
            cfg.gateway_config.as_deref(),
        )
        .await
        {
            Ok(g) => {
                servers.push(Server {
                    name: "stompgate",
                    url: g.url.clone(),
                    pid: g.pid,
                    via: PublishVia::Amqp {
                        url: cfg.amqp.clone(),
                        confirms: cfg.confirms,
                    },
                    node: Some(None),
                });
                running.gateway = Some(g);
            }
            Err(e) => notes.push(format!("stompgate: {e}")),
        }
    }
    if wants("webstomp") {
        match PrivateRabbit::start(&cfg.rabbit_script, &cfg.rabbit_name).await {
            Ok(r) => {
                servers.push(Server {
                    name: "webstomp",
                    url: r.ws_url(),
                    pid: r.pid,
                    via: PublishVia::Amqp {
                        url: r.amqp_url(),
                        confirms: cfg.confirms,
                    },
                    node: Some(Some(r.node.clone())),
                });
                running.rabbit = Some(r);
            }
            Err(e) => notes.push(format!("webstomp: {e}")),
        }
    }
    if wants("ceiling") {
        match spawn_ceiling(&cfg.out_dir, cfg.coalesce).await {
            Ok(c) => match Target::resolve(&c.url, "guest", "guest", "/").await {
                Ok(target) => {
                    servers.push(Server {
                        name: "ceiling",
                        url: c.url.clone(),
                        pid: c.pid,
                        via: PublishVia::Stomp { target },
                        node: None,
                    });
                    running.ceiling = Some(c);
                }
                Err(e) => notes.push(format!("ceiling: {e}")),
            },
            Err(e) => notes.push(format!("ceiling: {e}")),
        }
    }
    for note in notes.iter() {
        eprintln!("warning: {note}");
    }
    (servers, running)
}

struct Server {
    name: &'static str,
    url: String,
    pid: u32,
    via: PublishVia,
    /// For queue counting: Some(None) is the machine's broker.
    node: Option<Option<String>>,
}

pub async fn run_compare(cfg: &CompareConfig) -> Result<CompareReport, String> {
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.out_dir)
        .map_err(|e| format!("create {}: {e}", cfg.out_dir.display()))?;
    let mut notes = Vec::new();

    let mut rows: Vec<CompareRow> = Vec::new();
    // Fresh server processes for every subscriber count: an allocator keeps
    // what an earlier run freed, which would hide the cost of new sessions.
    for &n in &cfg.subscribers {
        let (servers, running) = start_servers(cfg, &mut notes).await;
        for server in &servers {
            let row = run_one(server, n, cfg).await;
            eprintln!(
                "== {} with {n} subscribers done in {:.0} s{}",
                server.name,
                row.seconds,
                row.error
                    .as_deref()
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            );
            rows.push(row);
        }
        running.stop().await;
    }
    notes.sort();
    notes.dedup();
    Ok(CompareReport {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        duration_s: cfg.duration.as_secs_f64(),
        fixed_rate: cfg.fixed_rate,
        body_bytes: cfg.body_bytes,
        window: cfg.window,
        max_age_s: cfg.max_age.as_secs_f64(),
        ceiling_coalesce: cfg.coalesce,
        publisher_confirms: cfg.confirms,
        rows,
        notes,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

async fn run_one(server: &Server, n: usize, cfg: &CompareConfig) -> CompareRow {
    let started = Instant::now();
    let mut row = CompareRow {
        server: server.name.to_owned(),
        subscribers: n,
        ..CompareRow::default()
    };
    let label = format!("{} n={n}", server.name);
    eprintln!("== {label}: connecting {n} subscribers to {}", server.url);
    let target = match Target::resolve(&server.url, "guest", "guest", "/").await {
        Ok(t) => t,
        Err(e) => {
            row.error = Some(e);
            return row;
        }
    };
    let topic = unique_name("cmp");
    let sampler = RssSampler::start(server.pid);
    row.rss_before_kib = sampler.now();
    let opts = SessionOpts {
        label: label.clone(),
        ..cfg.sessions.clone()
    };
    let sessions = SessionSet::open(&target, n, &format!("/topic/{topic}"), &opts).await;
    let (live, failed, _) = sessions.counts();
    row.connected = live;
    row.failed_connections = failed;
    row.setup_secs = sessions.setup_time.as_secs_f64();
    if live == 0 {
        row.error = Some(format!(
            "no session could subscribe: {}",
            sessions.errors().join("; ")
        ));
        sessions.close().await;
        row.seconds = started.elapsed().as_secs_f64();
        return row;
    }
    // Let the server settle before measuring the cost of idle sessions.
    tokio::time::sleep(Duration::from_secs(1)).await;
    row.rss_after_kib = sampler.now();
    row.rss_per_session_kib =
        crate::util::RssReport::per_session(row.rss_before_kib, row.rss_after_kib, live);
    if let Some(node) = &server.node {
        match topic_queues(node.as_deref(), &topic).await {
            Ok(q) => row.topic_queues = Some(q),
            Err(e) => eprintln!("warning: counting queues: {e}"),
        }
    }
    let mut publisher = match Publisher::connect(&server.via, &topic).await {
        Ok(p) => p,
        Err(e) => {
            row.error = Some(e);
            sessions.close().await;
            row.seconds = started.elapsed().as_secs_f64();
            return row;
        }
    };
    let max_plan = PhasePlan {
        phase: 0,
        rate: None,
        duration: cfg.duration,
        window: cfg.window,
        max_age: cfg.max_age,
        body_bytes: cfg.body_bytes,
        start_seq: 0,
        drain: cfg.drain,
        max_drain: cfg.max_drain,
    };
    eprintln!(
        "== {label}: max rate for {:.0} s",
        cfg.duration.as_secs_f64()
    );
    let mark = CpuMark::now(Some(server.pid));
    let run = run_phase(
        &mut publisher,
        &max_plan,
        &sessions,
        &format!("{label} max"),
    )
    .await;
    let mut max = FanoutResult::collect(&sessions, &run, &max_plan).await;
    max.set_cpu(&mark, Some(server.pid));
    max.print(&format!("{label} max rate"));
    let fixed_plan = PhasePlan {
        phase: 1,
        rate: Some(cfg.fixed_rate),
        start_seq: run.end_seq,
        ..max_plan.clone()
    };
    eprintln!(
        "== {label}: {} msg/s for {:.0} s",
        cfg.fixed_rate,
        cfg.duration.as_secs_f64()
    );
    let mark = CpuMark::now(Some(server.pid));
    let run = run_phase(
        &mut publisher,
        &fixed_plan,
        &sessions,
        &format!("{label} fixed"),
    )
    .await;
    let mut fixed = FanoutResult::collect(&sessions, &run, &fixed_plan).await;
    fixed.set_cpu(&mark, Some(server.pid));
    fixed.print(&format!("{label} fixed rate"));
    row.rss_peak_kib = Some(sampler.peak());
    row.max_rate = Some(max);
    row.fixed_rate = Some(fixed);
    publisher.close().await;
    sessions.close().await;
    // Give the server time to drop the sessions (and Web-STOMP its queues).
    tokio::time::sleep(Duration::from_secs(2)).await;
    row.seconds = started.elapsed().as_secs_f64();
    row
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}x", a / b)
        }
        _ => "-".to_owned(),
    }
}

impl CompareRow {
    fn delivered(&self) -> Option<f64> {
        self.max_rate
            .as_ref()
            .map(|r| r.steady_rate.unwrap_or(r.delivered_rate))
    }
    fn cpu_per_delivery(&self) -> Option<f64> {
        self.max_rate
            .as_ref()
            .and_then(|r| r.server_cpu_us_per_delivery)
    }
    fn p50(&self) -> Option<f64> {
        self.fixed_rate
            .as_ref()
            .filter(|r| r.latency.count > 0)
            .map(|r| r.latency.p50_us as f64)
    }
    fn p99(&self) -> Option<f64> {
        self.fixed_rate
            .as_ref()
            .filter(|r| r.latency.count > 0)
            .map(|r| r.latency.p99_us as f64)
    }
}

impl CompareReport {
    pub fn print(&self) {
        let dash = || "-".to_owned();
        println!();
        println!(
            "fan-out comparison: {} cores, {:.0} s per phase, {} B bodies, max rate (window {} msgs, max age {} s) then {} msg/s",
            self.cores, self.duration_s, self.body_bytes, self.window, self.max_age_s, self.fixed_rate
        );
        println!(
            "{:<10} {:>6} {:>6} {:>12} {:>8} {:>7} {:>5} {:>10} {:>10} {:>8} {:>7} {:>7}",
            "server",
            "subs",
            "conn",
            "delivered/s",
            "cpu µs",
            "loss",
            "dups",
            "p50 µs",
            "p99 µs",
            "KiB/ses",
            "queues",
            "loss@10"
        );
        for r in &self.rows {
            let max = r.max_rate.as_ref();
            let fixed = r.fixed_rate.as_ref();
            println!(
                "{:<10} {:>6} {:>6} {:>12} {:>8} {:>7} {:>5} {:>10} {:>10} {:>8} {:>7} {:>7}",
                r.server,
                r.subscribers,
                r.connected,
                r.delivered().map(thousands).unwrap_or_else(dash),
                r.cpu_per_delivery()
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(dash),
                max.map(|m| m.loss.to_string()).unwrap_or_else(dash),
                max.map(|m| (m.duplicates + fixed.map(|f| f.duplicates).unwrap_or(0)).to_string())
                    .unwrap_or_else(dash),
                r.p50().map(thousands).unwrap_or_else(dash),
                r.p99().map(thousands).unwrap_or_else(dash),
                r.rss_per_session_kib
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(dash),
                r.topic_queues
                    .map(|q| q.to_string())
                    .unwrap_or_else(|| "n/a".into()),
                fixed.map(|f| f.loss.to_string()).unwrap_or_else(dash),
            );
            if let Some(e) = &r.error {
                println!("           error: {e}");
            }
        }
        println!(
            "(delivered/s: steady deliveries per second at max rate, after warm-up; cpu µs: server CPU per delivery at max rate; p50/p99 latency and loss@10 at {} msg/s; KiB/ses: server RSS per idle session; queues: queues bound to the topic)",
            self.fixed_rate
        );
        let mut subs: Vec<usize> = self.rows.iter().map(|r| r.subscribers).collect();
        subs.dedup();
        for n in subs {
            let find = |s: &str| {
                self.rows
                    .iter()
                    .find(|r| r.server == s && r.subscribers == n)
            };
            let Some(g) = find("stompgate") else { continue };
            if let Some(c) = find("ceiling") {
                println!(
                    "server CPU per delivery at {n:>6} subscribers (user+sys of the server process over the max-rate phase / deliveries): stompgate {} µs, ceiling {} µs, ratio {}",
                    g.cpu_per_delivery().map(|v| format!("{v:.3}")).unwrap_or_else(dash),
                    c.cpu_per_delivery().map(|v| format!("{v:.3}")).unwrap_or_else(dash),
                    ratio(g.cpu_per_delivery(), c.cpu_per_delivery()),
                );
            }
            for other in ["webstomp", "ceiling"] {
                let Some(o) = find(other) else { continue };
                println!(
                    "stompgate/{other:<8} at {n:>6}: delivered/s {}  cpu/delivery {}  p50 {}  p99 {}  KiB/session {}  queues {}/{}",
                    ratio(g.delivered(), o.delivered()),
                    ratio(g.cpu_per_delivery(), o.cpu_per_delivery()),
                    ratio(g.p50(), o.p50()),
                    ratio(g.p99(), o.p99()),
                    ratio(g.rss_per_session_kib, o.rss_per_session_kib),
                    opt(g.topic_queues.map(|q| q as u64)),
                    o.topic_queues
                        .map(|q| q.to_string())
                        .unwrap_or_else(|| "n/a".into()),
                );
            }
        }
        for r in &self.rows {
            if let Some(f) = r.fixed_rate.as_ref().filter(|f| !f.kept_up) {
                println!(
                    "note: {} with {} subscribers did not keep up with {} msg/s ({} deliveries/s of {} needed): its latency there is mostly queueing",
                    r.server,
                    r.subscribers,
                    self.fixed_rate,
                    thousands(f.delivered_rate),
                    thousands(f.expected as f64 / f.duration_s.max(1e-9))
                );
            }
        }
        for n in &self.notes {
            println!("note: {n}");
        }
        println!("total time: {:.0} s", self.total_seconds);
    }

    /// Writes `compare-<stamp>.json` and `.svg` (and `compare-latest.*`).
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let svg = svg::plot(self);
        let json_path = dir.join(format!("compare-{stamp}.json"));
        let svg_path = dir.join(format!("compare-{stamp}.svg"));
        for (path, text) in [
            (&json_path, &json),
            (&svg_path, &svg),
            (&dir.join("compare-latest.json"), &json),
            (&dir.join("compare-latest.svg"), &svg),
        ] {
            std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        Ok((json_path, svg_path))
    }
}
