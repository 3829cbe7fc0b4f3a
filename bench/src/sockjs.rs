//! The `sockjs` scenario: STOMP over SockJS xhr-streaming (the fallback
//! most browsers without WebSocket end up on) next to STOMP over WebSocket,
//! against one gateway process:
//!
//! 1. memory per idle session: N idle WebSocket sessions, then N idle
//!    xhr-streaming sessions (each with its stream open, as a browser
//!    keeps it), the gateway's RSS read before and after each set, while
//!    both sets stay open (so the second set cannot reuse memory the first
//!    one freed);
//! 2. fan-out: N subscribers of one topic over WebSocket, then N over
//!    xhr-streaming (fresh sessions, same publisher settings): a max-rate
//!    phase (messages/s delivered, gateway CPU per delivery) and a
//!    fixed-rate phase (latency at a light load), loss and duplicates
//!    counted per message as in `fanout`.
//!
//! The xhr-streaming client is the protocol as sockjs-client speaks it:
//! `POST <prefix>/<server>/<session>/xhr_streaming` answered by a chunked
//! stream of `o`, `h`, `a[...]` lines after a 2 KiB prelude, a new POST on
//! the same keep-alive connection whenever the gateway ends the response
//! (`sockjs.response_limit_bytes`), and `xhr_send` POSTs (a connection each,
//! closed) for CONNECT, SUBSCRIBE and DISCONNECT.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use memchr::memchr;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::client::Target;
use crate::fanout::FanoutResult;
use crate::publish::{run_phase, PhasePlan, PublishVia, Publisher};
use crate::servers::{spawn_gateway, GATEWAY_CONFIG};
use crate::sessions::{SessionOpts, SessionSet, TaskArgs, Transport, DEAD, FAILED, LIVE};
use crate::stats::Tracker;
use crate::util::{now_ns, thousands, unique_name, CpuMark, RssSampler};
use crate::wire::{self, FrameView, Split};

// ---------------------------------------------------------------------------
// The xhr-streaming client

