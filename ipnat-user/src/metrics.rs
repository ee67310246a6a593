//! Prometheus metrics, read from the maps at each scrape (the counters live in the kernel; the
//! controller keeps no copy that could drift from them).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::dataplane::{DataplaneError, Tables};

/// What the controller itself counts (reloads), shared with the metrics server.
#[derive(Debug, Default)]
pub struct ControllerCounters {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Unix time of the last successful apply of the tables.
    pub last_apply_unix: AtomicU64,
    pub syncs_ok: AtomicU64,
    pub syncs_failed: AtomicU64,
    /// Unix time of the last successful provider sync (0: never).
    pub last_sync_unix: AtomicU64,
    /// What the controller serves of the fleet's table (none without [etcd]).
    pub fleet: Mutex<Option<crate::fleet::FleetState>>,
    /// The last readiness check and what it announces (none without [announce]).
    pub health: Mutex<Option<crate::fleet::health::HealthState>>,
    /// The failover shards as this gateway sees them (none without [failover]).
    pub failover: Mutex<Option<crate::fleet::failover::FailoverState>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MappingLabels {
    public: String,
    private: String,
    /// `in` (destination public -> private) or `out` (source private -> public).
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SteerLabels {
    source: String,
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The metrics in the Prometheus text format.
pub fn render(tables: &Tables, ctl: &ControllerCounters) -> Result<String, DataplaneError> {
    let snap = tables.snapshot()?;
    let mut reg = Registry::with_prefix("ipnat");
    let packets = Family::<MappingLabels, Counter>::default();
    let bytes = Family::<MappingLabels, Counter>::default();
    for m in &snap.mappings {
        let labels = |direction| MappingLabels {
            public: m.mapping.public.to_string(),
            private: m.mapping.private.to_string(),
            direction,
        };
        packets.get_or_create(&labels("in")).inc_by(m.dnat_packets);
        packets.get_or_create(&labels("out")).inc_by(m.snat_packets);
        bytes.get_or_create(&labels("in")).inc_by(m.dnat_bytes);
        bytes.get_or_create(&labels("out")).inc_by(m.snat_bytes);
    }
    reg.register(
        "mapping_packets",
        "Packets translated per mapping and direction",
        packets,
    );
    reg.register(
        "mapping_bytes",
        "Bytes (whole frames) translated per mapping and direction",
        bytes,
    );
    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    let steer_packets = Family::<SteerLabels, Counter>::default();
    let steer_bytes = Family::<SteerLabels, Counter>::default();
    for r in &snap.steering {
        let labels = SteerLabels {
            source: r.source.to_string(),
            interface: r.interface.clone(),
        };
        steer_packets.get_or_create(&labels).inc_by(r.packets);
        steer_bytes.get_or_create(&labels).inc_by(r.bytes);
    }
    reg.register(
        "steer_packets",
        "Packets sent out of their source's interface, per steering rule",
        steer_packets,
    );
    reg.register(
        "steer_bytes",
        "Bytes sent out of their source's interface, per steering rule",
        steer_bytes,
    );
    reg.register(
        "steer_rules",
        "Steering rules installed",
        gauge(snap.steering.len() as i64),
    );
    let outcomes = Family::<OutcomeLabels, Counter>::default();
    for (outcome, n) in &snap.reasons {
        outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(*n);
    }
    reg.register(
        "packets",
        "Packets seen by the data plane's hooks, by what happened to them (see README)",
        outcomes,
    );

    reg.register(
        "mappings",
        "Mappings installed",
        gauge(snap.mappings.len() as i64),
    );
    reg.register(
        "mappings_capacity",
        "Room in the mapping tables (max_mappings)",
        gauge(i64::from(snap.memory.capacity)),
    );
    let memory = Family::<MapLabels, Gauge>::default();
    for (map, b) in &snap.memory.maps {
        memory.get_or_create(&MapLabels { map }).set(*b as i64);
    }
    reg.register(
        "map_memory_bytes",
        "Kernel memory charged to each map",
        memory,
    );
    // A counter by result (`ok`, `error`).
    let by_result = |ok: &AtomicU64, failed: &AtomicU64| {
        let f = Family::<ResultLabels, Counter>::default();
        for (result, n) in [("ok", ok), ("error", failed)] {
            f.get_or_create(&ResultLabels { result })
                .inc_by(n.load(Ordering::Relaxed));
        }
        f
    };
    reg.register(
        "config_reloads",
        "Config reloads by result",
        by_result(&ctl.reloads_ok, &ctl.reloads_failed),
    );
    reg.register(
        "provider_syncs",
        "Cloud provider syncs by result",
        by_result(&ctl.syncs_ok, &ctl.syncs_failed),
    );
    reg.register(
        "last_sync_timestamp_seconds",
        "When a cloud provider sync last succeeded (Unix time; 0: never)",
        gauge(ctl.last_sync_unix.load(Ordering::Relaxed) as i64),
    );
    reg.register(
        "last_apply_timestamp_seconds",
        "When the tables were last written from the config (Unix time)",
        gauge(ctl.last_apply_unix.load(Ordering::Relaxed) as i64),
    );
    if let Some(fleet) = ctl.fleet.lock().expect("not poisoned").as_ref() {
        reg.register(
            "fleet_revision",
            "The etcd revision of the fleet's table this gateway serves",
            gauge(fleet.revision),
        );
        reg.register(
            "fleet_newest_seen_revision",
            "The newest revision of the fleet's table seen, served or refused",
            gauge(fleet.newest_seen),
        );
        let lag = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        lag.set(
            fleet
                .lag_ms(crate::fleet::unix_ms())
                .map_or(f64::NAN, |ms| ms as f64 / 1000.0),
        );
        reg.register(
            "fleet_lag_seconds",
            "How long since etcd last confirmed that this gateway serves the newest table (0 while it does; NaN before the first read)",
            lag,
        );
        reg.register(
            "fleet_refused",
            "1 while the newest fleet table is refused (bad or conflicting entry; see ipnat status)",
            gauge(i64::from(fleet.refused.is_some())),
        );
        reg.register(
            "fleet_connected",
            "1 while the watch on etcd is up",
            gauge(i64::from(fleet.connected)),
        );
    }
    if let Some(h) = ctl.health.lock().expect("not poisoned").as_ref() {
        let d = &h.decision;
        reg.register(
            "ready",
            "1 while this gateway is ready: programs attached, the self-check's probe translated, the table the newest it knows",
            gauge(i64::from(d.ready)),
        );
        reg.register(
            "drained",
            "1 while this gateway is drained (ipnat drain)",
            gauge(i64::from(d.drained)),
        );
        let announced = Family::<SideLabels, Gauge>::default();
        announced
            .get_or_create(&SideLabels { side: "outward" })
            .set(i64::from(d.outward));
        announced
            .get_or_create(&SideLabels { side: "inward" })
            .set(i64::from(d.inward));
        reg.register(
            "announced",
            "1 while this side is announced (outward: the public prefixes; inward: the default route)",
            announced,
        );
    }
    if let Some(f) = ctl.failover.lock().expect("not poisoned").as_ref() {
        let leader = Family::<ShardLabels, Gauge>::default();
        let takeover = Family::<ShardLabels, Gauge<f64, AtomicU64>>::default();
        for s in &f.shards {
            let labels = ShardLabels {
                shard: s.name.clone(),
            };
            leader
                .get_or_create(&labels)
                .set(i64::from(s.role == "leader"));
            if let Some(t) = s.last_takeover.as_ref().filter(|t| t.result == "ok") {
                takeover
                    .get_or_create(&labels)
                    .set(t.duration_ms as f64 / 1000.0);
            }
        }
        reg.register(
            "failover_leader",
            "1 while this gateway leads the failover shard (holds its addresses and routes)",
            leader,
        );
        reg.register(
            "failover_last_takeover_seconds",
            "How long this gateway's last successful takeover of the shard took, from its election",
            takeover,
        );
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .map_err(|_| DataplaneError::Corrupt("metrics encoding"))?;
    Ok(out)
}

/// At most this many connections to the metrics server at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection must have sent its request head within this.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A connection is closed after this, whatever it is doing (a scrape takes milliseconds).
pub const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `/metrics` on `listener` until the runtime stops. `tables` is a read-only view of the
/// pinned maps (opened separately from the controller's own handle).
///
/// Bounded, so that what the port is sent never takes what the controller's own work needs
/// (file descriptors for reloads, syncs, map writes): at most [`MAX_CONNECTIONS`] open
/// connections (others are closed at once), each given [`HEADER_TIMEOUT`] to send its request
/// and [`CONNECTION_TIMEOUT`] in all; an accept that fails (no descriptor left) waits a little
/// instead of spinning.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tables: Tables,
    ctl: Arc<ControllerCounters>,
) -> std::io::Result<()> {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
    let tables = Arc::new(Mutex::new(tables));
    let fleet_ctl = ctl.clone();
    let app = Router::new()
        .route(
            "/fleet",
            get(move || {
                let ctl = fleet_ctl.clone();
                async move {
                    let peer = ctl
                        .fleet
                        .lock()
                        .expect("not poisoned")
                        .as_ref()
                        .map(crate::fleet::PeerView::of);
                    match peer {
                        Some(p) => axum::Json(p).into_response(),
                        None => (StatusCode::NOT_FOUND, "no [etcd] in this gateway's config")
                            .into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let tables = tables.clone();
                let ctl = ctl.clone();
                async move {
                    let text = {
                        let t = tables.lock().expect("metrics lock");
                        render(&t, &ctl)
                    };
                    match text {
                        Ok(body) => (
                            StatusCode::OK,
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(e) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                        }
                    }
                }
            }),
        );
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}
