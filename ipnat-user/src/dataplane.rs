//! The kernel side: load the embedded eBPF object, attach it, and own its tables.

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, MapError, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
    },
};
use ipnat_common::{
    FLAG_FAST_PATH, FLAG_HOST, FLAG_PREFIXES, FLAG_STEER, MappingCounters, NatTarget, PrefixTarget,
    Reason, SCHEMA_VERSION, Settings, SteerCounters, SteerTarget, names,
};
use ipnet::Ipv4Net;
use serde::Serialize;
use thiserror::Error;

use crate::{
    EBPF_OBJECT,
    config::{Block, MappingConfig},
};

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error(
        "this ipnat binary was built without its eBPF programs (bpf-linker was missing at build \
         time); run `cargo xtask setup` and rebuild"
    )]
    NotBuilt,
    #[error(transparent)]
    Invalid(#[from] crate::config::ConfigError),
    #[error("no mapping has the public side {0} (see `ipnat map list`)")]
    NoSuchMapping(Block),
    #[error(
        "the tables are full ({0} mappings): raise max_mappings (takes `ipnat down` and a restart)"
    )]
    Full(u32),
    #[error(
        "the pinned maps have layout version {found}, this ipnat uses {ours}: run `ipnat down` \
         (traffic stops until the next start) and start again"
    )]
    Schema { found: u32, ours: u32 },
    #[error("no steering rule from {0} is installed (`ipnat steer list` shows them)")]
    NoSuchSteer(Block),
    #[error("map {0} holds an entry ipnat could not have written; remove its pins and restart")]
    Corrupt(&'static str),
    #[error("loading the eBPF programs failed (are you root, with bpffs mounted?): {0}")]
    Load(aya::EbpfError),
    #[error("the kernel refused program {program}: {error}")]
    Verify {
        program: &'static str,
        error: aya::programs::ProgramError,
    },
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("attaching {program} to {iface} failed: {error}")]
    Attach {
        program: &'static str,
        iface: String,
        error: aya::programs::ProgramError,
    },
    #[error("map {name}: {error}")]
    Map { name: &'static str, error: MapError },
    #[error("map {name}: batch update: {error}")]
    Batch {
        name: &'static str,
        error: std::io::Error,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("{path}: {why}")]
    Pin { path: PathBuf, why: String },
    #[error("no free mapping id: all {0} are in use (raise max_mappings)")]
    IdsExhausted(u32),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |error| DataplaneError::Map { name, error }
}

/// The kernel's index of `name` in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32, DataplaneError> {
    let c = CString::new(name).map_err(|_| DataplaneError::NoSuchInterface(name.into()))?;
    // SAFETY: c is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DataplaneError::NoSuchInterface(name.into())),
        i => Ok(i),
    }
}

fn key(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn addr(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(key.to_ne_bytes())
}

/// Loaded programs plus their tables.
pub struct Dataplane {
    ebpf: Ebpf,
    pub tables: Tables,
    pin_dir: Option<PathBuf>,
    adopted: bool,
    /// Interfaces running the frags-capable XDP program.
    frags: HashSet<u32>,
}

impl Dataplane {
    /// Loads (verifies) the programs and opens their maps. With `pin_dir`, every map lives
    /// pinned there: a directory that does not exist is created (0700) and the maps pinned in
    /// it; an existing one, left by an earlier `ipnat run` (whose programs may still be
    /// forwarding traffic), is adopted after checking that it is safe to (root-owned, not a
    /// symlink, not group- or world-accessible) and that its map layout is this binary's.
    /// Attaches nothing yet.
    ///
    /// `capacity` sizes the mapping tables and their counters when they are created (the
    /// block tables have a fixed size, `MAX_PREFIXES`).
    pub fn load(pin_dir: Option<&Path>, capacity: u32) -> Result<Self, DataplaneError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        let adopted = match pin_dir {
            Some(dir) => prepare_pin_dir(dir)?,
            None => false,
        };
        // Maps of another layout version, or tables sized differently from `capacity`, are
        // rebuilt and their contents carried over (see `Rebuild`).
        let rebuild = match (adopted, pin_dir) {
            (true, Some(dir)) => {
                // The settings say which layout the pins have: they must be ours to read.
                check_pinned_layout(dir, capacity, &[names::SETTINGS])?;
                Rebuild::open(dir, capacity)?
            }
            _ => None,
        };
        let rebuilt = rebuild.as_ref().map(Rebuild::names).unwrap_or_default();
        if let (true, Some(dir)) = (adopted, pin_dir) {
            // The loader would take whatever is pinned under a map's name: check first, while
            // nothing is created or pinned.
            let rest: Vec<&'static str> = MAP_NAMES
                .into_iter()
                .filter(|n| *n != names::SETTINGS && !rebuilt.contains(n))
                .collect();
            check_pinned_layout(dir, capacity, &rest)?;
        }
        let mut loader = aya::EbpfLoader::new();
        loader
            .map_max_entries(names::DNAT_MAP, capacity)
            .map_max_entries(names::SNAT_MAP, capacity)
            .map_max_entries(names::MAPPING_COUNTERS, capacity + 1);
        let pins: Vec<(&str, PathBuf)> = pin_dir
            .map(|dir| {
                MAP_NAMES
                    .iter()
                    .filter(|n| !rebuilt.contains(n))
                    .map(|n| (*n, dir.join(n)))
                    .collect()
            })
            .unwrap_or_default();
        for (name, path) in &pins {
            // Opens the pinned map when there is one, else creates and pins it.
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        for name in [
            names::XDP_PROGRAM,
            names::XDP_FRAGS_PROGRAM,
            names::TC_INGRESS_PROGRAM,
            names::TC_EGRESS_PROGRAM,
            names::TC_GATEWAY_PROGRAM,
        ] {
            let prog = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingMap(name))?;
            let load = |error| DataplaneError::Verify {
                program: name,
                error,
            };
            match prog {
                aya::programs::Program::Xdp(p) => p.load().map_err(load)?,
                aya::programs::Program::SchedClassifier(p) => p.load().map_err(load)?,
                _ => return Err(DataplaneError::MissingMap(name)),
            }
        }
        let repin = pin_dir
            .filter(|_| rebuild.is_some())
            .map(|dir| (dir, &rebuilt[..]));
        let mut tables = Tables::take(&mut ebpf, repin)?;
        // After a layout change the settings are a new map to claim; otherwise an adopted
        // one must already be ours.
        let migrated = rebuild.as_ref().is_some_and(Rebuild::migrates);
        if let Some(old) = rebuild {
            old.copy_into(&tables)?;
        }
        tables.claim_schema(adopted && !migrated)?;
        Ok(Self {
            ebpf,
            tables,
            pin_dir: pin_dir.map(Path::to_owned),
            adopted,
            frags: HashSet::new(),
        })
    }

    /// The loaded program object, e.g. for BPF_PROG_TEST_RUN.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded program object, mutable (to load extra programs, e.g. the benchmark's).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Whether [`Dataplane::load`] adopted the maps of an earlier run.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Attaches XDP (native mode) and TC on receive, and TC on transmit. Where native XDP is
    /// not possible (a driver without it: a bridge, some virtual NICs), TC on receive does XDP's
    /// job instead (`ipnat_tc_gateway`), never generic XDP, which runs after GRO and sees
    /// partial checksums. Returns how receive is handled.
    ///
    /// With a pin directory, the links are pinned there (`link-<hook>-<iface>`) and outlive
    /// this process: traffic keeps flowing while the controller is down or restarting. A link
    /// an earlier run pinned is kept and its program atomically replaced by this binary's
    /// (`bpf_link_update`): no packet meets an interface without a program. Without a pin
    /// directory the links are detached when the `Dataplane` is dropped.
    ///
    /// In host orientation (`host`) only TC is attached, on receive and transmit: every packet
    /// goes to the local stack anyway, and XDP would cost the receive offloads.
    pub fn attach(&mut self, iface: &str, host: bool) -> Result<AttachMode, DataplaneError> {
        let index = ifindex(iface)?;
        let pin_dir = self.pin_dir.clone();
        let pinned = |hook: &str| pin_dir.as_ref().map(|d| d.join(link_pin_name(hook, iface)));
        let adopted_tc_gateway = pinned("tc-gw").is_some_and(|p| p.exists());
        // What the driver says it can do (None: the kernel cannot tell; then attaching tells).
        let features = crate::netdev::xdp_features(index).ok().flatten();
        let (driver, mtu) = crate::netdev::driver_and_mtu(iface);
        let hint = crate::netdev::cloud_hint(iface, driver.as_deref(), mtu);
        if let Some((_, why)) = hint.as_ref().filter(|_| !host) {
            tracing::warn!(interface = iface, "{why}");
        }
        let mode = if host {
            AttachMode::Host
        } else if adopted_tc_gateway
            || features.is_some_and(|f| f & crate::netdev::XDP_BASIC == 0)
            || hint.as_ref().is_some_and(|(blocking, _)| *blocking)
        {
            AttachMode::TcOnly
        } else {
            // Jumbo frames arrive in several buffers: only a frags-capable program may run
            // there (a veth refuses any other above about 3500 bytes).
            let frags = mtu.is_some_and(|m| m > crate::netdev::SINGLE_BUFFER_MTU)
                && features.is_none_or(|f| f & crate::netdev::XDP_RX_SG != 0);
            let program = if frags {
                names::XDP_FRAGS_PROGRAM
            } else {
                names::XDP_PROGRAM
            };
            match self.attach_xdp(iface, program, pinned("xdp")) {
                Ok(()) => {
                    if frags {
                        self.frags.insert(index);
                    } else {
                        self.frags.remove(&index);
                    }
                    AttachMode::XdpNative
                }
                // EOPNOTSUPP/EINVAL: no native XDP; ERANGE: an MTU too large for it.
                Err(DataplaneError::Attach { error, .. })
                    if matches!(
                        io_errno(&error),
                        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ERANGE)
                    ) =>
                {
                    AttachMode::TcOnly
                }
                Err(e) => return Err(e),
            }
        };
        let sg = !self.frags.is_empty();
        self.tables.set_xdp_target(index, mode, features, sg)?;
        // TCX needs no qdisc; older kernels need clsact. An existing one is fine.
        let _ = tc::qdisc_add_clsact(iface);
        let receive = match mode {
            AttachMode::XdpNative | AttachMode::Host => (names::TC_INGRESS_PROGRAM, "tc-in"),
            AttachMode::TcOnly => (names::TC_GATEWAY_PROGRAM, "tc-gw"),
        };
        for (name, hook, attach_type) in [
            (receive.0, receive.1, TcAttachType::Ingress),
            (names::TC_EGRESS_PROGRAM, "tc-out", TcAttachType::Egress),
        ] {
            self.attach_tc(iface, name, attach_type, pinned(hook))?;
        }
        Ok(mode)
    }

    fn attach_xdp(
        &mut self,
        iface: &str,
        program: &'static str,
        pinned: Option<PathBuf>,
    ) -> Result<(), DataplaneError> {
        let attach_err = |error| DataplaneError::Attach {
            program,
            iface: iface.to_owned(),
            error,
        };
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataplaneError::MissingMap(program))?;
        match pinned {
            Some(path) if path.exists() => {
                xdp.attach_to_link(adopt_as::<XdpLink>(&path)?)
                    .map_err(attach_err)?;
            }
            path => {
                let id = xdp.attach(iface, XdpMode::Driver).map_err(attach_err)?;
                if let Some(path) = path {
                    pin_taken(xdp.take_link(id).map_err(attach_err)?, &path)?;
                }
            }
        }
        Ok(())
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        name: &'static str,
        attach_type: TcAttachType,
        pinned: Option<PathBuf>,
    ) -> Result<(), DataplaneError> {
        let attach_err = |error| DataplaneError::Attach {
            program: name,
            iface: iface.to_owned(),
            error,
        };
        let tc: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataplaneError::MissingMap(name))?;
        match pinned {
            Some(path) if path.exists() => {
                tc.attach_to_link(adopt_as::<SchedClassifierLink>(&path)?)
                    .map_err(attach_err)?;
            }
            path => {
                let id = tc.attach(iface, attach_type).map_err(attach_err)?;
                if let Some(path) = path {
                    pin_taken(tc.take_link(id).map_err(attach_err)?, &path)?;
                }
            }
        }
        Ok(())
    }

    /// Re-reads the drivers' XDP features and sets which of `attached` (ifindex, mode) XDP may
    /// redirect into (see [`Tables::set_xdp_target`]).
    pub fn refresh_xdp_targets(
        &mut self,
        attached: &[(u32, AttachMode)],
    ) -> Result<(), DataplaneError> {
        let sg = !self.frags.is_empty();
        for &(index, mode) in attached {
            let features = crate::netdev::xdp_features(index).ok().flatten();
            self.tables.set_xdp_target(index, mode, features, sg)?;
        }
        Ok(())
    }

    /// Whether interface `index` runs the frags-capable XDP program.
    pub fn uses_frags(&self, index: u32) -> bool {
        self.frags.contains(&index)
    }

    /// Detaches (unpins) the links of interfaces that are not in `keep`: what an earlier run
    /// attached to an interface the config no longer lists.
    pub fn detach_others(&self, keep: &[String]) -> Result<Vec<String>, DataplaneError> {
        let Some(dir) = &self.pin_dir else {
            return Ok(Vec::new());
        };
        let mut gone = Vec::new();
        for link in pinned_links(dir)? {
            if !keep.contains(&link.iface) {
                remove_pin(&dir.join(&link.file))?;
                gone.push(link.file);
            }
        }
        Ok(gone)
    }
}

