//! Network namespaces for tests that need real iptables: a pod's network
//! namespace and a database's, joined by a veth pair, created and removed by
//! the test itself. Nothing is routed out of them, so the only traffic is
//! between the test's own namespaces (and each one's loopback).
//!
//! Every [`Netns`] is deleted when dropped, also when the test fails; run
//! processes inside one with [`Netns::command`] (as root) or
//! [`Netns::command_as`] (as another UID, without capabilities), and Rust
//! code with [`Netns::enter`].

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns {
    /// Name under `/run/netns`.
    pub name: String,
}

/// Why namespaces cannot be used here.
pub fn unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespace tests need root (ip netns, iptables)".into());
    }
    for tool in ["ip", "iptables", "ip6tables", "setpriv"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!(
                "{tool} is not installed (Debian packages iptables, iproute2, util-linux)"
            ));
        }
    }
    match Netns::create("probe") {
        Ok(_) => None,
        Err(e) => Some(format!("`ip netns add` is not permitted here: {e}")),
    }
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

impl Netns {
    /// Creates a namespace with a unique name containing `role`, with its
    /// loopback up.
    pub fn create(role: &str) -> Result<Netns, String> {
        let name = format!(
            "cardgate-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output, String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `program` inside the namespace, as root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `program` inside the namespace as `uid` (group `uid`, no
    /// supplementary groups and so, unless `uid` is 0, no capabilities).
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.command("setpriv");
        c.args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
            "--",
        ])
        .arg(program)
        .env("HOME", "/tmp");
        c
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it
    /// creates belong to the namespace, and stay there after it returns.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .expect("thread in the namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Joins `a` and `b` with a veth pair and gives each end its addresses
/// (`10.x.y.z/24` or `fd00::1/64` style, IPv6 without duplicate address
/// detection so they are usable at once). The pair goes away with the
/// namespaces.
pub fn link(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> Result<(), String> {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    // Interface names have at most 15 characters.
    let base = format!("cg{}x{n}", std::process::id() % 100_000);
    let (ea, eb) = (format!("{base}a"), format!("{base}b"));
    run(Command::new("ip").args([
        "link", "add", &ea, "netns", &a.name, "type", "veth", "peer", "name", &eb, "netns", &b.name,
    ]))?;
    for (ns, dev, addrs) in [(a, &ea, a_addrs), (b, &eb, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", dev, "nodad"])?;
            } else {
                ns.ip(&["addr", "add", addr, "dev", dev])?;
            }
        }
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// A child process killed (and reaped) when dropped.
pub struct Guarded(pub Child);

impl Guarded {
    /// Asks the process to stop (SIGTERM) and waits for it, killing it
    /// after `timeout`; returns whether it stopped by itself.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        if let Ok(Some(_)) = self.0.try_wait() {
            return true;
        }
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let stopped = wait_until(timeout, || matches!(self.0.try_wait(), Ok(Some(_))));
        if !stopped {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        stopped
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `cardgate-sidecar` binary of this workspace, built now if any of its
/// sources changed. Cargo decides (a no-op when it is up to date): comparing
/// file times here once let a test run a stale binary, e.g. one copied in
/// from another checkout with newer times than the sources it was not built
/// from.
pub fn sidecar_binary() -> PathBuf {
    let root = crate::repo_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "-p",
            "cardgate-sidecar",
            "--bin",
            "cardgate-sidecar",
        ])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p cardgate-sidecar failed");
    target.join("debug").join("cardgate-sidecar")
}

/// Polls `ready` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
