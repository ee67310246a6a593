//! A gateway's readiness, and what it announces because of it.
//!
//! Ready: its programs are attached where it put them, a probe through them translates
//! exactly (`dataplane::self_check`), and its table is the newest it knows of. An etcd outage
//! alone leaves a gateway ready: it withdraws for staleness only when it knows the fleet has
//! moved past the table it serves (it saw a newer revision it could not apply).
//!
//! While ready and not drained it announces both sides: the public prefixes outward and a
//! default route inward. A side also needs the other side's sessions: without a session up
//! towards the inside, drawing the outside's traffic would black-hole it, and the other way
//! round.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use crate::config::AnnounceConfig;

/// What one check found.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    /// The self-check of every interface (links and probe): the first failure (None: passed).
    pub self_check: Option<String>,
    /// Why the table is not the newest known (None: it is).
    pub stale: Option<String>,
    pub drained: bool,
    /// bird's protocols by name (up or not), when `bird_socket` is configured; Err when it
    /// could not be read.
    pub sessions: Option<Result<BTreeMap<String, bool>, String>>,
}

/// What a gateway announces after a check, and why not more.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub ready: bool,
    pub drained: bool,
    /// The public prefixes, to the outside.
    pub outward: bool,
    /// The default route, to the inside.
    pub inward: bool,
    /// Why it is not ready, or a side is withdrawn.
    pub reasons: Vec<String>,
}

/// Whether any of `names` is up in `sessions`; the error says which are down or why they could
/// not be read. No names: nothing to wait for.
fn any_up(
    names: &[String],
    sessions: &Option<Result<BTreeMap<String, bool>, String>>,
    side: &str,
) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    match sessions {
        None => Ok(()),
        Some(Err(e)) => Err(format!("bird's sessions could not be read: {e}")),
        Some(Ok(s)) if names.iter().any(|n| s.get(n) == Some(&true)) => Ok(()),
        Some(Ok(_)) => Err(format!(
            "no session towards the {side} is up ({})",
            names.join(", ")
        )),
    }
}

/// The announcement that follows from `checks`.
pub fn decide(checks: &Checks, config: &AnnounceConfig) -> Decision {
    let mut reasons = Vec::new();
    if let Some(e) = &checks.self_check {
        reasons.push(format!("self-check failed: {e}"));
    }
    if let Some(why) = &checks.stale {
        reasons.push(format!("stale: {why}"));
    }
    let ready = reasons.is_empty();
    if checks.drained {
        reasons.push("drained (`ipnat drain --undo` announces again)".into());
    }
    let up = ready && !checks.drained;
    let towards_inside = any_up(&config.inward_sessions, &checks.sessions, "inside");
    let towards_outside = any_up(&config.outward_sessions, &checks.sessions, "outside");
    if up {
        if let Err(e) = &towards_inside {
            reasons.push(format!("public prefixes withdrawn: {e}"));
        }
        if let Err(e) = &towards_outside {
            reasons.push(format!("default route withdrawn: {e}"));
        }
    }
    Decision {
        ready,
        drained: checks.drained,
        outward: up && towards_inside.is_ok(),
        inward: up && towards_outside.is_ok(),
        reasons,
    }
}

/// What the controller records after each check, for `ipnat status`, `ipnat drain` and
/// `ipnat down` (which withdraw the routes without a controller).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthState {
    #[serde(flatten)]
    pub decision: Decision,
    /// Where the routes live.
    pub table: u32,
    pub protocol: u8,
    /// The routes announced now: prefixes and the interfaces they name.
    pub routes: Vec<(String, String)>,
    /// bird's sessions as last read (empty without `bird_socket`).
    pub sessions: BTreeMap<String, bool>,
    pub checked_unix_ms: u64,
}

const HEALTH_STATE: &str = "health.json";
/// Present while the gateway is drained (`ipnat drain`).
const DRAINED: &str = "drained";

impl HealthState {
    pub fn load(pin_path: &Path) -> Option<Self> {
        crate::state::Records::lookup(pin_path).read_json(HEALTH_STATE)
    }

    pub fn save(&self, pin_path: &Path) -> std::io::Result<()> {
        crate::state::Records::lookup(pin_path).write_json(HEALTH_STATE, self)
    }

