//! What a NIC's driver can do with XDP, as the kernel reports it (the generic netlink `netdev`
//! family, `NETDEV_A_DEV_XDP_FEATURES`, Linux 6.3 and later), instead of guessing from driver
//! names. No maintained crate speaks this family; the two requests are written here, with one
//! rtnetlink request beside them (a link's kind and whether its peer is in another namespace).

use crate::system::{attr, netlink};

/// Each `NETDEV_XDP_ACT_*` bit once: its constant and the name the kernel's netdev family
/// (and `ynl`) gives it.
macro_rules! xdp_features {
    ($($(#[$doc:meta])* $name:ident = $bit:literal, $text:literal;)*) => {
        $($(#[$doc])* pub const $name: u64 = $bit;)*
        const NAMES: &[(u64, &str)] = &[$(($bit, $text)),*];
    };
}

xdp_features! {
    XDP_BASIC = 1, "basic";
    XDP_REDIRECT = 2, "redirect";
    /// The driver can transmit frames other interfaces' XDP programs redirect to it.
    XDP_NDO_XMIT = 4, "ndo-xmit";
    XDP_XSK_ZEROCOPY = 8, "xsk-zerocopy";
    XDP_HW_OFFLOAD = 16, "hw-offload";
    /// The driver can receive frames spread over several buffers (jumbo frames) into XDP.
    XDP_RX_SG = 32, "rx-sg";
    /// ... and transmit such frames when redirected to it.
    XDP_NDO_XMIT_SG = 64, "ndo-xmit-sg";
}

/// Above this MTU a frame may not fit one buffer: ipnat attaches its frags-capable program
/// (ENA's single-buffer limit; a veth's is about 3500 bytes with 4 KiB pages).
pub const SINGLE_BUFFER_MTU: u32 = 3498;

/// The names of the bits in `features` (`none` for none).
pub fn describe(features: u64) -> String {
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| features & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

/// The attributes of a generic netlink reply (after its 16-byte header and 4-byte genl header).
fn attrs(reply: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    attrs_at(reply, 20)
}

/// The netlink attributes in `reply` from `off` on (type without its nested/byte-order bits).
fn attrs_at(reply: &[u8], mut off: usize) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if off + 4 > reply.len() {
            return None;
        }
        let len = u16::from_ne_bytes([reply[off], reply[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([reply[off + 2], reply[off + 3]]) & 0x3fff;
        if len < 4 || off + len > reply.len() {
            return None;
        }
        let payload = &reply[off + 4..off + len];
        off += (len + 3) & !3;
        Some((kind, payload))
    })
}

/// The id of generic netlink family `name`, or `None` if this kernel does not have it.
fn family(name: &str) -> std::io::Result<Option<u16>> {
    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    let mut body = vec![CTRL_CMD_GETFAMILY, 1, 0, 0];
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    body.extend(attr(CTRL_ATTR_FAMILY_NAME, &cname));
    let reply = match netlink(libc::NETLINK_GENERIC, GENL_ID_CTRL, 0, &body, true) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(attrs(&reply)
        .find(|(k, p)| *k == CTRL_ATTR_FAMILY_ID && p.len() >= 2)
        .map(|(_, p)| u16::from_ne_bytes([p[0], p[1]])))
}

/// The XDP features of interface `ifindex`, or `None` where the kernel cannot say.
pub fn xdp_features(ifindex: u32) -> std::io::Result<Option<u64>> {
    const NETDEV_CMD_DEV_GET: u8 = 1;
    const NETDEV_A_DEV_IFINDEX: u16 = 1;
    const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
    let Some(id) = family("netdev")? else {
        return Ok(None);
    };
    let mut body = vec![NETDEV_CMD_DEV_GET, 1, 0, 0];
    body.extend(attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()));
    let reply = netlink(libc::NETLINK_GENERIC, id, 0, &body, true)?;
    Ok(attrs(&reply)
        .find(|(k, p)| *k == NETDEV_A_DEV_XDP_FEATURES && p.len() >= 8)
        .map(|(_, p)| u64::from_ne_bytes(p[..8].try_into().expect("8 bytes"))))
}

/// Whether interface `ifindex` is a veth or netkit device whose peer lives in another network
/// namespace (the kernel then names the peer's namespace, `IFLA_LINK_NETNSID`): TC ingress
/// may hand packets to that peer directly (`bpf_redirect_peer`, see `IFACE_PEER`).
pub fn peer_in_other_namespace(ifindex: u32) -> std::io::Result<bool> {
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_LINK_NETNSID: u16 = 37;
    const IFLA_INFO_KIND: u16 = 1;
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    let reply = netlink(libc::NETLINK_ROUTE, libc::RTM_GETLINK, 0, &body, true)?;
    // Attributes follow the 16-byte netlink header and the 16-byte ifinfomsg.
    let mut kind_peered = false;
    let mut elsewhere = false;
    for (kind, payload) in attrs_at(&reply, 32) {
        match kind {
            IFLA_LINK_NETNSID => elsewhere = true,
            IFLA_LINKINFO => {
                kind_peered = attrs_at(payload, 0).any(|(k, v)| {
                    let v = v.strip_suffix(&[0]).unwrap_or(v);
                    k == IFLA_INFO_KIND && matches!(v, b"veth" | b"netkit")
                })
            }
            _ => {}
        }
    }
    Ok(kind_peered && elsewhere)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_bits() {
        assert_eq!(describe(0), "none");
        assert_eq!(describe(1 | 2 | 4 | 32), "basic redirect ndo-xmit rx-sg");
    }

    #[test]
    fn loopback_has_no_peer() {
        // Needs no privilege: any process may ask for a link.
        assert!(!peer_in_other_namespace(1).expect("RTM_GETLINK of lo"));
    }

    #[test]
    fn loopback_has_no_native_xdp() {
        // Needs no privilege: the kernel answers any process.
        match xdp_features(1) {
            Ok(Some(f)) => assert_eq!(f & XDP_BASIC, 0, "{}", describe(f)),
            // A kernel before 6.3 has no netdev family. CI's kernel has one: there, no answer
            // is a failure, never a pass.
            Ok(None) => assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the kernel gave no xdp-features (netdev generic netlink family missing)"
            ),
            Err(e) => panic!("netdev family query failed: {e}"),
        }
    }
}

/// ENA runs native XDP only up to this MTU.
pub const ENA_XDP_MAX_MTU: u32 = 3498;

/// The driver of `iface` (`None` where the kernel names none) and its MTU, asked of the
/// kernel in this network namespace (ioctls: sysfs may show another namespace's interfaces).
pub fn driver_and_mtu(iface: &str) -> (Option<String>, Option<u32>) {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    // struct ethtool_drvinfo: cmd, then driver[32], version[32], ... (196 bytes in all).
    let mut drvinfo = [0u8; 196];
    drvinfo[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    if iface.len() >= libc::IFNAMSIZ {
        return (None, None);
    }
    // SAFETY: an ifreq we own, named with a NUL-terminated name that fits; the ioctls write
    // only into it and into the drvinfo buffer it points to, both alive across the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return (None, None);
        }
        let fd: std::os::fd::OwnedFd = std::os::fd::FromRawFd::from_raw_fd(fd);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, c) in req.ifr_name.iter_mut().zip(iface.bytes()) {
            *d = c as libc::c_char;
        }
        let mtu = (libc::ioctl(raw, libc::SIOCGIFMTU, &mut req) == 0)
            .then_some(req.ifr_ifru.ifru_mtu as u32);
        req.ifr_ifru.ifru_data = drvinfo.as_mut_ptr().cast();
        let driver = (libc::ioctl(raw, SIOCETHTOOL, &mut req) == 0)
            .then(|| {
                let name = &drvinfo[4..36];
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                String::from_utf8_lossy(&name[..end]).into_owned()
            })
            .filter(|d| !d.is_empty());
        (driver, mtu)
    }
}

/// What the clouds' NIC drivers need for native XDP that the feature bits do not say: `Some`
/// (why, what to do) where `driver` is known to refuse it as configured (`blocking`: attaching
/// would fail for sure) or to need settings the kernel cannot report.
pub fn cloud_hint(iface: &str, driver: Option<&str>, mtu: Option<u32>) -> Option<(bool, String)> {
    match driver? {
        "ena" => {
            let mtu = mtu?;
            (mtu > ENA_XDP_MAX_MTU).then(|| {
                (
                    true,
                    format!(
                        "ENA runs native XDP only with an MTU of {ENA_XDP_MAX_MTU} or less (this one: {mtu}): `ip link set dev {iface} mtu {ENA_XDP_MAX_MTU}`, and with at most half its queues in use (`ethtool -L {iface} combined <half of the maximum>`)"
                    ),
                )
            })
        }
        "virtio_net" => Some((
            false,
            format!(
                "virtio_net takes native XDP only if the host lets the guest turn its receive offloads off (VIRTIO_NET_F_CTRL_GUEST_OFFLOADS; `ethtool -K {iface} lro off`) and has a queue pair per CPU for XDP's transmit (`ethtool -L {iface} combined <CPUs>`)"
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod cloud_tests {
    use super::*;

    #[test]
    fn knows_the_cloud_drivers_limits() {
        let (blocking, why) = cloud_hint("eth0", Some("ena"), Some(9001)).unwrap();
        assert!(blocking);
        assert!(
            why.contains("MTU of 3498 or less (this one: 9001)"),
            "{why}"
        );
        assert_eq!(cloud_hint("eth0", Some("ena"), Some(1500)), None);
        let (blocking, why) = cloud_hint("eth1", Some("virtio_net"), Some(1500)).unwrap();
        assert!(
            !blocking && why.contains("ethtool -K eth1 lro off"),
            "{why}"
        );
        assert_eq!(cloud_hint("veth0", None, Some(1500)), None);
        assert_eq!(cloud_hint("eth0", Some("mlx5_core"), Some(9000)), None);
        // The loopback interface: no ethtool driver info, and its MTU.
        assert_eq!(driver_and_mtu("lo").1, Some(65536));
        assert_eq!(driver_and_mtu("no-such-if"), (None, None));
    }
}
