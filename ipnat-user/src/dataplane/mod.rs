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
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
    },
};
use ipnat_common::{
    EntryCounters, FLAG_FAST_PATH, FLAG_HOST, FLAG_PREFIXES, FLAG_STEER, FLAG_XDP_ALONE,
    IFACE_PEER, IFACE_TC_ONLY, IFACE_XDP_ALONE, IFACE_XDP_TARGET, NatEntry, NatTarget, PrefixEntry,
    PrefixTarget, Reason, RpfKey, SCHEMA_VERSION, Settings, SteerCounters, SteerTarget, TABLE_DNAT,
    TABLE_DNAT_PREFIX, TABLE_SNAT, TABLE_SNAT_PREFIX, TABLE_WRITE_HEADER, TABLE_WRITES, TableWrite,
    names,
};
use ipnet::Ipv4Net;
use serde::Serialize;
use thiserror::Error;

use crate::{
    EBPF_OBJECT,
    config::{Block, MappingConfig},
};

mod counters;
mod pins;
mod probe;
mod rebuild;
mod status;
mod sys;
mod tables;

pub use counters::*;
pub use pins::*;
pub use probe::*;
use rebuild::*;
pub use status::*;
use sys::*;
pub use tables::*;

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
        error: ProgramError,
    },
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("attaching {program} to {iface} failed: {error}")]
    Attach {
        program: &'static str,
        iface: String,
        error: ProgramError,
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
    crate::system::ifindex_of(name).ok_or_else(|| DataplaneError::NoSuchInterface(name.into()))
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
    /// A rebuild's old exact tables, until the links run the new programs.
    carried: Option<Carried>,
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
            .map_max_entries(names::SNAT_MAP, capacity);
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
            names::TABLE_WRITE_PROGRAM,
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
        tables.writer = Some(table_writer(&mut ebpf, pin_dir)?);
        // After a layout change the settings are a new map to claim; otherwise an adopted
        // one must already be ours.
        let migrated = rebuild.as_ref().is_some_and(Rebuild::migrates);
        let carried = match rebuild {
            Some(old) => old.copy_into(&tables)?,
            None => None,
        };
        tables.claim_schema(adopted && !migrated)?;
        Ok(Self {
            ebpf,
            tables,
            pin_dir: pin_dir.map(Path::to_owned),
            adopted,
            frags: HashSet::new(),
            carried,
        })
    }

    /// After a rebuild, once every link runs this binary's programs: adds what the old tables
    /// counted since they were copied (see `Carried`). Nothing to do otherwise.
    pub fn settle_rebuild(&mut self) -> Result<(), DataplaneError> {
        match self.carried.take() {
            Some(carried) => carried.settle(&mut self.tables),
            None => Ok(()),
        }
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
    /// goes to the local stack anyway, and XDP would cost the receive offloads. `xdp` false:
    /// TC on receive as on a driver without native XDP (the interface's `xdp = false`).
    pub fn attach(
        &mut self,
        iface: &str,
        host: bool,
        xdp: bool,
    ) -> Result<AttachMode, DataplaneError> {
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
        } else if !xdp
            || adopted_tc_gateway
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
            match self.attach_one(iface, program, None, pinned("xdp")) {
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
        // On its own for now; `refresh_xdp_targets` sees all of them once they are attached.
        let facts = interface_facts(index, mode, features);
        self.tables.set_interface(
            index,
            tables::interface_value(&facts, !self.frags.is_empty()),
        )?;
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
            self.attach_one(iface, name, Some(attach_type), pinned(hook))?;
        }
        Ok(mode)
    }

    /// Attaches `program` to `iface` (XDP in driver mode, or TC at `tc`), or adopts the link
    /// pinned at `pinned` when there is one; a new link is pinned there.
    fn attach_one(
        &mut self,
        iface: &str,
        program: &'static str,
        tc: Option<TcAttachType>,
        pinned: Option<PathBuf>,
    ) -> Result<(), DataplaneError> {
        let err = |error| DataplaneError::Attach {
            program,
            iface: iface.to_owned(),
            error,
        };
        // A pinned link that no longer holds this interface (detached behind our back, e.g. by
        // `bpftool link detach`, or the interface deleted and created again) cannot be taken
        // over: its pin goes and a new link is made.
        if let Some(path) = pinned.as_deref().filter(|p| p.exists()) {
            let index = ifindex(iface)?;
            match pinned_link_target(path) {
                Ok((_, attached)) if attached == index => {}
                Ok((_, attached)) => {
                    tracing::warn!(interface = iface, pin = %path.display(), attached, "the pinned link was detached from the interface behind ipnat's back: attaching anew");
                    remove_pin(path)?;
                }
                Err(e) => return Err(pin_error(path, e)),
            }
        }
        let p = self
            .ebpf
            .program_mut(program)
            .ok_or(DataplaneError::MissingMap(program))?;
        let wrong = |_| DataplaneError::MissingMap(program);
        match tc {
            None => {
                let xdp: &mut Xdp = p.try_into().map_err(wrong)?;
                attach_or_adopt(
                    xdp,
                    pinned,
                    err,
                    |x| x.attach(iface, XdpMode::Driver),
                    Xdp::take_link,
                    Xdp::attach_to_link,
                )
            }
            Some(at) => {
                let c: &mut SchedClassifier = p.try_into().map_err(wrong)?;
                attach_or_adopt(
                    c,
                    pinned,
                    err,
                    |c| c.attach(iface, at),
                    SchedClassifier::take_link,
                    SchedClassifier::attach_to_link,
                )
            }
        }
    }

    /// Re-reads the drivers' XDP features and sets which of `attached` (ifindex, mode) XDP may
    /// redirect into, which are veths with a peer TC ingress may deliver to, and whose XDP can
    /// send nowhere else (see [`tables::interface_values`]).
    pub fn refresh_xdp_targets(
        &mut self,
        attached: &[(u32, AttachMode)],
    ) -> Result<(), DataplaneError> {
        let facts: Vec<tables::IfaceFacts> = attached
            .iter()
            .map(|&(index, mode)| {
                interface_facts(
                    index,
                    mode,
                    crate::netdev::xdp_features(index).ok().flatten(),
                )
            })
            .collect();
        let values = tables::interface_values(&facts, !self.frags.is_empty());
        for &(index, value) in &values {
            self.tables.set_interface(index, value)?;
        }
        let alone = values.iter().any(|&(_, v)| v & IFACE_XDP_ALONE != 0);
        self.tables.set_flag(FLAG_XDP_ALONE, alone)
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

/// What the kernel says of interface `index` for the interface table.
fn interface_facts(index: u32, mode: AttachMode, features: Option<u64>) -> tables::IfaceFacts {
    tables::IfaceFacts {
        index,
        mode,
        features,
        // Unknown (the request failed): the plain redirect, which works everywhere.
        peer: crate::netdev::peer_in_other_namespace(index).unwrap_or(false),
    }
}

/// A descriptor of the loaded `ipnat_table_write` program, for [`Tables`] to run; pinned
/// beside the maps (replacing an earlier run's), so that the commands that open the pins
/// rewrite entries in place too.
fn table_writer(
    ebpf: &mut Ebpf,
    pin_dir: Option<&Path>,
) -> Result<std::os::fd::OwnedFd, DataplaneError> {
    use std::os::fd::AsFd;
    let name = names::TABLE_WRITE_PROGRAM;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingMap(name))?
        .try_into()
        .map_err(|error| DataplaneError::Verify {
            program: name,
            error,
        })?;
    if let Some(dir) = pin_dir {
        let path = dir.join(name);
        remove_pin(&path)?;
        prog.pin(&path).map_err(|e| pin_error(&path, e))?;
    }
    let fd = prog.fd().map_err(|error| DataplaneError::Verify {
        program: name,
        error,
    })?;
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|error| DataplaneError::Batch { name, error })
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
fn io_errno(e: &ProgramError) -> Option<i32> {
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

/// One program's link on one hook: the link pinned at `pinned` adopted when it exists (an
/// upgrade or a restart keeps the attachment, never detaching), else a new attachment
/// (`attach`), pinned there when a path is given.
fn attach_or_adopt<P, L, Id>(
    program: &mut P,
    pinned: Option<PathBuf>,
    err: impl Fn(ProgramError) -> DataplaneError,
    attach: impl FnOnce(&mut P) -> Result<Id, ProgramError>,
    take: fn(&mut P, Id) -> Result<L, ProgramError>,
    adopt: fn(&mut P, L) -> Result<Id, ProgramError>,
) -> Result<(), DataplaneError>
where
    L: TryFrom<FdLink>,
    <L as TryFrom<FdLink>>::Error: std::fmt::Display,
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    match pinned {
        Some(path) if path.exists() => {
            adopt(program, adopt_as::<L>(&path)?).map_err(&err)?;
        }
        path => {
            let id = attach(program).map_err(&err)?;
            if let Some(path) = path {
                pin_taken(take(program, id).map_err(&err)?, &path)?;
            }
        }
    }
    Ok(())
}
