//! A simulated cloud in network namespaces: an internet host, a gateway running `ipnat`, and a
//! backend that owns the private address of a one-to-one mapping.
//!
//! ```text
//!  internet (203.0.113.10) eth0 ── ext0 (203.0.113.1) gateway (10.0.1.1) int0 ── eth0 backend (10.0.1.10)
//!                                       ipnat: 198.51.100.10 <-> 10.0.1.10
//! ```
//! The internet host routes the EIP's block via the gateway, as a provider's edge would.
//!
//! One file per topology: `gateway.rs` (the above), `onenic.rs` (the cloud's one-NIC NAT
//! gateway), `steer.rs` (a VPC with a source check and a two-NIC instance; `crate::hostlab`
//! has host orientation's); `process.rs` runs the real binary; `traffic.rs` the exchanges.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, veth};

/// The internet host of the VPC labs: `inet`'s eth0 (203.0.113.10) wired to the VPC router's
/// `inet0` (203.0.113.1), its default route. The VPC's own addresses are each lab's.
pub fn internet_host(inet: &Netns, vpc: &Netns) -> Result<()> {
    veth(inet, "eth0", vpc, "inet0")?;
    inet.ip(&["addr", "add", "203.0.113.10/24", "dev", "eth0"])?;
    inet.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
    vpc.ip(&["addr", "add", "203.0.113.1/24", "dev", "inet0"])?;
    Ok(())
}

pub mod failover;
pub mod fleet;
pub mod fleet_traffic;
mod gateway;
mod onenic;
mod process;
mod steer;
mod traffic;

pub use gateway::*;
pub use onenic::*;
pub use process::*;
pub use steer::*;
pub use traffic::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `GET /metrics` from an `ipnat run` in `ns` on the default address.
pub fn metrics(ns: &Netns) -> Result<String> {
    metrics_at(ns, "127.0.0.1:9469")
}

/// `GET /metrics` from an `ipnat run` in `ns` listening on `addr`.
pub fn metrics_at(ns: &Netns, addr: &str) -> Result<String> {
    let addr = addr.to_owned();
    ns.within(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr.as_str())?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })
}

/// Packets `ns`'s kernel forwarded (`ForwDatagrams` of /proc/net/snmp).
pub fn kernel_forwarded(ns: &Netns) -> Result<u64> {
    let out = ns.run("cat", &["/proc/net/snmp"])?;
    let text = String::from_utf8(out.stdout)?;
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().context("Ip:")?, ip.next().context("Ip:")?);
    let i = names
        .split_whitespace()
        .position(|n| n == "ForwDatagrams")
        .context("ForwDatagrams")?;
    Ok(values
        .split_whitespace()
        .nth(i)
        .context("ForwDatagrams value")?
        .parse()?)
}

/// Attaches ipnat's pass-everything XDP program to `iface` in `ns`.
pub fn xdp_pass(ns: &Netns, iface: &'static str) -> Result<aya::Ebpf> {
    ns.within(move || {
        let mut ebpf = aya::Ebpf::load(ipnat::EBPF_OBJECT)?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut(ipnat_common::names::XDP_PASS_PROGRAM)
            .context("no pass program in the eBPF object")?
            .try_into()?;
        prog.load()?;
        prog.attach(iface, aya::programs::XdpMode::Driver)?;
        Ok(ebpf)
    })
}

pub fn ethtool_tx_off(ns: &Netns, iface: &str) -> Result<()> {
    ns.run("ethtool", &["-K", iface, "tx", "off"])
        .context("ethtool is needed to turn checksum offload off (run `cargo xtask setup`)")?;
    Ok(())
}
