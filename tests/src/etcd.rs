//! A real etcd server (Debian's `etcd-server`, as the fleet's users run it) for the tests: its
//! own name, data directory and ports, inside a namespace, never the system's daemon. Killed
//! and its data removed when dropped.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

pub struct EtcdServer {
    child: Option<Child>,
    /// This member's name and the whole cluster's `--initial-cluster` (one member: itself).
    member: String,
    cluster: String,
    dir: PathBuf,
    ns_path: String,
    ns: String,
    port: u16,
    /// The client URL, as seen from inside the namespace.
    pub url: String,
}

impl EtcdServer {
    /// Starts a one-member cluster on 127.0.0.1:`port` (peers on `port` + 1) in `ns`.
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        Self::start_at(ns, std::net::Ipv4Addr::LOCALHOST, port)
    }

    /// [`EtcdServer::start`] on `addr` (an address of `ns`) instead of the loopback.
    pub fn start_at(ns: &Netns, addr: std::net::Ipv4Addr, port: u16) -> Result<Self> {
        let mut me = Self::member(ns, addr, port, format!("t=http://{addr}:{}", port + 1))?;
        me.resume()?;
        Ok(me)
    }

    /// A cluster of one member per port in `ports`, all on `addr` in `ns` (clients on each
    /// port, peers on port + 1), started together; returns once every member is healthy.
    pub fn cluster(ns: &Netns, addr: std::net::Ipv4Addr, ports: &[u16]) -> Result<Vec<Self>> {
        let initial: Vec<String> = ports
            .iter()
            .map(|p| format!("m{p}=http://{addr}:{}", p + 1))
            .collect();
        let mut members = Vec::new();
        for port in ports {
            let mut m = Self::member(ns, addr, *port, initial.join(","))?;
            m.spawn()?;
            members.push(m);
        }
        for m in &members {
            m.wait_healthy()?;
        }
        Ok(members)
    }

    fn member(ns: &Netns, addr: std::net::Ipv4Addr, port: u16, cluster: String) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ipnat-etcd-{}-{port}", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let member = if cluster.starts_with("t=") {
            "t".to_owned()
        } else {
            format!("m{port}")
        };
        Ok(EtcdServer {
            member,
            cluster,
            child: None,
            dir,
            ns_path: ns.path(),
            ns: ns.name().to_owned(),
            port,
            url: format!("http://{addr}:{port}"),
        })
    }

    /// Starts it again on the same data (after [`EtcdServer::kill`]).
    pub fn resume(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_healthy()
    }

    fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("etcd is already running");
        }
        let host = self
            .url
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap_or("127.0.0.1");
        let peer = format!("http://{host}:{}", self.port + 1);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))?;
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .arg("--")
            .arg("etcd")
            .args(["--name", &self.member])
            .args(["--initial-cluster-token", "ipnat-test"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian's etcd-server; cargo xtask setup installs it)")?;
        crate::netns::track_child(child.id() as i32, true);
        self.child = Some(child);
        Ok(())
    }

    fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.ctl(&["endpoint", "health"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd in {} not healthy after 15 s; its log:\n{}",
                    self.ns,
                    std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: gone at once, as a crashed member is.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("etcd is not running")?;
        crate::netns::track_child(child.id() as i32, false);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// `etcdctl ARGS...` against this server; its output.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = crate::netns::sh(
            std::process::Command::new("nsenter")
                .arg(format!("--net={}", self.ns_path))
                .arg("--")
                .arg("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.url, "--command-timeout=3s"])
                .args(args),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether this member is the cluster's leader now.
    pub fn is_leader(&self) -> Result<bool> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let s = &v[0]["Status"];
        Ok(s["leader"].is_u64() && s["leader"] == s["header"]["member_id"])
    }

    /// Starts a member of a cluster again (after [`EtcdServer::kill`]) without waiting for its
    /// health: a member alone has no quorum.
    pub fn spawn_again(&mut self) -> Result<()> {
        self.spawn()
    }

    /// Whether this member runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<i64> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .context("no revision in etcdctl's status")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
