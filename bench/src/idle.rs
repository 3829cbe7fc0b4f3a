//! The idle scenario: N sessions with one subscription each, held without
//! traffic, to measure what a session costs the server in memory. The
//! sessions may be split over K child processes of this binary (each
//! process may hold at most the per-process file limit of sockets).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::client::Target;
use crate::fanout::opt;
use crate::sessions::{SessionOpts, SessionSet};
use crate::util::{RssReport, RssSampler};

#[derive(Debug, Clone)]
pub struct IdleConfig {
    pub target: Target,
    pub subscribers: usize,
    pub hold: Duration,
    pub pid: Option<u32>,
    pub procs: usize,
    pub topic: String,
    pub sessions: SessionOpts,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub url: String,
    pub topic: String,
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    /// Sessions that ended while held (closed by the server or failed).
    pub lost_while_held: usize,
    pub procs: usize,
    pub setup_secs: f64,
    pub hold_secs: f64,
    /// RSS before connecting, after connecting (end of the hold), peak, and
    /// (after - before) / connected.
    pub rss: Option<RssReport>,
    /// RSS right after the last session subscribed.
    pub rss_right_after_connect_kib: Option<u64>,
    pub errors: Vec<String>,
}

impl IdleReport {
    pub fn print(&self) {
        println!(
            "idle {}: {}/{} sessions subscribed in {:.1} s over {} process(es) ({} failed), held {:.1} s, {} lost while held",
            self.url,
            self.connected,
            self.requested,
            self.setup_secs,
            self.procs,
            self.failed,
            self.hold_secs,
            self.lost_while_held
        );
        if let Some(r) = &self.rss {
            println!(
                "  server RSS (pid {}): before {} KiB, right after connecting {} KiB, end of hold {} KiB, peak {} KiB",
                r.pid,
                opt(r.before_connect_kib),
                opt(self.rss_right_after_connect_kib),
                opt(r.after_connect_kib),
                opt(r.peak_kib)
            );
            if let Some(per) = r.per_session_kib {
                println!("  RSS per session: {per:.1} KiB");
            }
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
    }

    pub fn clean(&self) -> bool {
        self.failed == 0 && self.lost_while_held == 0 && self.connected == self.requested
    }
}

/// What the sessions did, wherever they ran.
struct Outcome {
    connected: usize,
    failed: usize,
    lost: usize,
    setup_secs: f64,
    hold_secs: f64,
    errors: Vec<String>,
    right_after: Option<u64>,
    end_of_hold: Option<u64>,
}

/// Runs the idle scenario, in this process or in `procs` children.
pub async fn run_idle(cfg: &IdleConfig) -> Result<IdleReport, String> {
    let sampler = cfg.pid.map(RssSampler::start);
    let before = sampler.as_ref().and_then(|s| s.now());
    let procs = cfg.procs.max(1);
    let o = if procs == 1 {
        run_here(cfg, sampler.as_ref()).await
    } else {
        run_children(cfg, procs, sampler.as_ref()).await?
    };
    Ok(IdleReport {
        url: cfg.target.url.clone(),
        topic: cfg.topic.clone(),
        requested: cfg.subscribers,
        connected: o.connected,
        failed: o.failed,
        lost_while_held: o.lost,
        procs,
        setup_secs: o.setup_secs,
        hold_secs: o.hold_secs,
        rss: sampler.as_ref().map(|s| RssReport {
            pid: cfg.pid.unwrap_or(0),
            before_connect_kib: before,
            after_connect_kib: o.end_of_hold,
            peak_kib: Some(s.peak()),
            per_session_kib: RssReport::per_session(before, o.end_of_hold, o.connected),
        }),
        rss_right_after_connect_kib: o.right_after,
        errors: o.errors,
    })
}

async fn run_here(cfg: &IdleConfig, sampler: Option<&RssSampler>) -> Outcome {
    let destination = format!("/topic/{}", cfg.topic);
    let sessions =
        SessionSet::open(&cfg.target, cfg.subscribers, &destination, &cfg.sessions).await;
    let (connected, failed, _) = sessions.counts();
    let right_after = sampler.and_then(|s| s.now());
    let hold_start = Instant::now();
    hold(cfg.hold, &cfg.sessions.label, || sessions.counts().0).await;
    let hold_secs = hold_start.elapsed().as_secs_f64();
    let end_of_hold = sampler.and_then(|s| s.now());
    let (live_end, _, _) = sessions.counts();
    let errors = sessions.errors();
    let setup_secs = sessions.setup_time.as_secs_f64();
    sessions.close().await;
    Outcome {
        connected,
        failed,
        lost: connected.saturating_sub(live_end),
        setup_secs,
        hold_secs,
        errors,
        right_after,
        end_of_hold,
    }
}

async fn hold(duration: Duration, label: &str, live: impl Fn() -> usize) {
    let start = Instant::now();
    while start.elapsed() < duration {
        let left = duration.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        if start.elapsed() < duration {
            eprintln!(
                "[{label}] holding: {} live, {:.0} s left",
                live(),
                duration.saturating_sub(start.elapsed()).as_secs_f64()
            );
        }
    }
}

/// Splits the sessions over child processes (`idle-worker`), waits until
/// each reports READY, holds, then closes their stdin to end them.
async fn run_children(
    cfg: &IdleConfig,
    procs: usize,
    sampler: Option<&RssSampler>,
) -> Result<Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut children: Vec<(Child, BufReader<ChildStdout>)> = Vec::new();
    let started = Instant::now();
    let mut offset = 0;
    for i in 0..procs {
        let share = cfg.subscribers / procs + usize::from(i < cfg.subscribers % procs);
        let mut command = Command::new(&exe);
        command
            .arg("idle-worker")
            .args(["--url", &cfg.target.url])
            .args(["--login", &cfg.target.login])
            .args(["--passcode", &cfg.target.passcode])
            .args(["--vhost", &cfg.target.vhost])
            .args(["--sessions", &share.to_string()])
            .args(["--topic", &cfg.topic])
            .args(["--source-ips", &cfg.sessions.source_ips.to_string()])
            .args(["--source-offset", &offset.to_string()])
            .args([
                "--concurrency",
                &(cfg.sessions.concurrency / procs).max(1).to_string(),
            ])
            .args([
                "--setup-timeout-ms",
                &cfg.sessions.setup_timeout.as_millis().to_string(),
            ])
            .args(["--label", &format!("{}#{i}", cfg.sessions.label)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", exe.display()))?;
        let stdout = child.stdout.take().ok_or("child stdout")?;
        children.push((child, BufReader::new(stdout)));
        offset += share;
    }
    let (mut connected, mut failed) = (0, 0);
    let mut errors = Vec::new();
    let bound = cfg.sessions.setup_timeout
        * (2 + (cfg.subscribers / cfg.sessions.concurrency.max(1)) as u32)
        + Duration::from_secs(30);
    for (i, (_, out)) in children.iter_mut().enumerate() {
        let mut line = String::new();
        let remaining = bound.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, out.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {
                // READY <live> <failed> [first error]
                let mut parts = line.trim().splitn(4, ' ');
                if parts.next() != Some("READY") {
                    errors.push(format!("worker {i}: unexpected output {line:?}"));
                    continue;
                }
                connected += parts
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                failed += parts
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if let Some(e) = parts.next() {
                    errors.push(format!("worker {i}: {e}"));
                }
            }
            _ => errors.push(format!("worker {i} did not report READY")),
        }
    }
    let setup_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "[{}] {connected}/{} sessions subscribed over {procs} processes in {setup_secs:.1} s",
        cfg.sessions.label, cfg.subscribers
    );
    let right_after = sampler.and_then(|s| s.now());
    let hold_start = Instant::now();
    hold(cfg.hold, &cfg.sessions.label, || connected).await;
    let hold_secs = hold_start.elapsed().as_secs_f64();
    // Measure before the children let go.
    let end_of_hold = sampler.and_then(|s| s.now());
    let mut lost = 0;
    for (i, (child, out)) in children.iter_mut().enumerate() {
        drop(child.stdin.take());
        let mut rest = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), out.read_to_string(&mut rest)).await;
        // DONE <live at the end>
        for line in rest.lines() {
            if let Some(v) = line.strip_prefix("LOST ") {
                lost += v.trim().parse::<usize>().unwrap_or(0);
            }
        }
        if tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_err()
        {
            errors.push(format!("worker {i} did not exit; killing it"));
            let _ = child.kill().await;
        }
    }
    Ok(Outcome {
        connected,
        failed,
        lost,
        setup_secs,
        hold_secs,
        errors,
        right_after,
        end_of_hold,
    })
}

/// The child side: opens its share, says READY, holds until stdin closes.
pub async fn idle_worker(target: &Target, sessions: usize, topic: &str, opts: &SessionOpts) {
    use std::io::Write;
    let destination = format!("/topic/{topic}");
    let set = SessionSet::open(target, sessions, &destination, opts).await;
    let (live, failed, _) = set.counts();
    let first_error = set.errors().into_iter().next().unwrap_or_default();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "READY {live} {failed} {}",
            first_error.replace('\n', " ")
        );
        let _ = out.flush();
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let (live_end, _, _) = set.counts();
    set.close().await;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "LOST {}", live.saturating_sub(live_end));
    let _ = writeln!(out, "DONE {live_end}");
    let _ = out.flush();
}
