//! Where ipnat keeps its state on the host, and whose that state is.
//!
//! A data plane is the pins under one pin directory (`pin_path`) of one bpffs instance: the
//! maps and links that keep translating while no controller runs. A pin path alone does not
//! name one: `ip netns exec` gives each command a fresh `/sys`, and every bpffs mounted is an
//! instance of its own, so the same path can hold two unrelated data planes. What ipnat
//! records beside the pins (bpffs holds only BPF objects) therefore lives in one directory per
//! data plane under [`RUN_DIR`], named one-to-one after the bpffs instance (its device number)
//! and the pin path:
//!
//! - `lock`: held (flock) by the one `ipnat run` that owns the data plane, and by `ipnat down`
//!   while it takes it apart; it holds the owner's pid;
//! - `netns`: the network namespace whose interfaces the data plane is attached to (its inode):
//!   a controller or `down` in another namespace is refused, since the interfaces, addresses
//!   and sysctls recorded here are that namespace's;
//! - `sysctl.json`, `addresses.json`, `eips.json`, `sync.json`: what `ipnat down` puts back or
//!   removes, and the cloud's last good sync.
//!
//! ipnat never mounts a bpffs: it would have to guess whether the mount outlives the process
//! (under `ip netns exec` it dies with it, and the data plane with it). It refuses instead and
//! names the fix. Read-only commands only look: they create, mount and write nothing.

use std::{
    io::{Read, Seek, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use thiserror::Error;

/// The standard bpffs mount point (systemd mounts it at boot).
pub const BPFFS: &str = "/sys/fs/bpf";

/// Where the records of every data plane on this host live.
pub const RUN_DIR: &str = "/run/ipnat";

/// The longest pin path accepted: its record directory's name (at most three bytes per byte
/// of the path, plus the device) must fit a file name (255 bytes).
pub const MAX_PIN_PATH: usize = 80;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("pin_path {path:?}: {why}")]
    PinPath { path: PathBuf, why: String },
    #[error(
        "`ipnat run` (pid {pid}) owns the data plane at {path}: stop it first (systemctl stop \
         ipnat, or kill {pid}); one controller per data plane"
    )]
    Held { pid: String, path: PathBuf },
    #[error(
        "the data plane at {path} is attached to interfaces of network namespace net:[{theirs}], \
         not this one (net:[{ours}]): run ipnat in that namespace (nsenter --net=/run/netns/NAME)"
    )]
    OtherNetns {
        path: PathBuf,
        theirs: u64,
        ours: u64,
    },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |error| StateError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Checks what can be checked of a pin path without looking at the host: absolute, in plain
/// components (no `.`, `..` or empty ones), no component bpffs refuses (bpffs refuses any name
/// with a dot), at most [`MAX_PIN_PATH`] bytes, and not a mount point's root.
pub fn check_pin_path(path: &Path) -> Result<(), String> {
    let text = path.to_str().ok_or_else(|| "not valid UTF-8".to_owned())?;
    if text.is_empty() {
        return Err(
            "is empty: give an absolute directory on a bpffs, e.g. /sys/fs/bpf/ipnat".into(),
        );
    }
    if !text.starts_with('/') {
        return Err("not absolute: give a directory on a bpffs, e.g. /sys/fs/bpf/ipnat".into());
    }
    if text.len() > MAX_PIN_PATH {
        return Err(format!("longer than {MAX_PIN_PATH} bytes"));
    }
    let parts: Vec<&str> = text[1..].split('/').collect();
    if parts.len() < 2 {
        return Err("names no directory below a bpffs mount (e.g. /sys/fs/bpf/ipnat)".into());
    }
    for part in parts {
        if part.is_empty() || part == "." || part == ".." {
            return Err("must be in plain components (no //, trailing /, . or ..)".into());
        }
        if part.contains('.') {
            return Err(format!("{part:?}: bpffs refuses names with a dot"));
        }
        if part.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("{part:?}: holds a space or control character"));
        }
    }
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|st| st.filesystem_type().0 == BPF_FS_MAGIC)
}

