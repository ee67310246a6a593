//! A VPC with two ipnat gateways, one primary for a shard, one standby, and a fake EC2 API
//! that moves the shard's address and route where the VPC delivers them.
//!
//! ```text
//!  internet 203.0.113.10 ── inet0 [vpc router] br0 10.0.0.1/24 ──┬── eth0 gw-a 10.0.0.10 (eni-a)
//!                                    br1 10.0.1.1/24             └── eth0 gw-b 10.0.0.11 (eni-b)
//!                                     └── eth0 backend 10.0.1.20
//!  ipnat on both gateways: 10.0.0.50 (the shard's secondary address; its EIP) <-> 10.0.1.20
//! ```
//! The VPC router plays the VPC: it delivers 10.0.0.50 to the MAC of the NIC the fake EC2
//! says holds it (a permanent neighbour entry), and the backends' route table (rtb-private,
//! 0.0.0.0/0) through the NIC it names (a policy route for what comes from br1); both follow
//! the fake API's state after its delay, as the cloud's do. The cloud's own EIP translation
//! (EIP <-> 10.0.0.50) moves with the address and is left out: the internet host reaches
//! 10.0.0.50 directly. etcd runs on the VPC router (10.0.0.1:2379).

use super::*;
use crate::{
    etcd::EtcdServer,
    fakecloud::{FakeAliyunVpc, FakeEc2, FakeEc2Nic, FakeEip, FakeImds},
};

pub const SHARD_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
/// Alibaba Cloud: the shard's HaVip's address.
pub const HAVIP_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 60);

/// Which cloud the lab's VPC plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabCloud {
    /// The fake EC2 API moves the shard's secondary address and the route; the VPC follows it.
    Aws,
    /// A HaVip associated with both gateways: the VPC's router learns its owner from ARP
    /// (gratuitous or answered), and the backends' route points at the HaVip.
    Aliyun,
    /// AWS across zones: gw-b's NIC is in another subnet (the fake API's; the namespaces
    /// share one segment), so no address moves: the EIP ([`FO_EIP`]) is re-associated with
    /// the new leader's own address ([`eip_private`]), which its table maps; the VPC's router
    /// plays the cloud's EIP translation and follows the association.
    AwsZones,
    /// Alibaba Cloud across zones: no HaVip (it lives in one vSwitch); the EIP
    /// ([`FO_EIP`]) is unbound and bound to the new leader's own address ([`eip_private`]),
    /// the route entry's next hop moved; the VPC's router plays the EIP translation.
    AliyunZones,
}

/// Alibaba Cloud across zones: the EIP's id.
pub const FO_ALIYUN_EIP: &str = "eip-web";

/// The cloud's EIP translation, stateless, on the VPC's router (namespace `vpc`): each
/// (EIP, private address) where the EIP is bound now, replacing what was there.
fn eip_translation(vpc: &str, eips: &[(Ipv4Addr, Ipv4Addr)]) {
    let mut rules = String::from(
        "table ip eip\ndelete table ip eip\ntable ip eip {\n\
         chain pre { type filter hook prerouting priority -300; policy accept;\n",
    );
    for (e, a) in eips {
        rules.push_str(&format!(
            "iifname \"inet0\" ip daddr {e} ip daddr set {a} notrack\n\
             iifname \"br0\" ip saddr {a} notrack\n"
        ));
    }
    rules.push_str("}\nchain post { type filter hook postrouting priority 300; policy accept;\n");
    for (e, a) in eips {
        rules.push_str(&format!(
            "oifname \"inet0\" ip saddr {a} ip saddr set {e}\n"
        ));
    }
    rules.push_str("}\n}\n");
    nft_in(vpc, &rules);
}

