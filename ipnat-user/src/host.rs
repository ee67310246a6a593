//! Host settings ipnat changes, and puts back when it is removed (`ipnat down`).
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

const SYSCTLS: &str = "sysctl.json";

/// sysctl key -> value before ipnat changed it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Changed {
    pub sysctls: BTreeMap<String, String>,
}

/// The /proc/sys file of a sysctl key in dotted notation. An interface's settings
/// (`net.ipv4.conf.<iface>.<name>`) keep the interface's name whole: a VLAN's `eth0.100` is
/// the directory `conf/eth0.100`, not `conf/eth0/100` (setting names hold no dot).
pub fn proc_path(key: &str) -> PathBuf {
    let mut path = PathBuf::from("/proc/sys");
    if let Some((iface, name)) = key
        .strip_prefix("net.ipv4.conf.")
        .and_then(|rest| rest.rsplit_once('.'))
    {
        path.extend(["net", "ipv4", "conf", iface, name]);
    } else {
        path.extend(key.split('.'));
    }
    path
}

/// A sysctl's value, by its dotted key.
pub fn read(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(proc_path(key))?.trim().to_owned())
}

fn write(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(proc_path(key), value)
}

fn load(pin_path: &Path) -> Changed {
    records(pin_path)
        .read(SYSCTLS)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Makes reverse-path filtering loose on `ifaces` where it is strict; returns what it changed
/// now as (key, old value). Old values already recorded (by an earlier run) are kept.
pub fn loosen_rp_filter(
    ifaces: &[String],
    pin_path: &Path,
) -> std::io::Result<Vec<(String, String)>> {
    let mut changed = load(pin_path);
    let all: u8 = read("net.ipv4.conf.all.rp_filter")?.parse().unwrap_or(0);
    let mut now = Vec::new();
    for iface in ifaces {
        let key = format!("net.ipv4.conf.{iface}.rp_filter");
        let old = read(&key)?;
        let effective = all.max(old.parse().unwrap_or(0));
        if effective == 1 {
            write(&key, "2")?;
            changed
                .sysctls
                .entry(key.clone())
                .or_insert_with(|| old.clone());
            now.push((key, old));
        }
    }
    save(pin_path, &changed)?;
    Ok(now)
}

/// Raises `promote_secondaries` to 1 on `iface` where its effective value (the larger of `all`
/// and the interface's) is 0, recording the old value. Without it, removing the primary
/// address of a subnet deletes every secondary address of that subnet with it: an address
/// ipnat added and later removes would take the admin's own addresses along. Called before
/// ipnat adds an address; `ipnat down` restores it after removing the addresses.
pub fn promote_secondaries(
    iface: &str,
    pin_path: &Path,
) -> std::io::Result<Option<(String, String)>> {
    let all: u8 = read("net.ipv4.conf.all.promote_secondaries")?
        .parse()
        .unwrap_or(0);
    let key = format!("net.ipv4.conf.{iface}.promote_secondaries");
    let old = read(&key)?;
    if all.max(old.parse().unwrap_or(0)) >= 1 {
        return Ok(None);
    }
    let mut changed = load(pin_path);
    write(&key, "1")?;
    changed
        .sysctls
        .entry(key.clone())
        .or_insert_with(|| old.clone());
    save(pin_path, &changed)?;
    Ok(Some((key, old)))
}

/// Host orientation: the public addresses live on `lo`, and no neighbour may learn them from
/// this host: on each of `ifaces`, ARP requests are answered only for addresses of that
/// interface (`arp_ignore` 1) and ARP requests go out with the interface's own address as
/// their source (`arp_announce` 2). Raises each where its effective value (the larger of
/// `all` and the interface's) is lower; returns what it changed now as (key, old value).
pub fn quiet_arp(ifaces: &[String], pin_path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut changed = load(pin_path);
    let mut now = Vec::new();
    for (name, needed) in [("arp_ignore", 1u8), ("arp_announce", 2u8)] {
        let all: u8 = read(&format!("net.ipv4.conf.all.{name}"))?
            .parse()
            .unwrap_or(0);
        for iface in ifaces {
            let key = format!("net.ipv4.conf.{iface}.{name}");
            let old = read(&key)?;
            if all.max(old.parse().unwrap_or(0)) < needed {
                write(&key, &needed.to_string())?;
                changed
                    .sysctls
                    .entry(key.clone())
                    .or_insert_with(|| old.clone());
                now.push((key, old));
            }
        }
    }
    save(pin_path, &changed)?;
    Ok(now)
}

fn save(pin_path: &Path, changed: &Changed) -> std::io::Result<()> {
    if !changed.sysctls.is_empty() {
        records(pin_path)
            .write(SYSCTLS, &serde_json::to_string_pretty(changed)?)
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// What ipnat changed on the host, still in force.
pub fn changed(pin_path: &Path) -> Changed {
    load(pin_path)
}

/// Puts back every value ipnat changed and forgets them; returns (key, restored value).
pub fn restore(pin_path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let changed = load(pin_path);
    let mut done = Vec::new();
    for (key, old) in changed.sysctls {
        // An interface that is gone took its setting with it.
        if proc_path(&key).exists() {
            write(&key, &old)?;
            done.push((key, old));
        }
    }
    records(pin_path).remove(SYSCTLS);
    Ok(done)
}

/// Sends one rtnetlink request and waits for its acknowledgement.
fn netlink_request(msg_type: u16, flags: u16, body: &[u8]) -> std::io::Result<()> {
    netlink(libc::NETLINK_ROUTE, msg_type, flags, body, false).map(drop)
}

/// Sends one netlink request of `msg_type` with `body` on a socket of `protocol`; returns the
/// reply (`reply`: the first message the kernel answers with) or waits for the
/// acknowledgement. An error the kernel answers is returned as such.
pub(crate) fn netlink(
    protocol: i32,
    msg_type: u16,
    flags: u16,
    body: &[u8],
    reply: bool,
) -> std::io::Result<Vec<u8>> {
    let ack = if reply { 0 } else { libc::NLM_F_ACK as u16 };
    let fd = netlink_send(protocol, msg_type, flags | ack, body)?;
    let mut buf = vec![0u8; 8192];
    let n = netlink_recv(&fd, &mut buf)?;
    buf.truncate(n);
    // An nlmsgerr: error 0 is the acknowledgement.
    if buf.len() >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(-err));
        }
    }
    Ok(buf)
}

