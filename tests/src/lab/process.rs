//! The real `ipnat` binary under test: started, reloaded, stopped, taken down.

use super::*;

/// Where the `ipnat` binary is: `$IPNAT_BIN`, else the workspace's `target/debug/ipnat`.
pub fn ipnat_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IPNAT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/ipnat")
}

/// `ipnat ARGS...` (the binary under test) in `ns`: whether it succeeded, and what it printed
/// (stdout, then stderr).
pub fn ipnat_in(ns: &Netns, args: &[&str]) -> (bool, String) {
    let out = ns
        .command(ipnat_bin().to_str().unwrap())
        .args(args)
        .output()
        .expect("run ipnat");
    (out.status.success(), crate::netns::printed(&out))
}

/// The mapping whose public side is `public` in `ipnat stats --json`'s output, if any.
pub fn mapping_stats<'a>(
    stats: &'a serde_json::Value,
    public: impl std::fmt::Display,
) -> Option<&'a serde_json::Value> {
    let public = public.to_string();
    stats["mappings"]
        .as_array()?
        .iter()
        .find(|m| m["public"] == public.as_str())
}

/// Pin directories of the `ipnat run`s started here, for [`cleanup_all`].
static PINS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Everything this process made, gone: `ipnat down` for every data plane it started, then the
/// namespaces and children ([`crate::netns::cleanup_all`]). For signal handlers.
pub fn cleanup_all() {
    crate::netns::cleanup_all();
    for pin in PINS.lock().map(|p| p.clone()).unwrap_or_default() {
        let _ = ipnat::dataplane::down(&pin);
    }
}

/// On SIGINT or SIGTERM (the `Drop` guards would not run), tears down what this process made
/// ([`cleanup_all`]) and exits 130: the signals are blocked in every thread started after this
/// call and waited for in one. Call it first thing in `main`.
pub fn cleanup_on_signal() {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().expect("block signals");
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("\n{sig}: tearing down");
            cleanup_all();
            std::process::exit(130);
        }
    });
}

/// A running `ipnat run`, stopped with SIGTERM on drop.
pub struct Ipnat {
    child: Option<Child>,
    pub pin_path: PathBuf,
    config_path: PathBuf,
    /// The network namespace `ipnat run` runs in (`ipnat down` must run there too: it puts
    /// back that namespace's settings).
    netns_path: Option<String>,
    /// Whether an `ipnat run` of this instance ever came up: only then is the data plane at
    /// the pin path this instance's to remove on drop.
    owns_pins: bool,
    /// The controller's limit on open files (soft and hard), if not the caller's.
    nofile: Option<u64>,
    /// The `ipnat` binary this instance runs (and takes down with).
    bin: PathBuf,
}

impl Ipnat {
    pub fn start(ns: &Netns, config: &str, pin_path: &str) -> Result<Self> {
        Self::start_limited(ns, config, pin_path, None)
    }

    /// [`Ipnat::start`] with another `ipnat` binary than [`ipnat_bin`] (e.g. a package's).
    pub fn start_binary(ns: &Netns, config: &str, pin_path: &str, bin: &Path) -> Result<Self> {
        Self::start_with(ns, config, pin_path, None, bin.to_owned())
    }

    /// [`Ipnat::start`] with a limit on the controller's open files (`nofile`, soft and hard).
    pub fn start_limited(
        ns: &Netns,
        config: &str,
        pin_path: &str,
        nofile: Option<u64>,
    ) -> Result<Self> {
        Self::start_with(ns, config, pin_path, nofile, ipnat_bin())
    }

