//! Child processes of the tests (gateway replicas, HAProxy): killed and
//! reaped when their guard drops, and the HAProxy binary and start-up the
//! multi-replica tests share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    pub name: String,
    child: Option<Child>,
}

impl ChildGuard {
    pub fn new(name: &str, child: Child) -> ChildGuard {
        ChildGuard {
            name: name.to_owned(),
            child: Some(child),
        }
    }

    /// SIGKILL and reap; the guard then holds nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The haproxy binary: on PATH, or where Debian puts it (/usr/sbin is not
/// on every PATH); `None` when it is not installed.
pub fn haproxy_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("haproxy"))
                .find(|p| p.is_file())
        })
        .or_else(|| {
            ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
}

/// The haproxy binary, or a panic saying how to install it.
pub fn haproxy_bin() -> PathBuf {
    haproxy_binary().expect("haproxy is not installed: run scripts/ensure-haproxy.sh")
}

/// Checks `cfg` with `haproxy -c` (a panic with its output when rejected),
/// then runs HAProxy in the foreground on it, logging to `log`.
pub fn spawn_haproxy(cfg: &Path, log: &Path) -> ChildGuard {
    let bin = haproxy_bin();
    let check = Command::new(&bin)
        .args(["-c", "-f"])
        .arg(cfg)
        .stdin(Stdio::null())
        .output()
        .expect("haproxy -c");
    assert!(
        check.status.success(),
        "haproxy rejects the config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let log = std::fs::File::create(log).expect("haproxy log");
    let child = Command::new(&bin)
        .arg("-db")
        .arg("-f")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("spawn haproxy");
    ChildGuard::new("haproxy", child)
}

/// Waits at most `timeout` for `child` (spawned with piped stdout and
/// stderr, in a process group of its own), collecting its output; on a
/// timeout the whole group is killed. Returns the exit status (`None` on a
/// timeout), stdout and stderr.
pub async fn wait_bounded(
    mut child: tokio::process::Child,
    timeout: std::time::Duration,
) -> (Option<std::process::ExitStatus>, String, String) {
    use tokio::io::AsyncReadExt;
    let pid = child.id();
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf).await;
            }
            buf
        })
    };
    let out_task = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err_task = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status.expect("wait for the child")),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = Command::new("kill")
                    .args(["-KILL", &format!("-{pid}")])
                    .status();
            }
            let _ = child.kill().await;
            None
        }
    };
    let collect = |task: tokio::task::JoinHandle<Vec<u8>>| async move {
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(buf)) => String::from_utf8_lossy(&buf).into_owned(),
            _ => String::from("(output not collected)"),
        }
    };
    let out = collect(out_task).await;
    let err = collect(err_task).await;
    (status, out, err)
}

/// The last `lines` lines of a log file (for a failure message).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `stompgate` process of the multi-replica tests (killed, SIGKILL, when
/// dropped): anonymous access, on a free port of 127.0.0.1, against the
/// machine's broker, logging to `<dir>/<name>.log`.
pub struct Replica {
    pub name: String,
    pub addr: std::net::SocketAddr,
    pub process: ChildGuard,
}

impl Replica {
    /// Starts one; `configure` adds arguments and environment (a config
    /// file, `[sockjs]` settings, another `RUST_LOG`).
    pub fn spawn(name: &str, dir: &Path, configure: impl FnOnce(&mut Command)) -> Replica {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_stompgate"));
        command
            .args(["--listen", &addr.to_string(), "--amqp-url", super::AMQP_URL])
            .env("RUST_LOG", "warn")
            // These clients connect without credentials, like common::start_gateway's.
            .env("STOMPGATE_AUTH__ANONYMOUS", "true")
            .env_remove("STOMPGATE_LISTEN")
            .env_remove("STOMPGATE_AMQP_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        configure(&mut command);
        let child = command.spawn().expect("spawn stompgate");
        Replica {
            name: name.to_owned(),
            addr,
            process: ChildGuard::new(name, child),
        }
    }

    /// SIGKILL, as a crashing or OOM-killed replica.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// Waits until `process` answers 200 on `/readyz` at `addr`, at most
/// `timeout`; panics (with the tail of `log`) if it exits or is not ready.
pub async fn wait_ready(
    addr: std::net::SocketAddr,
    process: &mut ChildGuard,
    timeout: std::time::Duration,
    log: &Path,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = process.exited() {
            panic!(
                "{} exited with {status}; its log:\n{}",
                process.name,
                tail(log, 30)
            );
        }
        if let Ok(r) = super::try_http_get(addr, "/readyz", std::time::Duration::from_secs(3)).await
        {
            if r.status == 200 {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} on {addr} not ready within {timeout:?}; its log:\n{}",
            process.name,
            tail(log, 30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