/// How an interface's receive side is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AttachMode {
    /// XDP in native mode (and TC ingress for what XDP hands over).
    XdpNative,
    /// TC ingress alone: the driver has no native XDP.
    TcOnly,
    /// Host orientation: TC on receive and transmit, no XDP.
    Host,
}

/// A removal of a key that is not there is fine (aya reports it as `KeyNotFound` or as the
/// syscall's ENOENT, depending on the map type).
fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// The errno inside an attach error, if any.
fn io_errno(e: &aya::programs::ProgramError) -> Option<i32> {
    use std::error::Error;
    let mut cur: Option<&dyn Error> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        cur = err.source();
    }
    // Some aya errors carry the errno only in their message.
    let text = e.to_string();
    ["Operation not supported", "Invalid argument"]
        .iter()
        .any(|m| text.contains(m))
        .then_some(libc::EOPNOTSUPP)
}

/// A link's pin name. bpffs refuses names with a dot, which VLAN interfaces (`eth0.100`) have:
/// dots become colons, which interface names cannot hold, so the mapping is one-to-one.
fn link_pin_name(hook: &str, iface: &str) -> String {
    format!("link-{hook}-{}", iface.replace('.', ":"))
}

/// The interface a link pin name ([`link_pin_name`]) belongs to.
fn link_pin_iface(name: &str) -> String {
    name.replace(':', ".")
}

/// A link pinned in the pin directory.
#[derive(Clone, Debug, Serialize)]
pub struct PinnedLinkInfo {
    /// `xdp`, `tc-in` or `tc-out`.
    pub hook: String,
    pub iface: String,
    #[serde(skip)]
    pub file: String,
}

