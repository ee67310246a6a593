//! Addresses ipnat puts on interfaces (marked with its IFA_PROTO, recorded per owner) and
//! removes only while they are its own.

use super::*;

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
    let mut out = Vec::new();
    dump(libc::RTM_GETADDR, &body, |mtype, m| {
        if mtype != libc::RTM_NEWADDR || m.len() < 8 {
            return;
        }
        let plen = m[1];
        let index = u32::from_ne_bytes(m[4..8].try_into().expect("4"));
        let (mut local, mut proto) = (None, None);
        for (kind, p) in attrs(&m[8..]) {
            match kind {
                IFA_LOCAL if p.len() == 4 => {
                    local = Some(std::net::Ipv4Addr::new(p[0], p[1], p[2], p[3]))
                }
                IFA_PROTO if !p.is_empty() => proto = Some(p[0]),
                _ => {}
            }
        }
        if let Some(l) = local
            && let Ok(net) = ipnet::Ipv4Net::new(l, plen)
        {
            out.push((index, net, proto));
        }
    })?;
    Ok(out)
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
    /// `[failover]` on Alibaba Cloud: a HaVip's address while this gateway leads its shard.
    Failover,
}

impl AddressOwner {
    const ALL: [AddressOwner; 3] = [
        AddressOwner::Provider,
        AddressOwner::Host,
        AddressOwner::Failover,
    ];

    fn file(self) -> &'static str {
        match self {
            AddressOwner::Provider => "addresses.json",
            AddressOwner::Host => "eips.json",
            AddressOwner::Failover => "havips.json",
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
    /// `provider sync`, `host orientation` or `failover (HaVip)`.
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
                        AddressOwner::Failover => "failover (HaVip)",
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

/// The kernel's index of `iface` in the current network namespace, if there is one.
pub fn ifindex_of(iface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(iface).ok()
}
