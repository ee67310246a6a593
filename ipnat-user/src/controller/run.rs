//! The controller's life: the checks before anything changes, the start (lock, metrics port,
//! load or adopt, attach) undone when it fails, and the event loop (signals, config changes,
//! the provider's sync schedule, counters).

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use tracing::{info, warn};

use super::{
    apply::{apply_config, apply_synced, do_reload, resolve_gateways},
    policy::Sources,
    unix_now,
};
use crate::{
    config::{Config, Orientation},
    dataplane::{Dataplane, Tables},
    providers::Synced,
};

/// `ipnat run`: takes the data plane at the config's pin path (creating or adopting it),
/// attaches it, and keeps its tables in line with the config file and the provider until
/// SIGINT or SIGTERM. The data plane stays attached when it returns.
pub fn run(config_path: &Path, config: Config, stats_interval: u64) -> Result<()> {
    // The soft limit on open files up to the hard one (the unit's LimitNOFILE=): BPF objects,
    // netlink sockets and the metrics server's connections share it.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    // Check every interface before touching the kernel: a bad config changes nothing.
    for iface in &config.interfaces {
        crate::dataplane::ifindex(&iface.name).with_context(|| "in [[interface]]".to_string())?;
    }
    check_sysctls(&config);
    // One controller per data plane: a second `ipnat run` on the same pins is refused before
    // it touches anything.
    let records = crate::state::Records::of(&config.pin_path)?;
    let had_records = records.exist();
    let owner = records.lock()?;
    if owner.netns_gone {
        anyhow::bail!(
            "the data plane at {} was attached in a network namespace that no longer exists: `ipnat down --pin-path {}` clears what is left of it",
            config.pin_path.display(),
            config.pin_path.display()
        );
    }
    // The metrics port, bound before anything changes: a port in use fails the start while
    // nothing is attached, added or raised yet (and no record is left for a new data plane).
    let metrics = match config.metrics_addr() {
        Some(addr) => {
            let bound = std::net::TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            });
            match bound {
                Ok(listener) => Some((addr, listener)),
                Err(e) => {
                    if !had_records {
                        let _ = records.remove_all();
                    }
                    return Err(e).with_context(|| format!("metrics_listen = {addr}"));
                }
            }
        }
        None => None,
    };
    let fresh = !config.pin_path.exists();
    let mut dp = match Dataplane::load(Some(&config.pin_path), config.max_mappings) {
        Ok(dp) => dp,
        Err(e) => {
            // Leave nothing of a start that failed: what the loader pinned in a directory it
            // made, and the records of a data plane that never ran.
            if fresh {
                if let Err(undo) = crate::dataplane::teardown(&config.pin_path, &owner) {
                    warn!("undoing the failed start: {undo}");
                }
            } else if !had_records {
                let _ = records.remove_all();
            }
            return Err(e.into());
        }
    };
    if dp.adopted() {
        info!(pin_path = %config.pin_path.display(), "adopting the data plane an earlier run left pinned (it kept forwarding meanwhile)");
        if dp.tables.capacity() != config.max_mappings {
            warn!(
                pinned = dp.tables.capacity(),
                configured = config.max_mappings,
                "max_mappings differs from the pinned tables, which keep their size until `ipnat down`"
            );
        }
    }
    let host = config.orientation == Orientation::Host;
    if dp.adopted() && (dp.tables.flags()? & ipnat_common::FLAG_HOST != 0) != host {
        anyhow::bail!(
            "the data plane pinned at {} runs in the other orientation than orientation = \"{}\": run `ipnat down --pin-path {}` first (it detaches the programs)",
            config.pin_path.display(),
            config.orientation.name(),
            config.pin_path.display()
        );
    }
    // What the provider's last good sync asked for (an earlier run's, still in /run), applied
    // with the config so that a restart does not take it away until the first sync.
    let last_good = match config.provider() {
        Some(_) => crate::providers::SyncState::load(&config.pin_path)
            .map(|s| s.last_good)
            .unwrap_or_default(),
        None => Synced::default(),
    };
    // And the fleet's last good table, for the same reason (and so that a controller killed
    // and restarted changes nothing while etcd is slow or away).
    let (fleet_state, fleet_table) = super::fleet::restore(&config).unzip();
    let mut sources = Sources {
        synced: last_good,
        fleet: fleet_table.unwrap_or_default(),
    };
    let start = match sources.effective(&config) {
        Ok(c) => c,
        Err(e) => {
            warn!(
                "the provider's last sync or the fleet's last table no longer fits the config, waiting for the next: {e:#}"
            );
            sources = Sources::default();
            config.clone()
        }
    };
    let mut modes: Vec<(u32, crate::dataplane::AttachMode)> = Vec::new();
    let setup = (|| -> Result<()> {
        apply_config(&mut dp, &start)?;
        if config.announce.is_some() {
            // The self-check's own mapping (see dataplane::PROBE_MAPPING).
            dp.tables.install_probe()?;
        }
        if host {
            let ifaces: Vec<String> = config.interfaces.iter().map(|i| i.name.clone()).collect();
            for (key, old) in crate::system::quiet_arp(&ifaces, &config.pin_path)? {
                info!(%key, old = %old, "raised so that the public addresses on lo are never announced or answered for by ARP; `ipnat down` restores it");
            }
        }
        for iface in &config.interfaces {
            let mode = dp.attach(&iface.name, host, iface.xdp)?;
            let index = crate::dataplane::ifindex(&iface.name)?;
            let features = crate::netdev::xdp_features(index).ok().flatten();
            let xdp = features.map_or("unknown".to_owned(), crate::netdev::describe);
            modes.push((index, mode));
            match mode {
                crate::dataplane::AttachMode::XdpNative => {
                    let frags = if dp.uses_frags(index) {
                        " (frags-capable: jumbo frames)"
                    } else {
                        ""
                    };
                    info!(interface = %iface.name, xdp_features = %xdp, "attached XDP (native){frags} and TC on receive, TC on transmit");
                    if features.is_some_and(|f| f & crate::netdev::XDP_NDO_XMIT == 0) {
                        warn!(interface = %iface.name, "XDP cannot send into this interface (no ndo-xmit; a veth has it only while its peer runs an XDP program): packets for it are forwarded by TC until it can (checked every 20 s)");
                    }
                }
                crate::dataplane::AttachMode::Host => {
                    info!(interface = %iface.name, "attached TC on receive and transmit (host orientation)")
                }
                crate::dataplane::AttachMode::TcOnly if !iface.xdp => info!(
                    interface = %iface.name,
                    xdp_features = %xdp,
                    "xdp = false: attached TC on receive and transmit (no XDP)"
                ),
                crate::dataplane::AttachMode::TcOnly => warn!(
                    interface = %iface.name,
                    xdp_features = %xdp,
                    "no native XDP on this interface: attached TC on receive and transmit instead (slower; generic XDP is not used, it runs after GRO and sees partial checksums)"
                ),
            }
        }
        // Now that every interface is attached: which of them XDP may send into.
        dp.refresh_xdp_targets(&modes)?;
        let keep: Vec<String> = config.interfaces.iter().map(|i| i.name.clone()).collect();
        for gone in dp.detach_others(&keep)? {
            info!(link = %gone, "detached: interface no longer configured");
        }
        // Every link runs the new programs now: a rebuild's old tables count no more.
        dp.settle_rebuild()?;
        Ok(())
    })();
    if let Err(e) = setup {
        if !dp.adopted() {
            // Leave nothing behind from a start that failed.
            drop(dp);
            if let Err(undo) = crate::dataplane::teardown(&config.pin_path, &owner) {
                warn!("undoing the failed start: {undo}");
            }
        }
        return Err(e);
    }
    watch_routes(&dp)?;
    // What each interface runs, for the self-check.
    let attached: Vec<(String, crate::dataplane::AttachMode)> = config
        .interfaces
        .iter()
        .map(|i| i.name.clone())
        .zip(modes.iter().map(|(_, m)| *m))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Handlers first, then "running": a signal sent as soon as that line appears is handled.
    let (mut int, mut term, mut hup) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _rt = rt.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        )
    };
    let ctl = std::sync::Arc::new(crate::metrics::ControllerCounters::default());
    ctl.last_apply_unix
        .store(unix_now(), std::sync::atomic::Ordering::Relaxed);
    if let Some((addr, listener)) = metrics {
        let listener = {
            let _rt = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let tables = Tables::open_pinned(&config.pin_path)?;
        let ctl = ctl.clone();
        rt.spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, tables, ctl).await {
                warn!("metrics server stopped: {e}");
            }
        });
        info!(%addr, "serving Prometheus metrics at /metrics");
    }
    super::failover::record_start(&config, &ctl);
    info!(mappings = config.mappings.len(), pin_path = %config.pin_path.display(), "ipnat running; SIGHUP reloads the config; SIGINT/SIGTERM stop the controller and leave the data plane running (`ipnat down` removes it)");
    let mut config = config;
    // Reload on changes to the config file too: watch its directory (editors replace files).
    let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let name = config_path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && changes(&ev, name.as_deref())
        {
            let _ = tx.send(());
        }
    })
    .context("watching the config file")?;
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if let Err(e) = notify::Watcher::watch(&mut watcher, dir, notify::RecursiveMode::NonRecursive) {
        warn!(
            "not watching {} for changes (SIGHUP still reloads): {e}",
            dir.display()
        );
    }
    let mut last_text = std::fs::read_to_string(config_path).ok();
    // The fleet's follower: a snapshot, then a watch; its updates arrive here.
    let (fleet_tx, mut fleet_rx) = tokio::sync::mpsc::unbounded_channel();
    let fleet_on = config.etcd.is_some();
    if let (Some(etcd), Some(state)) = (config.etcd.clone(), fleet_state) {
        info!(endpoints = %etcd.endpoints.join(","), prefix = %etcd.prefix, revision = state.revision, "following the fleet's table in etcd");
        rt.spawn(crate::fleet::follow(etcd, fleet_tx));
        // The one copy of the fleet's state: the metrics server reads it too.
        *ctl.fleet.lock().expect("not poisoned") = Some(state);
    }
    // A failover takeover asks for a provider sync at once (its addresses go on the
    // interface through the sync, the one writer of addresses).
    let (sync_now_tx, mut sync_now) = tokio::sync::mpsc::unbounded_channel::<()>();
    rt.block_on(async {
        super::failover::spawn(&config, ctl.clone(), sync_now_tx);
        let mut tick = tokio::time::interval(Duration::from_secs(stats_interval.max(1)));
        let mut neighbours = tokio::time::interval(Duration::from_secs(20));
        let announce = config.announce.clone();
        let mut health = tokio::time::interval(Duration::from_millis(
            announce.as_ref().map_or(1000, |a| a.check_interval_ms),
        ));
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut peers = super::health::Peers::new();
        // The next sync: at once, then every interval; after a failure sooner at first and
        // backing off (see providers::retry_delay).
        let next_sync = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(next_sync);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    last_text = std::fs::read_to_string(config_path).ok();
                    if do_reload(&mut dp, config_path, &mut config, &ctl, &sources) {
                        // A config that fixes the provider's settings takes effect now, not
                        // after the schedule or its backoff.
                        failures = 0;
                        next_sync.as_mut().reset(tokio::time::Instant::now());
                    }
                }
                Some(()) = changed.recv() => {
                    // Editors write in several steps: let them finish, then reload only when
                    // the text really changed.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while changed.try_recv().is_ok() {}
                    let text = std::fs::read_to_string(config_path).ok();
                    if text.is_some() && text != last_text {
                        info!("{} changed", config_path.display());
                        last_text = text;
                        if do_reload(&mut dp, config_path, &mut config, &ctl, &sources) {
                            failures = 0;
                            next_sync.as_mut().reset(tokio::time::Instant::now());
                        }
                    }
                }
                Some(()) = sync_now.recv() => {
                    while sync_now.try_recv().is_ok() {}
                    next_sync.as_mut().reset(tokio::time::Instant::now());
                }
                Some(update) = fleet_rx.recv(), if fleet_on => {
                    if let Some(state) = ctl.fleet.lock().expect("not poisoned").as_mut() {
                        super::fleet::handle(&mut dp, &config, &mut sources, state, update);
                    }
                }
                _ = health.tick(), if announce.is_some() => {
                    let a = announce.as_ref().expect("announce is on");
                    let fleet = ctl.fleet.lock().expect("not poisoned").clone();
                    let last = ctl.health.lock().expect("not poisoned").as_ref().map(|h| h.decision.clone());
                    let started = std::time::Instant::now();
                    let state = super::health::check(&dp, &config, a, &attached, fleet, last.as_ref(), &mut peers).await;
                    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "health check");
                    *ctl.health.lock().expect("not poisoned") = Some(state);
                }
                _ = tick.tick(), if stats_interval > 0 => print!("{}", dp.tables.snapshot()?.render()),
                _ = neighbours.tick() => {
                    if let Ok(eff) = sources.effective(&config) {
                        resolve_gateways(&eff);
                    }
                    // What XDP may redirect to follows the drivers (a veth's peer may have
                    // gained or lost its XDP program).
                    if let Err(e) = dp.refresh_xdp_targets(&modes) {
                        warn!("updating the XDP redirect targets: {e}");
                    }
                }
                () = &mut next_sync, if config.provider().is_some() => {
                    let name = config.provider().map_or("", |p| p.cloud.name());
                    let mut state = crate::providers::SyncState::load(&config.pin_path).unwrap_or_default();
                    state.provider = name.into();
                    state.last_attempt_unix = unix_now();
                    let outcome = match crate::providers::sync(&config).await.map_err(anyhow::Error::from) {
                        Ok(new) => apply_synced(&mut dp, &config, &sources, &new).map(|()| new),
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(new) => {
                            if new != sources.synced {
                                info!(provider = name, rules = new.rules.len(), mappings = new.mappings.len(), "synced from the cloud");
                                for w in &new.warnings {
                                    warn!(provider = name, "{w}");
                                }
                            }
                            state.rules = new.rules.len();
                            state.mappings = new.mappings.len();
                            state.last_good = new.clone();
                            sources.synced = new;
                            state.last_success_unix = state.last_attempt_unix;
                            state.result = "ok".into();
                            ctl.syncs_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            ctl.last_sync_unix.store(state.last_attempt_unix, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            warn!(provider = name, "sync failed, the data plane keeps its tables: {e:#}");
                            state.result = format!("error: {e:#}");
                            ctl.syncs_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    let interval = Duration::from_secs(config.provider().map_or(3600, |p| p.interval_secs.max(1)));
                    let delay = if state.result == "ok" {
                        failures = 0;
                        interval
                    } else {
                        failures += 1;
                        crate::providers::retry_delay(interval, failures, crate::providers::jitter())
                    };
                    state.consecutive_failures = failures;
                    state.next_attempt_unix = unix_now() + delay.as_secs();
                    next_sync.as_mut().reset(tokio::time::Instant::now() + delay);
                    if let Err(e) = state.save(&config.pin_path) {
                        warn!("recording the sync state: {e}");
                    }
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    info!("controller stopping; the data plane stays attached and keeps translating");
    Ok(())
}

/// Starts the thread that bumps the route generation whenever the kernel reports a route,
/// rule, address or link change, so that the fast path forgets the reverse-path verdicts it
/// remembered; and bumps it once now, after subscribing: routes may have changed while no
/// controller watched (the verdicts also expire after a second by themselves).
fn watch_routes(dp: &Dataplane) -> Result<()> {
    let mut generation = dp.tables.route_generation_handle()?;
    let socket = crate::system::routing_changes().context("subscribing to routing changes")?;
    generation.bump()?;
    std::thread::Builder::new()
        .name("routes".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if let Err(e) = crate::system::wait_routing_change(&socket, &mut buf) {
                    warn!("watching routing changes stopped (remembered reverse-path verdicts now expire after a second): {e}");
                    return;
                }
                if let Err(e) = generation.bump() {
                    warn!("bumping the route generation: {e}");
                }
            }
        })?;
    Ok(())
}

/// Whether `ev` may have changed the file named `name`: written, created, renamed or removed.
/// Not an access: the controller reads the file when told of a change, and that read is an
/// event of its own (inotify's open and close), which would tell it again, forever: a loop
/// that kept the controller asleep 200 ms out of every 200 ms and delayed everything else
/// it does (fleet updates by up to seconds).
fn changes(ev: &notify::Event, name: Option<&std::ffi::OsStr>) -> bool {
    use notify::EventKind;
    matches!(
        ev.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    ) && ev.paths.iter().any(|p| p.file_name() == name)
}

/// Warns about host settings that break a gateway; changes nothing.
fn check_sysctls(config: &Config) {
    if config.orientation == Orientation::Host {
        // Nothing is forwarded: the public addresses are local.
        return;
    }
    let read = |key: &str| crate::system::read(key).unwrap_or_default();
    if read("net.ipv4.ip_forward") != "1" {
        warn!(
            "net.ipv4.ip_forward is off: translated packets will not be forwarded (sysctl -w net.ipv4.ip_forward=1)"
        );
    }
    for iface in &config.interfaces {
        let key = format!("net.ipv4.conf.{}.send_redirects", iface.name);
        if read(&key) == "1" || read("net.ipv4.conf.all.send_redirects") == "1" {
            warn!(interface = %iface.name, "ICMP redirects are on: a gateway that sends packets back out of the NIC they came in on tells the senders to go direct, past the translation (sysctl -w net.ipv4.conf.all.send_redirects=0 {key}=0)");
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::{
        Event, EventKind,
        event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode},
    };

    use super::changes;

    #[test]
    fn reading_the_config_file_is_not_a_change_of_it() {
        let name = Some(std::ffi::OsStr::new("ipnat.toml"));
        let at = |kind: EventKind, file: &str| {
            Event::new(kind).add_path(std::path::PathBuf::from("/etc/ipnat").join(file))
        };
        // What the controller's own read of the file produces.
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!changes(&at(kind, "ipnat.toml"), name), "{kind:?}");
        }
        // What editors and config management do.
        for kind in [
            EventKind::Modify(ModifyKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            let expected = !matches!(kind, EventKind::Access(_));
            assert_eq!(changes(&at(kind, "ipnat.toml"), name), expected, "{kind:?}");
        }
        assert!(!changes(
            &at(EventKind::Modify(ModifyKind::Any), "other.toml"),
            name
        ));
    }
}