/// Opens a netlink socket of `protocol` and sends one request on it.
fn netlink_send(
    protocol: i32,
    msg_type: u16,
    flags: u16,
    body: &[u8],
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::mem::size_of;
    let len = 16 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(body);
    // SAFETY: plain socket calls on buffers we own, with their lengths.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd: std::os::fd::OwnedFd = std::os::fd::FromRawFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        if libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// One read from a netlink socket; the bytes read.
fn netlink_recv(fd: &std::os::fd::OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: a read into a buffer we own, of its length.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A netlink attribute: length, type, payload, padded to 4 bytes.
pub(crate) fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(8 + payload.len());
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

/// Asks the kernel to resolve `addr`'s link-layer address on interface `ifindex` now (an
/// `RTM_NEWNEIGH` with `NTF_USE`, what `ip neigh replace ... use` does), so that the first
/// steered packet does not have to wait for ARP. Returns once the kernel accepted the request;
/// the resolution itself runs in the background.
pub fn resolve_neighbour(ifindex: u32, addr: std::net::Ipv4Addr) -> std::io::Result<()> {
    const NTF_USE: u8 = 0x01;
    const NDA_DST: u16 = 1;
    let mut body = Vec::new();
    body.push(libc::AF_INET as u8); // ndm_family
    body.extend_from_slice(&[0, 0, 0]); // padding
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&0u16.to_ne_bytes()); // ndm_state: NUD_NONE
    body.push(NTF_USE); // ndm_flags
    body.push(0); // ndm_type
    body.extend_from_slice(&attr(NDA_DST, &addr.octets()));
    netlink_request(
        libc::RTM_NEWNEIGH,
        (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16,
        &body,
    )
}

fn addr_message(ifindex: u32, net: ipnet::Ipv4Net) -> Vec<u8> {
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    let mut body = vec![
        libc::AF_INET as u8,
        net.prefix_len(),
        0, // flags
        0, // scope: universe
    ];
    body.extend_from_slice(&ifindex.to_ne_bytes());
    body.extend_from_slice(&attr(IFA_LOCAL, &net.addr().octets()));
    body.extend_from_slice(&attr(IFA_ADDRESS, &net.addr().octets()));
    body.extend_from_slice(&attr(IFA_PROTO, &[ADDR_PROTO]));
    body
}

/// `IFA_PROTO`: who added an address (Linux 6.3 and later; `ip addr` shows it as `proto`).
const IFA_PROTO: u16 = 11;
/// The `IFA_PROTO` ipnat marks the addresses it adds with ('I').
pub const ADDR_PROTO: u8 = 0x49;

/// Whether this kernel records `IFA_PROTO` (6.3 and later); it reports none for an address
/// added without one, so an absent mark means "not ipnat's" only there.
fn kernel_keeps_address_protos() -> bool {
    let Ok(u) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = u.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 3)
}

/// Every IPv4 address in this namespace with its interface index and its `IFA_PROTO` (None
/// where the kernel keeps none): an `RTM_GETADDR` dump.
pub fn address_protos() -> std::io::Result<Vec<(u32, ipnet::Ipv4Net, Option<u8>)>> {
    const IFA_LOCAL: u16 = 2;
    let body = [libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0];
    let fd = netlink_send(
        libc::NETLINK_ROUTE,
        libc::RTM_GETADDR,
        libc::NLM_F_DUMP as u16,
        &body,
    )?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32768];
    loop {
        let n = netlink_recv(&fd, &mut buf)?;
        let data = &buf[..n];
        let mut off = 0;
        while off + 16 <= data.len() {
            let mlen = u32::from_ne_bytes(data[off..off + 4].try_into().expect("4")) as usize;
            let mtype = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            if mlen < 16 || off + mlen > data.len() {
                break;
            }
            if mtype == libc::NLMSG_DONE as u16 {
                return Ok(out);
            }
            if mtype == libc::NLMSG_ERROR as u16 {
                let err = i32::from_ne_bytes(data[off + 16..off + 20].try_into().expect("4"));
                return Err(std::io::Error::from_raw_os_error(-err));
            }
            let m = &data[off + 16..off + mlen];
            if mtype == libc::RTM_NEWADDR && m.len() >= 8 {
                let plen = m[1];
                let index = u32::from_ne_bytes(m[4..8].try_into().expect("4"));
                let (mut local, mut proto) = (None, None);
                let mut a = 8;
                while a + 4 <= m.len() {
                    let alen = u16::from_ne_bytes([m[a], m[a + 1]]) as usize;
                    let kind = u16::from_ne_bytes([m[a + 2], m[a + 3]]);
                    if alen < 4 || a + alen > m.len() {
                        break;
                    }
                    let p = &m[a + 4..a + alen];
                    match kind {
                        IFA_LOCAL if p.len() == 4 => {
                            local = Some(std::net::Ipv4Addr::new(p[0], p[1], p[2], p[3]))
                        }
                        IFA_PROTO if !p.is_empty() => proto = Some(p[0]),
                        _ => {}
                    }
                    a += (alen + 3) & !3;
                }
                if let Some(l) = local
                    && let Ok(net) = ipnet::Ipv4Net::new(l, plen)
                {
                    out.push((index, net, proto));
                }
            }
            off += (mlen + 3) & !3;
        }
    }
}