/// The backends' default route (the VPC router's table 100) through the gateway whose NIC
/// the cloud's route names (`target`), if it names one of the lab's.
fn backends_route_follows(vpc: &str, target: Option<&String>) {
    if let Some(i) = (0..2).find(|i| Some(&fo_nic(*i)) == target) {
        let _ = std::process::Command::new("ip")
            .args(["-n", vpc, "route", "replace", "default", "via"])
            .args([&fo_gateway(i).to_string(), "dev", "br0", "table", "100"])
            .output();
    }
}

/// `nft -f -` with `rules` in the namespace named `ns` (from a hook: no [`Netns`] at hand);
/// a failure is loud (the VPC would deliver nothing).
fn nft_in(ns: &str, rules: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())
        .expect("write the rules");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft in {ns}: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// AWS across zones: the EIP the clients talk to.
pub const FO_EIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);
/// AWS across zones: the EIP's allocation id.
pub const FO_EIP_ALLOCATION: &str = "eipalloc-0web";

/// AWS across zones: gateway `i`'s own secondary address that takes the EIP when it leads
/// (gw-a's is the one the EIP starts on).
pub fn eip_private(i: usize) -> Ipv4Addr {
    [SHARD_ADDRESS, Ipv4Addr::new(10, 0, 0, 52)][i]
}
pub const FO_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
pub const FO_INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VPC_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const KEY_ID: &str = "AKIAFAILOVER";
const SECRET: &str = "failover-secret";

/// Gateway `i`'s (0: gw-a, 1: gw-b) primary address.
pub fn fo_gateway(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + i as u8)
}

pub fn fo_name(i: usize) -> String {
    format!("gw-{}", ["a", "b"][i])
}

pub fn fo_nic(i: usize) -> String {
    format!("eni-{}", ["a", "b"][i])
}

/// The gateways' security groups, stateful per NIC like both clouds' (connections tracked on
/// each NIC on its own), modelled by a bridge with conntrack between each gateway and the VPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityGroup {
    /// Every protocol from and to anywhere allowed both ways: the cloud tracks nothing, each
    /// packet passes on its own, whichever NIC holds the address now.
    Untracked,
    /// Inbound: the VPC (10.0.0.0/16) and the services' ports (TCP and UDP 8100-8199) from
    /// anywhere; outbound: everything, tracked, so that replies come back in. A NIC admits a
    /// reply only to a connection it saw open (TCP from its SYN: `nf_conntrack_tcp_loose = 0`).
    Tracked,
}

impl SecurityGroup {
    fn apply(self, sg: &Netns) -> Result<()> {
        if self == SecurityGroup::Untracked {
            return Ok(());
        }
        sg.sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
        sg.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
        for rule in [
            "-P FORWARD DROP",
            "-A FORWARD -m physdev --physdev-in nic -j ACCEPT",
            "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A FORWARD -m physdev --physdev-in uplink -s 10.0.0.0/16 -j ACCEPT",
            "-A FORWARD -m physdev --physdev-in uplink -p tcp --dport 8100:8199 -j ACCEPT",
            "-A FORWARD -m physdev --physdev-in uplink -p udp --dport 8100:8199 -j ACCEPT",
        ] {
            sg.run("iptables", &rule.split(' ').collect::<Vec<_>>())?;
        }
        Ok(())
    }
}

pub struct FailoverLab {
    /// Each gateway's security group (a namespace bridging its NIC to the VPC).
    pub groups: Vec<Netns>,
    pub vpc: Netns,
    pub inet: Netns,
    pub backend: Netns,
    pub gateways: Vec<Netns>,
    pub cloud: LabCloud,
    ec2: Option<FakeEc2>,
    /// Alibaba Cloud: the fake VPC OpenAPI (the HaVips).
    pub vpc_api: Option<FakeAliyunVpc>,
    /// Each gateway's own metadata service.
    pub imds: Vec<FakeImds>,
    /// The fake cloud API's port in each gateway's namespace.
    api_ports: Vec<u16>,
    pub etcd: EtcdServer,
    macs: Vec<String>,
    /// AWS: the gateways take the instance profile's temporary credentials from their
    /// metadata (see [`FailoverLab::rotate_role`]) instead of keys in their configs.
    pub role_credentials: bool,
}

