//! The cloud's usual NAT gateway, with one NIC.

use super::*;

/// The cloud's usual NAT gateway: one NIC. A VPC router (`vpc`) joins three subnets: the
/// internet side (203.0.113.0/24), the gateway's subnet (10.0.0.0/24, gateway 10.0.0.5) and
/// the backends' subnet (10.0.1.0/24). The EIP is routed to the gateway's NIC; the backends'
/// route table sends everything else to the gateway (source/destination check off), so both
/// directions enter and leave the gateway by its only NIC.
pub struct OneNicLab {
    pub inet: Netns,
    pub vpc: Netns,
    pub gw: Netns,
    pub backend: Netns,
    peers: Vec<aya::Ebpf>,
}

pub const ONE_NIC_GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

impl OneNicLab {
    pub fn new() -> Result<Self> {
        let lab = Self {
            inet: Netns::new("inet")?,
            vpc: Netns::new("vpc")?,
            gw: Netns::new("gw1")?,
            backend: Netns::new("be")?,
            peers: Vec::new(),
        };
        internet_host(&lab.inet, &lab.vpc)?;
        ethtool_tx_off(&lab.inet, "eth0")?;
        ethtool_tx_off(&lab.vpc, "inet0")?;
        veth(&lab.gw, "eth0", &lab.vpc, "gw0")?;
        veth(&lab.backend, "eth0", &lab.vpc, "be0")?;
        for (ns, addr, via) in [
            (&lab.gw, "10.0.0.5/24", "10.0.0.1"),
            (&lab.backend, "10.0.1.10/24", "10.0.1.1"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", "eth0"])?;
            ns.ip(&["route", "add", "default", "via", via])?;
            ethtool_tx_off(ns, "eth0")?;
        }
        for (dev, addr) in [("gw0", "10.0.0.1/24"), ("be0", "10.0.1.1/24")] {
            lab.vpc.ip(&["addr", "add", addr, "dev", dev])?;
            ethtool_tx_off(&lab.vpc, dev)?;
        }
        lab.vpc.sysctl("net.ipv4.ip_forward", "1")?;
        // The EIP's block is routed to the gateway; what the backends' subnet sends goes to
        // the gateway too (the VPC route table entry pointing at the NAT instance).
        lab.vpc
            .ip(&["route", "add", "198.51.100.0/24", "via", "10.0.0.5"])?;
        lab.vpc
            .ip(&["rule", "add", "iif", "be0", "lookup", "100"])?;
        lab.vpc
            .ip(&["route", "add", "default", "via", "10.0.0.5", "table", "100"])?;
        lab.gw.sysctl("net.ipv4.ip_forward", "1")?;
        for conf in ["all", "default", "eth0"] {
            lab.gw
                .sysctl(&format!("net.ipv4.conf.{conf}.send_redirects"), "0")?;
        }
        let mut lab = lab;
        lab.peers.push(xdp_pass(&lab.inet, "eth0")?);
        lab.peers.push(xdp_pass(&lab.backend, "eth0")?);
        lab.peers.push(xdp_pass(&lab.vpc, "gw0")?);
        Ok(lab)
    }

    pub fn start_ipnat(&self) -> Result<Ipnat> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin = format!("/sys/fs/bpf/ipnat-lab1-{}-{n}", std::process::id());
        let config = format!(
            "pin_path = \"{pin}\"\n\n[[interface]]\nname = \"eth0\"\n\n\
             [[mapping]]\npublic = \"{EIP}\"\nprivate = \"{BACKEND}\"\n"
        );
        Ipnat::start(&self.gw, &config, &pin)
    }
}