/// `ip addr add <net> dev <ifindex>`.
pub fn add_address(ifindex: u32, net: ipnet::Ipv4Net) -> std::io::Result<()> {
    netlink_request(
        libc::RTM_NEWADDR,
        (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16,
        &addr_message(ifindex, net),
    )
}

/// `ip addr del <net> dev <ifindex>`.
pub fn del_address(ifindex: u32, net: ipnet::Ipv4Net) -> std::io::Result<()> {
    netlink_request(libc::RTM_DELADDR, 0, &addr_message(ifindex, net))
}

/// The IPv4 addresses on each interface, in this network namespace.
pub fn addresses() -> std::io::Result<Vec<(String, ipnet::Ipv4Net)>> {
    let mut out = Vec::new();
    for a in nix::ifaddrs::getifaddrs()? {
        let (Some(addr), Some(mask)) = (
            a.address.as_ref().and_then(|s| s.as_sockaddr_in()),
            a.netmask.as_ref().and_then(|s| s.as_sockaddr_in()),
        ) else {
            continue;
        };
        let len = u32::from(mask.ip()).leading_ones() as u8;
        if let Ok(net) = ipnet::Ipv4Net::new(addr.ip(), len) {
            out.push((a.interface_name, net));
        }
    }
    Ok(out)
}

/// Who asked for an address ipnat adds: each owner reconciles only its own, so one owner's
/// desired set never removes the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressOwner {
    /// The cloud provider's sync: the NICs' private addresses.
    Provider,
    /// Host orientation: the public addresses (EIPs), on `lo`.
    Host,
}

impl AddressOwner {
    const ALL: [AddressOwner; 2] = [AddressOwner::Provider, AddressOwner::Host];

    fn file(self) -> &'static str {
        match self {
            AddressOwner::Provider => "addresses.json",
            AddressOwner::Host => "eips.json",
        }
    }
}

/// Addresses ipnat put on interfaces (and removes when their owner no longer wants them, or
/// on `ipnat down`); never one it did not add.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AddedAddresses {
    /// (interface, address/prefix length)
    pub added: Vec<(String, String)>,
}

impl AddedAddresses {
    pub fn load(pin_path: &Path, owner: AddressOwner) -> Self {
        records(pin_path)
            .read(owner.file())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, pin_path: &Path, owner: AddressOwner) -> std::io::Result<()> {
        records(pin_path)
            .write(owner.file(), &serde_json::to_string_pretty(self)?)
            .map_err(std::io::Error::other)
    }
}