impl FailoverLab {
    /// The VPC, with the shard's address on gw-a's NIC and the backends' route through it;
    /// the fake EC2 moves things `delay_ms` after a call.
    pub fn new(delay_ms: u64, group: SecurityGroup) -> Result<Self> {
        Self::build(LabCloud::Aws, delay_ms, group)
    }

    /// The Alibaba Cloud variant: the shard is a HaVip (10.0.0.60) associated with both
    /// gateways; nobody holds it until a leader announces it.
    pub fn aliyun(group: SecurityGroup) -> Result<Self> {
        Self::build(LabCloud::Aliyun, 0, group)
    }

    /// Alibaba Cloud across zones (see [`LabCloud::AliyunZones`]), untracked security groups;
    /// the fake API binds and moves after `delay_ms`.
    pub fn aliyun_zones(delay_ms: u64) -> Result<Self> {
        Self::build(LabCloud::AliyunZones, delay_ms, SecurityGroup::Untracked)
    }

    /// AWS across zones (see [`LabCloud::AwsZones`]), untracked security groups.
    pub fn zones(delay_ms: u64) -> Result<Self> {
        Self::build(LabCloud::AwsZones, delay_ms, SecurityGroup::Untracked)
    }

    fn build(cloud: LabCloud, delay_ms: u64, group: SecurityGroup) -> Result<Self> {
        let vpc = Netns::new("fo-vpc")?;
        let inet = Netns::new("fo-inet")?;
        let backend = Netns::new("fo-be")?;
        internet_host(&inet, &vpc)?;
        inet.ip(&["route", "add", "10.0.0.0/16", "via", "203.0.113.1"])?;
        for (br, addr) in [("br0", "10.0.0.1/24"), ("br1", "10.0.1.1/24")] {
            vpc.ip(&["link", "add", br, "type", "bridge"])?;
            vpc.ip(&["link", "set", br, "up"])?;
            vpc.ip(&["addr", "add", addr, "dev", br])?;
        }
        vpc.sysctl("net.ipv4.ip_forward", "1")?;
        for conf in ["all", "default", "br0", "br1"] {
            vpc.sysctl(&format!("net.ipv4.conf.{conf}.send_redirects"), "0")?;
        }
        veth(&backend, "eth0", &vpc, "be0")?;
        vpc.ip(&["link", "set", "be0", "master", "br1"])?;
        backend.ip(&["addr", "add", &format!("{FO_BACKEND}/24"), "dev", "eth0"])?;
        backend.ip(&["route", "add", "default", "via", "10.0.1.1"])?;
        // The backends' route table: what comes from their subnet follows table 100 (the VPC
        // itself, and a default route through the gateway the API names), nothing else.
        vpc.ip(&["rule", "add", "iif", "br1", "lookup", "100", "pref", "100"])?;
        vpc.ip(&["rule", "add", "iif", "br1", "prohibit", "pref", "101"])?;
        vpc.ip(&["route", "add", "10.0.0.0/24", "dev", "br0", "table", "100"])?;
        // Frames off a wire carry whole checksums (XDP never sees a partial one from a NIC).
        ethtool_tx_off(&inet, "eth0")?;
        ethtool_tx_off(&backend, "eth0")?;
        let mut gateways = Vec::new();
        let mut macs = Vec::new();
        let mut groups = Vec::new();
        for i in 0..2 {
            let gw = Netns::new(&format!("fo-gw{i}"))?;
            // The NIC's security group, where the cloud enforces it: between the instance and
            // the VPC (see [`SecurityGroup`]).
            let sg = Netns::new(&format!("fo-sg{i}"))?;
            veth(&gw, "eth0", &sg, "nic")?;
            veth(&sg, "uplink", &vpc, &format!("gw{i}"))?;
            sg.ip(&["link", "add", "sgbr", "type", "bridge"])?;
            sg.ip(&["link", "set", "nic", "master", "sgbr"])?;
            sg.ip(&["link", "set", "uplink", "master", "sgbr"])?;
            sg.ip(&["link", "set", "sgbr", "up"])?;
            group.apply(&sg)?;
            groups.push(sg);
            vpc.ip(&["link", "set", &format!("gw{i}"), "master", "br0"])?;
            gw.ip(&[
                "addr",
                "add",
                &format!("{}/24", fo_gateway(i)),
                "dev",
                "eth0",
            ])?;
            gw.ip(&["route", "add", "default", "via", &VPC_ROUTER.to_string()])?;
            gw.sysctl("net.ipv4.ip_forward", "1")?;
            for conf in ["all", "default", "eth0"] {
                gw.sysctl(&format!("net.ipv4.conf.{conf}.send_redirects"), "0")?;
            }
            macs.push(gw.mac("eth0")?);
            gateways.push(gw);
        }
        let etcd = EtcdServer::start_at(&vpc, VPC_ROUTER, 2379)?;
        let imds: Vec<FakeImds> = gateways.iter().map(FakeImds::start).collect();
        let mut lab = FailoverLab {
            groups,
            vpc,
            inet,
            backend,
            gateways,
            cloud,
            ec2: None,
            vpc_api: None,
            imds,
            api_ports: Vec::new(),
            etcd,
            macs,
            role_credentials: false,
        };
        match cloud {
            LabCloud::Aws | LabCloud::AwsZones => lab.aws(delay_ms)?,
            LabCloud::Aliyun => lab.havip()?,
            LabCloud::AliyunZones => lab.aliyun_eips(delay_ms)?,
        }
        Ok(lab)
    }

