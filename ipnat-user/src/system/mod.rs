//! What ipnat changes on the host besides the data plane, and puts back when it is removed
//! (`ipnat down`): sysctls (`sysctl.rs`), addresses (`addresses.rs`), neighbours and the
//! rtnetlink calls they take (`netlink.rs`); and the privileges it needs.
//!
//! Steering sends a source's packets out of the interface that owns it, and the replies come
//! back on that interface while the main routing table points elsewhere: strict reverse-path
//! filtering (`rp_filter = 1`, the RHEL and Alibaba Cloud Linux default) would drop them. ipnat
//! sets loose mode (2) on the interfaces it steers for when the effective value (the larger of
//! `all` and the interface's) is strict, records the old value, and restores it on `ipnat down`.
//!
//! In host orientation the public addresses are put on `lo`, and ARP is kept from giving them
//! away (`arp_ignore`, `arp_announce`, raised the same way). Addresses ipnat adds are recorded
//! per owner (the provider's sync, host orientation) and only ever removed by their owner or
//! by `ipnat down`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Refuses, naming what is missing, when this process cannot load BPF programs and attach them
/// to interfaces: it needs CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN, which root has; also
/// needed to mount bpffs), and reads pins that only root may open.
pub fn check_privileges(what: &str) -> Result<(), String> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |c: u32| eff & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (or CAP_SYS_ADMIN)");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what} needs root, or at least {}: this process lacks them (run it as root, e.g. under dist/ipnat.service)",
        missing.join(" and ")
    ))
}

/// The records of the data plane at `pin_path` (see [`crate::state`]).
fn records(pin_path: &Path) -> crate::state::Records {
    crate::state::Records::lookup(pin_path)
}

mod addresses;
mod garp;
mod netlink;
mod routes;
mod sysctl;

pub use addresses::*;
pub use garp::{garp_frame, send_garp};
pub(crate) use netlink::{attr, netlink};
use netlink::{attrs, dump, netlink_request};
pub use netlink::{resolve_neighbour, routing_changes, wait_routing_change};
pub use routes::*;
pub use sysctl::*;