/// The links pinned under `dir`.
pub fn pinned_links(dir: &Path) -> Result<Vec<PinnedLinkInfo>, DataplaneError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| DataplaneError::Pin {
        path: dir.to_owned(),
        why: e.to_string(),
    })?;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix("link-") else {
            continue;
        };
        for hook in ["xdp", "tc-in", "tc-out", "tc-gw"] {
            if let Some(iface) = rest.strip_prefix(hook).and_then(|r| r.strip_prefix('-')) {
                out.push(PinnedLinkInfo {
                    hook: hook.into(),
                    iface: link_pin_iface(iface),
                    file: file.clone(),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.iface, &a.hook).cmp(&(&b.iface, &b.hook)));
    Ok(out)
}

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
    pub addresses: Vec<crate::host::OwnedAddress>,
    /// The last cloud provider syncs, when a provider is configured.
    pub sync: Option<crate::providers::SyncState>,
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
        blocks: mappings.iter().filter(|m| !m.public.is_host()).count(),
        mappings: mappings.len(),
        capacity: tables.capacity(),
        memory_bytes: tables.memory().total_bytes,
        attached,
        steering: tables.steering()?,
        host_changes: crate::host::changed(dir).sysctls,
        addresses: crate::host::owned_addresses(dir),
        sync: crate::providers::SyncState::load(dir),
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
                "attached:   {:<8} {:<7} {}{} (xdp-features: {})",
                a.iface,
                a.hook,
                a.mode,
                if a.present { "" } else { " (interface gone)" },
                a.xdp_features
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

fn pin_error(path: &Path, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Pin {
        path: path.to_owned(),
        why: e.to_string(),
    }
}

/// A pinned link, as the link type of the program that will take it over.
fn adopt_as<L>(path: &Path) -> Result<L, DataplaneError>
where
    L: TryFrom<FdLink>,
    L::Error: std::fmt::Display,
{
    L::try_from(adopt_link(path)?).map_err(|e| pin_error(path, e))
}

/// Pins a link taken out of its program, so that it outlives this process.
fn pin_taken<L>(link: L, path: &Path) -> Result<(), DataplaneError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    pin_link(
        FdLink::try_from(link).map_err(|e| pin_error(path, e))?,
        path,
    )
}

fn adopt_link(path: &Path) -> Result<FdLink, DataplaneError> {
    check_pin_owner(path)?;
    PinnedLink::from_pin(path)
        .map(FdLink::from)
        .map_err(|e| DataplaneError::Pin {
            path: path.to_owned(),
            why: e.to_string(),
        })
}

fn pin_link(link: FdLink, path: &Path) -> Result<(), DataplaneError> {
    link.pin(path).map(drop).map_err(|e| DataplaneError::Pin {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

/// BPF_LINK_DETACH on a pinned link: the program leaves its hook at once, whoever still holds
/// the link (a link released by its last reference goes asynchronously).
fn detach_pinned_link(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32); the
    // string outlives the call.
    let fd = bpf(BPF_OBJ_GET, &mut [c.as_ptr() as u64, 0]);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    let fd: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) };
    // union bpf_attr for BPF_LINK_DETACH: link_fd (u32).
    let rc = bpf(
        BPF_LINK_DETACH,
        &mut [std::os::fd::AsRawFd::as_raw_fd(&fd) as u64],
    );
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        // A link whose interface is gone is already detached.
        if e.raw_os_error() != Some(libc::ENOLINK) {
            return Err(e);
        }
    }
    Ok(())
}

/// bpf(2) with a `union bpf_attr` of `attr`'s size.
fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> libc::c_long {
    // SAFETY: the attribute buffer is as long as we say; pointers in it are the caller's.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    }
}

/// Entries written per BPF_MAP_UPDATE_BATCH call.
const BATCH: usize = 65_536;

/// Writes `keys[i] -> values[i]` with BPF_MAP_UPDATE_BATCH, a system call per [`BATCH`]
/// entries instead of one per entry. The kernel updates each element as BPF_MAP_UPDATE_ELEM
/// does: a reader sees an entry's old or new value, whole. `Ok(false)`: the kernel has no batch
/// operations for this map (nothing was written; the caller writes one by one).
fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> std::io::Result<bool> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len(), values.len());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&fd) as u64;
    for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        // union bpf_attr, batch: in_batch, out_batch, keys, values, count | map_fd << 32,
        // elem_flags, flags. The slices outlive the call.
        let mut attr = [
            0,
            0,
            k.as_ptr() as u64,
            v.as_ptr() as u64,
            k.len() as u64 | (fd << 32),
            0,
            0,
        ];
        if bpf(BPF_MAP_UPDATE_BATCH, &mut attr) < 0 {
            let e = std::io::Error::last_os_error();
            // ENOTSUPP (524): no batch operations for this map type or kernel.
            if matches!(e.raw_os_error(), Some(libc::EINVAL | 524)) && k.as_ptr() == keys.as_ptr() {
                return Ok(false);
            }
            return Err(e);
        }
    }
    Ok(true)
}

/// Reads a whole hash map with BPF_MAP_LOOKUP_BATCH, [`BATCH`] entries a system call instead
/// of two per entry. `Ok(None)`: the kernel has no batch operations for this map.
fn lookup_batch<K: aya::Pod + Default, V: aya::Pod + Default>(
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<Option<Vec<(K, V)>>> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&fd) as u64;
    let mut out = Vec::new();
    let read = read_batches(fd, size_of::<K>(), size_of::<V>(), |keys, values, n| {
        for i in 0..n {
            // SAFETY: the kernel wrote `n` whole keys and values of these sizes; Pod types
            // take any bytes, read unaligned.
            let (k, v) = unsafe {
                (
                    keys.as_ptr()
                        .add(i * size_of::<K>())
                        .cast::<K>()
                        .read_unaligned(),
                    values
                        .as_ptr()
                        .add(i * size_of::<V>())
                        .cast::<V>()
                        .read_unaligned(),
                )
            };
            out.push((k, v));
        }
        Ok(true)
    })?;
    Ok(read.then_some(out))
}

/// Reads map `fd` with BPF_MAP_LOOKUP_BATCH, [`BATCH`] entries a call, handing each batch
/// (keys, values, count) to `f`, which may stop early with `Ok(false)`. `Ok(false)`: the
/// kernel has no batch operations for this map, or `f` stopped.
fn read_batches(
    fd: u64,
    key_size: usize,
    value_len: usize,
    mut f: impl FnMut(&[u8], &[u8], usize) -> std::io::Result<bool>,
) -> std::io::Result<bool> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut keys = vec![0u8; key_size * BATCH];
    let mut values = vec![0u8; value_len * BATCH];
    // The position tokens (a bucket index for hash maps); 8 bytes is room for any.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        // union bpf_attr, batch: in_batch (NULL: from the start), out_batch, keys, values,
        // count | map_fd << 32, elem_flags, flags. The buffers outlive the call.
        let mut attr = [
            if first { 0 } else { &raw mut token_in as u64 },
            &raw mut token_out as u64,
            keys.as_mut_ptr() as u64,
            values.as_mut_ptr() as u64,
            BATCH as u64 | (fd << 32),
            0,
            0,
        ];
        let rc = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let err = (rc < 0).then(std::io::Error::last_os_error);
        // The kernel writes back how many entries it copied, also with ENOENT (the end).
        let n = (attr[4] & 0xffff_ffff) as usize;
        match err.as_ref().and_then(|e| e.raw_os_error()) {
            None | Some(libc::ENOENT) => {}
            Some(libc::EINVAL | 524) if first => return Ok(false),
            _ => return Err(err.expect("an error")),
        }
        if n > 0 && !f(&keys, &values, n)? {
            return Ok(false);
        }
        if err.is_some() {
            return Ok(true);
        }
        token_in = token_out;
        first = false;
    }
}

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataplaneError::Pin {
            path: path.to_owned(),
            why: e.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A pin or pin directory ipnat may adopt: not a symlink, owned by this (root) user.
fn check_pin_owner(path: &Path) -> Result<std::fs::Metadata, DataplaneError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| DataplaneError::Pin {
        path: path.to_owned(),
        why: format!("refusing to adopt it: {why}"),
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| refuse(e.to_string()))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symlink".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(refuse(format!(
            "owned by uid {}, not {euid} (bpffs is world-writable: someone else made it)",
            meta.uid()
        )));
    }
    Ok(meta)
}

/// Creates the pin directory (0700) on its bpffs, or checks an existing one before adopting
/// it. Returns whether it existed.
fn prepare_pin_dir(dir: &Path) -> Result<bool, DataplaneError> {
    crate::state::bpffs_of(dir)?;
    if std::fs::symlink_metadata(dir).is_err() {
        create_pin_dir(dir)?;
        return Ok(false);
    }
    check_pin_dir(dir)?;
    Ok(true)
}