async fn tcp(addr: SocketAddr, local: Ipv4Addr) -> Result<TcpStream, String> {
    let stream = if addr.is_ipv4() {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(local), 0))
            .map_err(|e| format!("bind {local}: {e}"))?;
        socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr} from {local}: {e}"))?
    } else {
        TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Reads an HTTP response head from `stream` into `raw` (which keeps what
/// came after it); (status, head in lower case).
async fn read_head(stream: &mut TcpStream, raw: &mut Vec<u8>) -> Result<(u16, String), String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            raw.drain(..end + 4);
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line: {head:.80}"))?;
            return Ok((status, head));
        }
        if raw.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// One `xhr_send`: `frames` as SockJS' JSON array, on a connection of its
/// own; 204 expected.
async fn xhr_send(
    addr: SocketAddr,
    local: Ipv4Addr,
    path: &str,
    frames: &[&str],
) -> Result<(), String> {
    let body = serde_json::to_string(frames).map_err(|e| e.to_string())?;
    let mut stream = tcp(addr, local).await?;
    let request = format!(
        "POST {path}/xhr_send HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("xhr_send: write: {e}"))?;
    let mut raw = Vec::new();
    let (status, _) = read_head(&mut stream, &mut raw).await?;
    if status != 204 && status != 200 {
        return Err(format!("xhr_send: HTTP {status}"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

/// A receiving xhr_streaming request and what it delivered so far.
struct XhrStream {
    addr: SocketAddr,
    local: Ipv4Addr,
    path: String,
    stream: TcpStream,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    chunk: Chunk,
    /// De-chunked body: SockJS frames, one a line.
    lines: Vec<u8>,
    /// STOMP bytes from `a[...]` messages not yet a whole frame.
    stomp: Vec<u8>,
    opened: bool,
    /// A response head was just read: what came with it is not handled yet.
    fresh: bool,
    /// Responses (streams) this session used so far.
    responses: u64,
}

impl XhrStream {
    async fn open(addr: SocketAddr, local: Ipv4Addr, path: String) -> Result<XhrStream, String> {
        let stream = tcp(addr, local).await?;
        let mut x = XhrStream {
            addr,
            local,
            path,
            stream,
            raw: Vec::new(),
            chunk: Chunk::Size,
            lines: Vec::new(),
            stomp: Vec::new(),
            opened: false,
            fresh: false,
            responses: 0,
        };
        x.request().await?;
        Ok(x)
    }

    /// POSTs xhr_streaming on the current connection and reads the head.
    async fn request(&mut self) -> Result<(), String> {
        let request = format!(
            "POST {}/xhr_streaming HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            self.path, self.addr
        );
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("xhr_streaming: write: {e}"))?;
        self.raw.clear();
        let (status, head) = read_head(&mut self.stream, &mut self.raw).await?;
        if status != 200 {
            return Err(format!("xhr_streaming: HTTP {status}"));
        }
        if !head.contains("transfer-encoding: chunked") {
            return Err("xhr_streaming: the response is not chunked".into());
        }
        self.chunk = Chunk::Size;
        self.fresh = true;
        self.responses += 1;
        Ok(())
    }

    /// The next stream after the gateway ended one: on the same keep-alive
    /// connection, or a new one.
    async fn again(&mut self) -> Result<(), String> {
        if self.request().await.is_ok() {
            return Ok(());
        }
        self.stream = tcp(self.addr, self.local).await?;
        self.request().await
    }

    /// Takes bytes read from the socket; true when the response ended.
    fn feed_raw(&mut self, data: &[u8]) -> Result<bool, String> {
        self.raw.extend_from_slice(data);
        let mut pos = 0;
        let raw = &self.raw;
        let done = loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(eol) = raw[pos..].windows(2).position(|w| w == b"\r\n") else {
                        break false;
                    };
                    let line = std::str::from_utf8(&raw[pos..pos + eol]).unwrap_or("");
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad chunk size {line:?}"))?;
                    pos += eol + 2;
                    self.chunk = if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let n = left.min(raw.len() - pos);
                    if n == 0 {
                        break false;
                    }
                    self.lines.extend_from_slice(&raw[pos..pos + n]);
                    pos += n;
                    self.chunk = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd => {
                    if raw.len() - pos < 2 {
                        break false;
                    }
                    pos += 2;
                    self.chunk = Chunk::Size;
                }
                Chunk::Trailer => {
                    let Some(eol) = raw[pos..].windows(2).position(|w| w == b"\r\n") else {
                        break false;
                    };
                    pos += eol + 2;
                    if eol == 0 {
                        self.chunk = Chunk::Done;
                    }
                }
                Chunk::Done => break true,
            }
        };
        self.raw.drain(..pos);
        Ok(done)
    }

    /// Handles the whole SockJS frames received so far, handing STOMP frames
    /// to `on_frame`.
    fn take_frames(&mut self, on_frame: &mut impl FnMut(FrameView<'_>)) -> Result<(), String> {
        let mut pos = 0;
        while let Some(eol) = memchr(b'\n', &self.lines[pos..]) {
            let line = &self.lines[pos..pos + eol];
            pos += eol + 1;
            match line.first() {
                Some(b'a') => {
                    let messages: Vec<String> = serde_json::from_slice(&line[1..])
                        .map_err(|e| format!("bad SockJS message frame: {e}"))?;
                    for m in messages {
                        self.stomp.extend_from_slice(m.as_bytes());
                    }
                    let mut used = 0;
                    loop {
                        match wire::split(&self.stomp[used..]) {
                            Split::Frame(frame, n) => {
                                on_frame(frame);
                                used += n;
                            }
                            Split::Heartbeats(n) => used += n,
                            Split::Incomplete => break,
                            Split::Invalid(why) => {
                                return Err(format!("server sent an invalid frame: {why}"))
                            }
                        }
                    }
                    self.stomp.drain(..used);
                }
                Some(b'o') => self.opened = true,
                Some(b'h') | None => {}
                Some(b'c') => {
                    return Err(format!(
                        "SockJS session closed: {}",
                        String::from_utf8_lossy(&line[1..])
                    ))
                }
                Some(_) => {
                    return Err(format!(
                        "unexpected SockJS frame {:.40}",
                        String::from_utf8_lossy(line)
                    ))
                }
            }
        }
        self.lines.drain(..pos);
        Ok(())
    }

    /// Reads once from the socket and handles what came; true when the
    /// response ended (the caller asks for the next with [`Self::again`]).
    async fn read_once(
        &mut self,
        buf: &mut [u8],
        on_frame: &mut impl FnMut(FrameView<'_>),
    ) -> Result<bool, String> {
        let n = if self.fresh {
            // What came with the response head first.
            self.fresh = false;
            0
        } else {
            let n = self
                .stream
                .read(buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the gateway closed the stream".into());
            }
            n
        };
        let ended = self.feed_raw(&buf[..n])?;
        self.take_frames(on_frame)?;
        Ok(ended)
    }
}

/// Opens the SockJS session (stream, CONNECT, SUBSCRIBE with a receipt)
/// and waits for the receipt.
async fn setup(
    target: &Target,
    local: Ipv4Addr,
    path: &str,
    destination: &str,
) -> Result<XhrStream, String> {
    let mut x = XhrStream::open(target.addr, local, path.to_owned()).await?;
    let mut buf = vec![0u8; 8192];
    while !x.opened {
        if x.read_once(&mut buf, &mut |_| {}).await? {
            x.again().await?;
        }
    }
    let connect = wire::connect_frame(&target.login, &target.passcode, &target.vhost);
    let subscribe = wire::subscribe_frame("sub-0", destination, "subscribed");
    xhr_send(target.addr, local, path, &[&connect, &subscribe]).await?;
    let mut subscribed = false;
    let mut error = None;
    while !subscribed {
        let ended = x
            .read_once(&mut buf, &mut |f| {
                if f.is("RECEIPT") {
                    subscribed = true;
                } else if f.is("ERROR") {
                    error = Some(f.describe_error());
                }
            })
            .await?;
        if let Some(e) = error {
            return Err(e);
        }
        if ended {
            x.again().await?;
        }
    }
    Ok(x)
}

/// One STOMP session over xhr-streaming, counted like a WebSocket
/// subscriber (see `sessions::session_task`).
pub async fn xhr_streaming_task(task: TaskArgs, prefix: String) {
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
    let path = format!(
        "{prefix}/{:03}/{}",
        index % 1000,
        unique_name(&format!("b{index}")).replace('-', "")
    );
    let setup = async {
        let _permit = semaphore.acquire().await.map_err(|e| e.to_string())?;
        tokio::time::timeout(setup_timeout, setup(&target, local, &path, &destination))
            .await
            .map_err(|_| format!("setup took longer than {} ms", setup_timeout.as_millis()))?
    };
    let mut x = match setup.await {
        Ok(x) => x,
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
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut server_error: Option<String> = None;
        let read = if x.fresh {
            // What came with the response head first.
            x.fresh = false;
            Ok(0)
        } else {
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
                    continue;
                }
                read = x.stream.read(&mut buf) => match read {
                    Ok(0) => Err("the gateway closed the stream".to_owned()),
                    Ok(n) => Ok(n),
                    Err(e) => Err(format!("read: {e}")),
                },
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let result = x.feed_raw(&buf[..n]).and_then(|ended| {
            x.take_frames(&mut |frame| {
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
            })?;
            Ok(ended)
        });
        slot.progress.store(tracker.progress(), Ordering::Relaxed);
        let ended = match result {
            Ok(ended) => ended,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        if let Some(e) = server_error {
            failure = Some(e);
            break;
        }
        // Outside the select: a new request is not cancelled half-way.
        if ended {
            if let Err(e) = x.again().await {
                failure = Some(e);
                break;
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
        None => {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                xhr_send(target.addr, local, &path, &[wire::DISCONNECT]),
            )
            .await;
        }
    }
}

// ---------------------------------------------------------------------------
// The scenario

#[derive(Debug, Clone)]
pub struct SockjsConfig {
    pub gateway_bin: PathBuf,
    pub amqp: String,
    pub out_dir: PathBuf,
    pub subscribers: usize,
    pub idle_sessions: usize,
    pub hold: Duration,
    pub duration: Duration,
    pub fixed_rate: f64,
    pub window: u64,
    pub max_age: Duration,
    pub body_bytes: usize,
    pub drain: Duration,
    pub max_drain: Duration,
    pub sessions: SessionOpts,
}

/// Idle sessions of one transport.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleRow {
    pub transport: String,
    pub requested: usize,
    pub live: usize,
    pub failed: usize,
    /// Lost while held (closed by the gateway).
    pub dropped: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_session: Option<f64>,
}

/// Fan-out over one transport.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutRow {
    pub transport: String,
    pub subscribers: usize,
    pub live: usize,
    pub failed: usize,
    pub setup_secs: f64,
    pub rss_after_connect_kib: Option<u64>,
    /// After both phases (the sessions still open).
    pub rss_after_phases_kib: Option<u64>,
    pub max: FanoutResult,
    pub fixed: FanoutResult,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SockjsReport {
    pub gateway_pid: u32,
    pub idle: Vec<IdleRow>,
    pub fanout: Vec<FanoutRow>,
    pub errors: Vec<String>,
}

impl SockjsReport {
    /// Nothing lost, duplicated or malformed, every session up and kept.
    pub fn clean(&self) -> bool {
        self.errors.is_empty()
            && self
                .idle
                .iter()
                .all(|r| r.failed == 0 && r.dropped == 0 && r.live == r.requested)
            && self.fanout.iter().all(|r| {
                r.failed == 0 && r.live == r.subscribers && r.max.clean() && r.fixed.clean()
            })
    }

    pub fn print(&self) {
        let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
        let opt = |v: Option<f64>, digits: usize| {
            v.map(|v| format!("{v:.digits$}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "sockjs: STOMP over WebSocket and over SockJS xhr-streaming, one gateway (pid {})",
            self.gateway_pid
        );
        if !self.idle.is_empty() {
            println!("  idle sessions (subscribed, held open)");
            for r in &self.idle {
                println!(
                    "    {:<14} {:>6}/{:<6} live  RSS {} -> {} KiB  {} KiB/session  (failed {}, dropped {})",
                    r.transport,
                    r.live,
                    r.requested,
                    r.rss_before_kib.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    r.rss_after_kib.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    opt(r.kib_per_session, 1),
                    r.failed,
                    r.dropped
                );
            }
        }
        if self.fanout.is_empty() {
            return;
        }
        let row = |name: &str, f: &dyn Fn(&FanoutRow) -> String| {
            let cells: Vec<String> = self
                .fanout
                .iter()
                .map(|r| format!("{:>16}", f(r)))
                .collect();
            println!("  {name:<34}{}", cells.join(""));
        };
        row("fan-out", &|r| r.transport.clone());
        row("subscribers live", &|r| {
            format!("{}/{}", r.live, r.subscribers)
        });
        row("setup s", &|r| format!("{:.1}", r.setup_secs));
        row("max rate: delivered msg/s", &|r| {
            thousands(r.max.delivered_rate)
        });
        row("max rate: steady msg/s", &|r| {
            r.max
                .steady_rate
                .map(thousands)
                .unwrap_or_else(|| "-".into())
        });
        row("max rate: latency p50/p99 ms", &|r| {
            format!("{}/{}", ms(r.max.latency.p50_us), ms(r.max.latency.p99_us))
        });
        row("max rate: gateway CPU s", &|r| opt(r.max.server_cpu_s, 2));
        row("max rate: gateway µs/delivery", &|r| {
            opt(r.max.server_cpu_us_per_delivery, 2)
        });
        row("fixed rate: msg/s published", &|r| {
            r.fixed
                .target_rate
                .map(|v| format!("{v}"))
                .unwrap_or_default()
        });
        row("fixed rate: delivered msg/s", &|r| {
            thousands(r.fixed.delivered_rate)
        });
        row("fixed rate: latency p50/p99 ms", &|r| {
            format!(
                "{}/{}",
                ms(r.fixed.latency.p50_us),
                ms(r.fixed.latency.p99_us)
            )
        });
        row("fixed rate: gateway CPU s", &|r| {
            opt(r.fixed.server_cpu_s, 2)
        });
        row("gateway RSS after connect KiB", &|r| {
            r.rss_after_connect_kib
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        });
        row("gateway RSS after phases KiB", &|r| {
            r.rss_after_phases_kib
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        });
        row("loss/duplicates (max, fixed)", &|r| {
            format!(
                "{}/{}, {}/{}",
                r.max.loss, r.max.duplicates, r.fixed.loss, r.fixed.duplicates
            )
        });
        row("reorders/malformed/disconnected", &|r| {
            format!(
                "{}/{}/{}",
                r.max.reorders + r.fixed.reorders,
                r.max.malformed + r.fixed.malformed,
                r.max.disconnected + r.fixed.disconnected
            )
        });
        for r in &self.fanout {
            for e in &r.errors {
                println!("  {} error: {e}", r.transport);
            }
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
    }
}

/// The gateway configuration: the benchmark's, with SockJS on and its
/// session bounds out of the way.
fn write_config(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join("stompgate-sockjs.toml");
    let text = format!(
        "{GATEWAY_CONFIG}\n[sockjs]\nenabled = true\nmax_sessions = 1000000\nmax_concurrent_polls = 1000000\n"
    );
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

const TRANSPORTS: [&str; 2] = ["websocket", "xhr-streaming"];

fn transport(name: &str) -> Transport {
    match name {
        "xhr-streaming" => Transport::XhrStreaming {
            prefix: "/sockjs".into(),
        },
        _ => Transport::WebSocket,
    }
}

pub async fn run_sockjs(cfg: &SockjsConfig) -> Result<SockjsReport, String> {
    let config = write_config(&cfg.out_dir)?;
    let server = spawn_gateway(&cfg.gateway_bin, &cfg.amqp, &cfg.out_dir, Some(&config)).await?;
    let result = run_against(cfg, &server.url, server.pid).await;
    server.stop().await;
    result
}

async fn run_against(cfg: &SockjsConfig, url: &str, pid: u32) -> Result<SockjsReport, String> {
    let target = Target::resolve(url, "guest", "guest", "/").await?;
    let sampler = RssSampler::start(pid);
    let mut report = SockjsReport {
        gateway_pid: pid,
        ..Default::default()
    };

    // 1. Idle sessions, both sets open at the end.
    if cfg.idle_sessions > 0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut sets = Vec::new();
        for name in TRANSPORTS {
            let before = sampler.now();
            let topic = unique_name("sockjs-idle");
            let opts = SessionOpts {
                label: format!("idle {name}"),
                ..cfg.sessions.clone()
            };
            let set = SessionSet::open_over(
                &target,
                cfg.idle_sessions,
                &format!("/topic/{topic}"),
                &opts,
                transport(name),
            )
            .await;
            tokio::time::sleep(cfg.hold).await;
            let after = sampler.now();
            let (live, failed, dropped) = set.counts();
            eprintln!("[idle {name}] {live} live, {failed} failed, {dropped} dropped; RSS {before:?} -> {after:?} KiB");
            report.idle.push(IdleRow {
                transport: name.to_owned(),
                requested: cfg.idle_sessions,
                live,
                failed,
                dropped,
                rss_before_kib: before,
                rss_after_kib: after,
                kib_per_session: crate::util::RssReport::per_session(before, after, live),
            });
            for e in set.errors() {
                report.errors.push(format!("idle {name}: {e}"));
            }
            sets.push(set);
        }
        for set in sets {
            set.close().await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // 2. Fan-out, one transport after the other.
    if cfg.subscribers > 0 {
        for name in TRANSPORTS {
            let row = fanout_over(cfg, &target, pid, &sampler, name).await;
            report.fanout.push(row);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    Ok(report)
}

async fn fanout_over(
    cfg: &SockjsConfig,
    target: &Target,
    pid: u32,
    sampler: &RssSampler,
    name: &str,
) -> FanoutRow {
    let topic = unique_name("sockjs-fanout");
    let opts = SessionOpts {
        label: format!("fanout {name}"),
        ..cfg.sessions.clone()
    };
    let sessions = SessionSet::open_over(
        target,
        cfg.subscribers,
        &format!("/topic/{topic}"),
        &opts,
        transport(name),
    )
    .await;
    let (live, failed, _) = sessions.counts();
    let mut row = FanoutRow {
        transport: name.to_owned(),
        subscribers: cfg.subscribers,
        live,
        failed,
        setup_secs: sessions.setup_time.as_secs_f64(),
        ..Default::default()
    };
    if live == 0 {
        row.errors = sessions.errors();
        sessions.close().await;
        return row;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    row.rss_after_connect_kib = sampler.now();
    let via = PublishVia::Amqp {
        url: cfg.amqp.clone(),
        confirms: true,
    };
    let mut publisher = match Publisher::connect(&via, &topic).await {
        Ok(p) => p,
        Err(e) => {
            row.errors.push(e);
            sessions.close().await;
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
        "== {name}: max rate for {:.0} s",
        cfg.duration.as_secs_f64()
    );
    let mark = CpuMark::now(Some(pid));
    let run = run_phase(&mut publisher, &max_plan, &sessions, &opts.label).await;
    row.max = FanoutResult::collect(&sessions, &run, &max_plan).await;
    row.max.set_cpu(&mark, Some(pid));
    let fixed_plan = PhasePlan {
        phase: 1,
        rate: Some(cfg.fixed_rate),
        start_seq: run.end_seq,
        ..max_plan.clone()
    };
    eprintln!(
        "== {name}: {} msg/s for {:.0} s",
        cfg.fixed_rate,
        cfg.duration.as_secs_f64()
    );
    let mark = CpuMark::now(Some(pid));
    let run = run_phase(&mut publisher, &fixed_plan, &sessions, &opts.label).await;
    row.fixed = FanoutResult::collect(&sessions, &run, &fixed_plan).await;
    row.fixed.set_cpu(&mark, Some(pid));
    row.rss_after_phases_kib = sampler.now();
    row.errors = sessions.errors();
    publisher.close().await;
    sessions.close().await;
    row
}
