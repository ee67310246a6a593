//! Writing what the config (and the provider's last good sync) asks for into the tables and
//! the host: a reload, a sync, the neighbours the steering rules need.

use anyhow::{Context, Result};
use tracing::{info, warn};

use super::{
    policy::{Sources, effective, reloadable},
    unix_now,
};
use crate::{
    config::{Config, Orientation},
    dataplane::Dataplane,
    providers::Synced,
    system::AddressOwner,
};

/// Asks the kernel to resolve (or refresh) the steering gateways' MAC addresses, so that
/// steered packets find them: the data path's own redirects do not keep neighbours alive.
pub(super) fn resolve_gateways(config: &Config) {
    for r in &config.steering {
        let result = crate::dataplane::ifindex(&r.interface)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|ifindex| crate::system::resolve_neighbour(ifindex, r.gateway));
        if let Err(e) = result {
            warn!(gateway = %r.gateway, interface = %r.interface, "could not ask for the gateway's MAC address: {e}");
        }
    }
}

/// Puts `addresses` on their interfaces for `owner` and takes off what it added before and no
/// longer wants ([`crate::system::reconcile_addresses`]), logging each with `why` (added,
/// removed).
fn reconcile_logged(
    addresses: &[(String, ipnet::Ipv4Net)],
    config: &Config,
    owner: AddressOwner,
    keep_others: bool,
    why: (&str, &str),
) -> Result<()> {
    let (added, removed) =
        crate::system::reconcile_addresses(addresses, &config.pin_path, owner, keep_others)?;
    for a in added {
        info!(address = %a, "added: {}", why.0);
    }
    for a in removed {
        info!(address = %a, "removed: {}", why.1);
    }
    Ok(())
}

/// Writes the config's tables and settings. In host orientation the public addresses are put
/// on `lo` before their mappings are installed, and those of removed mappings taken off after.
pub(super) fn apply_config(dp: &mut Dataplane, config: &Config) -> Result<()> {
    let host = config.orientation == Orientation::Host;
    let eips: Vec<(String, ipnet::Ipv4Net)> = if host {
        config
            .mappings
            .iter()
            .map(|m| ("lo".to_owned(), m.public.0))
            .collect()
    } else {
        Vec::new()
    };
    let reconcile = |keep_others: bool| {
        reconcile_logged(
            &eips,
            config,
            AddressOwner::Host,
            keep_others,
            (
                "a public address of host orientation",
                "its mapping is gone",
            ),
        )
    };
    reconcile(true)?;
    dp.tables
        .apply_internal(&config.internal.iter().map(|b| b.0).collect::<Vec<_>>())?;
    dp.tables.set_host(host)?;
    dp.tables.apply(&config.mappings)?;
    dp.tables.set_fast_path(config.fast_path)?;
    reconcile(false)?;
    apply_steering(dp, config)
}

/// Writes the config's steering rules (and what they need of the host).
fn apply_steering(dp: &mut Dataplane, config: &Config) -> Result<()> {
    let mut rules = Vec::new();
    for (i, r) in config.steering.iter().enumerate() {
        let ifindex = crate::dataplane::ifindex(&r.interface)
            .with_context(|| format!("steer[{i}].interface"))?;
        rules.push((r.clone(), ifindex));
    }
    dp.tables.apply_steering(&rules)?;
    resolve_gateways(config);
    if !config.steering.is_empty() {
        let mut ifaces: Vec<String> = config
            .steering
            .iter()
            .map(|r| r.interface.clone())
            .collect();
        ifaces.sort();
        ifaces.dedup();
        for (key, old) in crate::system::loosen_rp_filter(&ifaces, &config.pin_path)? {
            warn!(%key, old = %old, "reverse-path filtering was strict: set to loose (2) so that replies to steered sources are accepted; `ipnat down` restores it");
        }
    }
    Ok(())
}

/// Reloads the config file (see [`reload`]) and records the outcome for the metrics; whether
/// it was applied.
pub(super) fn do_reload(
    dp: &mut Dataplane,
    path: &std::path::Path,
    config: &mut Config,
    ctl: &crate::metrics::ControllerCounters,
    sources: &Sources,
) -> bool {
    use std::sync::atomic::Ordering;
    match reload(dp, path, config, sources) {
        Ok(new) => {
            info!(mappings = new.mappings.len(), "reloaded {}", path.display());
            *config = new;
            ctl.reloads_ok.fetch_add(1, Ordering::Relaxed);
            ctl.last_apply_unix.store(unix_now(), Ordering::Relaxed);
            true
        }
        Err(e) => {
            warn!("reload refused, the data plane keeps its tables: {e:#}");
            ctl.reloads_failed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Re-reads the config file: a valid one that changes only what a reload may change (see
/// [`reloadable`]) is applied; any other changes nothing.
fn reload(
    dp: &mut Dataplane,
    path: &std::path::Path,
    old: &Config,
    sources: &Sources,
) -> Result<Config> {
    let new = Config::load(path)?;
    reloadable(old, &new)?;
    apply_config(dp, &sources.effective(&new)?)?;
    Ok(new)
}

/// Applies a successful sync: the NICs' addresses (when the provider manages them), then the
/// tables with its rules and mappings. An error leaves the last good state in place.
pub(super) fn apply_synced(
    dp: &mut Dataplane,
    config: &Config,
    sources: &Sources,
    new: &Synced,
) -> Result<()> {
    let eff = effective(config, new, &sources.fleet)?;
    if config.provider_addresses() {
        reconcile_logged(
            &new.addresses,
            config,
            AddressOwner::Provider,
            false,
            ("the cloud assigned it", "the cloud no longer assigns it"),
        )?;
    }
    apply_config(dp, &eff)
}