/// Adds the addresses in `desired` (interface, address/len) that are missing, recording them
/// as `owner`'s; then, unless `keep_others`, removes those `owner` added earlier that are no
/// longer desired. Addresses already there that ipnat did not add are left alone, also when
/// they are no longer desired. Returns (added, removed).
pub fn reconcile_addresses(
    desired: &[(String, ipnet::Ipv4Net)],
    pin_path: &Path,
    owner: AddressOwner,
    keep_others: bool,
) -> std::io::Result<(Vec<String>, Vec<String>)> {
    let mut record = AddedAddresses::load(pin_path, owner);
    let present = addresses()?;
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for (iface, net) in desired {
        if present
            .iter()
            .any(|(i, n)| i == iface && n.addr() == net.addr())
        {
            continue;
        }
        let Some(index) = ifindex_of(iface) else {
            continue;
        };
        // A /32 has no secondaries (they share the primary's subnet).
        if net.prefix_len() < 32
            && let Some((key, old)) = promote_secondaries(iface, pin_path)?
        {
            tracing::info!(%key, old = %old, "raised so that removing an address ipnat added never removes others of its subnet; `ipnat down` restores it");
        }
        add_address(index, *net)?;
        record.added.push((iface.clone(), net.to_string()));
        added.push(format!("{net} on {iface}"));
    }
    let mut keep = Vec::new();
    for (iface, text) in std::mem::take(&mut record.added) {
        let wanted = desired
            .iter()
            .any(|(i, n)| *i == iface && n.to_string() == text);
        if wanted || keep_others {
            keep.push((iface, text));
            continue;
        }
        if let (Some(index), Ok(net)) = (ifindex_of(&iface), text.parse::<ipnet::Ipv4Net>()) {
            // Only while it still carries ipnat's mark: an address someone re-added by hand
            // after ipnat's was removed is theirs.
            let keeps_marks = kernel_keeps_address_protos();
            let marked = address_protos()?
                .iter()
                .find(|(i, n, _)| *i == index && n.addr() == net.addr())
                .map(|(_, _, p)| !keeps_marks || *p == Some(ADDR_PROTO));
            if marked != Some(true) {
                continue;
            }
            match del_address(index, net) {
                Ok(()) => removed.push(format!("{net} on {iface}")),
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(e),
            }
        }
    }
    record.added = keep;
    record.save(pin_path, owner)?;
    Ok((added, removed))
}

/// Removes `net` from `iface` if `owner` added it (and forgets it); returns what was removed.
pub fn release_address(
    pin_path: &Path,
    owner: AddressOwner,
    iface: &str,
    net: ipnet::Ipv4Net,
) -> std::io::Result<Vec<String>> {
    let record = AddedAddresses::load(pin_path, owner);
    let rest: Vec<(String, ipnet::Ipv4Net)> = record
        .added
        .iter()
        .filter(|(i, t)| !(i == iface && *t == net.to_string()))
        .filter_map(|(i, t)| Some((i.clone(), t.parse().ok()?)))
        .collect();
    let (_, removed) = reconcile_addresses(&rest, pin_path, owner, false)?;
    Ok(removed)
}

/// An address ipnat added, for `ipnat status`.
#[derive(Clone, Debug, Serialize)]
pub struct OwnedAddress {
    pub interface: String,
    /// address/prefix length
    pub address: String,
    /// `provider sync` or `host orientation`.
    pub owner: &'static str,
}

/// Every address ipnat added and still holds, by owner.
pub fn owned_addresses(pin_path: &Path) -> Vec<OwnedAddress> {
    AddressOwner::ALL
        .iter()
        .flat_map(|&owner| {
            AddedAddresses::load(pin_path, owner).added.into_iter().map(
                move |(interface, address)| OwnedAddress {
                    interface,
                    address,
                    owner: match owner {
                        AddressOwner::Provider => "provider sync",
                        AddressOwner::Host => "host orientation",
                    },
                },
            )
        })
        .collect()
}

/// Removes every address ipnat added, for every owner (for `ipnat down`); returns them.
pub fn remove_added_addresses(pin_path: &Path) -> std::io::Result<Vec<String>> {
    let mut all = Vec::new();
    for owner in AddressOwner::ALL {
        let (_, removed) = reconcile_addresses(&[], pin_path, owner, false)?;
        records(pin_path).remove(owner.file());
        all.extend(removed);
    }
    Ok(all)
}

fn ifindex_of(iface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(iface).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths_keep_interface_names_whole() {
        for (key, path) in [
            (
                "net.ipv4.conf.eth0.100.rp_filter",
                "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
            ),
            (
                "net.ipv4.conf.all.arp_ignore",
                "/proc/sys/net/ipv4/conf/all/arp_ignore",
            ),
            ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
        ] {
            assert_eq!(proc_path(key), PathBuf::from(path), "{key}");
        }
    }
}
