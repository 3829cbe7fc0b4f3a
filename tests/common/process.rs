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