/// Refuses a pin directory ipnat cannot have made: a symlink, another user's, not a
/// directory, open to others, or holding such entries (bpffs is world-writable).
fn check_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = check_pin_owner(dir)?;
    if !meta.is_dir() {
        return Err(DataplaneError::Pin {
            path: dir.to_owned(),
            why: "refusing to adopt it: not a directory".into(),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(DataplaneError::Pin {
            path: dir.to_owned(),
            why: format!(
                "refusing to adopt it: mode {:o} lets others in (ipnat creates it 0700)",
                meta.permissions().mode() & 0o777
            ),
        });
    }
    for entry in std::fs::read_dir(dir).map_err(|e| DataplaneError::Pin {
        path: dir.to_owned(),
        why: e.to_string(),
    })? {
        let entry = entry.map_err(|e| DataplaneError::Pin {
            path: dir.to_owned(),
            why: e.to_string(),
        })?;
        check_pin_owner(&entry.path())?;
    }
    Ok(())
}

/// What [`down`] undid.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<PinnedLinkInfo>,
    /// Whether there were pins (there may be only records, e.g. after the bpffs went).
    pub pins: bool,
    /// Addresses ipnat had added, removed: "address on interface".
    pub addresses: Vec<String>,
    /// Host settings put back: (sysctl key, value).
    pub restored: Vec<(String, String)>,
}

/// Takes apart the data plane at `dir` and everything recorded for it (see [`teardown`]).
/// Only looks until it knows there is something to undo: with nothing pinned and nothing
/// recorded it creates, mounts and prints nothing. Refused while an `ipnat run` owns the data
/// plane, and from another network namespace than the one it is attached in.
pub fn down(dir: &Path) -> Result<Removed, DataplaneError> {
    let records = crate::state::Records::of(dir)?;
    if std::fs::symlink_metadata(dir).is_err() && !records.exist() {
        return Err(DataplaneError::Pin {
            path: dir.to_owned(),
            why: "nothing is pinned there and nothing is recorded for it (is the pin path right?)"
                .into(),
        });
    }
    let lock = records.lock()?;
    teardown(dir, &lock)
}

/// Removes everything an `ipnat run` left for the data plane at `dir`, holding its lock: the
/// links first (which detaches the programs from their interfaces), then the maps and the
/// directory; then the addresses ipnat added, then the host settings it changed (in that
/// order: an address removed while `promote_secondaries` is still raised keeps the others of
/// its subnet), then the records.
pub fn teardown(dir: &Path, lock: &crate::state::OwnerLock) -> Result<Removed, DataplaneError> {
    let records = crate::state::Records::of(dir)?;
    let mut removed = Removed::default();
    if std::fs::symlink_metadata(dir).is_ok() {
        check_pin_dir(dir)?;
        removed.pins = true;
        removed.links = pinned_links(dir)?;
        for link in &removed.links {
            let path = dir.join(&link.file);
            // Detach now: removing the pin alone lets the kernel release the link later.
            detach_pinned_link(&path).map_err(|e| DataplaneError::Pin {
                path: path.clone(),
                why: format!("detaching: {e}"),
            })?;
            remove_pin(&path)?;
        }
        for name in MAP_NAMES {
            remove_pin(&dir.join(name))?;
        }
        std::fs::remove_dir(dir).map_err(|e| DataplaneError::Pin {
            path: dir.to_owned(),
            why: format!("{e} (something else is pinned there)"),
        })?;
    }
    let host = |what: &str, e: std::io::Error| DataplaneError::Pin {
        path: records.dir().to_owned(),
        why: format!("{what}: {e}"),
    };
    // A namespace that is gone took its addresses and settings with it; this one's are not
    // what was recorded.
    if !lock.netns_gone {
        removed.addresses = crate::host::remove_added_addresses(dir)
            .map_err(|e| host("removing the addresses ipnat added", e))?;
        removed.restored =
            crate::host::restore(dir).map_err(|e| host("restoring host settings", e))?;
    }
    records.remove_all()?;
    Ok(removed)
}

/// The maps whose size is `max_mappings`.
const RESIZED: [&str; 3] = [names::DNAT_MAP, names::SNAT_MAP, names::MAPPING_COUNTERS];

/// The batch path of [`copy_map`]: `Ok(false)` when the kernel has no batch operations for
/// these maps, or `to` has no room for an entry (an array's tail): the caller then copies
/// entry by entry, which leaves those out.
fn copy_map_batched(
    from: u64,
    to: u64,
    key_size: usize,
    value_len: usize,
) -> std::io::Result<bool> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    read_batches(from, key_size, value_len, |keys, values, n| {
        let mut up = [
            0,
            0,
            keys.as_ptr() as u64,
            values.as_ptr() as u64,
            n as u64 | (to << 32),
            0,
            0,
        ];
        if bpf(BPF_MAP_UPDATE_BATCH, &mut up) < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINVAL | libc::E2BIG | 524) => Ok(false),
                _ => Err(e),
            };
        }
        Ok(true)
    })
}

/// Copies every entry of map `from` into map `to` (same key and value sizes): in batches
/// where the kernel can, else through the generic bpf(2) element calls, leaving out entries
/// `to` has no room for (an array's tail).
fn copy_map(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    per_cpu: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let value_len = if per_cpu {
        value_size.next_multiple_of(8) * aya::util::nr_cpus().map_err(|(_, e)| e)?
    } else {
        value_size
    };
    let (from, to) = (from.as_raw_fd() as u64, to.as_raw_fd() as u64);
    if copy_map_batched(from, to, key_size, value_len)? {
        return Ok(());
    }
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut value = vec![0u8; value_len];
    let mut first = true;
    loop {
        // union bpf_attr for the element calls: map_fd, key, value / next_key, flags.
        let mut attr = [
            from,
            if first { 0 } else { key.as_ptr() as u64 },
            next.as_mut_ptr() as u64,
            0,
        ];
        if bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) < 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(())
            } else {
                Err(e)
            };
        }
        first = false;
        key.copy_from_slice(&next);
        let mut attr = [from, key.as_ptr() as u64, value.as_mut_ptr() as u64, 0];
        if bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) < 0 {
            // Removed meanwhile.
            continue;
        }
        let mut attr = [to, key.as_ptr() as u64, value.as_ptr() as u64, 0];
        if bpf(BPF_MAP_UPDATE_ELEM, &mut attr) < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::E2BIG) {
                return Err(e);
            }
        }
    }
}

/// Pinned maps that an adopting controller rebuilds, held open while new maps take over their
/// pins: every map when the pins carry another layout version ([`SCHEMA_VERSION`]), the
/// tables sized by `max_mappings` ([`RESIZED`]) when their size differs from the configured
/// one. Every rebuilt map whose type, key size and value size are unchanged is copied entry by
/// entry (an array up to the shorter length: outcome counters are only ever appended, so
/// they keep their meaning); one whose layout changed starts empty, and the controller refills
/// the tables from the config. Attaching then replaces the programs (and so the maps they use)
/// link by link: traffic keeps flowing, and counter increments on the old maps between the
/// copy and the swap are lost.
struct Rebuild {
    /// The pinned maps' layout version.
    from: u32,
    old: Vec<(&'static str, MapData)>,
}

impl Rebuild {
    fn open(dir: &Path, capacity: u32) -> Result<Option<Self>, DataplaneError> {
        let open = |name: &'static str| {
            let path = dir.join(name);
            MapData::from_pin(&path).map_err(|e| pin_error(&path, e))
        };
        let typed = |name: &'static str| {
            aya::maps::Map::from_map_data(open(name)?).map_err(|e| pin_error(&dir.join(name), e))
        };
        if !dir.join(names::SETTINGS).exists() {
            return Ok(None);
        }
        let settings: Array<MapData, Settings> = typed(names::SETTINGS)?
            .try_into()
            .map_err(map_err(names::SETTINGS))?;
        let from = settings
            .get(&0, 0)
            .map_err(map_err(names::SETTINGS))?
            .schema;
        let which: &[&'static str] = if from != 0 && from != SCHEMA_VERSION {
            tracing::info!(
                from,
                to = SCHEMA_VERSION,
                "the pinned maps have another layout: building new ones and carrying their contents over"
            );
            &MAP_NAMES
        } else {
            let counters: Array<MapData, MappingCounters> = typed(names::MAPPING_COUNTERS)?
                .try_into()
                .map_err(map_err(names::MAPPING_COUNTERS))?;
            if counters.len() == capacity + 1 {
                return Ok(None);
            }
            // Everything installed must fit the new size, ids included.
            let dnat: HashMap<MapData, u32, NatTarget> = typed(names::DNAT_MAP)?
                .try_into()
                .map_err(map_err(names::DNAT_MAP))?;
            let (mut installed, mut top_id) = (0usize, 0u32);
            for (_, t) in dnat.iter().filter_map(Result::ok) {
                installed += 1;
                top_id = top_id.max(t.id);
            }
            if installed > capacity as usize || top_id > capacity {
                return Err(DataplaneError::Full(capacity));
            }
            &RESIZED
        };
        let mut old = Vec::new();
        for &name in which {
            if dir.join(name).exists() {
                old.push((name, open(name)?));
            }
        }
        Ok(Some(Self { from, old }))
    }

    /// The maps rebuilt (whose pins the new maps take).
    fn names(&self) -> Vec<&'static str> {
        self.old.iter().map(|(n, _)| *n).collect()
    }

    /// Whether the layout version changes (else only sizes do).
    fn migrates(&self) -> bool {
        self.from != 0 && self.from != SCHEMA_VERSION
    }

    fn copy_into(self, new: &Tables) -> Result<(), DataplaneError> {
        use std::os::fd::AsFd;
        for (name, old) in self.old {
            let Some(fd) = new.batch_fds.get(name) else {
                continue;
            };
            let new_map = fd
                .try_clone()
                .map_err(|error| DataplaneError::Batch { name, error })?;
            let (a, b) = match (old.info(), MapData::from_fd(new_map).and_then(|d| d.info())) {
                (Ok(a), Ok(b)) => (a, b),
                _ => continue,
            };
            let same = a.map_type().ok().map(|t| t as u32) == b.map_type().ok().map(|t| t as u32)
                && a.key_size() == b.key_size()
                && a.value_size() == b.value_size();
            if !same {
                tracing::warn!(
                    map = name,
                    from = self.from,
                    "its layout changed: it starts empty"
                );
                continue;
            }
            let per_cpu = matches!(
                b.map_type(),
                Ok(aya::maps::MapType::PerCpuArray | aya::maps::MapType::PerCpuHash)
            );
            copy_map(
                old.fd().as_fd(),
                fd.as_fd(),
                a.key_size() as usize,
                a.value_size() as usize,
                per_cpu,
            )
            .map_err(|error| DataplaneError::Batch { name, error })?;
        }
        Ok(())
    }
}

