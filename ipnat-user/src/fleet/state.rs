//! What a running controller records of the fleet's table (in its records directory, for
//! `ipnat status`), and the lag it reports.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FleetTable, Refused};

/// The fleet as one gateway serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// The etcd revision of the table the data plane serves (0: none yet).
    pub revision: i64,
    /// The newest revision of the table seen, served or not: above `revision` while a newer
    /// table is refused (this gateway is then stale and knows it).
    pub newest_seen: i64,
    /// The version of the table served: the write guard's mod revision (see `follow`), the
    /// same on every gateway serving the same table, which peers compare.
    #[serde(default)]
    pub version: i64,
    /// The fleet's mappings and steering rules served.
    pub mappings: usize,
    pub steering: usize,
    /// Why the newest table is not served, naming the key (none while it is).
    pub refused: Option<Refused>,
    /// Whether the watch is up; `error` says why not.
    pub connected: bool,
    pub error: Option<String>,
    /// When etcd last confirmed that `newest_seen` is the newest there is (Unix ms; 0: never).
    pub confirmed_unix_ms: u64,
}

/// What a gateway tells its peers (its metrics server's `/fleet`): the table it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub version: i64,
    pub revision: i64,
    pub connected: bool,
}

impl PeerView {
    pub fn of(state: &FleetState) -> Self {
        PeerView {
            version: state.version,
            revision: state.revision,
            connected: state.connected,
        }
    }
}

const FLEET_STATE: &str = "fleet.json";
/// The table served, in a record of its own: written only when it changes (the state above
/// changes every progress interval).
const FLEET_TABLE: &str = "fleet-table.json";

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl FleetState {
    /// How far behind the fleet this gateway may be: 0 while it serves the newest table etcd
    /// confirmed within the last progress interval; else the time since etcd last confirmed
    /// what it serves (growing while etcd is unreachable or a newer table is refused).
    /// None before etcd was ever read.
    pub fn lag_ms(&self, now_ms: u64) -> Option<u64> {
        if self.confirmed_unix_ms == 0 {
            return None;
        }
        let since = now_ms.saturating_sub(self.confirmed_unix_ms);
        let fresh = super::follow::PROGRESS_INTERVAL.as_millis() as u64 * 2;
        Some(
            if self.revision == self.newest_seen && self.connected && since <= fresh {
                0
            } else {
                since
            },
        )
    }

    /// Whether this gateway does not serve the newest table it has seen (refused or not
    /// applied).
    pub fn stale(&self) -> bool {
        self.newest_seen > self.revision
    }

    /// Whether the newest table was refused by this gateway alone: it is valid, but this
    /// gateway could not apply it (it conflicts with the gateway's own config, or the data
    /// plane failed), so the fleet's other gateways serve it and this one is behind them. A
    /// table refused for what it holds (a key named) is refused by every gateway alike:
    /// together they keep the last good one, and none is behind.
    pub fn behind(&self) -> bool {
        self.stale() && self.refused.as_ref().is_some_and(|r| r.key.is_empty())
    }

    pub fn load(pin_path: &Path) -> Option<Self> {
        crate::state::Records::lookup(pin_path).read_json(FLEET_STATE)
    }

    pub fn save(&self, pin_path: &Path) -> std::io::Result<()> {
        crate::state::Records::lookup(pin_path).write_json(FLEET_STATE, self)
    }

    /// The table served when the state was last saved, kept so that a restarted controller
    /// serves it at once instead of nothing until etcd answers.
    pub fn load_table(pin_path: &Path) -> Option<FleetTable> {
        crate::state::Records::lookup(pin_path).read_json(FLEET_TABLE)
    }

    pub fn save_table(pin_path: &Path, table: &FleetTable) -> std::io::Result<()> {
        crate::state::Records::lookup(pin_path).write_json(FLEET_TABLE, table)
    }

    pub fn render(&self, now_ms: u64) -> String {
        let mut s = format!(
            "fleet:      etcd {} prefix {}: revision {} served ({} mappings, {} steering rules), newest seen {}, lag {}, {}\n",
            self.endpoints.join(","),
            self.prefix,
            self.revision,
            self.mappings,
            self.steering,
            self.newest_seen,
            self.lag_ms(now_ms)
                .map_or("unknown (not read yet)".to_owned(), |ms| format!(
                    "{:.1} s",
                    ms as f64 / 1000.0
                )),
            if self.connected {
                "watching".to_owned()
            } else {
                format!(
                    "not connected ({}); the last good table stays",
                    self.error.as_deref().unwrap_or("connecting")
                )
            }
        );
        if let Some(r) = &self.refused {
            if r.key.is_empty() {
                s.push_str(&format!(
                    "fleet:      BEHIND: this gateway cannot apply the table at revision {}: {}\n",
                    self.newest_seen, r.why
                ));
            } else {
                s.push_str(&format!(
                    "fleet:      REFUSED: the table at revision {} holds a bad entry: {} (fix or remove {}; every gateway keeps the last good table)\n",
                    self.newest_seen, r.why, r.key
                ));
            }
        }
        s
    }
}
