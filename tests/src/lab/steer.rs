//! A VPC with the clouds' source check and an instance with two NICs (steering).

use super::*;
use crate::fakecloud::FakeImds;

/// A VPC like the clouds': a router (`vpc`) that drops packets whose source does not belong to
/// the NIC they arrive on, an internet host behind it, and an instance with two NICs: eth0
/// (10.0.0.10, the default route) and eth1 with three addresses, either in a second subnet
/// (10.0.1.20-22, router 10.0.1.1) or in eth0's own subnet (10.0.0.20-22: the router's side is
/// then a bridge, whose port the source check looks at).
pub struct SteerLab {
    pub inet: Netns,
    pub vpc: Netns,
    pub inst: Netns,
    /// eth1's addresses.
    pub eth1: [Ipv4Addr; 3],
    /// eth1's subnet and its gateway.
    pub subnet1: &'static str,
    pub gateway1: Ipv4Addr,
}

pub const INST_ETH0: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

impl SteerLab {
    /// `rp_filter`: the instance's reverse-path filtering (1 strict, 2 loose) on all its
    /// interfaces; `same_subnet`: eth1 in eth0's subnet.
    pub fn new(rp_filter: u8, same_subnet: bool) -> Result<Self> {
        let third = if same_subnet { 0 } else { 1 };
        let lab = Self {
            inet: Netns::new("inet")?,
            vpc: Netns::new("vpc")?,
            inst: Netns::new("inst")?,
            eth1: [20, 21, 22].map(|h| Ipv4Addr::new(10, 0, third, h)),
            subnet1: if same_subnet {
                "10.0.0.0/24"
            } else {
                "10.0.1.0/24"
            },
            gateway1: Ipv4Addr::new(10, 0, third, 1),
        };
        internet_host(&lab.inet, &lab.vpc)?;
        veth(&lab.inst, "eth0", &lab.vpc, "v0")?;
        veth(&lab.inst, "eth1", &lab.vpc, "v1")?;
        ethtool_tx_off(&lab.vpc, "inet0")?;
        let eth1_set = lab
            .eth1
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if same_subnet {
            lab.vpc.ip(&["link", "add", "br0", "type", "bridge"])?;
            for dev in ["v0", "v1"] {
                lab.vpc.ip(&["link", "set", dev, "master", "br0"])?;
                ethtool_tx_off(&lab.vpc, dev)?;
            }
            lab.vpc.ip(&["link", "set", "br0", "up"])?;
            lab.vpc.ip(&["addr", "add", "10.0.0.1/24", "dev", "br0"])?;
            // The cloud's source check, per bridge port: a NIC may only send its own addresses.
            lab.vpc.run(
                "nft",
                &[&format!(
                    "add table bridge cloud; \
                     add chain bridge cloud srccheck {{ type filter hook prerouting priority 0; }}; \
                     add rule bridge cloud srccheck iifname \"v0\" ether type ip ip saddr != 10.0.0.10 counter drop; \
                     add rule bridge cloud srccheck iifname \"v1\" ether type ip ip saddr != {{ {eth1_set} }} counter drop"
                )],
            )?;
        } else {
            for (dev, addr) in [("v0", "10.0.0.1/24"), ("v1", "10.0.1.1/24")] {
                lab.vpc.ip(&["addr", "add", addr, "dev", dev])?;
                ethtool_tx_off(&lab.vpc, dev)?;
            }
            lab.vpc.run(
                "nft",
                &[&format!(
                    "add table inet cloud; \
                     add chain inet cloud srccheck {{ type filter hook forward priority 0; }}; \
                     add rule inet cloud srccheck iifname \"v0\" ip saddr != 10.0.0.10 counter drop; \
                     add rule inet cloud srccheck iifname \"v1\" ip saddr != {{ {eth1_set} }} counter drop"
                )],
            )?;
        }
        lab.vpc.sysctl("net.ipv4.ip_forward", "1")?;
        lab.inst
            .ip(&["addr", "add", &format!("{INST_ETH0}/24"), "dev", "eth0"])?;
        for a in lab.eth1 {
            lab.inst
                .ip(&["addr", "add", &format!("{a}/24"), "dev", "eth1"])?;
        }
        lab.inst
            .ip(&["route", "add", "default", "via", "10.0.0.1", "dev", "eth0"])?;
        for conf in ["all", "default", "eth0", "eth1"] {
            lab.inst.sysctl(
                &format!("net.ipv4.conf.{conf}.rp_filter"),
                &rp_filter.to_string(),
            )?;
        }
        ethtool_tx_off(&lab.inst, "eth0")?;
        ethtool_tx_off(&lab.inst, "eth1")?;
        ethtool_tx_off(&lab.inet, "eth0")?;
        Ok(lab)
    }

