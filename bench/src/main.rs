//! `stompgate-bench`: load and comparison benchmarks for stompgate.
//!
//! Scenarios (see `stompgate-bench help <scenario>`):
//! - `fanout`: N STOMP-over-WebSocket subscribers on one topic, one AMQP (or
//!   STOMP) publisher at a fixed rate or as fast as the subscribers keep up;
//!   loss, duplicates, reordering, latency, server RSS.
//! - `idle`: N idle subscribed sessions; server RSS per session.
//! - `send`: N sessions SENDing with receipts, pipelined; receipts/s.
//! - `ceiling`: a minimal STOMP-over-WS broadcast server, the upper bound.
//! - `compare`: fanout against stompgate, RabbitMQ Web-STOMP and the ceiling;
//!   table, JSON and SVG.
//! - `scale`: N sessions with a topic of their own, U users on `/user/`,
//!   Q queue consumers; exact delivery checks, broker channels/queues/memory,
//!   stompgate's channel bound asserted (or against Web-STOMP).
//! - `smoke`: tiny runs of everything against a gateway; non-zero exit on
//!   loss or duplicates.
//! - `sockjs`: SockJS xhr-streaming next to WebSocket on one gateway:
//!   memory per idle session, fan-out msgs/s, latency, gateway CPU and RSS.
//! - `resume`: N clients reconnecting at once, each resuming what it missed
//!   from a `[history]` stream: time until all are live, broker channels and
//!   queues before and after, live fan-out meanwhile.
//!
//! Progress goes to stderr, results to stdout (and JSON files when asked).

mod ceiling;
mod client;
mod compare;
mod fanout;
mod idle;
mod publish;
mod resume;
mod scale;
mod scale_restart;
mod send;
mod servers;
mod sessions;
mod smoke;
mod sockjs;
mod stats;
mod svg;
mod util;
mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::client::Target;
use crate::publish::PublishVia;
use crate::sessions::SessionOpts;
use crate::util::{parse_duration, unique_name};

/// Load and comparison benchmarks for stompgate (STOMP over WebSocket,
/// bridged to RabbitMQ).
#[derive(Debug, Parser)]
#[command(name = "stompgate-bench", version)]
struct Cli {
    /// Tokio worker threads [default: number of cores].
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// N subscribers on one topic, one publisher: delivered msgs/s, loss,
    /// duplicates, reordering, latency, server RSS.
    Fanout(FanoutArgs),
    /// N idle sessions, one subscription each: server RSS per session.
    Idle(IdleArgs),
    /// N sessions SEND with receipts, pipelined: confirmed publishes/s.
    Send(SendArgs),
    /// A minimal STOMP-over-WebSocket broadcast server (the ceiling).
    Ceiling(CeilingArgs),
    /// The fanout scenario against stompgate, Web-STOMP and the ceiling.
    Compare(CompareArgs),
    /// Tiny runs of fanout, idle and send against a gateway; exits non-zero
    /// on loss, duplicates, failed sessions or missing receipts.
    Smoke(SmokeArgs),
    /// N sessions, each on a topic of its own, U of them users on
    /// `/user/queue/scale`, Q consuming one `/queue`: every delivery checked,
    /// broker channels/queues/memory printed, the gateway's channel bound
    /// asserted (non-zero exit on loss, duplicates, misrouting, bound).
    Scale(ScaleArgs),
    /// STOMP over SockJS xhr-streaming next to STOMP over WebSocket, on one
    /// spawned gateway: memory per idle session (N idle sessions of each),
    /// then fan-out to N subscribers of each (max rate: msgs/s delivered and
    /// gateway CPU per delivery; fixed rate: latency). Non-zero exit on
    /// loss, duplicates or failed sessions (never on speed).
    Sockjs(SockjsArgs),
    /// N clients lose their sockets, M messages per topic are published,
    /// all reconnect at once with `x-resume-from` ([history]): time until
    /// all are live, the gateway's broker channels/queues before and after,
    /// live fan-out meanwhile. Non-zero exit on loss, duplicates, disorder,
    /// failed sessions or changed channel/queue counts (never on speed).
    Resume(ResumeArgs),
    /// Draws the SVG plot of a `compare` results JSON again.
    Plot(PlotArgs),
    /// (internal) one process's share of `idle --procs K`.
    #[command(hide = true)]
    IdleWorker(IdleWorkerArgs),
}

