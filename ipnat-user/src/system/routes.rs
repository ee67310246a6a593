//! Routes in a kernel routing table of ipnat's own, each marked with ipnat's `rtm_protocol`:
//! what a gateway of a fleet announces (see `crate::fleet::announce`). No rule points at the
//! table, so nothing is forwarded by it; the routing daemon imports it (bird's `kernel`
//! protocol with `learn`) and announces its routes. Only routes with ipnat's protocol are ever
//! changed or removed.

use ipnet::Ipv4Net;

use super::netlink::{attr, attrs, dump, netlink_request};

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// One of the routes in ipnat's table: a destination, out of an interface.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct OwnRoute {
    pub dst: Ipv4Net,
    pub ifindex: u32,
}

fn route_message(table: u32, protocol: u8, dst: Ipv4Net, ifindex: Option<u32>) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table (the low byte; RTA_TABLE has all of
    // it), protocol, scope, type, flags (u32).
    let mut body = vec![
        libc::AF_INET as u8,
        dst.prefix_len(),
        0,
        0,
        table.min(255) as u8,
        protocol,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&attr(RTA_TABLE, &table.to_ne_bytes()));
    body.extend_from_slice(&attr(RTA_DST, &dst.network().octets()));
    if let Some(i) = ifindex {
        body.extend_from_slice(&attr(RTA_OIF, &i.to_ne_bytes()));
    }
    body
}

/// `ip route replace <dst> dev <ifindex> table <table> proto <protocol> scope link`.
pub fn replace_route(table: u32, protocol: u8, r: OwnRoute) -> std::io::Result<()> {
    netlink_request(
        libc::RTM_NEWROUTE,
        (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16,
        &route_message(table, protocol, r.dst, Some(r.ifindex)),
    )
}

/// `ip route del <dst> table <table> proto <protocol>`: the kernel removes it only when its
/// protocol is `protocol`. A route already gone is fine.
pub fn delete_route(table: u32, protocol: u8, dst: Ipv4Net) -> std::io::Result<()> {
    match netlink_request(
        libc::RTM_DELROUTE,
        0,
        &route_message(table, protocol, dst, None),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// The IPv4 routes in `table` whose protocol is `protocol`, sorted.
pub fn own_routes(table: u32, protocol: u8) -> std::io::Result<Vec<OwnRoute>> {
    // A struct rtmsg asking for IPv4 (the kernel filters nothing else of a plain dump).
    let mut body = [0u8; 12];
    body[0] = libc::AF_INET as u8;
    let mut out = Vec::new();
    dump(libc::RTM_GETROUTE, &body, |mtype, m| {
        if mtype != libc::RTM_NEWROUTE || m.len() < 12 || m[0] != libc::AF_INET as u8 {
            return;
        }
        if m[5] != protocol {
            return;
        }
        let (mut in_table, mut dst, mut ifindex) = (u32::from(m[4]), [0u8; 4], 0u32);
        for (kind, p) in attrs(&m[12..]) {
            match kind {
                RTA_TABLE if p.len() == 4 => {
                    in_table = u32::from_ne_bytes(p.try_into().expect("4"))
                }
                RTA_DST if p.len() == 4 => dst.copy_from_slice(p),
                RTA_OIF if p.len() == 4 => ifindex = u32::from_ne_bytes(p.try_into().expect("4")),
                _ => {}
            }
        }
        if in_table == table
            && let Ok(dst) = Ipv4Net::new(dst.into(), m[1])
        {
            out.push(OwnRoute { dst, ifindex });
        }
    })?;
    out.sort();
    Ok(out)
}

/// Which table and protocol ipnat's routes for a data plane live in, recorded before the
/// first is added, so that `ipnat drain` and `ipnat down` find them without the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteTable {
    pub table: u32,
    pub protocol: u8,
}

const ROUTE_TABLE: &str = "routes.json";

impl RouteTable {
    pub fn load(pin_path: &std::path::Path) -> Option<Self> {
        crate::state::Records::lookup(pin_path).read_json(ROUTE_TABLE)
    }

    pub fn save(&self, pin_path: &std::path::Path) -> std::io::Result<()> {
        crate::state::Records::lookup(pin_path).write_json(ROUTE_TABLE, self)
    }
}

/// Removes every route of ipnat's protocol from the table recorded for the data plane at
/// `pin_path`; the routes removed (none recorded: none).
pub fn remove_own_routes(pin_path: &std::path::Path) -> std::io::Result<Vec<OwnRoute>> {
    let Some(t) = RouteTable::load(pin_path) else {
        return Ok(Vec::new());
    };
    let routes = own_routes(t.table, t.protocol)?;
    for r in &routes {
        delete_route(t.table, t.protocol, r.dst)?;
    }
    Ok(routes)
}
