//! What `ipnat status` reports of a pinned data plane, and its rendering.

use super::*;

/// What `ipnat status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub pin_path: PathBuf,
    /// Layout version of the pinned maps.
    pub schema: u32,
    /// `gateway` or `host`.
    pub orientation: &'static str,
    /// Host orientation: peers in these prefixes see the private addresses.
    pub internal: Vec<Block>,
    pub fast_path: bool,
    /// The route generation (bumped on every routing change the controller saw) and the
    /// reverse-path verdicts the fast path remembers.
    pub route_generation: u32,
    pub remembered_reverse_paths: usize,
    pub mappings: usize,
    /// Of which block mappings.
    pub blocks: usize,
    pub capacity: u32,
    pub memory_bytes: u64,
    pub attached: Vec<AttachStatus>,
    pub steering: Vec<InstalledSteer>,
    /// Host settings ipnat changed (sysctl key -> the value it will restore).
    pub host_changes: BTreeMap<String, String>,
    /// Addresses ipnat added (and `ipnat down` removes), by who asked for them.
    pub addresses: Vec<crate::system::OwnedAddress>,
    /// The last cloud provider syncs, when a provider is configured.
    pub sync: Option<crate::providers::SyncState>,
    /// The fleet's table served, when the config has [etcd].
    pub fleet: Option<FleetStatus>,
    /// The last readiness check and what it announces, when the config has [announce].
    pub health: Option<crate::fleet::health::HealthState>,
    pub failover: Option<crate::fleet::failover::FailoverState>,
    /// The pid of the `ipnat run` holding the data plane, or None when none runs: the
    /// sync, fleet, health and failover sections are then as it last recorded them (a
    /// shard's role is nobody's now).
    pub controller_pid: Option<String>,
}

/// What a gateway serves of the fleet's table, with its lag now.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    #[serde(flatten)]
    pub state: crate::fleet::FleetState,
    /// See [`crate::fleet::FleetState::lag_ms`] (null before etcd was first read).
    pub lag_ms: Option<u64>,
    /// Whether this gateway knows the fleet has moved past the table it serves.
    pub stale: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttachStatus {
    pub iface: String,
    /// `xdp`, `tc-in` or `tc-out`.
    pub hook: String,
    /// How: `xdp native` or `tcx`.
    pub mode: &'static str,
    /// Whether the interface still exists (a link to a deleted one is defunct).
    pub present: bool,
    /// What its driver can do with XDP, as the kernel says (`unknown` where it cannot).
    pub xdp_features: String,
    /// How the data plane sends into it, from the interface table (see
    /// [`tables::describe_interface`]); empty where the table has no entry.
    pub sending: String,
}

/// The state of the data plane pinned under `dir`.
pub fn status(dir: &Path) -> Result<Status, DataplaneError> {
    let tables = Tables::open_pinned(dir)?;
    let settings = tables
        .settings
        .get(&0, 0)
        .map_err(map_err(names::SETTINGS))?;
    let mappings = tables.mappings()?;
    let attached = pinned_links(dir)?
        .into_iter()
        .map(|l| AttachStatus {
            present: ifindex(&l.iface).is_ok(),
            sending: ifindex(&l.iface)
                .ok()
                .and_then(|i| tables.interface(i))
                .map_or(String::new(), tables::describe_interface),
            xdp_features: ifindex(&l.iface)
                .ok()
                .and_then(|i| crate::netdev::xdp_features(i).ok().flatten())
                .map_or("unknown".to_owned(), crate::netdev::describe),
            mode: match l.hook.as_str() {
                "xdp" => "xdp native",
                "tc-gw" => "tcx (no native XDP)",
                _ => "tcx",
            },
            iface: l.iface,
            hook: l.hook,
        })
        .collect();
    Ok(Status {
        pin_path: dir.to_owned(),
        schema: settings.schema,
        orientation: if settings.flags & FLAG_HOST != 0 {
            "host"
        } else {
            "gateway"
        },
        internal: tables.internal_prefixes()?.into_iter().map(Block).collect(),
        fast_path: settings.flags & FLAG_FAST_PATH != 0,
        route_generation: tables.route_generation()?,
        remembered_reverse_paths: tables.remembered_verdicts(),
        blocks: mappings.iter().filter(|m| !m.public.is_host()).count(),
        mappings: mappings.len(),
        capacity: tables.capacity(),
        memory_bytes: tables.memory().total_bytes,
        attached,
        steering: tables.steering()?,
        host_changes: crate::system::changed(dir).sysctls,
        addresses: crate::system::owned_addresses(dir),
        sync: crate::providers::SyncState::load(dir),
        fleet: crate::fleet::FleetState::load(dir).map(|state| FleetStatus {
            lag_ms: state.lag_ms(crate::fleet::unix_ms()),
            stale: state.stale(),
            state,
        }),
        health: crate::fleet::health::HealthState::load(dir),
        failover: crate::fleet::failover::FailoverState::load(dir),
        controller_pid: crate::state::Records::lookup(dir).holder(),
    })
}

