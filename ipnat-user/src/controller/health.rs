//! `[announce]` in a running controller: the readiness check every `check_interval_ms`, and
//! the routes it keeps in line with it (see `crate::fleet::health`).

use std::time::Duration;

use tracing::{info, warn};

use crate::{
    config::{AnnounceConfig, Config},
    dataplane::{AttachMode, Dataplane},
    fleet::{
        FleetState,
        health::{Checks, Decision, HealthState, decide},
    },
};

/// How long bird may take to answer.
const BIRD_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a peer may take to say what it serves.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);

/// What the checks remember between them: since when a peer has served a newer table.
pub(super) struct Peers {
    client: reqwest::Client,
    ahead_since: Option<std::time::Instant>,
}

impl Peers {
    pub(super) fn new() -> Self {
        Peers {
            client: reqwest::Client::builder()
                .timeout(PEER_TIMEOUT)
                .build()
                .expect("an HTTP client"),
            ahead_since: None,
        }
    }

    /// The peers that serve a newer table version than `version`, with theirs. Peers that
    /// do not answer are left out.
    async fn ahead(&self, peers: &[String], version: i64) -> Vec<(String, i64)> {
        let mut asks = tokio::task::JoinSet::new();
        for p in peers {
            let (client, p) = (self.client.clone(), p.clone());
            asks.spawn(async move {
                let body = client
                    .get(format!("{p}/fleet"))
                    .send()
                    .await
                    .ok()?
                    .bytes()
                    .await
                    .ok()?;
                let view: crate::fleet::PeerView = serde_json::from_slice(&body).ok()?;
                (view.version > version).then_some((p, view.version))
            });
        }
        let mut out: Vec<(String, i64)> = asks.join_all().await.into_iter().flatten().collect();
        out.sort();
        out
    }
}

/// Why this gateway is behind the fleet, if it knows it is: the newest table is valid but it
/// could not apply it, or a peer has served a newer one for longer than the grace period.
async fn stale(
    fleet: Option<&FleetState>,
    announce: &AnnounceConfig,
    peers: &mut Peers,
) -> Option<String> {
    let f = fleet?;
    if f.behind() {
        return Some(format!(
            "the fleet's table is at revision {} but this gateway could not apply it and serves {} ({})",
            f.newest_seen,
            f.revision,
            f.refused.as_ref().map_or("", |r| r.why.as_str())
        ));
    }
    let ahead = peers.ahead(&announce.peers, f.version).await;
    let Some((peer, version)) = ahead.first() else {
        peers.ahead_since = None;
        return None;
    };
    let since = *peers
        .ahead_since
        .get_or_insert_with(std::time::Instant::now);
    (since.elapsed() >= Duration::from_millis(announce.stale_grace_ms)).then(|| {
        format!(
            "peer {peer} serves the fleet's table version {version}, this gateway {} ({})",
            f.version,
            if f.connected {
                "etcd connected".to_owned()
            } else {
                format!("etcd: {}", f.error.as_deref().unwrap_or("not connected"))
            }
        )
    })
}

/// One check: readiness, the decision, the routes made to match it; recorded for status.
pub(super) async fn check(
    dp: &Dataplane,
    config: &Config,
    announce: &AnnounceConfig,
    attached: &[(String, AttachMode)],
    fleet: Option<FleetState>,
    last: Option<&Decision>,
    peers: &mut Peers,
) -> HealthState {
    let self_check = attached
        .iter()
        .find_map(|(iface, mode)| dp.self_check(iface, *mode).err());
    let sessions = match &announce.bird_socket {
        Some(socket) => Some(
            crate::fleet::bird::protocols(socket, BIRD_TIMEOUT)
                .await
                .map_err(|e| format!("{}: {e}", socket.display())),
        ),
        None => None,
    };
    let checks = Checks {
        self_check,
        stale: stale(fleet.as_ref(), announce, peers).await,
        drained: crate::fleet::health::drained(&config.pin_path),
        sessions,
    };
    let mut decision = decide(&checks, announce);
    if last != Some(&decision) {
        if decision.reasons.is_empty() {
            info!(
                outward = decision.outward,
                inward = decision.inward,
                "ready: announcing"
            );
        } else {
            warn!(ready = decision.ready, outward = decision.outward, inward = decision.inward, reasons = %decision.reasons.join("; "), "announcement changed");
        }
    }
    let publics: Vec<_> = match dp.tables.mappings() {
        Ok(m) => m.into_iter().map(|m| m.public).collect(),
        Err(e) => {
            decision.reasons.push(format!("reading the tables: {e}"));
            decision.outward = false;
            Vec::new()
        }
    };
    let routes = crate::fleet::announce::desired(announce, &decision, &publics)
        .map_err(|e| e.to_string())
        .and_then(|want| {
            crate::fleet::announce::reconcile(&config.pin_path, announce, &want)
                .map(|changes| (want, changes))
                .map_err(|e| e.to_string())
        });
    let names = |ifindex: u32| {
        [&announce.outward, &announce.inward]
            .into_iter()
            .find(|n| crate::dataplane::ifindex(n).ok() == Some(ifindex))
            .cloned()
            .unwrap_or_else(|| ifindex.to_string())
    };
    let routes = match routes {
        Ok((want, (added, removed))) => {
            for r in &added {
                info!(route = %r.dst, dev = %names(r.ifindex), table = announce.table, "announced");
            }
            for r in &removed {
                info!(route = %r.dst, table = announce.table, "withdrawn");
            }
            want
        }
        Err(e) => {
            warn!(table = announce.table, "updating the announced routes: {e}");
            decision.reasons.push(format!("updating the routes: {e}"));
            crate::system::own_routes(announce.table, announce.protocol).unwrap_or_default()
        }
    };
    let state = HealthState {
        decision,
        table: announce.table,
        protocol: announce.protocol,
        routes: routes
            .iter()
            .map(|r| (r.dst.to_string(), names(r.ifindex)))
            .collect(),
        sessions: match checks.sessions {
            Some(Ok(s)) => s,
            _ => Default::default(),
        },
        checked_unix_ms: crate::fleet::unix_ms(),
    };
    if let Err(e) = state.save(&config.pin_path) {
        warn!("recording the health check: {e}");
    }
    state
}
