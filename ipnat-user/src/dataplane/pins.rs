//! The pin directory: its safety checks, the link pins, the layout check before adopting,
//! and taking a data plane apart (`down`).

use super::*;

/// A link's pin name. bpffs refuses names with a dot, which VLAN interfaces (`eth0.100`) have:
/// dots become colons, which interface names cannot hold, so the mapping is one-to-one.
pub(super) fn link_pin_name(hook: &str, iface: &str) -> String {
    format!("link-{hook}-{}", iface.replace('.', ":"))
}

/// The interface a link pin name ([`link_pin_name`]) belongs to.
pub(super) fn link_pin_iface(name: &str) -> String {
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

pub(super) fn pin_error(path: &Path, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Pin {
        path: path.to_owned(),
        why: e.to_string(),
    }
}

/// A pinned link, as the link type of the program that will take it over.
pub(super) fn adopt_as<L>(path: &Path) -> Result<L, DataplaneError>
where
    L: TryFrom<FdLink>,
    L::Error: std::fmt::Display,
{
    L::try_from(adopt_link(path)?).map_err(|e| pin_error(path, e))
}

/// Pins a link taken out of its program, so that it outlives this process.
pub(super) fn pin_taken<L>(link: L, path: &Path) -> Result<(), DataplaneError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    pin_link(
        FdLink::try_from(link).map_err(|e| pin_error(path, e))?,
        path,
    )
}

pub(super) fn adopt_link(path: &Path) -> Result<FdLink, DataplaneError> {
    check_pin_owner(path)?;
    PinnedLink::from_pin(path)
        .map(FdLink::from)
        .map_err(|e| DataplaneError::Pin {
            path: path.to_owned(),
            why: e.to_string(),
        })
}

pub(super) fn pin_link(link: FdLink, path: &Path) -> Result<(), DataplaneError> {
    link.pin(path).map(drop).map_err(|e| DataplaneError::Pin {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

/// BPF_LINK_DETACH on a pinned link: the program leaves its hook at once, whoever still holds
/// the link (a link released by its last reference goes asynchronously).
pub(super) fn detach_pinned_link(path: &Path) -> std::io::Result<()> {
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

pub(super) fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataplaneError::Pin {
            path: path.to_owned(),
            why: e.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A pin or pin directory ipnat may adopt: not a symlink, owned by this (root) user.
pub(super) fn check_pin_owner(path: &Path) -> Result<std::fs::Metadata, DataplaneError> {
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
pub(super) fn prepare_pin_dir(dir: &Path) -> Result<bool, DataplaneError> {
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
pub(super) fn check_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
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
    /// Announced routes withdrawn (see `crate::fleet::health`).
    pub routes: Vec<String>,
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
/// routes it announced first (a gateway of a fleet leaves its routers before it stops
/// translating), then the links (which detaches the programs from their interfaces), then the maps and the
/// directory; then the addresses ipnat added, then the host settings it changed (in that
/// order: an address removed while `promote_secondaries` is still raised keeps the others of
/// its subnet), then the records.
pub fn teardown(dir: &Path, lock: &crate::state::OwnerLock) -> Result<Removed, DataplaneError> {
    let records = crate::state::Records::of(dir)?;
    let mut removed = Removed::default();
    if !lock.netns_gone {
        removed.routes = crate::system::remove_own_routes(dir)
            .map_err(|e| DataplaneError::Pin {
                path: records.dir().to_owned(),
                why: format!("withdrawing the announced routes: {e}"),
            })?
            .iter()
            .map(|r| r.dst.to_string())
            .collect();
    }
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
        remove_pin(&dir.join(names::TABLE_WRITE_PROGRAM))?;
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
        removed.addresses = crate::system::remove_added_addresses(dir)
            .map_err(|e| host("removing the addresses ipnat added", e))?;
        removed.restored =
            crate::system::restore(dir).map_err(|e| host("restoring host settings", e))?;
    }
    records.remove_all()?;
    Ok(removed)
}

/// The product's maps, by name.
pub const MAP_NAMES: [&str; 12] = [
    names::XDP_TARGETS,
    names::INTERNAL_MAP,
    names::DNAT_MAP,
    names::SNAT_MAP,
    names::DNAT_PREFIX_MAP,
    names::SNAT_PREFIX_MAP,
    names::STEER_MAP,
    names::STEER_COUNTERS,
    names::REASON_COUNTERS,
    names::SETTINGS,
    names::RPF_MAP,
    names::ROUTE_GENERATION,
];

/// Refuses to adopt a pin under one of the map names `which` that is not a map of this
/// binary's layout (type, key and value size, entries, flags as the object declares them; the
/// tables sized `capacity`). The maps about to be rebuilt are left out by the caller: their
/// layout may legitimately differ. Something else pinned there (another program's map, a stale
/// experiment) would otherwise be opened by the loader and fail the verifier, after the
/// missing maps were already created and pinned beside it.
pub(super) fn check_pinned_layout(
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
pub(super) fn map_type_name(t: u32) -> String {
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

/// Creates the pin directory (0700, its parent already checked to be on a bpffs).
pub(super) fn create_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| DataplaneError::Pin {
            path: dir.to_owned(),
            why: format!("cannot create: {e}"),
        })
}