/// How to reach the server and open sessions.
#[derive(Debug, Clone, Args)]
struct ConnArgs {
    /// WebSocket URL of the STOMP endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:15674/ws")]
    url: String,
    #[arg(long, default_value = "guest")]
    login: String,
    #[arg(long, default_value = "guest")]
    passcode: String,
    /// CONNECT's `host` header (RabbitMQ: the virtual host).
    #[arg(long, default_value = "/")]
    vhost: String,
    /// Spread client source addresses over 127.0.0.1 .. 127.0.0.<N> (each
    /// address has its own ephemeral ports, ~28k per server port).
    #[arg(long, default_value_t = 4)]
    source_ips: usize,
    /// WebSocket handshakes + CONNECT + SUBSCRIBE in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Bound on one session's setup, in ms.
    #[arg(long, default_value_t = 30_000)]
    setup_timeout_ms: u64,
}

impl ConnArgs {
    async fn target(&self) -> Result<Target, String> {
        Target::resolve(&self.url, &self.login, &self.passcode, &self.vhost).await
    }

    fn session_opts(&self, label: &str) -> SessionOpts {
        SessionOpts {
            source_ips: self.source_ips,
            source_offset: 0,
            concurrency: self.concurrency,
            setup_timeout: Duration::from_millis(self.setup_timeout_ms),
            label: label.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Via {
    /// AMQP to amq.topic (routing key = topic), at --amqp.
    Amqp,
    /// STOMP SEND to /topic/<topic> at --url (use for the ceiling).
    Stomp,
}

#[derive(Debug, Args)]
struct FanoutArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// AMQP URL the publisher uses.
    #[arg(long, default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp: String,
    /// How the publisher reaches the server.
    #[arg(long, value_enum, default_value = "amqp")]
    publish: Via,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// How long to publish (e.g. 15s, 500ms, 2m).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Messages per second; without it, as fast as the slowest subscriber
    /// keeps up (see --window).
    #[arg(long)]
    rate: Option<f64>,
    /// Max rate: messages in flight (published, not yet seen by the slowest
    /// subscriber). Keep it under the server's per-client queue (stompgate:
    /// 1024 frames).
    #[arg(long, default_value_t = 128)]
    window: u64,
    /// Max rate: hold publishing while the oldest message in flight is older
    /// than this (bounds the backlog of a slow server).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    max_age: Duration,
    /// AMQP publishes without publisher confirms.
    #[arg(long)]
    no_confirms: bool,
    /// Body size (at least 36: sequence number and timestamp).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// After publishing, wait for the last deliveries until nothing arrived
    /// for this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,
    /// Stop waiting for the last deliveries after this long in any case
    /// (what has not arrived then counts as lost).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    max_drain: Duration,
    /// Server process to sample RSS of (/proc/PID/status).
    #[arg(long)]
    pid: Option<u32>,
    /// Topic name [default: a unique one].
    #[arg(long)]
    topic: Option<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long)]
    pid: Option<u32>,
    /// How long to hold the sessions.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// Split the sessions over this many child processes.
    #[arg(long, default_value_t = 1)]
    procs: usize,
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Then run the same sessions against the ceiling (a raw WebSocket
    /// broadcast server this tool starts), and print both and their ratio.
    #[arg(long)]
    ceiling: bool,
}

#[derive(Debug, Args)]
struct SendArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Outstanding receipts per session.
    #[arg(long, default_value_t = 32)]
    window: usize,
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CeilingArgs {
    #[arg(long, default_value = "127.0.0.1:15680")]
    listen: SocketAddr,
    /// KiB queued for a subscriber that cannot keep up before it misses
    /// messages.
    #[arg(long, default_value_t = 4096)]
    max_pending_kib: usize,
    /// One WebSocket message per frame (still one write per batch) instead
    /// of the frames of a batch joined into one message (as stompgate's
    /// writer does).
    #[arg(long)]
    no_coalesce: bool,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Subscriber counts, e.g. 1000,5000.
    #[arg(long, default_value = "1000,5000", value_delimiter = ',')]
    subscribers: Vec<usize>,
    /// Duration of each phase (max rate, then fixed rate).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Rate of the latency phase, msgs/s.
    #[arg(long, default_value_t = 10.0)]
    fixed_rate: f64,
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Max rate: messages in flight (published, not yet seen by the slowest
    /// subscriber).
    #[arg(long, default_value_t = 128)]
    window: u64,
    /// Max rate: hold publishing while the oldest message in flight is older
    /// than this.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    max_age: Duration,
    /// After publishing, wait for the last deliveries until nothing arrived
    /// for this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,
    /// Stop waiting for the last deliveries after this long in any case
    /// (what has not arrived then counts as lost).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    max_drain: Duration,
    #[arg(long)]
    no_confirms: bool,
    /// The gateway binary to spawn.
    #[arg(long, default_value = "target/release/stompgate")]
    gateway_bin: PathBuf,
    /// Configuration file for the spawned gateway [default: one with user
    /// guest/guest and no per-session frame rate limit].
    #[arg(long)]
    gateway_config: Option<PathBuf>,
    /// The machine's broker, for stompgate.
    #[arg(long, default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp: String,
    /// Starts/stops the private RabbitMQ node with Web-STOMP.
    #[arg(long, default_value = "scripts/private-rabbitmq.sh")]
    rabbit_script: PathBuf,
    #[arg(long, default_value = "stompgate-bench")]
    rabbit_name: String,
    /// Servers to run, of stompgate, webstomp, ceiling.
    #[arg(
        long,
        default_value = "stompgate,webstomp,ceiling",
        value_delimiter = ','
    )]
    servers: Vec<String>,
    /// Ceiling: one WebSocket message per frame instead of one per batch.
    #[arg(long)]
    no_coalesce: bool,
    /// Where results JSON, SVG and server logs go.
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
    #[arg(long, default_value_t = 4)]
    source_ips: usize,
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
}

