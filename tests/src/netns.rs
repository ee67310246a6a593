//! Network namespaces and veth pairs for tests and the lab, each removed by a `Drop` guard.

use std::{
    fs::File,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Namespaces alive in this process, for [`cleanup_all`] on a signal.
static LIVE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Child processes (e.g. `ipnat run`) to stop in [`cleanup_all`].
static CHILDREN: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Registers a child process for [`cleanup_all`]; pass `false` to forget it.
pub fn track_child(pid: i32, alive: bool) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.retain(|p| *p != pid);
        if alive {
            c.push(pid);
        }
    }
}

/// Stops tracked children (SIGTERM, up to 3 s) and deletes every namespace this process still
/// holds. For a Ctrl-C handler: `Drop` guards do not run when a signal ends the process.
pub fn cleanup_all() {
    use nix::{
        sys::signal::{Signal, kill},
        unistd::Pid,
    };
    let pids: Vec<i32> = CHILDREN
        .lock()
        .map(|mut c| std::mem::take(&mut *c))
        .unwrap_or_default();
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    for pid in &pids {
        while std::time::Instant::now() < deadline {
            // Reap if it is our child; stop waiting once it is gone.
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(*pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            if kill(Pid::from_raw(*pid), None).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let names: Vec<String> = LIVE
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    for name in names {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a command and fails with its stderr if it does not succeed.
pub fn sh(cmd: &mut Command) -> Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!("cannot run {cmd:?} (is iproute2 installed? run `cargo xtask setup`)")
    })?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// What a finished command printed: its stdout, then its stderr.
pub fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `ip ARGS...`.
pub fn ip(args: &[&str]) -> Result<Output> {
    sh(Command::new("ip").args(args))
}

/// Fails unless we can create namespaces (root). Tests call this first so that a missing
/// privilege is a loud failure, never a skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces and load eBPF programs: run them as root \
         (cargo xtask test does)"
    );
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `ipnat-<tag>-<pid>-<n>` (kept under 15 characters is not needed: only
    /// interfaces have that limit).
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!(
            "ipnat-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        if let Ok(mut l) = LIVE.lock() {
            l.push(name.clone());
        }
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// The MAC address of `iface`, as `ip -br link` shows it (lower case).
    pub fn mac(&self, iface: &str) -> Result<String> {
        let out = self.ip(&["-br", "link", "show", iface])?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find(|w| w.len() == 17 && w.matches(':').count() == 5)
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no MAC address for {iface} in {}", self.name))
    }

    /// A command that runs inside the namespace (network only; /sys and bpffs stay as they are).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a command in the namespace and fails with its stderr if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        sh(self.command(program).args(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs `f` on a new thread that has entered this namespace, e.g. to open sockets there.
    pub fn spawn<F, R>(&self, f: F) -> thread::JoinHandle<Result<R>>
    where
        F: FnOnce() -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let path = self.path();
        thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("open {path}"))?;
            setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
            f()
        })
    }

    /// Runs `f` inside the namespace and waits for it.
    pub fn within<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        match self.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(mut l) = LIVE.lock() {
            l.retain(|n| n != &self.name);
        }
        // Deleting the namespace destroys its veth ends and stops its programs' links.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Connects `a` and `b` with a veth pair `a_if` <-> `b_if`, both up. Removed with either
/// namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    // Create with a unique temporary name in the root namespace, then move both ends.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (ta, tb) = (
        format!("ipnt{}a{n}", std::process::id() % 10000),
        format!("ipnt{}b{n}", std::process::id() % 10000),
    );
    ip(&["link", "add", &ta, "type", "veth", "peer", "name", &tb])?;
    let moved = (|| {
        ip(&["link", "set", &ta, "netns", a.name(), "name", a_if])?;
        ip(&["link", "set", &tb, "netns", b.name(), "name", b_if])?;
        a.ip(&["link", "set", a_if, "up"])?;
        b.ip(&["link", "set", b_if, "up"])
    })();
    if moved.is_err() {
        let _ = ip(&["link", "del", &ta]);
        let _ = ip(&["link", "del", &tb]);
    }
    moved.map(|_| ())
}