/// The bpffs instance `pin_path` lives on (the device number of its parent's file system):
/// the parent must exist and be on a bpffs. Only looks.
pub fn bpffs_of(pin_path: &Path) -> Result<u64, StateError> {
    let refuse = |why: String| StateError::PinPath {
        path: pin_path.to_owned(),
        why,
    };
    check_pin_path(pin_path).map_err(refuse)?;
    let parent = pin_path.parent().unwrap_or(Path::new("/"));
    let meta =
        std::fs::metadata(parent).map_err(|e| refuse(format!("{}: {e}", parent.display())))?;
    if !is_bpffs(parent) {
        return Err(refuse(if pin_path.starts_with(BPFFS) {
            format!(
                "no bpffs is mounted at {BPFFS} in this mount namespace; systemd mounts one at \
                 boot, elsewhere `mount -t bpf bpf {BPFFS}` (ipnat never mounts one itself). \
                 Under `ip netns exec`, which gives each command a fresh /sys, enter only the \
                 network namespace instead (`nsenter --net=/run/netns/NAME ipnat ...`, or \
                 dist/ipnat@.service): pins on a bpffs of the command's own would die with it"
            )
        } else {
            format!(
                "{} is not on a bpffs: pins must live on one (e.g. under {BPFFS})",
                parent.display()
            )
        }));
    }
    Ok(meta.dev())
}

/// This process's network namespace (its inode).
pub fn netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}

/// The record directory's name for the data plane at `pin_path` on bpffs instance `dev`:
/// one-to-one (the device, then the path with every byte but ASCII letters and digits
/// percent-encoded, so `a-b` and `a_b` stay apart).
pub fn record_name(dev: u64, pin_path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let path = percent_encoding::percent_encode(
        pin_path.as_os_str().as_bytes(),
        percent_encoding::NON_ALPHANUMERIC,
    );
    format!(
        "bpffs{}_{}-{path}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    )
}

/// The records of one data plane (see the module's documentation).
#[derive(Clone, Debug)]
pub struct Records {
    pin_path: PathBuf,
    dir: PathBuf,
}

impl Records {
    /// The records of the data plane at `pin_path`, which must be on a bpffs. Only looks.
    pub fn of(pin_path: &Path) -> Result<Self, StateError> {
        let dev = bpffs_of(pin_path)?;
        Ok(Self {
            pin_path: pin_path.to_owned(),
            dir: Path::new(RUN_DIR).join(record_name(dev, pin_path)),
        })
    }

    /// The records of `pin_path` where it is on a bpffs; elsewhere a directory that never
    /// exists (nothing can have been recorded for it).
    pub fn lookup(pin_path: &Path) -> Self {
        Self::of(pin_path).unwrap_or_else(|_| Self {
            pin_path: pin_path.to_owned(),
            dir: Path::new(RUN_DIR).join("nowhere"),
        })
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A record file's path.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether anything is recorded.
    pub fn exist(&self) -> bool {
        self.dir.is_dir()
    }

    /// Creates the record directory (and [`RUN_DIR`]) 0700 where missing.
    pub fn create(&self) -> Result<(), StateError> {
        for dir in [Path::new(RUN_DIR), self.dir.as_path()] {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(io(dir)(e));
                }
                _ => {}
            }
            let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
            if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
                return Err(StateError::Io {
                    path: dir.to_owned(),
                    error: std::io::Error::other(
                        "not a directory of this user's (refusing to keep records there)",
                    ),
                });
            }
        }
        Ok(())
    }

    /// Writes `text` to record `name` in one step (a new 0600 file renamed over it, never
    /// through a symlink): a reader such as `ipnat status` never sees it half written.
    pub fn write(&self, name: &str, text: &str) -> Result<(), StateError> {
        self.create()?;
        write_atomic(&self.file(name), text).map_err(io(&self.file(name)))
    }

    /// Reads record `name`, if there is one.
    pub fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.file(name)).ok()
    }

    /// Reads record `name` as JSON, if there is one that parses.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        serde_json::from_str(&self.read(name)?).ok()
    }

    /// Writes `value` to record `name` as JSON (see [`Records::write`]).
    pub fn write_json<T: serde::Serialize>(&self, name: &str, value: &T) -> std::io::Result<()> {
        self.write(name, &serde_json::to_string_pretty(value)?)
            .map_err(std::io::Error::other)
    }

    /// Forgets record `name`.
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.file(name));
    }

    /// The network namespace the data plane was set up in, when it is not this process's:
    /// `Err` while that namespace lives (its interfaces, addresses and settings are not this
    /// one's to touch), `Ok(true)` when it is gone (and took those with it), `Ok(false)` when
    /// the data plane is this namespace's (or new).
    pub fn check_netns(&self) -> Result<bool, StateError> {
        let ours = netns();
        match self
            .read("netns")
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            Some(theirs) if theirs != ours => {
                if netns_alive(theirs) {
                    Err(StateError::OtherNetns {
                        path: self.pin_path.clone(),
                        theirs,
                        ours,
                    })
                } else {
                    Ok(true)
                }
            }
            _ => Ok(false),
        }
    }

    /// Takes the data plane's lock (for `ipnat run`, and `ipnat down` while it works), or says
    /// which process holds it; refuses a data plane of another network namespace that still
    /// exists, and records this one's unless the data plane's namespace is gone
    /// ([`OwnerLock::netns_gone`]).
    pub fn lock(&self) -> Result<OwnerLock, StateError> {
        self.create()?;
        let path = self.file("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path))?;
        let mut lock =
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((f, _)) => {
                    file = f;
                    return Err(StateError::Held {
                        pid: holder_pid(&mut file),
                        path: self.pin_path.clone(),
                    });
                }
            };
        let netns_gone = self.check_netns()?;
        let write = |lock: &mut std::fs::File| -> std::io::Result<()> {
            lock.set_len(0)?;
            lock.rewind()?;
            write!(lock, "{}", std::process::id())
        };
        write(&mut lock).map_err(io(&path))?;
        if !netns_gone {
            self.write("netns", &netns().to_string())?;
        }
        Ok(OwnerLock {
            _lock: lock,
            netns_gone,
        })
    }

    /// The process holding the data plane's lock now (an `ipnat run`, or an `ipnat down` at
    /// work), if any: its pid as it wrote it. Takes nothing (a shared lock, dropped at once).
    pub fn holder(&self) -> Option<String> {
        let file = std::fs::File::open(self.file("lock")).ok()?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
            Ok(_free) => None,
            Err((mut file, _)) => Some(holder_pid(&mut file)),
        }
    }

    /// Removes every record (for `ipnat down`, holding the lock, once all is undone).
    pub fn remove_all(&self) -> Result<(), StateError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&self.dir)(e)),
            _ => Ok(()),
        }
    }
}

