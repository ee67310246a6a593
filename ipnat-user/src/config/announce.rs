//! The `[announce]` section: a gateway of a fleet tells its routing daemon what it serves
//! while it is ready (see `crate::fleet::health`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, validate::invalid};

/// What the gateway announces, where, and whose sessions it watches.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// The kernel routing table ipnat keeps its routes in: one per public prefix (out of
    /// `outward`) and a default route (out of `inward`). No rule points at it: the routing
    /// daemon imports it and announces its routes.
    #[serde(default = "default_table")]
    pub table: u32,
    /// The `rtm_protocol` those routes carry (`proto 73` in `ip route`); ipnat changes no
    /// route without it.
    #[serde(default = "default_protocol")]
    pub protocol: u8,
    /// The interface towards the outside (its router learns the public prefixes).
    pub outward: String,
    /// The interface towards the private hosts (its router learns a default route).
    pub inward: String,
    /// How often readiness is checked (the links, the table's revision, the self-check probe,
    /// the daemon's sessions).
    #[serde(default = "default_interval_ms")]
    pub check_interval_ms: u64,
    /// bird's control socket, to read the state of the sessions below.
    #[serde(default)]
    pub bird_socket: Option<PathBuf>,
    /// bird's protocols towards the outside: while none is up, the default route inward is
    /// withdrawn (a gateway that cannot reach the outside must not draw the inside's traffic).
    #[serde(default)]
    pub outward_sessions: Vec<String>,
    /// bird's protocols towards the inside: while none is up, the public prefixes are withdrawn.
    #[serde(default)]
    pub inward_sessions: Vec<String>,
    /// The fleet's other gateways, as the URLs of their metrics servers
    /// (`http://10.99.0.12:9469`): each reports the version of the fleet's table it serves
    /// (`/fleet`). A gateway that sees a peer serve a newer table than its own for longer
    /// than `stale_grace_ms` (it was cut off from etcd while the fleet moved on) is stale and
    /// withdraws; an unreachable peer says nothing. etcd unreachable from every gateway moves
    /// no table, so withdraws none.
    #[serde(default)]
    pub peers: Vec<String>,
    /// How long a peer may serve a newer table before this gateway counts as stale (a change
    /// reaches the gateways one after another).
    #[serde(default = "default_stale_grace_ms")]
    pub stale_grace_ms: u64,
}

/// The default routing table of ipnat's routes.
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 4242;
/// The default `rtm_protocol` of ipnat's routes ('I', as the addresses' `IFA_PROTO`).
pub const DEFAULT_ANNOUNCE_PROTOCOL: u8 = 73;

fn default_table() -> u32 {
    DEFAULT_ANNOUNCE_TABLE
}

fn default_protocol() -> u8 {
    DEFAULT_ANNOUNCE_PROTOCOL
}

fn default_interval_ms() -> u64 {
    1_000
}

fn default_stale_grace_ms() -> u64 {
    3_000
}

impl AnnounceConfig {
    pub fn validate(&self, interfaces: &[String]) -> Result<(), ConfigError> {
        // 0 is no table; 253-255 are the kernel's default, main and local tables.
        if matches!(self.table, 0 | 253..=255) {
            return Err(invalid(
                "announce.table".into(),
                &self.table,
                "must be a table of ipnat's own (not 0, 253 default, 254 main or 255 local)",
            ));
        }
        // 0-4: unspec, redirect, kernel, boot, static (what `ip route` and the kernel use).
        if self.protocol <= 4 {
            return Err(invalid(
                "announce.protocol".into(),
                &self.protocol,
                "must be ipnat's own rtm_protocol (5 to 255; 0-4 are the kernel's and ip route's)",
            ));
        }
        for (key, name) in [
            ("announce.outward", &self.outward),
            ("announce.inward", &self.inward),
        ] {
            if !interfaces.iter().any(|i| i == name) {
                return Err(invalid(
                    key.into(),
                    name,
                    "is not one of the [[interface]]s",
                ));
            }
        }
        if self.outward == self.inward {
            return Err(invalid(
                "announce.inward".into(),
                &self.inward,
                "is the outward interface too: the two sides are two interfaces",
            ));
        }
        if !(100..=60_000).contains(&self.check_interval_ms) {
            return Err(invalid(
                "announce.check_interval_ms".into(),
                &self.check_interval_ms,
                "must be 100 to 60000",
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let ok = p
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
            if !ok {
                return Err(invalid(
                    format!("announce.peers[{i}]"),
                    p,
                    "must be a peer's metrics server as http://ADDRESS:PORT",
                ));
            }
        }
        if self.stale_grace_ms > 600_000 {
            return Err(invalid(
                "announce.stale_grace_ms".into(),
                &self.stale_grace_ms,
                "at most 600000 (ten minutes)",
            ));
        }
        let sessions = !self.outward_sessions.is_empty() || !self.inward_sessions.is_empty();
        if sessions != self.bird_socket.is_some() {
            return Err(invalid(
                "announce.bird_socket".into(),
                &self
                    .bird_socket
                    .as_deref()
                    .map_or(String::new(), |p| p.display().to_string()),
                "bird_socket and the sessions it reports (outward_sessions, inward_sessions) go together",
            ));
        }
        Ok(())
    }
}
