//! What both clouds' NICs ask of this host, in one place: the local interface of a NIC (by its
//! MAC address), the addresses to put on it, and the steering rules of secondary NICs (each of
//! their addresses leaves by its NIC, via its subnet's gateway).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::{Block, SteerConfig};

/// The local interface whose MAC address is `mac`, in this network namespace.
pub fn ifname_by_mac(mac: &str) -> Option<String> {
    links().find(|(_, m)| m == mac).map(|(name, _)| name)
}

/// The MAC address (lower case) of interface `name` in this network namespace (getifaddrs
/// asks the kernel over netlink; /sys/class/net would show the namespace sysfs was mounted
/// in, which `ip netns exec` changes but `nsenter --net` does not).
pub fn mac_of(name: &str) -> Option<String> {
    links().find(|(n, _)| n == name).map(|(_, mac)| mac)
}

/// Every interface with a link-layer address: (name, MAC in lower case).
fn links() -> impl Iterator<Item = (String, String)> {
    nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let m = a.address.as_ref()?.as_link_addr()?.addr()?;
            let text = m
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            Some((a.interface_name, text))
        })
}

/// The NICs' addresses on the interfaces with their MACs, each with its subnet's prefix
/// length: (interface, address/len).
pub fn addresses(
    nics: impl IntoIterator<Item = (String, Vec<std::net::Ipv4Addr>, u8)>,
) -> Vec<(String, ipnet::Ipv4Net)> {
    let mut out = Vec::new();
    for (mac, ips, len) in nics {
        if let Some(iface) = ifname_by_mac(&mac) {
            out.extend(
                ips.into_iter()
                    .filter_map(|ip| ipnet::Ipv4Net::new(ip, len).ok())
                    .map(|net| (iface.clone(), net)),
            );
        }
    }
    out
}

/// A secondary NIC as its cloud describes it, for [`steering_rules`].
pub struct Secondary<'a> {
    pub mac: &'a str,
    pub addresses: &'a [Ipv4Addr],
    /// The next hop its addresses' traffic leaves by.
    pub gateway: Ipv4Addr,
    pub subnet: Ipv4Net,
}

/// The steering rules of `nics`: each address leaves by its NIC's interface (`ifname(mac)`),
/// via its gateway. NICs with no interface here are skipped and returned by MAC.
pub fn steering_rules<'a>(
    nics: impl IntoIterator<Item = Secondary<'a>>,
    ifname: &dyn Fn(&str) -> Option<String>,
) -> (Vec<SteerConfig>, Vec<String>) {
    let (mut rules, mut missing) = (Vec::new(), Vec::new());
    for nic in nics {
        let Some(iface) = ifname(nic.mac) else {
            missing.push(nic.mac.to_owned());
            continue;
        };
        for &ip in nic.addresses {
            rules.push(SteerConfig {
                source: ip.into(),
                interface: iface.clone(),
                gateway: nic.gateway,
                subnet: Block(nic.subnet.trunc()),
            });
        }
    }
    (rules, missing)
}