    /// `ipnat run` on the instance, steering eth1's addresses out of eth1.
    pub fn start_ipnat(&self) -> Result<Ipnat> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin = format!("/sys/fs/bpf/ipnat-steer-{}-{n}", std::process::id());
        let config = format!(
            "pin_path = \"{pin}\"\n\n[[interface]]\nname = \"eth0\"\n\n[[interface]]\nname = \"eth1\"\n\n\
             [[steer]]\nsource = \"{}/30\"\ninterface = \"eth1\"\ngateway = \"{}\"\nsubnet = \"{}\"\n",
            self.eth1[0], self.gateway1, self.subnet1
        );
        Ipnat::start(&self.inst, &config, &pin)
    }
}

impl SteerLab {
    /// A UDP datagram from `bind` on the instance to the internet host (203.0.113.10), echoed
    /// there: the source the internet host saw, or why nothing came back.
    pub fn udp_from(&self, bind: Ipv4Addr, port: u16) -> std::io::Result<SocketAddr> {
        let inet = Ipv4Addr::new(203, 0, 113, 10);
        let server = self
            .inet
            .within(move || Ok(UdpSocket::bind((inet, port))?))
            .map_err(std::io::Error::other)?;
        server.set_read_timeout(Some(Duration::from_secs(2)))?;
        let echo = udp_echo_once(server);
        let sent = self
            .inst
            .within(move || {
                let s = UdpSocket::bind((bind, 0))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send_to(b"steer me", (inet, port))?;
                let mut buf = [0u8; 64];
                Ok(s.recv_from(&mut buf).map(|(n, _)| n))
            })
            .map_err(std::io::Error::other)?;
        let peer = echo.join().expect("echo thread");
        sent?;
        peer
    }

    /// The fake Alibaba Cloud ECS metadata of this instance: eth0 (10.0.0.10) and eth1 whose
    /// private addresses are `eth1_ips` (a JSON array, as the metadata writes it), each NIC with
    /// its vSwitch's gateway and block. Returns the service and eth1's MAC address.
    pub fn aliyun_metadata(&self, eth1_ips: &str) -> Result<(FakeImds, String)> {
        let meta = FakeImds::start(&self.inst);
        let (m0, m1) = (self.inst.mac("eth0")?, self.inst.mac("eth1")?);
        meta.set("mac", &m0);
        meta.set(METADATA_MACS, &format!("{m0}/\n{m1}/\n"));
        for (m, id, ips, gw, cidr) in [
            (&m0, "eni-0", r#"["10.0.0.10"]"#, "10.0.0.1", "10.0.0.0/24"),
            (&m1, "eni-1", eth1_ips, "10.0.1.1", "10.0.1.0/24"),
        ] {
            meta.set(&format!("{METADATA_MACS}{m}/network-interface-id"), id);
            meta.set(&format!("{METADATA_MACS}{m}/private-ipv4s"), ips);
            meta.set(&format!("{METADATA_MACS}{m}/gateway"), gw);
            meta.set(&format!("{METADATA_MACS}{m}/vswitch-cidr-block"), cidr);
        }
        Ok((meta, m1))
    }

    /// The fake AWS instance metadata (IMDSv2) of this instance: eth0 (device 0, 10.0.0.10)
    /// and eth1 (device 1) whose `local-ipv4s` are `eth1_ips` (one per line), each NIC with its
    /// subnet. Returns the service and eth1's MAC address.
    pub fn aws_metadata(&self, eth1_ips: &str) -> Result<(FakeImds, String)> {
        let imds = FakeImds::start(&self.inst);
        let (m0, m1) = (self.inst.mac("eth0")?, self.inst.mac("eth1")?);
        imds.set(METADATA_MACS, &format!("{m0}/\n{m1}/\n"));
        for (m, dn, ips, subnet) in [
            (&m0, "0", "10.0.0.10", "10.0.0.0/24"),
            (&m1, "1", eth1_ips, "10.0.1.0/24"),
        ] {
            let at = |k: &str| format!("{METADATA_MACS}{m}/{k}");
            imds.set(&at("device-number"), dn);
            imds.set(&at("interface-id"), &format!("eni-{dn}"));
            imds.set(&at("local-ipv4s"), ips);
            imds.set(&at("subnet-ipv4-cidr-block"), subnet);
        }
        Ok((imds, m1))
    }
}

/// Where both clouds' metadata list the NICs by MAC address.
pub const METADATA_MACS: &str = "network/interfaces/macs/";

/// Waits up to 10 s for `f` to hold, checking every 100 ms.
pub fn wait_until(what: &str, f: impl Fn() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f()? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
