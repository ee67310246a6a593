//! A VPC whose router does the cloud's one-to-one NAT, for host orientation: the EIPs live on
//! the router (as on a provider's edge), which translates EIP <-> private address for traffic
//! to and from the internet and drops packets whose source does not belong to the NIC that
//! sent them.
//!
//! ```text
//!  inet 203.0.113.10 ── inet0 ┐
//!                             vpc (router, 1:1 NAT + source check)
//!  inst eth0 10.0.0.10 ── v0 ─┤   10.0.0.1    EIP0 198.51.100.10 <-> 10.0.0.10
//!  inst eth1 10.0.1.20-22 ─ v1┤   10.0.1.1    EIP1-3 198.51.100.20-22 <-> 10.0.1.20-22
//!  peer 10.0.2.30 ──────── v2 ┘   10.0.2.1    (a VPC host: talks to private addresses)
//! ```

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Result;

use crate::{
    lab::Ipnat,
    netns::{Netns, veth},
};

pub const INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 30);
/// The instance's primary private address (eth0) and its EIP.
pub const PRIV0: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const EIP0: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The secondary NIC's (eth1) private addresses and their EIPs: three sites on one NIC.
pub const PRIV1: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 0, 1, 20),
    Ipv4Addr::new(10, 0, 1, 21),
    Ipv4Addr::new(10, 0, 1, 22),
];
pub const EIP1: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 20),
    Ipv4Addr::new(198, 51, 100, 21),
    Ipv4Addr::new(198, 51, 100, 22),
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct HostLab {
    pub inet: Netns,
    pub vpc: Netns,
    pub inst: Netns,
    pub peer: Netns,
}

impl HostLab {
    /// The topology above; the instance has strict reverse-path filtering (the RHEL and Alibaba
    /// Cloud Linux default) and its offloads on (TC sees partial checksums).
    pub fn new() -> Result<Self> {
        let lab = Self {
            inet: Netns::new("hinet")?,
            vpc: Netns::new("hvpc")?,
            inst: Netns::new("hinst")?,
            peer: Netns::new("hpeer")?,
        };
        crate::lab::internet_host(&lab.inet, &lab.vpc)?;
        veth(&lab.inst, "eth0", &lab.vpc, "v0")?;
        veth(&lab.inst, "eth1", &lab.vpc, "v1")?;
        veth(&lab.peer, "eth0", &lab.vpc, "v2")?;
        lab.peer
            .ip(&["addr", "add", "10.0.2.30/24", "dev", "eth0"])?;
        lab.peer
            .ip(&["route", "add", "default", "via", "10.0.2.1"])?;
        for (dev, addr) in [
            ("v0", "10.0.0.1/24"),
            ("v1", "10.0.1.1/24"),
            ("v2", "10.0.2.1/24"),
        ] {
            lab.vpc.ip(&["addr", "add", addr, "dev", dev])?;
        }
        lab.vpc.sysctl("net.ipv4.ip_forward", "1")?;
        let pairs: Vec<(Ipv4Addr, Ipv4Addr)> = std::iter::once((EIP0, PRIV0))
            .chain(EIP1.into_iter().zip(PRIV1))
            .collect();
        let elements = |f: &dyn Fn(&(Ipv4Addr, Ipv4Addr)) -> String| {
            pairs.iter().map(f).collect::<Vec<_>>().join(", ")
        };
        let to_private = elements(&|(e, p)| format!("{e} : {p}"));
        let to_public = elements(&|(e, p)| format!("{p} : {e}"));
        let eth1_set = PRIV1.map(|a| a.to_string()).join(", ");
        lab.vpc.run(
            "nft",
            &[&format!(
                "add table ip cloud; \
                 add map ip cloud eip {{ type ipv4_addr : ipv4_addr; elements = {{ {to_private} }}; }}; \
                 add map ip cloud priv {{ type ipv4_addr : ipv4_addr; elements = {{ {to_public} }}; }}; \
                 add chain ip cloud pre {{ type nat hook prerouting priority dstnat; }}; \
                 add rule ip cloud pre iifname \"inet0\" dnat to ip daddr map @eip; \
                 add chain ip cloud post {{ type nat hook postrouting priority srcnat; }}; \
                 add rule ip cloud post oifname \"inet0\" snat to ip saddr map @priv; \
                 add chain ip cloud srccheck {{ type filter hook forward priority 0; }}; \
                 add rule ip cloud srccheck iifname \"v0\" ip saddr != {PRIV0} counter drop; \
                 add rule ip cloud srccheck iifname \"v1\" ip saddr != {{ {eth1_set} }} counter drop"
            )],
        )?;
        lab.inst
            .ip(&["addr", "add", &format!("{PRIV0}/24"), "dev", "eth0"])?;
        for a in PRIV1 {
            lab.inst
                .ip(&["addr", "add", &format!("{a}/24"), "dev", "eth1"])?;
        }
        lab.inst
            .ip(&["route", "add", "default", "via", "10.0.0.1", "dev", "eth0"])?;
        for conf in ["all", "default", "eth0", "eth1"] {
            lab.inst
                .sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "1")?;
        }
        Ok(lab)
    }

    /// The packets the router's source check dropped (sent from an address the NIC does not
    /// own).
    pub fn source_check_drops(&self) -> Result<u64> {
        let out = self
            .vpc
            .run("nft", &["-j", "list", "chain", "ip", "cloud", "srccheck"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut total = 0;
        for item in v["nftables"].as_array().into_iter().flatten() {
            for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
                total += expr["counter"]["packets"].as_u64().unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// The host-orientation config: every EIP mapped to its private address, the VPC internal,
    /// eth1's addresses steered out of eth1.
    pub fn config(pin: &str) -> String {
        let mut c = format!(
            "pin_path = \"{pin}\"\norientation = \"host\"\ninternal = [\"10.0.0.0/16\"]\n\n\
             [[interface]]\nname = \"eth0\"\n\n[[interface]]\nname = \"eth1\"\n\n\
             [[mapping]]\npublic = \"{EIP0}\"\nprivate = \"{PRIV0}\"\n"
        );
        for (e, p) in EIP1.into_iter().zip(PRIV1) {
            c.push_str(&format!(
                "\n[[mapping]]\npublic = \"{e}\"\nprivate = \"{p}\"\n"
            ));
        }
        c.push_str(
            "\n[[steer]]\nsource = \"10.0.1.20/30\"\ninterface = \"eth1\"\ngateway = \"10.0.1.1\"\nsubnet = \"10.0.1.0/24\"\n",
        );
        c
    }

    /// `ipnat run` on the instance with [`HostLab::config`].
    pub fn start_ipnat(&self) -> Result<Ipnat> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin = format!("/sys/fs/bpf/ipnat-host-{}-{n}", std::process::id());
        Ipnat::start(&self.inst, &Self::config(&pin), &pin)
    }
}
