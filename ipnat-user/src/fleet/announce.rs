//! The routes a gateway announces, in its own kernel table (see `crate::system::routes`):
//! one per public prefix out of the outward interface, and a default route out of the inward
//! one, each present only while its side is announced ([`super::health::decide`]).

use ipnet::Ipv4Net;

use super::health::Decision;
use crate::{
    config::{AnnounceConfig, Block},
    system::OwnRoute,
};

/// The routes that `decision` asks for, serving `publics`.
pub fn desired(
    config: &AnnounceConfig,
    decision: &Decision,
    publics: &[Block],
) -> Result<Vec<OwnRoute>, crate::dataplane::DataplaneError> {
    let mut out = Vec::new();
    if decision.outward {
        let ifindex = crate::dataplane::ifindex(&config.outward)?;
        out.extend(publics.iter().map(|b| OwnRoute {
            dst: b.0.trunc(),
            ifindex,
        }));
    }
    if decision.inward {
        out.push(OwnRoute {
            dst: Ipv4Net::default(),
            ifindex: crate::dataplane::ifindex(&config.inward)?,
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Makes ipnat's routes in `config.table` equal `desired`: adds (or replaces) what is missing
/// first, then removes the rest, so a route that stays is never absent. Touches no route
/// without ipnat's protocol. Records the table for the data plane at `pin_path` first (see
/// [`crate::system::RouteTable`]). Returns what was added and what removed.
pub fn reconcile(
    pin_path: &std::path::Path,
    config: &AnnounceConfig,
    desired: &[OwnRoute],
) -> std::io::Result<(Vec<OwnRoute>, Vec<OwnRoute>)> {
    let table = crate::system::RouteTable {
        table: config.table,
        protocol: config.protocol,
    };
    if crate::system::RouteTable::load(pin_path) != Some(table) {
        table.save(pin_path)?;
    }
    let current = crate::system::own_routes(config.table, config.protocol)?;
    let added: Vec<OwnRoute> = desired
        .iter()
        .filter(|r| !current.contains(r))
        .copied()
        .collect();
    for r in &added {
        crate::system::replace_route(config.table, config.protocol, *r)?;
    }
    let removed: Vec<OwnRoute> = current
        .iter()
        // A route replaced above (same prefix, another interface) is not removed.
        .filter(|r| !desired.iter().any(|d| d.dst == r.dst))
        .copied()
        .collect();
    for r in &removed {
        crate::system::delete_route(config.table, config.protocol, r.dst)?;
    }
    Ok((added, removed))
}