#[derive(Debug, Args)]
struct SmokeArgs {
    /// Gateway binary to spawn on the machine's broker.
    #[arg(long, default_value = "target/debug/stompgate")]
    gateway_bin: PathBuf,
    /// Configuration file for the spawned gateway [default: one with user
    /// guest/guest and no per-session frame rate limit].
    #[arg(long)]
    gateway_config: Option<PathBuf>,
    /// Use a running gateway at this URL instead of spawning one.
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp: String,
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 200)]
    idle_sessions: usize,
    #[arg(long, default_value_t = 20)]
    send_sessions: usize,
    /// Where the spawned gateway's log goes.
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
}

#[derive(Debug, Args)]
struct SockjsArgs {
    /// The gateway binary to spawn (with [sockjs] enabled).
    #[arg(long, default_value = "target/release/stompgate")]
    gateway_bin: PathBuf,
    #[arg(long, default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp: String,
    /// Fan-out subscribers per transport (0: no fan-out).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Idle sessions per transport (0: no idle measurement).
    #[arg(long, default_value_t = 1000)]
    idle_sessions: usize,
    /// How long the idle sessions are held before RSS is read.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// Duration of each fan-out phase (max rate, then fixed rate).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Rate of the latency phase, msgs/s.
    #[arg(long, default_value_t = 10.0)]
    fixed_rate: f64,
    /// Max rate: messages in flight (published, not yet seen by the slowest
    /// subscriber).
    #[arg(long, default_value_t = 128)]
    window: u64,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    max_age: Duration,
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    max_drain: Duration,
    #[arg(long, default_value_t = 4)]
    source_ips: usize,
    /// Session setups in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Where the gateway's configuration and log go.
    #[arg(long, default_value = "bench-results/sockjs")]
    out_dir: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScaleTargetArg {
    /// stompgate (target/release/stompgate) on the machine's broker.
    Stompgate,
    /// RabbitMQ's Web-STOMP on a private node (scripts/private-rabbitmq.sh).
    Webstomp,
}

#[derive(Debug, Args)]
struct ScaleArgs {
    #[arg(long, value_enum, default_value = "stompgate")]
    target: ScaleTargetArg,
    /// Sessions in all, each subscribed to /topic/scale.<run>.<i>.
    #[arg(long, default_value_t = 15_000)]
    sessions: usize,
    /// Sessions that are distinct users (logins u<i>) also subscribed to
    /// /user/queue/scale (Web-STOMP: /exchange/stompgate.user/u<i>.scale).
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// Sessions also consuming /queue/scale.<run> (one message each).
    #[arg(long, default_value_t = 200)]
    queue_consumers: usize,
    /// The gateway binary to spawn.
    #[arg(long, default_value = "target/release/stompgate")]
    gateway_bin: PathBuf,
    /// Configuration file for the gateway [default: one written with guest
    /// and the users, and the [amqp] sizes below]; its [amqp] sizes must
    /// match the ones given here.
    #[arg(long)]
    gateway_config: Option<PathBuf>,
    /// The machine's broker, for stompgate.
    #[arg(long, default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp: String,
    /// amqp.plane_queues of the gateway (and the number of queues it must own).
    #[arg(long, default_value_t = 4)]
    plane_queues: usize,
    #[arg(long, default_value_t = 4)]
    publish_channels: usize,
    #[arg(long, default_value_t = 8)]
    consumer_channels: usize,
    /// Channels allowed above plane_queues*2 + publish + consumer + 1.
    #[arg(long, default_value_t = 2)]
    channel_slack: usize,
    #[arg(long, default_value = "scripts/private-rabbitmq.sh")]
    rabbit_script: PathBuf,
    /// Private node name for --target webstomp.
    #[arg(long, default_value = "sg-scale")]
    rabbit_name: String,
    /// AMQP port of the private node; Web-STOMP, distribution and STOMP
    /// ports are +10000, +20000 and +56000 (5710: 15710, 25710, 61710).
    #[arg(long, default_value_t = 5710)]
    rabbit_port: u16,
    /// Where the gateway's configuration and log go.
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
    #[arg(long, default_value_t = 4)]
    source_ips: usize,
    /// Handshakes + CONNECT + SUBSCRIBEs in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Bound on one session's setup.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    setup_timeout: Duration,
    /// Bound on all deliveries and SEND receipts after the sends.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    deliver_timeout: Duration,
    /// The gateway's amqp.binding_mode: per-key, wildcard or auto.
    #[arg(long)]
    binding_mode: Option<String>,
    /// Filter phase: messages/s published to keys nobody has (0: none);
    /// prints the gateway's CPU and bytes read for them.
    #[arg(long, default_value_t = 0)]
    filter_rate: u32,
    #[arg(long, default_value_t = 5.0)]
    filter_secs: f64,
    /// Run the gateway on the private node (--rabbit-name, --rabbit-port),
    /// SIGKILL it after the sends and start it again: prints the time from
    /// the node accepting connections to the first delivery and to every
    /// binding confirmed, and checks every message sent again.
    #[arg(long)]
    restart: bool,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PlotArgs {
    /// A results JSON written by `compare`.
    json: PathBuf,
    /// The SVG to write [default: the JSON's path with .svg].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IdleWorkerArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    login: String,
    #[arg(long)]
    passcode: String,
    #[arg(long)]
    vhost: String,
    #[arg(long)]
    sessions: usize,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    source_ips: usize,
    #[arg(long)]
    source_offset: usize,
    #[arg(long)]
    concurrency: usize,
    #[arg(long)]
    setup_timeout_ms: u64,
    #[arg(long)]
    label: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stompgate-bench: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    util::now_ns();
    let code = runtime.block_on(run(cli.command));
    // Sessions still closing must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

async fn run(command: Cmd) -> ExitCode {
    match command {
        Cmd::Fanout(a) => fanout_cmd(a).await,
        Cmd::Idle(a) => idle_cmd(a).await,
        Cmd::Send(a) => send_cmd(a).await,
        Cmd::Ceiling(a) => {
            let cfg = ceiling::CeilingConfig {
                listen: a.listen,
                max_pending: a.max_pending_kib * 1024,
                coalesce: !a.no_coalesce,
            };
            match ceiling::run_ceiling(cfg).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("ceiling: {e}")),
            }
        }
        Cmd::Compare(a) => compare_cmd(a).await,
        Cmd::Scale(a) => scale_cmd(a).await,
        Cmd::Sockjs(a) => sockjs_cmd(a).await,
        Cmd::Resume(a) => resume_cmd(a).await,
        Cmd::Plot(a) => {
            let text = match std::fs::read_to_string(&a.json) {
                Ok(t) => t,
                Err(e) => return fail(format!("read {}: {e}", a.json.display())),
            };
            let report: compare::CompareReport = match serde_json::from_str(&text) {
                Ok(r) => r,
                Err(e) => return fail(format!("{}: {e}", a.json.display())),
            };
            let out = a.out.unwrap_or_else(|| a.json.with_extension("svg"));
            match std::fs::write(&out, svg::plot(&report)) {
                Ok(()) => {
                    println!("wrote {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("write {}: {e}", out.display())),
            }
        }
        Cmd::Smoke(a) => {
            let cfg = smoke::SmokeConfig {
                gateway_bin: a.gateway_bin,
                gateway_config: a.gateway_config,
                url: a.url,
                amqp: a.amqp,
                subscribers: a.subscribers,
                duration: a.duration,
                idle_sessions: a.idle_sessions,
                send_sessions: a.send_sessions,
                out_dir: a.out_dir,
                sessions: SessionOpts {
                    source_ips: 4,
                    source_offset: 0,
                    concurrency: 64,
                    setup_timeout: Duration::from_secs(30),
                    label: "smoke".into(),
                },
            };
            if smoke::run_smoke(&cfg).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Cmd::IdleWorker(a) => {
            let target = match Target::resolve(&a.url, &a.login, &a.passcode, &a.vhost).await {
                Ok(t) => t,
                Err(e) => {
                    println!("READY 0 {} {e}", a.sessions);
                    return ExitCode::from(1);
                }
            };
            let opts = SessionOpts {
                source_ips: a.source_ips,
                source_offset: a.source_offset,
                concurrency: a.concurrency,
                setup_timeout: Duration::from_millis(a.setup_timeout_ms),
                label: a.label,
            };
            idle::idle_worker(&target, a.sessions, &a.topic, &opts).await;
            ExitCode::SUCCESS
        }
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("stompgate-bench: {message}");
    ExitCode::from(1)
}

fn write_json<T: Serialize>(path: Option<&Path>, value: &T) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Warns when this process cannot hold `sockets` more open files.
fn check_fd_limit(sockets: usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        if sockets + 64 > soft {
            eprintln!(
                "warning: {sockets} sockets but the open-file limit is {soft} (ulimit -n; or split with idle --procs)"
            );
        }
    }
}

async fn fanout_cmd(a: FanoutArgs) -> ExitCode {
    if a.body_bytes < wire::MIN_BODY {
        return fail(format!("--body-bytes must be at least {}", wire::MIN_BODY));
    }
    check_fd_limit(a.subscribers + 2);
    let target = match a.conn.target().await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let via = match a.publish {
        Via::Amqp => PublishVia::Amqp {
            url: a.amqp.clone(),
            confirms: !a.no_confirms,
        },
        Via::Stomp => PublishVia::Stomp {
            target: target.clone(),
        },
    };
    let cfg = fanout::FanoutConfig {
        target,
        via,
        subscribers: a.subscribers,
        duration: a.duration,
        rate: a.rate,
        window: a.window.max(1),
        max_age: a.max_age,
        body_bytes: a.body_bytes,
        drain: a.drain,
        max_drain: a.max_drain,
        pid: a.pid,
        topic: a.topic.unwrap_or_else(|| unique_name("bench")),
        sessions: a.conn.session_opts("fanout"),
    };
    match fanout::run_fanout(&cfg).await {
        Ok(report) => {
            report.print();
            if let Err(e) = write_json(a.json.as_deref(), &report) {
                return fail(e);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn idle_cmd(a: IdleArgs) -> ExitCode {
    if a.procs <= 1 {
        check_fd_limit(a.subscribers);
    }
    let target = match a.conn.target().await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let cfg = idle::IdleConfig {
        target,
        subscribers: a.subscribers,
        hold: a.hold,
        pid: a.pid,
        procs: a.procs,
        topic: a.topic.unwrap_or_else(|| unique_name("idle")),
        sessions: a.conn.session_opts("idle"),
    };
    let report = match idle::run_idle(&cfg).await {
        Ok(report) => report,
        Err(e) => return fail(e),
    };
    report.print();
    let mut reports = vec![report];
    if a.ceiling {
        // Same sessions, same process, right after: memory per session of
        // the raw WebSocket server for comparison.
        let dir = std::env::temp_dir().join(format!("stompgate-bench-idle-{}", std::process::id()));
        let ceiling = match servers::spawn_ceiling(&dir, true).await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let target = match Target::resolve(&ceiling.url, "guest", "guest", "/").await {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        let cfg = idle::IdleConfig {
            target,
            pid: Some(ceiling.pid),
            topic: unique_name("idle"),
            ..cfg
        };
        let result = idle::run_idle(&cfg).await;
        ceiling.stop().await;
        match result {
            Ok(r) => {
                r.print();
                let per = |r: &idle::IdleReport| r.rss.as_ref().and_then(|x| x.per_session_kib);
                if let (Some(g), Some(c)) = (per(&reports[0]), per(&r)) {
                    println!(
                        "RSS per idle session: server {g:.2} KiB, ceiling {c:.2} KiB, ratio {:.2}x",
                        g / c
                    );
                }
                reports.push(r);
            }
            Err(e) => return fail(e),
        }
    }
    let written = match reports.as_slice() {
        [one] => write_json(a.json.as_deref(), one),
        all => write_json(a.json.as_deref(), &all),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn send_cmd(a: SendArgs) -> ExitCode {
    if a.body_bytes < wire::MIN_BODY {
        return fail(format!("--body-bytes must be at least {}", wire::MIN_BODY));
    }
    check_fd_limit(a.sessions);
    let target = match a.conn.target().await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let cfg = send::SendConfig {
        target,
        sessions: a.sessions,
        duration: a.duration,
        window: a.window.max(1),
        body_bytes: a.body_bytes,
        topic: a.topic.unwrap_or_else(|| unique_name("send")),
        source_ips: a.conn.source_ips,
        label: "send".into(),
    };
    let report = send::run_send(&cfg).await;
    report.print();
    if let Err(e) = write_json(a.json.as_deref(), &report) {
        return fail(e);
    }
    ExitCode::SUCCESS
}

async fn compare_cmd(a: CompareArgs) -> ExitCode {
    if a.body_bytes < wire::MIN_BODY {
        return fail(format!("--body-bytes must be at least {}", wire::MIN_BODY));
    }
    let subscribers = a.subscribers;
    if let Some(max) = subscribers.iter().max() {
        check_fd_limit(*max + 16);
    }
    let cfg = compare::CompareConfig {
        subscribers,
        duration: a.duration,
        fixed_rate: a.fixed_rate,
        body_bytes: a.body_bytes,
        window: a.window.max(1),
        max_age: a.max_age,
        drain: a.drain,
        max_drain: a.max_drain,
        confirms: !a.no_confirms,
        gateway_bin: a.gateway_bin,
        gateway_config: a.gateway_config,
        amqp: a.amqp,
        rabbit_script: a.rabbit_script,
        rabbit_name: a.rabbit_name,
        out_dir: a.out_dir.clone(),
        servers: a.servers,
        coalesce: !a.no_coalesce,
        sessions: SessionOpts {
            source_ips: a.source_ips,
            source_offset: 0,
            concurrency: a.concurrency,
            setup_timeout: Duration::from_secs(60),
            label: "compare".into(),
        },
    };
    match compare::run_compare(&cfg).await {
        Ok(report) => {
            report.print();
            match report.write(&a.out_dir) {
                Ok((json, svg)) => println!("wrote {} and {}", json.display(), svg.display()),
                Err(e) => return fail(e),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn scale_cmd(a: ScaleArgs) -> ExitCode {
    check_fd_limit(a.sessions + 16);
    let cfg = scale::ScaleConfig {
        target: match a.target {
            ScaleTargetArg::Stompgate => scale::ScaleTarget::Stompgate,
            ScaleTargetArg::Webstomp => scale::ScaleTarget::Webstomp,
        },
        sessions: a.sessions,
        users: a.users.min(a.sessions),
        queue_consumers: a.queue_consumers.min(a.sessions),
        gateway_bin: a.gateway_bin,
        gateway_config: a.gateway_config,
        amqp: a.amqp,
        plane_queues: a.plane_queues,
        publish_channels: a.publish_channels,
        consumer_channels: a.consumer_channels,
        channel_slack: a.channel_slack,
        rabbit_script: a.rabbit_script,
        rabbit_name: a.rabbit_name,
        rabbit_env: scale::rabbit_env(a.rabbit_port),
        out_dir: a.out_dir,
        source_ips: a.source_ips,
        concurrency: a.concurrency,
        setup_timeout: a.setup_timeout,
        deliver_timeout: a.deliver_timeout,
        binding_mode: a.binding_mode,
        filter_rate: a.filter_rate,
        filter_secs: a.filter_secs,
        restart: a.restart,
    };
    match scale::run_scale(&cfg).await {
        Ok(report) => {
            report.print();
            if let Err(e) = write_json(a.json.as_deref(), &report) {
                return fail(e);
            }
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(format!("scale: {e}")),
    }
}

#[derive(Debug, Args)]
struct ResumeArgs {
    #[arg(long, default_value = "target/release/stompgate")]
    gateway_bin: PathBuf,
    #[arg(long, default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp: String,
    /// Where the gateway's configuration and log go.
    #[arg(long, default_value = "target/bench-resume")]
    out_dir: PathBuf,
    #[arg(long, default_value_t = 5000)]
    clients: usize,
    /// Topics the clients are spread over (one stream holds them all).
    #[arg(long, default_value_t = 100)]
    topics: usize,
    /// Messages each client misses (published per topic while away).
    #[arg(long, default_value_t = 20)]
    missed: usize,
    /// Subscribers of a live topic of the same stream, connected throughout.
    #[arg(long, default_value_t = 200)]
    live: usize,
    /// Messages per second published to the live topic.
    #[arg(long, default_value_t = 100.0)]
    live_rate: f64,
    /// history.memory_messages of the gateway (resumes older than that
    /// read the stream).
    #[arg(long, default_value_t = 1000)]
    memory_messages: usize,
    /// Handshakes + CONNECT + SUBSCRIBE in flight at once.
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    #[arg(long, default_value_t = 4)]
    source_ips: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

async fn resume_cmd(a: ResumeArgs) -> ExitCode {
    check_fd_limit(a.clients + a.live + 64);
    let cfg = resume::ResumeConfig {
        gateway_bin: a.gateway_bin,
        amqp: a.amqp,
        out_dir: a.out_dir,
        clients: a.clients,
        topics: a.topics.max(1),
        missed: a.missed.max(1),
        live: a.live,
        live_rate: a.live_rate,
        memory_messages: a.memory_messages,
        concurrency: a.concurrency,
        source_ips: a.source_ips,
    };
    match resume::run_resume(&cfg).await {
        Ok(report) => {
            println!(
                "resume: {} clients on {} topics, {} missed each ({} stream messages)",
                report.clients,
                report.topics,
                report.missed_per_client,
                report.stream_messages_missed
            );
            println!(
                "  all live after {:.2} s (client p50 {:.2} s, p99 {:.2} s); {} messages resumed; {} failed, {} wrong",
                report.seconds_until_all_live,
                report.p50_client_seconds,
                report.p99_client_seconds,
                report.resumed_messages,
                report.failed_clients,
                report.bad_clients
            );
            println!(
                "  gateway on the broker: {} channels / {} queues before, {} / {} after",
                report.channels_before,
                report.queues_before,
                report.channels_after,
                report.queues_after
            );
            println!(
                "  live fan-out to {} subscribers at {}/s: {:.0} deliveries/s before, {:.0} during the storm; gateway CPU during the storm {}",
                report.live_subscribers,
                report.live_rate,
                report.live_deliveries_per_s_before,
                report.live_deliveries_per_s_during,
                report
                    .gateway_cpu_seconds_storm
                    .map(|c| format!("{c:.2} s"))
                    .unwrap_or_else(|| "?".into())
            );
            for e in &report.errors {
                println!("  error: {e}");
            }
            if let Err(e) = write_json(a.json.as_deref(), &report) {
                return fail(e);
            }
            let broken = report.failed_clients > 0
                || report.bad_clients > 0
                || report.channels_after != report.channels_before
                || report.queues_after != report.queues_before;
            if broken {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(e),
    }
}

async fn sockjs_cmd(a: SockjsArgs) -> ExitCode {
    if a.body_bytes < wire::MIN_BODY {
        return fail(format!("--body-bytes must be at least {}", wire::MIN_BODY));
    }
    // Two connections per session at setup (stream and send), both sets of
    // idle sessions open at once.
    check_fd_limit(2 * a.idle_sessions.max(a.subscribers) + 64);
    let cfg = sockjs::SockjsConfig {
        gateway_bin: a.gateway_bin,
        amqp: a.amqp,
        out_dir: a.out_dir,
        subscribers: a.subscribers,
        idle_sessions: a.idle_sessions,
        hold: a.hold,
        duration: a.duration,
        fixed_rate: a.fixed_rate,
        window: a.window.max(1),
        max_age: a.max_age,
        body_bytes: a.body_bytes,
        drain: a.drain,
        max_drain: a.max_drain,
        sessions: SessionOpts {
            source_ips: a.source_ips,
            source_offset: 0,
            concurrency: a.concurrency,
            setup_timeout: Duration::from_secs(60),
            label: "sockjs".into(),
        },
    };
    match sockjs::run_sockjs(&cfg).await {
        Ok(report) => {
            report.print();
            if let Err(e) = write_json(a.json.as_deref(), &report) {
                return fail(e);
            }
            if report.clean() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "stompgate-bench: sockjs: loss, duplicates or failed sessions (see above)"
                );
                ExitCode::from(1)
            }
        }
        Err(e) => fail(format!("sockjs: {e}")),
    }
}