    /// The fake EC2 API, the gateways' AWS metadata, and the VPC following the API.
    fn aws(&mut self, delay_ms: u64) -> Result<()> {
        let macs = &self.macs;
        let ec2 = FakeEc2::start(&self.gateways[0], "eu-west-1");
        self.api_ports = vec![ec2.port, ec2.serve_in(&self.gateways[1])];
        ec2.keys
            .lock()
            .unwrap()
            .insert(KEY_ID.into(), (SECRET.into(), None));
        let nic = |i: usize, addresses: Vec<Ipv4Addr>| FakeEc2Nic {
            id: fo_nic(i),
            mac: macs[i].clone(),
            vpc: "vpc-1".into(),
            subnet: "subnet-public".into(),
            instance: Some(format!("i-{i}")),
            source_dest_check: false,
            addresses: addresses.into_iter().map(|a| (a, None)).collect(),
            tags: Vec::new(),
        };
        let mut nics = vec![
            nic(0, vec![fo_gateway(0), SHARD_ADDRESS]),
            nic(1, vec![fo_gateway(1)]),
        ];
        if self.cloud == LabCloud::AwsZones {
            nics[1].subnet = "subnet-zone-b".into();
            nics[1].addresses.push((eip_private(1), None));
            nics[0].addresses[1].1 = Some(FO_EIP);
            ec2.allocations
                .lock()
                .unwrap()
                .insert(FO_EIP_ALLOCATION.into(), FO_EIP);
        }
        *ec2.nics.lock().unwrap() = nics;
        ec2.routes
            .lock()
            .unwrap()
            .insert(("rtb-private".into(), "0.0.0.0/0".into()), fo_nic(0));
        ec2.delay_ms
            .store(delay_ms, std::sync::atomic::Ordering::Relaxed);
        self.ec2 = Some(ec2);
        self.rotate_role(1);
        let ec2 = self.ec2.take().expect("just set");
        let macs = &self.macs;
        for (i, m) in self.imds.iter().enumerate() {
            let base = format!("{}{}/", super::METADATA_MACS, macs[i]);
            m.set("mac", &macs[i]);
            m.set("instance-id", &format!("i-{i}"));
            m.set("placement/region", "eu-west-1");
            m.set(super::METADATA_MACS, &format!("{}/\n", macs[i]));
            m.set(&format!("{base}device-number"), "0");
            m.set(&format!("{base}interface-id"), &fo_nic(i));
            m.set(&format!("{base}vpc-id"), "vpc-1");
            m.set(&format!("{base}subnet-ipv4-cidr-block"), "10.0.0.0/24");
        }
        // The VPC follows the API's state: now, and after every change.
        let follow = self.follower();
        follow(&ec2.nics.lock().unwrap(), &ec2.routes.lock().unwrap());
        ec2.hooks.lock().unwrap().push(Box::new(follow));
        self.ec2 = Some(ec2);
        Ok(())
    }

