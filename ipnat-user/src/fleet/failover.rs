//! What `ipnat status` shows of the failover shards: who leads each, this gateway's role in
//! it, and its last takeover (recorded by the controller in /run, see `crate::state`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::providers::takeover::TakeoverReport;

/// This gateway's view of every shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverState {
    /// This gateway's name in the elections.
    pub node: String,
    pub shards: Vec<ShardState>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    pub name: String,
    /// `leader`, `standby` (campaigning), `refused` (a preflight found it could not take the
    /// shard over: it does not campaign) or `connecting` (to etcd, or the cloud did not
    /// answer the preflight: tried again soon).
    pub role: String,
    /// When it took that role (Unix milliseconds).
    #[serde(default)]
    pub role_since_unix_ms: u64,
    /// When this gateway last stopped leading it (Unix milliseconds; 0: never did).
    #[serde(default)]
    pub led_until_unix_ms: u64,
    /// Who leads the shard, as last seen.
    pub leader: Option<String>,
    /// Why it is refused, or the last error.
    pub detail: String,
    /// The lease time this gateway has left to act as leader (0 unless it leads).
    pub fence_left_ms: u64,
    pub last_takeover: Option<TakeoverRecord>,
    /// The last time this gateway gave way on purpose (a move asked through etcd).
    #[serde(default)]
    pub last_move: Option<MoveRecord>,
}

/// This gateway gave way for a move (see `crate::fleet::handover`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub unix_ms: u64,
    /// `handed the shard over` (it led) or `stepped back in line` (it stood by ahead).
    pub what: String,
    pub to: String,
    pub by: String,
}

impl MoveRecord {
    pub fn of(what: &str, request: super::handover::MoveRequest) -> Self {
        MoveRecord {
            unix_ms: super::unix_ms(),
            what: what.to_owned(),
            to: request.to,
            by: request.by,
        }
    }
}

/// One takeover by this gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverRecord {
    /// When it was elected.
    pub elected_unix_ms: u64,
    /// From the election to the last step done (or the error).
    pub duration_ms: u64,
    /// `ok`, or the last error (the takeover is retried while this gateway leads).
    pub result: String,
    pub report: TakeoverReport,
}

const FAILOVER_STATE: &str = "failover.json";

impl FailoverState {
    pub fn load(pin_path: &Path) -> Option<Self> {
        crate::state::Records::lookup(pin_path).read_json(FAILOVER_STATE)
    }

    pub fn save(&self, pin_path: &Path) -> std::io::Result<()> {
        crate::state::Records::lookup(pin_path).write_json(FAILOVER_STATE, self)
    }

    pub fn render(&self) -> String {
        let mut s = format!("failover:   as {}\n", self.node);
        for sh in &self.shards {
            s.push_str(&format!(
                "  shard {}: {}{}",
                sh.name,
                sh.role,
                match (&sh.leader, sh.role.as_str()) {
                    (_, "leader") => format!(" ({} ms of lease left)", sh.fence_left_ms),
                    (Some(l), _) => format!(", leader {l}"),
                    (None, _) => ", no leader".to_owned(),
                }
            ));
            if !sh.detail.is_empty() {
                s.push_str(&format!("; {}", sh.detail));
            }
            s.push('\n');
            if let Some(t) = &sh.last_takeover {
                s.push_str(&format!(
                    "    last takeover: {} in {} ms ({} retried calls)\n",
                    t.result, t.duration_ms, t.report.retries
                ));
                for step in &t.report.steps {
                    s.push_str(&format!("      {step}\n"));
                }
            }
            if let Some(m) = &sh.last_move {
                let to = if m.what.starts_with("handed") {
                    "to"
                } else {
                    "for"
                };
                s.push_str(&format!(
                    "    last move: {} {to} {} (asked by {})\n",
                    m.what, m.to, m.by
                ));
            }
        }
        s
    }
}