impl Status {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pin path:   {} (map layout {})",
            self.pin_path.display(),
            self.schema
        );
        let _ = writeln!(
            s,
            "controller: {}",
            match &self.controller_pid {
                Some(pid) => format!("running (pid {pid})"),
                None => "not running: the data plane forwards with the last tables; nothing syncs, follows etcd or leads".to_owned(),
            }
        );
        if self.orientation == "host" {
            let internal: Vec<String> = self.internal.iter().map(|n| n.0.to_string()).collect();
            let _ = writeln!(
                s,
                "orientation: host (public addresses are local; internal: {})",
                if internal.is_empty() {
                    "none".to_owned()
                } else {
                    internal.join(", ")
                }
            );
        } else {
            let _ = writeln!(
                s,
                "fast path:  {}",
                if self.fast_path {
                    "on (XDP/TC forward translated packets)"
                } else {
                    "off (the kernel forwards)"
                }
            );
            if self.fast_path {
                let _ = writeln!(
                    s,
                    "reverse paths: {} remembered, route generation {}",
                    self.remembered_reverse_paths, self.route_generation
                );
            }
        }
        let _ = writeln!(
            s,
            "mappings:   {} of {} ({} blocks), {} KiB of map memory",
            self.mappings,
            self.capacity,
            self.blocks,
            self.memory_bytes / 1024
        );
        if self.attached.is_empty() {
            let _ = writeln!(s, "attached:   nothing");
        }
        for a in &self.attached {
            let _ = writeln!(
                s,
                "attached:   {:<8} {:<7} {}{} (xdp-features: {}{}{})",
                a.iface,
                a.hook,
                a.mode,
                if a.present { "" } else { " (interface gone)" },
                a.xdp_features,
                if a.sending.is_empty() { "" } else { "; " },
                a.sending
            );
        }
        for r in &self.steering {
            let _ = writeln!(
                s,
                "steering:   from {} out of {} (via {} outside {}), {} packets",
                r.source, r.interface, r.gateway, r.subnet, r.packets
            );
        }
        if let Some(sync) = &self.sync {
            let _ = writeln!(
                s,
                "sync:       {} at {} (unix), last success {}: {} ({} steering rules, {} mappings)",
                sync.provider,
                sync.last_attempt_unix,
                sync.last_success_unix,
                sync.result,
                sync.rules,
                sync.mappings
            );
            if sync.consecutive_failures > 0 {
                let _ = writeln!(
                    s,
                    "sync:       {} failures in a row; next attempt at {} (unix), backing off",
                    sync.consecutive_failures, sync.next_attempt_unix
                );
            }
            for b in &sync.last_good.backends {
                let _ = writeln!(
                    s,
                    "backend:    {} <-> {} stands for EIP {} (tagged on {})",
                    b.mapping.public, b.mapping.private, b.eip, b.nic
                );
            }
            for w in &sync.last_good.warnings {
                let _ = writeln!(s, "warning:    {w}");
            }
        }
        if let Some(f) = &self.fleet {
            s.push_str(&f.state.render(crate::fleet::unix_ms()));
        }
        if let Some(h) = &self.health {
            s.push_str(&h.render());
        }
        if let Some(f) = &self.failover {
            if self.controller_pid.is_none() {
                s.push_str("failover:   (no controller runs: this gateway leads nothing; as last recorded:)\n");
            }
            s.push_str(&f.render());
        }
        for (key, old) in &self.host_changes {
            let _ = writeln!(s, "changed:    {key} (was {old}; `ipnat down` restores it)");
        }
        for a in &self.addresses {
            let _ = writeln!(
                s,
                "added:      {} on {} ({}; `ipnat down` removes it)",
                a.address, a.interface, a.owner
            );
        }
        s
    }
}