/// A mapping as installed in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct InstalledMapping {
    pub id: u32,
    pub public: Block,
    pub private: Block,
}

/// A steering rule as installed, with its counters.
#[derive(Clone, Debug, Serialize)]
pub struct InstalledSteer {
    pub id: u32,
    pub source: Block,
    pub interface: String,
    pub ifindex: u32,
    pub gateway: Ipv4Addr,
    pub subnet: Block,
    pub packets: u64,
    pub bytes: u64,
}

impl InstalledSteer {
    /// The rule as the config writes it.
    pub fn rule(&self) -> crate::config::SteerConfig {
        crate::config::SteerConfig {
            source: self.source,
            interface: self.interface.clone(),
            gateway: self.gateway,
            subnet: self.subnet,
        }
    }
}

/// Counters of one mapping.
#[derive(Clone, Debug, Serialize)]
pub struct MappingStats {
    #[serde(flatten)]
    pub mapping: InstalledMapping,
    pub dnat_packets: u64,
    pub dnat_bytes: u64,
    pub snat_packets: u64,
    pub snat_bytes: u64,
}

/// Everything the counters say, at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub mappings: Vec<MappingStats>,
    /// Packets per reason, summed over CPUs, in `Reason` order.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Kernel memory of the tables.
    pub memory: MemoryReport,
    /// Steering rules and their counters.
    pub steering: Vec<InstalledSteer>,
}

/// The maps, owned by whoever writes them: the running controller, or a CLI that opened pins.
pub struct Tables {
    dnat: HashMap<MapData, u32, NatTarget>,
    snat: HashMap<MapData, u32, NatTarget>,
    counters: Array<MapData, MappingCounters>,
    reasons: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    dnat_pfx: LpmTrie<MapData, u32, PrefixTarget>,
    snat_pfx: LpmTrie<MapData, u32, PrefixTarget>,
    steer: LpmTrie<MapData, u32, SteerTarget>,
    steer_counters: Array<MapData, SteerCounters>,
    xdp_targets: HashMap<MapData, u32, u32>,
    internal: LpmTrie<MapData, u32, u32>,
    /// Descriptors of every map (batch operations, layout migration).
    batch_fds: BTreeMap<&'static str, std::os::fd::OwnedFd>,
    /// Kernel memory charged to each map (`memlock` in its fdinfo), bytes.
    memory: BTreeMap<&'static str, u64>,
}

/// The kernel memory a map holds, as its fdinfo reports it.
fn memlock(map: &MapData) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = map.fd().as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What the tables cost in kernel memory.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// Bytes per map.
    pub maps: BTreeMap<&'static str, u64>,
    pub total_bytes: u64,
    /// Mappings the tables have room for (`max_mappings`).
    pub capacity: u32,
    /// The exact tables and the counters, divided by `capacity` (the block tables and the
    /// per-CPU reason counters do not grow with it).
    pub bytes_per_mapping: f64,
}

const MAP_NAMES: [&str; 11] = [
    names::XDP_TARGETS,
    names::INTERNAL_MAP,
    names::DNAT_MAP,
    names::SNAT_MAP,
    names::DNAT_PREFIX_MAP,
    names::SNAT_PREFIX_MAP,
    names::STEER_MAP,
    names::STEER_COUNTERS,
    names::MAPPING_COUNTERS,
    names::REASON_COUNTERS,
    names::SETTINGS,
];

/// Refuses to adopt a pin under one of the map names `which` that is not a map of this
/// binary's layout (type, key and value size, entries, flags as the object declares them; the
/// tables sized `capacity`). The maps about to be rebuilt are left out by the caller: their
/// layout may legitimately differ. Something else pinned there (another program's map, a stale
/// experiment) would otherwise be opened by the loader and fail the verifier, after the
/// missing maps were already created and pinned beside it.
fn check_pinned_layout(
    dir: &Path,
    capacity: u32,
    which: &[&'static str],
) -> Result<(), DataplaneError> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| DataplaneError::Pin {
        path: dir.to_owned(),
        why: format!("parsing this binary's eBPF object: {e}"),
    })?;
    for &name in which {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let want = object
            .maps
            .get(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let entries = match name {
            names::DNAT_MAP | names::SNAT_MAP => capacity,
            names::MAPPING_COUNTERS => capacity + 1,
            _ => want.max_entries(),
        };
        let refuse = |what: String| DataplaneError::Pin {
            path: path.clone(),
            why: format!(
                "refusing to adopt it: {what}, not ipnat's (remove it if it is left over, or \
                 choose another pin_path)"
            ),
        };
        let have = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(|e| refuse(format!("not a BPF map ({e})")))?;
        let have_type = have.map_type().map_or(u32::MAX, |t| t as u32);
        let layout = |t: u32, k: u32, v: u32, n: u32, f: u32| {
            format!(
                "{} with {k}-byte keys, {v}-byte values, {n} entries, flags {f:#x}",
                map_type_name(t)
            )
        };
        let (have, want) = (
            layout(
                have_type,
                have.key_size(),
                have.value_size(),
                have.max_entries(),
                have.map_flags(),
            ),
            layout(
                want.map_type(),
                want.key_size(),
                want.value_size(),
                entries,
                want.map_flags(),
            ),
        );
        if have != want {
            return Err(refuse(format!("{have} where ipnat's is {want}")));
        }
    }
    Ok(())
}

/// The kernel's name for a map type (`enum bpf_map_type`) with its article, for a message.
fn map_type_name(t: u32) -> String {
    let name = match t {
        1 => "a hash",
        2 => "an array",
        3 => "a prog_array",
        5 => "a percpu_hash",
        6 => "a percpu_array",
        9 => "an lru_hash",
        11 => "an lpm_trie",
        14 => "a devmap",
        25 => "a devmap_hash",
        u32::MAX => return "a map of a type this ipnat does not know".into(),
        _ => return format!("a map of type {t}"),
    };
    format!("{name} map")
}

/// The `MapData` inside a map taken from the object.
fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match map {
        Map::HashMap(m) | Map::LpmTrie(m) | Map::Array(m) | Map::PerCpuArray(m) => Some(m),
        _ => None,
    }
}