/// The pid the lock's holder wrote into it (`starting` before it has).
fn holder_pid(lock: &mut std::fs::File) -> String {
    let mut pid = String::new();
    let _ = lock.read_to_string(&mut pid);
    match pid.trim() {
        "" => "starting".to_owned(),
        p => p.to_owned(),
    }
}

/// Held while an `ipnat run` owns a data plane (the tables have a single writer), or while
/// `ipnat down` takes it apart.
pub struct OwnerLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// The data plane was set up in a network namespace that no longer exists: its links died
    /// with their interfaces, and what was recorded of that namespace is gone too.
    pub netns_gone: bool,
}

/// Whether a network namespace (by inode) still exists: a process is in it, or it is bound
/// to a file under /run/netns (`ip netns add`).
fn netns_alive(ino: u64) -> bool {
    let is = |p: PathBuf| std::fs::metadata(p).is_ok_and(|m| m.ino() == ino);
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| is(e.path()));
    named
        || std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .any(|e| is(e.path().join("ns/net")))
}

/// Replaces `path` with `text` in one step: a new file (0600, created exclusively, so never
/// through a symlink) renamed over it.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_paths_bpffs_would_refuse_or_that_name_no_directory_are_refused() {
        for bad in [
            "",
            "relative/ipnat",
            "/",
            "/ipnat",
            "/sys/fs/bpf/",
            "/sys/fs/bpf//ipnat",
            "/sys/fs/bpf/../ipnat",
            "/sys/fs/bpf/./ipnat",
            "/sys/fs/bpf/ipnat.eth0",
            "/sys/fs/bpf/ip nat",
            "/sys/fs/bpf/ipnat\n",
        ] {
            assert!(check_pin_path(Path::new(bad)).is_err(), "{bad:?} accepted");
        }
        let long = format!("/sys/fs/bpf/{}", "a".repeat(MAX_PIN_PATH));
        assert!(check_pin_path(Path::new(&long)).is_err());
        for good in [
            "/sys/fs/bpf/ipnat",
            "/sys/fs/bpf/ipnat-blue",
            "/sys/fs/bpf/a_b/c:d",
        ] {
            check_pin_path(Path::new(good)).unwrap();
        }
    }

    #[test]
    fn record_names_are_one_to_one() {
        let dev = nix::sys::stat::makedev(0, 27);
        let names: Vec<String> = [
            "/sys/fs/bpf/a-b",
            "/sys/fs/bpf/a_b",
            "/sys/fs/bpf/a%2Db",
            "/sys/fs/bpf/a:b",
        ]
        .iter()
        .map(|p| record_name(dev, Path::new(p)))
        .collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
            assert!(a.len() <= 255 && !a.contains('/'), "{a}");
        }
        // Another bpffs instance, the same path: another data plane.
        assert_ne!(
            record_name(nix::sys::stat::makedev(0, 28), Path::new("/sys/fs/bpf/a-b")),
            names[0]
        );
        let longest = format!("/{}", "x/".repeat(MAX_PIN_PATH / 2 - 1) + "y");
        assert!(record_name(u64::MAX, Path::new(&longest)).len() <= 255);
    }
}