    /// The fake VPC OpenAPI with the HaVip, the gateways' Alibaba Cloud metadata, and a VPC
    /// router that learns the HaVip's owner by ARP.
    fn havip(&mut self) -> Result<()> {
        let api = self.aliyun_api(&|i| vec![fo_gateway(i)]);
        api.havips.lock().unwrap().push(FakeAliyunVpc::havip(
            "havip-web",
            &HAVIP_ADDRESS.to_string(),
            &["i-0", "i-1"],
        ));
        // The VPC learns the HaVip's owner from ARP, gratuitous ones included, and the
        // backends' route has the HaVip as its next hop.
        self.vpc.sysctl("net.ipv4.conf.br0.arp_accept", "1")?;
        self.vpc.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &HAVIP_ADDRESS.to_string(),
            "dev",
            "br0",
            "table",
            "100",
            "onlink",
        ])?;
        self.vpc_api = Some(api);
        Ok(())
    }

    /// The fake VPC OpenAPI (served in both gateways) and the gateways' Alibaba Cloud
    /// metadata, gateway `i`'s NIC with `addresses(i)` (primary first).
    fn aliyun_api(&mut self, addresses: &dyn Fn(usize) -> Vec<Ipv4Addr>) -> FakeAliyunVpc {
        let api = FakeAliyunVpc::start(&self.gateways[0], "cn-hangzhou");
        self.api_ports = vec![api.port, api.serve_in(&self.gateways[1])];
        api.keys
            .lock()
            .unwrap()
            .insert(KEY_ID.into(), (SECRET.into(), None));
        for (i, m) in self.imds.iter().enumerate() {
            let mac = &self.macs[i];
            let base = format!("{}{mac}/", super::METADATA_MACS);
            m.set("mac", mac);
            m.set("instance-id", &format!("i-{i}"));
            m.set("region-id", "cn-hangzhou");
            m.set(super::METADATA_MACS, &format!("{mac}/\n"));
            m.set(&format!("{base}network-interface-id"), &fo_nic(i));
            let list: Vec<String> = addresses(i).iter().map(|a| format!("\"{a}\"")).collect();
            m.set(
                &format!("{base}private-ipv4s"),
                &format!("[{}]", list.join(", ")),
            );
            m.set(&format!("{base}gateway"), &VPC_ROUTER.to_string());
            m.set(&format!("{base}vswitch-cidr-block"), "10.0.0.0/24");
        }
        api
    }

    /// The fake VPC OpenAPI with the EIP and the route entry, the gateways' Alibaba Cloud
    /// metadata (each with its own secondary address), and a VPC router that follows the API.
    fn aliyun_eips(&mut self, delay_ms: u64) -> Result<()> {
        let api = self.aliyun_api(&|i| vec![fo_gateway(i), eip_private(i)]);
        *api.enis.lock().unwrap() = (0..2)
            .map(|i| (fo_nic(i), vec![fo_gateway(i), eip_private(i)]))
            .collect();
        api.eips.lock().unwrap().push(FakeEip {
            id: FO_ALIYUN_EIP.into(),
            address: FO_EIP,
            status: "InUse".into(),
            bound: Some(("NetworkInterface".into(), fo_nic(0), Some(eip_private(0)))),
        });
        api.routes
            .lock()
            .unwrap()
            .insert(("vtb-private".into(), "0.0.0.0/0".into()), fo_nic(0));
        api.delay_ms
            .store(delay_ms, std::sync::atomic::Ordering::Relaxed);
        // The VPC delivers each EIP where it is in use, and the backends' route to the NIC the
        // route entry names.
        let vpc = self.vpc.name().to_owned();
        let follow =
            move |eips: &[FakeEip],
                  routes: &std::collections::BTreeMap<(String, String), String>| {
                let bound: Vec<(Ipv4Addr, Ipv4Addr)> = eips
                    .iter()
                    .filter(|e| e.status == "InUse")
                    .filter_map(|e| Some((e.address, e.bound.as_ref()?.2?)))
                    .collect();
                eip_translation(&vpc, &bound);
                backends_route_follows(
                    &vpc,
                    routes.get(&("vtb-private".to_owned(), "0.0.0.0/0".to_owned())),
                );
            };
        follow(&api.eips.lock().unwrap(), &api.routes.lock().unwrap());
        api.hooks.lock().unwrap().push(Box::new(follow));
        self.vpc_api = Some(api);
        Ok(())
    }

    /// Alibaba Cloud across zones: the ENI and address [`FO_EIP`] is in use on, if any.
    pub fn aliyun_eip_holder(&self) -> Option<(String, Ipv4Addr)> {
        let api = self.vpc_api.as_ref()?;
        let eips = api.eips.lock().unwrap();
        let e = eips.iter().find(|e| e.id == FO_ALIYUN_EIP)?;
        let (_, eni, private) = e.bound.clone().filter(|_| e.status == "InUse")?;
        Some((eni, private?))
    }

    /// AWS: the instance profile's credentials become generation `n`'s on every gateway's
    /// metadata, and the fake EC2 accepts only those from now on (as the old ones expire).
    pub fn rotate_role(&self, n: u32) {
        let (key, secret, token) = (
            format!("ASIAROLE{n}"),
            format!("role-secret-{n}"),
            format!("role-token-{n}"),
        );
        for m in &self.imds {
            m.set_aws_role("ipnat-gateway", &key, &secret, &token);
        }
        let mut keys = self.ec2().keys.lock().unwrap();
        keys.retain(|k, _| !k.starts_with("ASIAROLE"));
        keys.insert(key, (secret, Some(token)));
    }

    /// The fake EC2 API (the AWS lab's).
    pub fn ec2(&self) -> &FakeEc2 {
        self.ec2.as_ref().expect("the AWS lab")
    }

    /// Which gateway (its index) the VPC's router delivers the HaVip to now, if any.
    pub fn havip_owner(&self) -> Option<usize> {
        let out = self
            .vpc
            .ip(&["neigh", "show", &HAVIP_ADDRESS.to_string(), "dev", "br0"])
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("FAILED") || text.contains("INCOMPLETE") {
            return None;
        }
        self.macs.iter().position(|m| text.contains(m.as_str()))
    }

    /// What the VPC does when the API's state changes: each gateway's metadata lists its NIC's
    /// addresses; the router delivers each secondary address to its NIC's MAC and the
    /// backends' default route to the NIC rtb-private names.
    fn follower(
        &self,
    ) -> impl Fn(&[FakeEc2Nic], &std::collections::BTreeMap<(String, String), String>) + Send + 'static
    {
        let data: Vec<_> = self.imds.iter().map(|m| m.data.clone()).collect();
        let macs = self.macs.clone();
        let vpc = self.vpc.name().to_owned();
        move |nics, routes| {
            for (i, mac) in macs.iter().enumerate() {
                let Some(nic) = nics.iter().find(|n| n.id == fo_nic(i)) else {
                    continue;
                };
                let list: Vec<String> = nic.addresses.iter().map(|(a, _)| a.to_string()).collect();
                let base = format!("{}{mac}/", super::METADATA_MACS);
                let mut data = data[i].lock().unwrap();
                data.insert(format!("{base}local-ipv4s"), list.join("\n"));
                data.retain(|k, _| !k.starts_with(&format!("{base}ipv4-associations/")));
                let eips: Vec<_> = nic
                    .addresses
                    .iter()
                    .filter_map(|(a, e)| e.map(|e| (e, *a)))
                    .collect();
                if !eips.is_empty() {
                    let listing: String = eips.iter().map(|(e, _)| format!("{e}\n")).collect();
                    data.insert(format!("{base}ipv4-associations/"), listing);
                    for (e, a) in &eips {
                        data.insert(format!("{base}ipv4-associations/{e}"), a.to_string());
                    }
                }
                drop(data);
                for (a, _) in nic.addresses.iter().skip(1) {
                    let _ = std::process::Command::new("ip")
                        .args(["-n", &vpc, "neigh", "replace", &a.to_string()])
                        .args(["lladdr", mac, "dev", "br0", "nud", "permanent"])
                        .output();
                }
            }
            let eips: Vec<_> = nics
                .iter()
                .flat_map(|n| n.addresses.iter())
                .filter_map(|(a, e)| e.map(|e| (e, *a)))
                .collect();
            eip_translation(&vpc, &eips);
            backends_route_follows(
                &vpc,
                routes.get(&("rtb-private".to_owned(), "0.0.0.0/0".to_owned())),
            );
        }
    }

    pub fn pin(i: usize) -> String {
        format!("/sys/fs/bpf/ipnat-fo-{}-gw{i}", std::process::id())
    }

    /// Gateway `i`'s config: its one NIC, the mapping of the shard's address, the cloud's
    /// section with its metadata and the fake API, [etcd], and [failover] with one shard
    /// (`failover_extra` added to its keys).
    pub fn config(&self, i: usize, failover_extra: &str) -> String {
        self.config_with(i, failover_extra, "")
    }

    /// [`FailoverLab::config`] with `shard_extra` added to the shard's keys.
    pub fn config_with(&self, i: usize, failover_extra: &str, shard_extra: &str) -> String {
        let (public, cloud, shard) = match self.cloud {
            LabCloud::Aws | LabCloud::AwsZones => (
                if self.cloud == LabCloud::Aws {
                    SHARD_ADDRESS
                } else {
                    eip_private(i)
                },
                format!(
                    "[aws]\nendpoint = \"http://127.0.0.1:{imds}\"\ninterval_secs = 30\ntimeout_ms = 1000\n\
                     api_endpoint = \"http://127.0.0.1:{api}\"\n{keys}",
                    imds = self.imds[i].port,
                    api = self.api_ports[i],
                    keys = if self.role_credentials {
                        String::new()
                    } else {
                        format!("access_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\n")
                    },
                ),
                if self.cloud == LabCloud::Aws {
                    format!(
                        "[[failover.shard]]\nname = \"web\"\naddresses = [\"{SHARD_ADDRESS}\"]\n{shard_extra}\
                         [[failover.shard.route]]\ntable = \"rtb-private\"\ndestination = \"0.0.0.0/0\"\n"
                    )
                } else {
                    format!(
                        "[[failover.shard]]\nname = \"web\"\n{shard_extra}\
                         [[failover.shard.eip]]\nallocation_id = \"{FO_EIP_ALLOCATION}\"\nprivate = \"{}\"\n\
                         [[failover.shard.route]]\ntable = \"rtb-private\"\ndestination = \"0.0.0.0/0\"\n",
                        eip_private(i)
                    )
                },
            ),
            LabCloud::AliyunZones => (
                eip_private(i),
                format!(
                    "[aliyun]\nendpoint = \"http://127.0.0.1:{imds}\"\ninterval_secs = 30\ntimeout_ms = 1000\n\
                     vpc_api_endpoint = \"http://127.0.0.1:{api}\"\naccess_key_id = \"{KEY_ID}\"\naccess_key_secret = \"{SECRET}\"\n",
                    imds = self.imds[i].port,
                    api = self.api_ports[i],
                ),
                format!(
                    "[[failover.shard]]\nname = \"web\"\n{shard_extra}\
                     [[failover.shard.eip]]\nallocation_id = \"{FO_ALIYUN_EIP}\"\nprivate = \"{}\"\n\
                     [[failover.shard.route]]\ntable = \"vtb-private\"\ndestination = \"0.0.0.0/0\"\n",
                    eip_private(i)
                ),
            ),
            LabCloud::Aliyun => (
                HAVIP_ADDRESS,
                format!(
                    "[aliyun]\nendpoint = \"http://127.0.0.1:{imds}\"\ninterval_secs = 30\ntimeout_ms = 1000\n\
                     vpc_api_endpoint = \"http://127.0.0.1:{api}\"\naccess_key_id = \"{KEY_ID}\"\naccess_key_secret = \"{SECRET}\"\n",
                    imds = self.imds[i].port,
                    api = self.api_ports[i],
                ),
                format!(
                    "[[failover.shard]]\nname = \"web\"\naddresses = [\"{HAVIP_ADDRESS}\"]\nhavip = \"havip-web\"\n{shard_extra}"
                ),
            ),
        };
        format!(
            "pin_path = \"{pin}\"\nmetrics_listen = \"127.0.0.1:9469\"\n\n\
             [[interface]]\nname = \"eth0\"\n\n\
             [[mapping]]\npublic = \"{public}\"\nprivate = \"{FO_BACKEND}\"\n\n\
             {cloud}\n\
             [etcd]\nendpoints = [\"{etcd}\"]\nrequest_timeout_ms = 1000\ndial_timeout_ms = 500\n\n\
             [failover]\nname = \"{name}\"\ninterface = \"eth0\"\nlease_ttl_s = 2\nfence_margin_ms = 200\ncall_timeout_ms = 700\n{failover_extra}\n\n\
             {shard}",
            pin = Self::pin(i),
            etcd = self.etcd.url,
            name = fo_name(i),
        )
    }

    pub fn start_ipnat(&self, i: usize) -> Result<Ipnat> {
        Ipnat::start(&self.gateways[i], &self.config(i, ""), &Self::pin(i))
    }

    /// The NIC the fake EC2 says holds the shard's address.
    pub fn holder(&self) -> Option<String> {
        self.ec2()
            .nics
            .lock()
            .unwrap()
            .iter()
            .find(|n| n.addresses.iter().any(|(a, _)| *a == SHARD_ADDRESS))
            .map(|n| n.id.clone())
    }

    /// AWS across zones: the NIC and address the fake EC2 says [`FO_EIP`] is associated with.
    pub fn eip_holder(&self) -> Option<(String, Ipv4Addr)> {
        self.ec2().nics.lock().unwrap().iter().find_map(|n| {
            n.addresses
                .iter()
                .find(|(_, e)| *e == Some(FO_EIP))
                .map(|(a, _)| (n.id.clone(), *a))
        })
    }

    /// The NIC rtb-private's default route names.
    pub fn route_target(&self) -> Option<String> {
        self.ec2()
            .routes
            .lock()
            .unwrap()
            .get(&("rtb-private".to_owned(), "0.0.0.0/0".to_owned()))
            .cloned()
    }

    /// Blocks (or unblocks) gateway `i`'s port on the VPC's bridge: to the VPC it is gone.
    pub fn block(&self, i: usize, blocked: bool) -> Result<()> {
        let state = if blocked { "0" } else { "3" };
        self.vpc.run(
            "bridge",
            &["link", "set", "dev", &format!("gw{i}"), "state", state],
        )?;
        Ok(())
    }
}