/// Creates the pin directory (0700, its parent already checked to be on a bpffs).
fn create_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| DataplaneError::Pin {
            path: dir.to_owned(),
            why: format!("cannot create: {e}"),
        })
}

impl Tables {
    /// Takes the maps out of the loaded object. With `repin` (directory, names), those maps
    /// replace the pins of their predecessors there.
    fn take(ebpf: &mut Ebpf, repin: Option<(&Path, &[&str])>) -> Result<Self, DataplaneError> {
        Self::assemble(|name| {
            let map = ebpf
                .take_map(name)
                .ok_or(DataplaneError::MissingMap(name))?;
            if let Some((dir, _)) = repin.filter(|(_, which)| which.contains(&name)) {
                let path = dir.join(name);
                remove_pin(&path)?;
                map.pin(&path).map_err(|e| pin_error(&path, e))?;
            }
            Ok(map)
        })
    }

    /// Opens the maps a running `ipnat run` pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        crate::state::bpffs_of(dir)?;
        Self::assemble(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(|e| pin_error(&path, format!("{e} (is `ipnat run` running?)")))?;
            aya::maps::Map::from_map_data(data).map_err(|e| pin_error(&path, e))
        })
    }

    /// The tables from `get`, which gives each map by name; records what each costs.
    fn assemble(
        mut get: impl FnMut(&'static str) -> Result<aya::maps::Map, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        let mut memory = BTreeMap::new();
        let mut batch_fds = BTreeMap::new();
        let mut typed = |name: &'static str| {
            let map = get(name)?;
            if let Some(data) = map_data(&map) {
                memory.insert(name, memlock(data));
                {
                    use std::os::fd::AsFd;
                    let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| {
                        DataplaneError::Pin {
                            path: name.into(),
                            why: e.to_string(),
                        }
                    })?;
                    batch_fds.insert(name, fd);
                }
            }
            Ok::<_, DataplaneError>(map)
        };
        macro_rules! map {
            ($name:expr) => {
                typed($name)?.try_into().map_err(map_err($name))?
            };
        }
        let (dnat, snat, counters, reasons, settings) = (
            map!(names::DNAT_MAP),
            map!(names::SNAT_MAP),
            map!(names::MAPPING_COUNTERS),
            map!(names::REASON_COUNTERS),
            map!(names::SETTINGS),
        );
        let (dnat_pfx, snat_pfx, steer, steer_counters, xdp_targets, internal) = (
            map!(names::DNAT_PREFIX_MAP),
            map!(names::SNAT_PREFIX_MAP),
            map!(names::STEER_MAP),
            map!(names::STEER_COUNTERS),
            map!(names::XDP_TARGETS),
            map!(names::INTERNAL_MAP),
        );
        Ok(Self {
            dnat,
            snat,
            counters,
            reasons,
            settings,
            dnat_pfx,
            snat_pfx,
            steer,
            steer_counters,
            xdp_targets,
            internal,
            batch_fds,
            memory,
        })
    }

    /// The mappings in the kernel, by id.
    pub fn mappings(&self) -> Result<Vec<InstalledMapping>, DataplaneError> {
        use std::os::fd::AsFd;
        let mut out = Vec::new();
        let batch = match self.batch_fds.get(names::DNAT_MAP) {
            Some(fd) => lookup_batch::<u32, NatTarget>(fd.as_fd()).map_err(|error| {
                DataplaneError::Batch {
                    name: names::DNAT_MAP,
                    error,
                }
            })?,
            None => None,
        };
        let entries = match batch {
            Some(entries) => entries,
            None => self
                .dnat
                .iter()
                .collect::<Result<_, _>>()
                .map_err(map_err(names::DNAT_MAP))?,
        };
        for (public, target) in entries {
            out.push(InstalledMapping {
                id: target.id,
                public: addr(public).into(),
                private: addr(target.addr).into(),
            });
        }
        for entry in self.dnat_pfx.iter() {
            let (k, target) = entry.map_err(map_err(names::DNAT_PREFIX_MAP))?;
            let block = |net: u32| {
                Ipv4Net::new(addr(net), k.prefix_len() as u8)
                    .map(Block)
                    .map_err(|_| DataplaneError::Corrupt(names::DNAT_PREFIX_MAP))
            };
            out.push(InstalledMapping {
                id: target.id,
                public: block(k.data())?,
                private: block(k.data() ^ target.xor)?,
            });
        }
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    /// Makes the kernel tables equal `desired`. Additions and changes are written before
    /// removals, and every write replaces a whole 8-byte value in place, so a mapping that stays
    /// is never absent. A mapping keeps its id (and counters) while its public side stays.
    /// Single addresses go to the hash tables, blocks to the longest-prefix-match tables.
    pub fn apply(&mut self, desired: &[MappingConfig]) -> Result<(), DataplaneError> {
        let current = self.mappings()?;
        let by_public: std::collections::HashMap<Block, InstalledMapping> =
            current.iter().map(|m| (m.public, *m)).collect();
        let wanted_public: HashSet<Block> = desired.iter().map(|m| m.public).collect();
        let wanted_private: HashSet<Block> = desired.iter().map(|m| m.private).collect();
        let any_prefix = desired.iter().any(|m| !m.public.is_host());
        if any_prefix {
            // Before the first block is written: the data plane skips the prefix tables
            // while the flag is off.
            self.set_flag(FLAG_PREFIXES, true)?;
        }
        // Ids of mappings that stay are kept; removed ones are only freed after the removals.
        let mut used: HashSet<u32> = current.iter().map(|m| m.id).collect();
        let mut next = 1u32;
        // Written in batches, in this order: the new ids' counters (zeroed), then private ->
        // public, then public -> private, so that a packet never finds a mapping whose other
        // direction or counters are missing.
        let (mut new_ids, mut snat, mut dnat) = (Vec::new(), Vec::new(), Vec::new());
        for m in desired {
            let id = match by_public.get(&m.public) {
                Some(old) => old.id,
                None => {
                    while used.contains(&next) {
                        next += 1;
                    }
                    let max_id = self.counters.len() - 1;
                    if next > max_id {
                        return Err(DataplaneError::IdsExhausted(max_id));
                    }
                    used.insert(next);
                    new_ids.push(next);
                    next
                }
            };
            if by_public
                .get(&m.public)
                .is_some_and(|old| old.private == m.private)
            {
                continue; // unchanged: no write
            }
            let (public, private) = (key(m.public.addr()), key(m.private.addr()));
            if m.public.is_host() {
                snat.push((private, NatTarget { addr: public, id }));
                dnat.push((public, NatTarget { addr: private, id }));
            } else {
                let len = u32::from(m.public.prefix_len());
                let xor = public ^ private;
                // Block mappings are few (MAX_PREFIXES); LPM tries have no batch operations.
                self.counters
                    .set(id, MappingCounters::default(), 0)
                    .map_err(map_err(names::MAPPING_COUNTERS))?;
                new_ids.retain(|&i| i != id);
                self.snat_pfx
                    .insert(&Key::new(len, private), PrefixTarget { xor, id }, 0)
                    .map_err(map_err(names::SNAT_PREFIX_MAP))?;
                self.dnat_pfx
                    .insert(&Key::new(len, public), PrefixTarget { xor, id }, 0)
                    .map_err(map_err(names::DNAT_PREFIX_MAP))?;
            }
        }
        let zeros = vec![MappingCounters::default(); new_ids.len()];
        if !self.write_batch(names::MAPPING_COUNTERS, &new_ids, &zeros)? {
            for &id in &new_ids {
                self.counters
                    .set(id, MappingCounters::default(), 0)
                    .map_err(map_err(names::MAPPING_COUNTERS))?;
            }
        }
        for (name, entries) in [(names::SNAT_MAP, &snat), (names::DNAT_MAP, &dnat)] {
            let (k, v): (Vec<u32>, Vec<NatTarget>) = entries.iter().copied().unzip();
            if !self.write_batch(name, &k, &v)? {
                let map = if name == names::SNAT_MAP {
                    &mut self.snat
                } else {
                    &mut self.dnat
                };
                for (k, v) in entries {
                    map.insert(k, v, 0).map_err(map_err(name))?;
                }
            }
        }
        for old in &current {
            if !wanted_public.contains(&old.public) {
                self.remove_side(old.public, true)?;
            }
            if !wanted_private.contains(&old.private) {
                self.remove_side(old.private, false)?;
            }
        }
        if !any_prefix {
            self.set_flag(FLAG_PREFIXES, false)?;
        }
        Ok(())
    }

    /// Removes one side of a mapping; a key already gone (e.g. a private side that moved to
    /// another mapping and was overwritten) is fine.
    fn remove_side(&mut self, side: Block, public: bool) -> Result<(), DataplaneError> {
        let k = key(side.addr());
        let (result, name) = match (side.is_host(), public) {
            (true, true) => (self.dnat.remove(&k), names::DNAT_MAP),
            (true, false) => (self.snat.remove(&k), names::SNAT_MAP),
            (false, true) => (
                self.dnat_pfx
                    .remove(&Key::new(u32::from(side.prefix_len()), k)),
                names::DNAT_PREFIX_MAP,
            ),
            (false, false) => (
                self.snat_pfx
                    .remove(&Key::new(u32::from(side.prefix_len()), k)),
                names::SNAT_PREFIX_MAP,
            ),
        };
        absent_ok(result).map_err(map_err(name))
    }

    /// The steering rules in the kernel.
    pub fn steering(&self) -> Result<Vec<InstalledSteer>, DataplaneError> {
        let mut out = Vec::new();
        for entry in self.steer.iter() {
            let (k, t) = entry.map_err(map_err(names::STEER_MAP))?;
            let c = self
                .steer_counters
                .get(&t.id, 0)
                .map_err(map_err(names::STEER_COUNTERS))?;
            let plen = k.prefix_len() as u8;
            let source = Ipv4Net::new(addr(k.data()), plen)
                .map(Block)
                .map_err(|_| DataplaneError::Corrupt(names::STEER_MAP))?;
            let subnet = Ipv4Net::new(addr(t.subnet), u32::from_be(t.mask).count_ones() as u8)
                .map(Block)
                .map_err(|_| DataplaneError::Corrupt(names::STEER_MAP))?;
            out.push(InstalledSteer {
                id: t.id,
                source,
                interface: nix::net::if_::if_indextoname(t.ifindex)
                    .ok()
                    .map(|n| n.to_string_lossy().into_owned())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| format!("ifindex {}", t.ifindex)),
                ifindex: t.ifindex,
                gateway: addr(t.gateway),
                subnet,
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Makes the steering table equal `rules` (with their interfaces' indexes): additions and
    /// changes first, then removals; a rule keeps its id and counters while its source stays.
    pub fn apply_steering(
        &mut self,
        rules: &[(crate::config::SteerConfig, u32)],
    ) -> Result<(), DataplaneError> {
        // What is installed, by (prefix length, network): one pass over the trie.
        let mut current: std::collections::HashMap<(u32, u32), SteerTarget> =
            std::collections::HashMap::new();
        for entry in self.steer.iter() {
            let (k, t) = entry.map_err(map_err(names::STEER_MAP))?;
            current.insert((k.prefix_len(), k.data()), t);
        }
        let mut used: HashSet<u32> = current.values().map(|t| t.id).collect();
        let mut wanted = HashSet::new();
        let mut next = 1u32;
        if !rules.is_empty() {
            self.set_flag(FLAG_STEER, true)?;
        }
        for (r, ifindex) in rules {
            let k = (u32::from(r.source.prefix_len()), key(r.source.addr()));
            wanted.insert(k);
            let old = current.get(&k);
            let id = match old {
                Some(t) => t.id,
                None => {
                    while used.contains(&next) {
                        next += 1;
                    }
                    used.insert(next);
                    self.steer_counters
                        .set(next, SteerCounters::default(), 0)
                        .map_err(map_err(names::STEER_COUNTERS))?;
                    next
                }
            };
            let target = SteerTarget {
                ifindex: *ifindex,
                gateway: key(r.gateway),
                subnet: key(r.subnet.addr()),
                mask: u32::from(r.subnet.0.netmask()).to_be(),
                id,
                _pad: 0,
            };
            if old == Some(&target) {
                continue; // unchanged: no write
            }
            self.steer
                .insert(&Key::new(k.0, k.1), target, 0)
                .map_err(map_err(names::STEER_MAP))?;
        }
        for k in current.keys() {
            if !wanted.contains(k) {
                absent_ok(self.steer.remove(&Key::new(k.0, k.1)))
                    .map_err(map_err(names::STEER_MAP))?;
            }
        }
        if rules.is_empty() {
            self.set_flag(FLAG_STEER, false)?;
        }
        Ok(())
    }

    /// Adds one steering rule to the running tables (out of interface `ifindex`), validated
    /// against the installed ones as the config is. Nothing changes when it is refused.
    pub fn add_steer(
        &mut self,
        rule: crate::config::SteerConfig,
        ifindex: u32,
    ) -> Result<InstalledSteer, DataplaneError> {
        let current = self.steering()?;
        let mut all: Vec<(crate::config::SteerConfig, u32)> =
            current.iter().map(|r| (r.rule(), r.ifindex)).collect();
        all.push((rule.clone(), ifindex));
        let n = current.len();
        let rules: Vec<crate::config::SteerConfig> = all.iter().map(|(r, _)| r.clone()).collect();
        crate::config::validate_steer_rules(&rules, &|i| {
            if i == n {
                "the new rule".to_owned()
            } else {
                format!("installed rule from {}", current[i].source)
            }
        })?;
        self.apply_steering(&all)?;
        self.steering()?
            .into_iter()
            .find(|r| r.source == rule.source)
            .ok_or(DataplaneError::NoSuchSteer(rule.source))
    }

    /// Removes the steering rule for `source`. Nothing changes when there is none.
    pub fn remove_steer(&mut self, source: Block) -> Result<InstalledSteer, DataplaneError> {
        let current = self.steering()?;
        let gone = current
            .iter()
            .find(|r| r.source == source)
            .cloned()
            .ok_or(DataplaneError::NoSuchSteer(source))?;
        let rest: Vec<(crate::config::SteerConfig, u32)> = current
            .iter()
            .filter(|r| r.source != source)
            .map(|r| (r.rule(), r.ifindex))
            .collect();
        self.apply_steering(&rest)?;
        Ok(gone)
    }

    /// Adds one mapping to the running tables, validated against the installed ones as the
    /// config is. Nothing changes when it is refused.
    pub fn add_mapping(&mut self, new: MappingConfig) -> Result<InstalledMapping, DataplaneError> {
        let current = self.mappings()?;
        let mut all: Vec<MappingConfig> = current
            .iter()
            .map(|m| MappingConfig {
                public: m.public,
                private: m.private,
            })
            .collect();
        all.push(new);
        let n = current.len();
        crate::config::validate_mappings(&all, &|i| {
            if i == n {
                "the new mapping".to_owned()
            } else {
                format!(
                    "installed mapping {} <-> {}",
                    current[i].public, current[i].private
                )
            }
        })?;
        if all.len() > self.capacity() as usize {
            return Err(DataplaneError::Full(self.capacity()));
        }
        self.apply(&all)?;
        self.mappings()?
            .into_iter()
            .find(|m| m.public == new.public)
            .ok_or(DataplaneError::NoSuchMapping(new.public))
    }

    /// Removes the mapping whose public side is `public` (both directions). Nothing changes
    /// when there is none.
    pub fn remove_mapping(&mut self, public: Block) -> Result<InstalledMapping, DataplaneError> {
        let current = self.mappings()?;
        let gone = *current
            .iter()
            .find(|m| m.public == public)
            .ok_or(DataplaneError::NoSuchMapping(public))?;
        let rest: Vec<MappingConfig> = current
            .iter()
            .filter(|m| m.public != public)
            .map(|m| MappingConfig {
                public: m.public,
                private: m.private,
            })
            .collect();
        self.apply(&rest)?;
        Ok(gone)
    }

    /// Records this binary's map layout in fresh maps, or checks that adopted maps have it.
    fn claim_schema(&mut self, adopted: bool) -> Result<(), DataplaneError> {
        let mut settings = self.settings.get(&0, 0).map_err(map_err(names::SETTINGS))?;
        if settings.schema == SCHEMA_VERSION {
            return Ok(());
        }
        if adopted && settings.schema != 0 {
            return Err(DataplaneError::Schema {
                found: settings.schema,
                ours: SCHEMA_VERSION,
            });
        }
        settings.schema = SCHEMA_VERSION;
        self.settings
            .set(0, settings, 0)
            .map_err(map_err(names::SETTINGS))
    }

    /// Room in the mapping tables.
    pub fn capacity(&self) -> u32 {
        self.counters.len() - 1
    }

    /// Kernel memory held by the tables.
    pub fn memory(&self) -> MemoryReport {
        let capacity = self.counters.len() - 1;
        let total_bytes = self.memory.values().sum();
        let scaling: u64 = [names::DNAT_MAP, names::SNAT_MAP, names::MAPPING_COUNTERS]
            .iter()
            .filter_map(|n| self.memory.get(n))
            .sum();
        MemoryReport {
            maps: self.memory.clone(),
            total_bytes,
            capacity,
            bytes_per_mapping: scaling as f64 / f64::from(capacity.max(1)),
        }
    }

    /// The data plane's `FLAG_*` bits.
    pub fn flags(&self) -> Result<u32, DataplaneError> {
        Ok(self
            .settings
            .get(&0, 0)
            .map_err(map_err(names::SETTINGS))?
            .flags)
    }

    /// Turns the forwarding fast path on or off.
    pub fn set_fast_path(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.set_flag(FLAG_FAST_PATH, on)
    }

    /// Host orientation on or off (see [`FLAG_HOST`]).
    pub fn set_host(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.set_flag(FLAG_HOST, on)
    }

    /// [`update_batch`] on the map `name`; `Ok(false)` when the kernel cannot.
    fn write_batch<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
        keys: &[K],
        values: &[V],
    ) -> Result<bool, DataplaneError> {
        use std::os::fd::AsFd;
        if keys.is_empty() {
            return Ok(true);
        }
        let Some(fd) = self.batch_fds.get(name) else {
            return Ok(false);
        };
        update_batch(fd.as_fd(), keys, values)
            .map_err(|error| DataplaneError::Batch { name, error })
    }

    /// Whether XDP may redirect to interface `index`: only where ipnat's XDP runs (native) and
    /// the driver can transmit redirected frames (`ndo-xmit`; a veth only while its peer has
    /// an XDP program). Elsewhere XDP hands the packet to TC, which forwards it. Unknown
    /// features (an older kernel): allowed, as before the kernel could say.
    ///
    /// `sg`: some interface runs the frags-capable program, so a redirected frame may span
    /// several buffers, which a target must also be able to send (`ndo-xmit-sg`).
    pub fn set_xdp_target(
        &mut self,
        index: u32,
        mode: AttachMode,
        features: Option<u64>,
        sg: bool,
    ) -> Result<(), DataplaneError> {
        let mut needed = crate::netdev::XDP_NDO_XMIT;
        if sg {
            needed |= crate::netdev::XDP_NDO_XMIT_SG;
        }
        let ok = mode == AttachMode::XdpNative && features.is_none_or(|f| f & needed == needed);
        if ok {
            self.xdp_targets.insert(index, 1, 0)
        } else {
            absent_ok(self.xdp_targets.remove(&index))
        }
        .map_err(map_err(names::XDP_TARGETS))
    }

    /// The internal prefixes in the kernel.
    pub fn internal_prefixes(&self) -> Result<Vec<Ipv4Net>, DataplaneError> {
        let mut out = Vec::new();
        for k in self.internal.keys() {
            let k = k.map_err(map_err(names::INTERNAL_MAP))?;
            let net = Ipv4Net::new(addr(k.data()), k.prefix_len() as u8)
                .map_err(|_| DataplaneError::Corrupt(names::INTERNAL_MAP))?;
            out.push(net);
        }
        out.sort();
        Ok(out)
    }

    /// Makes the internal prefixes equal `desired`: additions first, then removals.
    pub fn apply_internal(&mut self, desired: &[Ipv4Net]) -> Result<(), DataplaneError> {
        let have = self.internal_prefixes()?;
        for net in desired.iter().filter(|n| !have.contains(n)) {
            self.internal
                .insert(
                    &Key::new(u32::from(net.prefix_len()), key(net.network())),
                    1,
                    0,
                )
                .map_err(map_err(names::INTERNAL_MAP))?;
        }
        for net in have.iter().filter(|n| !desired.contains(n)) {
            absent_ok(
                self.internal
                    .remove(&Key::new(u32::from(net.prefix_len()), key(net.network()))),
            )
            .map_err(map_err(names::INTERNAL_MAP))?;
        }
        Ok(())
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), DataplaneError> {
        let mut flags = self.flags()? & !flag;
        if on {
            flags |= flag;
        }
        let schema = self
            .settings
            .get(&0, 0)
            .map_err(map_err(names::SETTINGS))?
            .schema;
        self.settings
            .set(0, Settings { flags, schema }, 0)
            .map_err(map_err(names::SETTINGS))
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        let mut mappings = Vec::new();
        for m in self.mappings()? {
            let c = self
                .counters
                .get(&m.id, 0)
                .map_err(map_err(names::MAPPING_COUNTERS))?;
            mappings.push(MappingStats {
                mapping: m,
                dnat_packets: c.dnat_packets,
                dnat_bytes: c.dnat_bytes,
                snat_packets: c.snat_packets,
                snat_bytes: c.snat_bytes,
            });
        }
        let mut reasons = BTreeMap::new();
        for r in Reason::ALL {
            let per_cpu = self
                .reasons
                .get(&(r as u32), 0)
                .map_err(map_err(names::REASON_COUNTERS))?;
            reasons.insert(r.name(), per_cpu.iter().sum());
        }
        Ok(Snapshot {
            mappings,
            reasons,
            memory: self.memory(),
            steering: self.steering()?,
        })
    }
}

impl Snapshot {
    /// Per-mapping rates since `prev`, `secs` seconds earlier: (public, in pkt/s, in bit/s,
    /// out pkt/s, out bit/s).
    pub fn rates(&self, prev: &Snapshot, secs: f64) -> Vec<(Block, f64, f64, f64, f64)> {
        self.mappings
            .iter()
            .map(|m| {
                let p = prev
                    .mappings
                    .iter()
                    .find(|o| o.mapping.id == m.mapping.id && o.mapping.public == m.mapping.public);
                let d = |now: u64, then: Option<u64>| {
                    now.saturating_sub(then.unwrap_or(0)) as f64 / secs
                };
                (
                    m.mapping.public,
                    d(m.dnat_packets, p.map(|p| p.dnat_packets)),
                    8.0 * d(m.dnat_bytes, p.map(|p| p.dnat_bytes)),
                    d(m.snat_packets, p.map(|p| p.snat_packets)),
                    8.0 * d(m.snat_bytes, p.map(|p| p.snat_bytes)),
                )
            })
            .collect()
    }

    /// Human-readable table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>4}  {:<15}  {:<15}  {:>10} {:>12}  {:>10} {:>12}",
            "id", "public", "private", "in pkts", "in bytes", "out pkts", "out bytes"
        );
        for m in &self.mappings {
            let _ = writeln!(
                s,
                "{:>4}  {:<15}  {:<15}  {:>10} {:>12}  {:>10} {:>12}",
                m.mapping.id,
                m.mapping.public.to_string(),
                m.mapping.private.to_string(),
                m.dnat_packets,
                m.dnat_bytes,
                m.snat_packets,
                m.snat_bytes
            );
        }
        let _ = writeln!(
            s,
            "(in: public -> private, destination translated; out: private -> public, source translated)"
        );
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(s, "packets by outcome: {}", reasons.join(" "));
        for r in &self.steering {
            let _ = writeln!(
                s,
                "steer {}: from {} out of {} (via {} outside {}): {} packets, {} bytes",
                r.id, r.source, r.interface, r.gateway, r.subnet, r.packets, r.bytes
            );
        }
        let _ = writeln!(
            s,
            "table memory: {} KiB for {} mappings ({:.0} bytes per mapping)",
            self.memory.total_bytes / 1024,
            self.memory.capacity,
            self.memory.bytes_per_mapping
        );
        s
    }
}
