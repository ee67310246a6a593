//! A real bird (Debian's `bird2`, the routing daemon the fleet's gateways and routers run) for
//! the tests and the lab: its own config, control socket and pid file in a temporary
//! directory, inside a namespace, never the system's daemon. Killed when dropped.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

pub struct Bird {
    child: Option<Child>,
    dir: PathBuf,
    name: String,
    /// The control socket (`birdc -s`, and ipnat's `bird_socket`).
    pub socket: PathBuf,
}

impl Bird {
    /// Starts bird in `ns` with `config`; `name` names its directory (unique per process).
    pub fn start(ns: &Netns, name: &str, config: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ipnat-bird-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bird.conf"), config)?;
        let socket = dir.join("bird.ctl");
        let log = std::fs::File::create(dir.join("log"))?;
        let child = ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(dir.join("bird.conf"))
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting bird (Debian's bird2; cargo xtask setup installs it)")?;
        crate::netns::track_child(child.id() as i32, true);
        let me = Bird {
            child: Some(child),
            dir,
            name: name.to_owned(),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while me.birdc(&["show", "status"]).is_err() {
            if Instant::now() > deadline {
                bail!("bird {name} did not come up; its log:\n{}", me.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// `birdc -s SOCKET ARGS...`; its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let out = crate::netns::sh(
            std::process::Command::new("birdc")
                .arg("-s")
                .arg(&self.socket)
                .args(args),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its protocols by name: whether each is up.
    pub fn protocols(&self) -> Result<BTreeMap<String, bool>> {
        let out = self.birdc(&["show", "protocols"])?;
        Ok(out
            .lines()
            .skip(2)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() >= 4).then(|| (cols[0].to_owned(), cols[3] == "up"))
            })
            .collect())
    }

    /// Waits up to `secs` for all of `names` to be up.
    pub fn wait_up(&self, names: &[&str], secs: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let p = self.protocols()?;
            if names.iter().all(|n| p.get(*n) == Some(&true)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "bird {}: not all of {names:?} up: {p:?}\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: gone at once, as a crashed daemon is.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("bird is not running")?;
        crate::netns::track_child(child.id() as i32, false);
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The next hops of `dst`'s route in `ns`'s main table (`ip route show`), sorted: one for a
/// plain route, several for a multipath one, none without a route.
pub fn next_hops(ns: &Netns, dst: &str) -> Result<Vec<String>> {
    let out = ns.ip(&["route", "show", "exact", dst])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut hops: Vec<String> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect();
    hops.sort();
    Ok(hops)
}
