//! The servers under test, as child processes: the stompgate release binary,
//! the ceiling server (this binary), and a private RabbitMQ node with
//! Web-STOMP (scripts/private-rabbitmq.sh). Plus `rabbitmqctl` queries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::util::{free_port, wait_port};

/// A server process this benchmark started (killed when dropped).
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub url: String,
    pub log: PathBuf,
}

impl Spawned {
    /// Ends the process (SIGKILL to this child only) and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// Last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 20)
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_file(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join(name);
    let file =
        std::fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    Ok((path, file))
}

/// The gateway configuration the benchmark uses unless given one: the
/// client logs in as guest/guest (as with RabbitMQ Web-STOMP), and sessions
/// are not rate-limited (the send scenario measures capacity).
pub const GATEWAY_CONFIG: &str = "\
# Written by stompgate-bench (override with --gateway-config).
[auth]
users = [{ login = \"guest\", passcode = \"guest\" }]

[security]
max_frames_per_second = 0
";

/// Starts `bin --config <config> --listen 127.0.0.1:<free port> --amqp-url
/// <amqp>` and waits (bounded) until its /readyz says the AMQP side is up.
/// Without `config`, [`GATEWAY_CONFIG`] is written to `log_dir`.
pub async fn spawn_gateway(
    bin: &Path,
    amqp: &str,
    log_dir: &Path,
    config: Option<&Path>,
) -> Result<Spawned, String> {
    if !bin.exists() {
        return Err(format!(
            "gateway binary {} not found (cargo build --release --bin stompgate, or --gateway-bin)",
            bin.display()
        ));
    }
    let config = match config {
        Some(c) => c.to_owned(),
        None => {
            std::fs::create_dir_all(log_dir)
                .map_err(|e| format!("create {}: {e}", log_dir.display()))?;
            let path = log_dir.join("stompgate-bench.toml");
            std::fs::write(&path, GATEWAY_CONFIG)
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            path
        }
    };
    let port = free_port().map_err(|e| format!("free port: {e}"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (log, file) = log_file(log_dir, "stompgate.log")?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["--listen", &addr.to_string(), "--amqp-url", amqp])
        .env(
            "RUST_LOG",
            std::env::var("BENCH_GATEWAY_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        // The gateway reads every `STOMPGATE_*` variable as a setting (and
        // refuses unknown ones): the bench's own settings stay out of them.
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let pid = child.id().unwrap_or(0);
    let spawned = Spawned {
        child,
        pid,
        url: format!("ws://{addr}/ws"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http_status(addr, "/readyz").await == Some(200) {
            eprintln!(
                "stompgate pid {pid} ready on {} (log {})",
                spawned.url,
                spawned.log.display()
            );
            return Ok(spawned);
        }
        if Instant::now() > deadline {
            let tail = spawned.log_tail();
            spawned.stop().await;
            return Err(format!(
                "stompgate did not become ready within 30 s (configuration {}); log:\n{tail}",
                config.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts this binary's `ceiling` server on a free port.
pub async fn spawn_ceiling(log_dir: &Path, coalesce: bool) -> Result<Spawned, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let port = free_port().map_err(|e| format!("free port: {e}"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (log, file) = log_file(log_dir, "ceiling.log")?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(&exe);
    command.args(["ceiling", "--listen", &addr.to_string()]);
    if !coalesce {
        command.arg("--no-coalesce");
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {} ceiling: {e}", exe.display()))?;
    let pid = child.id().unwrap_or(0);
    let spawned = Spawned {
        child,
        pid,
        url: format!("ws://{addr}/ws"),
        log,
    };
    if !wait_port(addr, Duration::from_secs(10)).await {
        let tail = spawned.log_tail();
        spawned.stop().await;
        return Err(format!("ceiling did not listen within 10 s; log:\n{tail}"));
    }
    eprintln!("ceiling pid {pid} listening on {}", spawned.url);
    Ok(spawned)
}

/// The HTTP status of `GET path`, if the server answers within 2 s.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await.ok()?;
        let text = String::from_utf8_lossy(&head[..n]).into_owned();
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// A private RabbitMQ node with Web-STOMP, started by the script.
#[derive(Debug, Clone)]
pub struct PrivateRabbit {
    pub script: PathBuf,
    pub name: String,
    pub node: String,
    pub amqp_port: u16,
    pub web_stomp_port: u16,
    pub pid: u32,
}

impl PrivateRabbit {
    pub async fn start(script: &Path, name: &str) -> Result<PrivateRabbit, String> {
        PrivateRabbit::start_with_env(script, name, &[]).await
    }

    /// `start`, with environment for the script (its ports:
    /// `PRIVATE_RABBIT_AMQP_PORT` and the others it documents).
    pub async fn start_with_env(
        script: &Path,
        name: &str,
        env: &[(String, String)],
    ) -> Result<PrivateRabbit, String> {
        eprintln!(
            "starting private RabbitMQ node {name}@localhost ({} start {name})",
            script.display()
        );
        let output = tokio::time::timeout(
            Duration::from_secs(150),
            Command::new("bash")
                .arg(script)
                .args(["start", name])
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| "private RabbitMQ did not start within 150 s".to_owned())?
        .map_err(|e| format!("run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} start {name} failed ({})",
                script.display(),
                output.status
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("node="))
            .ok_or_else(|| format!("unexpected output of the script: {stdout}"))?;
        let get = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .ok_or_else(|| format!("no {key}= in '{line}'"))
        };
        let number = |key: &str| -> Result<u64, String> {
            get(key)?
                .parse()
                .map_err(|_| format!("bad {key} in '{line}'"))
        };
        Ok(PrivateRabbit {
            script: script.to_owned(),
            name: name.to_owned(),
            node: get("node")?,
            amqp_port: number("amqp_port")? as u16,
            // None without the Web-STOMP plugin (PRIVATE_RABBIT_PLUGINS=).
            web_stomp_port: number("web_stomp_port").unwrap_or(0) as u16,
            pid: number("pid")? as u32,
        })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.web_stomp_port)
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `script stop NAME`: stops this node only.
    pub async fn stop(&self) {
        eprintln!("stopping private RabbitMQ node {}", self.node);
        let result = tokio::time::timeout(
            Duration::from_secs(120),
            Command::new("bash")
                .arg(&self.script)
                .args(["stop", &self.name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .status(),
        )
        .await;
        if !matches!(result, Ok(Ok(s)) if s.success()) {
            eprintln!("warning: stopping {} failed: {result:?}", self.node);
        }
    }
}

/// Queues bound to `amq.topic` with routing key `topic` on `node` (None:
/// the machine's broker): the queues a server made for the topic.
pub async fn topic_queues(node: Option<&str>, topic: &str) -> Result<usize, String> {
    let mut command = Command::new("rabbitmqctl");
    if let Some(node) = node {
        command.args(["-n", node]);
    }
    command
        .args([
            "list_bindings",
            "-q",
            "--no-table-headers",
            "source_name",
            "routing_key",
            "destination_kind",
            "destination_name",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .map_err(|_| "rabbitmqctl list_bindings timed out".to_owned())?
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "rabbitmqctl list_bindings failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut queues: Vec<&str> = stdout
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let (source, key, kind, dest) = (f.next()?, f.next()?, f.next()?, f.next()?);
            (source == "amq.topic" && key == topic && kind == "queue").then_some(dest)
        })
        .collect();
    queues.sort_unstable();
    queues.dedup();
    Ok(queues.len())
}