    fn start_with(
        ns: &Netns,
        config: &str,
        pin_path: &str,
        nofile: Option<u64>,
        bin: PathBuf,
    ) -> Result<Self> {
        let config_path = std::env::temp_dir().join(format!(
            "ipnat-{}-{}.toml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut me = Self {
            child: None,
            pin_path: PathBuf::from(pin_path),
            config_path,
            netns_path: None,
            owns_pins: false,
            nofile,
            bin,
        };
        if let Ok(mut pins) = PINS.lock() {
            pins.push(me.pin_path.clone());
        }
        me.spawn(ns, config)?;
        Ok(me)
    }

    /// Starts `ipnat run` (again) with `config`; it adopts whatever an earlier run pinned.
    pub fn spawn(&mut self, ns: &Netns, config: &str) -> Result<()> {
        if self.child.is_some() {
            bail!("ipnat is already running");
        }
        let bin = self.bin.clone();
        if !bin.is_file() {
            bail!(
                "{} not found: build it first (cargo xtask test does)",
                bin.display()
            );
        }
        std::fs::write(&self.config_path, config)?;
        self.netns_path = Some(ns.path());
        let mut cmd = ns.command(bin.to_str().context("binary path")?);
        let nofile = self.nofile;
        // SAFETY: pre_exec only calls sigprocmask and setrlimit, which are async-signal-safe. A
        // caller that blocked SIGINT/SIGTERM to handle them itself must not pass that mask on.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                if let Some(n) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                nix::sys::signal::SigSet::empty()
                    .thread_set_mask()
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        crate::netns::track_child(child.id() as i32, true);
        self.child = Some(child);
        self.wait_ready()?;
        self.owns_pins = true;
        Ok(())
    }

    /// The controller's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Rewrites the config file (ipnat watches it).
    pub fn rewrite_config(&self, config: &str) -> Result<()> {
        // Write then rename, as editors and config management do.
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, config)?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    /// Rewrites the config file and sends SIGHUP.
    pub fn reload(&mut self, config: &str) -> Result<()> {
        std::fs::write(&self.config_path, config)?;
        let child = self.child.as_ref().context("not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        Ok(())
    }

    /// Kills the controller with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        crate::netns::track_child(child.id() as i32, false);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Waits until ipnat has pinned its maps and attached (it logs "running" after attaching).
    fn wait_ready(&mut self) -> Result<()> {
        let child = self.child.as_mut().expect("running");
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut log = std::env::var_os("IPNAT_TEST_LOG").and_then(|dir| {
                std::fs::File::create(std::path::Path::new(&dir).join(format!(
                    "ipnat-{}.log",
                    COUNTER.fetch_add(1, Ordering::Relaxed)
                )))
                .ok()
            });
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let ready = line.contains("ipnat running");
                lines.push(line);
                if ready {
                    let _ = tx.send(Ok(()));
                }
            }
            let _ = tx.send(Err(lines.join("\n")));
        });
        // Loading verifies the programs: on a machine busy forwarding that takes a while.
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(log)) => bail!("ipnat exited before it was ready:\n{log}"),
            Err(_) => bail!("ipnat not ready after 60 s"),
        }
    }

    /// `ipnat stats --json` against this instance.
    pub fn stats_json(&self) -> Result<serde_json::Value> {
        let out = crate::netns::sh(
            std::process::Command::new(&self.bin)
                .args(["stats", "--json", "--pin-path"])
                .arg(&self.pin_path),
        )?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Stops the controller (SIGTERM) and returns its exit status. The data plane stays.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.terminate()
    }

    /// `ipnat down` for this instance's pin path: (exit status, stdout + stderr).
    pub fn down(&self) -> Result<(std::process::ExitStatus, String)> {
        let mut cmd = std::process::Command::new("nsenter");
        if let Some(ns) = &self.netns_path {
            cmd.arg(format!("--net={ns}"));
        }
        let out = cmd
            .arg("--")
            .arg(&self.bin)
            .args(["down", "--pin-path"])
            .arg(&self.pin_path)
            .output()?;
        Ok((out.status, crate::netns::printed(&out)))
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        crate::netns::track_child(child.id() as i32, false);
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Ok(child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ipnat {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
        let _ = std::fs::remove_file(&self.config_path);
        if self.owns_pins
            && self.pin_path.exists()
            && self.down().map(|(s, _)| !s.success()).unwrap_or(true)
        {
            let _ = ipnat::dataplane::down(&self.pin_path);
        }
    }
}

impl Ipnat {
    /// `ipnat status --json` of this instance, run in `ns`.
    pub fn status(&self, ns: &Netns) -> serde_json::Value {
        let pin = self.pin_path.to_string_lossy().into_owned();
        let (ok, out) = ipnat_in(ns, &["status", "--json", "--pin-path", &pin]);
        assert!(ok, "ipnat status: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Waits up to 10 s until `ok` holds of the status's `section` (e.g. `fleet`, `health`);
    /// returns that section, or panics saying `what` did not happen.
    pub fn wait_status(
        &self,
        ns: &Netns,
        section: &str,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.status(ns);
            if ok(&st[section]) {
                return st[section].clone();
            }
            assert!(Instant::now() < deadline, "{what}: {}", st[section]);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