    pub fn render(&self) -> String {
        let d = &self.decision;
        let mut s = format!(
            "health:     {}{}; announcing: {}\n",
            if d.ready { "ready" } else { "NOT READY" },
            if d.drained { ", drained" } else { "" },
            match (d.outward, d.inward) {
                (true, true) => "both sides",
                (true, false) => "public prefixes only",
                (false, true) => "default route only",
                (false, false) => "nothing",
            }
        );
        for r in &d.reasons {
            s.push_str(&format!("            {r}\n"));
        }
        s.push_str(&format!(
            "routes:     {} in table {} (proto {})\n",
            self.routes.len(),
            self.table,
            self.protocol
        ));
        for (dst, dev) in &self.routes {
            s.push_str(&format!("            {dst} dev {dev}\n"));
        }
        if !self.sessions.is_empty() {
            let sessions: Vec<String> = self
                .sessions
                .iter()
                .map(|(n, up)| format!("{n} {}", if *up { "up" } else { "down" }))
                .collect();
            s.push_str(&format!("bird:       {}\n", sessions.join(", ")));
        }
        s
    }
}

/// Whether the gateway at `pin_path` is drained.
pub fn drained(pin_path: &Path) -> bool {
    crate::state::Records::lookup(pin_path)
        .read(DRAINED)
        .is_some()
}

/// Drains the gateway at `pin_path` (`on`) or ends its drain. Draining withdraws what it
/// announces at once, controller or not (see [`withdraw`]); the running controller keeps it
/// withdrawn. Ending it lets the controller announce again at its next check.
pub fn set_drained(pin_path: &Path, on: bool) -> std::io::Result<Vec<String>> {
    let records = crate::state::Records::lookup(pin_path);
    if on {
        records
            .write(DRAINED, "drained by `ipnat drain`\n")
            .map_err(std::io::Error::other)?;
        withdraw(pin_path)
    } else {
        records.remove(DRAINED);
        Ok(Vec::new())
    }
}

/// Withdraws everything the gateway at `pin_path` announces, controller or not, and records
/// that nothing is; the prefixes withdrawn.
pub fn withdraw(pin_path: &Path) -> std::io::Result<Vec<String>> {
    let gone = crate::system::remove_own_routes(pin_path)?;
    if let Some(mut state) = HealthState::load(pin_path) {
        state.routes.clear();
        state.decision.outward = false;
        state.decision.inward = false;
        state.save(pin_path)?;
    }
    Ok(gone.iter().map(|r| r.dst.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sessions: bool) -> AnnounceConfig {
        let text = if sessions {
            "outward = \"eth0\"\ninward = \"eth1\"\nbird_socket = \"/run/bird.ctl\"\noutward_sessions = [\"out1\", \"out2\"]\ninward_sessions = [\"in1\"]\n"
        } else {
            "outward = \"eth0\"\ninward = \"eth1\"\n"
        };
        toml::from_str(text).expect("a valid [announce]")
    }

    fn sessions(up: &[&str]) -> Option<Result<BTreeMap<String, bool>, String>> {
        Some(Ok(["out1", "out2", "in1"]
            .iter()
            .map(|n| (n.to_string(), up.contains(n)))
            .collect()))
    }

    #[test]
    fn readiness_decides_both_sides_and_each_side_needs_the_other() {
        let healthy = Checks {
            self_check: None,
            ..Default::default()
        };
        let d = decide(&healthy, &config(false));
        assert!(d.ready && d.outward && d.inward, "{d:?}");
        assert!(d.reasons.is_empty());

        // Not ready or drained: nothing announced, and the reason said.
        let broken = Checks {
            self_check: Some("the xdp program on eth0 was detached".into()),
            ..Default::default()
        };
        let d = decide(&broken, &config(false));
        assert!(!d.ready && !d.outward && !d.inward);
        assert!(d.reasons[0].contains("detached"), "{d:?}");
        let stale = Checks {
            self_check: None,
            stale: Some("revision 12 refused".into()),
            ..Default::default()
        };
        assert!(!decide(&stale, &config(false)).ready);
        let drained = Checks {
            self_check: None,
            drained: true,
            ..Default::default()
        };
        let d = decide(&drained, &config(false));
        assert!(d.ready && !d.outward && !d.inward && d.drained);

        // Sessions: one outward session of two is enough; losing the inside withdraws the
        // public prefixes (the outside's traffic would find no way in), and the other way.
        let mut c = healthy.clone();
        c.sessions = sessions(&["out2", "in1"]);
        let d = decide(&c, &config(true));
        assert!(d.outward && d.inward, "{d:?}");
        c.sessions = sessions(&["out1", "out2"]);
        let d = decide(&c, &config(true));
        assert!(!d.outward && d.inward && d.ready, "{d:?}");
        assert!(d.reasons.iter().any(|r| r.contains("in1")), "{d:?}");
        c.sessions = sessions(&["in1"]);
        let d = decide(&c, &config(true));
        assert!(d.outward && !d.inward, "{d:?}");
        // bird unreadable: its sessions are as good as down.
        c.sessions = Some(Err("connection refused".into()));
        let d = decide(&c, &config(true));
        assert!(!d.outward && !d.inward && d.ready, "{d:?}");
    }
}
