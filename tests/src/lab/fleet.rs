//! A fleet of ipnat gateways between two routers, each router with equal-cost multipath over
//! the gateways, learned over BGP with BFD from the gateways' bird (dist/bird/).
//!
//! ```text
//!  outside (router; client 203.0.113.10 on lo)        inside (router; backends 10.0.1.x on lo)
//!     br0 10.99.0.1 ──┬── out0 gw1 in0 ──┬── br0 10.98.0.1
//!                     ├── out0 gw2 in0 ──┤
//!                     └── ...            └── ...
//!  gateway i: out0 10.99.0.(10+i), in0 10.98.0.(10+i); ipnat 198.51.100.x <-> 10.0.1.x
//! ```
//! Routers and gateways meet on bridges: a gateway can die (its bridge ports blocked) while
//! every link stays up, so only BFD tells the routers. Both routers hash flows by ports
//! (`fib_multipath_hash_policy = 1`); the client's and backends' TCP never re-rolls its flow
//! hash after a timeout (`net.core.txrehash = 0`), which would escape a dead gateway by
//! itself.

use super::*;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
};

use crate::{bird::Bird, capture::Capture};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const FLEET_OUT_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const FLEET_IN_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
/// The gateways' AS and the routers'.
const GATEWAYS_AS: u32 = 65001;
const OUTSIDE_AS: u32 = 65000;
const INSIDE_AS: u32 = 65002;

/// Gateway `i`'s (from 1) address towards the outside router.
pub fn gw_out(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 10 + i as u8)
}

/// Gateway `i`'s address towards the inside router.
pub fn gw_in(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 98, 0, 10 + i as u8)
}

/// The `n`th (from 0) mapping of the fleet: public and private.
pub fn fleet_mapping(n: usize) -> (Ipv4Addr, Ipv4Addr) {
    (
        Ipv4Addr::new(198, 51, 100, 10 + n as u8),
        Ipv4Addr::new(10, 0, 1, 10 + n as u8),
    )
}

/// A dist/ file of the project.
pub fn dist(file: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `text` with each `define NAME = ...;` of `values` set to its value (the dist configs'
/// settings); fails on a name it does not define.
pub fn with_defines(text: &str, values: &[(&str, String)]) -> Result<String> {
    let mut out = text.to_owned();
    for (name, value) in values {
        let start = format!("define {name} = ");
        let at = out
            .find(&start)
            .with_context(|| format!("no `define {name}` in the config"))?;
        let end = at + out[at..].find(';').context("an unterminated define")?;
        out.replace_range(at..=end, &format!("{start}{value};"));
    }
    Ok(out)
}

pub struct FleetLab {
    pub outside: Netns,
    pub inside: Netns,
    pub gateways: Vec<Netns>,
    pub outside_bird: Bird,
    pub inside_bird: Bird,
    /// The gateways' bird (stopped ones are None).
    pub gateway_birds: Vec<Option<Bird>>,
    /// How many backends there are (mapping 0 and on).
    pub mappings: usize,
    /// How many of those mappings the gateways' own configs hold (the rest may come from
    /// the fleet's table).
    pub own_mappings: usize,
}

impl FleetLab {
    /// The routers and `n` gateways, wired, with bird running everywhere (ipnat not yet).
    pub fn new(n: usize, mappings: usize) -> Result<Self> {
        let outside = Netns::new("fl-out")?;
        let inside = Netns::new("fl-in")?;
        let mut gateways = Vec::new();
        for (ns, addr) in [(&outside, FLEET_OUT_ROUTER), (&inside, FLEET_IN_ROUTER)] {
            ns.ip(&["link", "add", "br0", "type", "bridge"])?;
            ns.ip(&["link", "set", "br0", "up"])?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "br0"])?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
            ns.sysctl("net.core.txrehash", "0")?;
        }
        outside.ip(&["addr", "add", &format!("{CLIENT}/32"), "dev", "lo"])?;
        for m in 0..mappings {
            let (_, private) = fleet_mapping(m);
            inside.ip(&["addr", "add", &format!("{private}/32"), "dev", "lo"])?;
        }
        for i in 1..=n {
            let gw = Netns::new(&format!("fl-gw{i}"))?;
            veth(&gw, "out0", &outside, &format!("g{i}o"))?;
            veth(&gw, "in0", &inside, &format!("g{i}i"))?;
            outside.ip(&["link", "set", &format!("g{i}o"), "master", "br0"])?;
            inside.ip(&["link", "set", &format!("g{i}i"), "master", "br0"])?;
            gw.ip(&["addr", "add", &format!("{}/24", gw_out(i)), "dev", "out0"])?;
            gw.ip(&["addr", "add", &format!("{}/24", gw_in(i)), "dev", "in0"])?;
            gw.ip(&[
                "route",
                "add",
                "default",
                "via",
                &FLEET_OUT_ROUTER.to_string(),
            ])?;
            gw.ip(&[
                "route",
                "add",
                "10.0.1.0/24",
                "via",
                &FLEET_IN_ROUTER.to_string(),
            ])?;
            gw.sysctl("net.ipv4.ip_forward", "1")?;
            gw.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
            gw.sysctl("net.ipv4.conf.out0.send_redirects", "0")?;
            gw.sysctl("net.ipv4.conf.in0.send_redirects", "0")?;
            gateways.push(gw);
        }
        let pid = std::process::id();
        let outside_bird = Bird::start(
            &outside,
            &format!("{pid}-{}-out", outside.name()),
            &router_config(FLEET_OUT_ROUTER, OUTSIDE_AS, n, gw_out)?,
        )?;
        let inside_bird = Bird::start(
            &inside,
            &format!("{pid}-{}-in", inside.name()),
            &router_config(FLEET_IN_ROUTER, INSIDE_AS, n, gw_in)?,
        )?;
        let mut lab = FleetLab {
            outside,
            inside,
            gateways,
            outside_bird,
            inside_bird,
            gateway_birds: Vec::new(),
            mappings,
            own_mappings: mappings,
        };
        for i in 1..=n {
            let bird = lab.start_gateway_bird(i)?;
            lab.gateway_birds.push(Some(bird));
        }
        Ok(lab)
    }

    /// Starts gateway `i`'s bird with dist/bird/ipnat-gateway.conf.
    pub fn start_gateway_bird(&self, i: usize) -> Result<Bird> {
        let config = with_defines(
            &dist("bird/ipnat-gateway.conf")?,
            &[
                ("LOCAL_AS", GATEWAYS_AS.to_string()),
                ("OUTSIDE_LOCAL", gw_out(i).to_string()),
                ("OUTSIDE_PEER", FLEET_OUT_ROUTER.to_string()),
                ("OUTSIDE_AS", OUTSIDE_AS.to_string()),
                ("INSIDE_LOCAL", gw_in(i).to_string()),
                ("INSIDE_PEER", FLEET_IN_ROUTER.to_string()),
                ("INSIDE_AS", INSIDE_AS.to_string()),
            ],
        )?;
        let gw = &self.gateways[i - 1];
        Bird::start(
            gw,
            &format!("{}-{}", std::process::id(), gw.name()),
            &config,
        )
    }

    /// Gateway `i`'s bird control socket.
    pub fn bird_socket(&self, i: usize) -> PathBuf {
        self.gateway_birds[i - 1]
            .as_ref()
            .expect("gateway's bird running")
            .socket
            .clone()
    }

    /// The config gateway `i`'s ipnat runs with: every mapping, [announce] with its bird, and
    /// `extra` (keys of [announce] first, then other sections).
    pub fn config_with(&self, i: usize, pin_path: &str, extra: &str) -> String {
        let mut c = format!(
            "pin_path = \"{pin_path}\"\nmetrics_listen = \"{}:9469\"\n\n\
             [[interface]]\nname = \"out0\"\n\n\
             [[interface]]\nname = \"in0\"\n\n",
            gw_out(i)
        );
        for m in 0..self.own_mappings {
            let (public, private) = fleet_mapping(m);
            c.push_str(&format!(
                "[[mapping]]\npublic = \"{public}\"\nprivate = \"{private}\"\n\n"
            ));
        }
        c.push_str(&format!(
            "[announce]\noutward = \"out0\"\ninward = \"in0\"\ncheck_interval_ms = 200\n\
             bird_socket = \"{}\"\noutward_sessions = [\"outside\"]\ninward_sessions = [\"inside\"]\n",
            self.bird_socket(i).display()
        ));
        c.push_str(extra);
        c
    }

    /// [`FleetLab::config_with`] nothing extra.
    pub fn config(&self, i: usize, pin_path: &str) -> String {
        self.config_with(i, pin_path, "")
    }

    /// Gateway `i`'s metrics server, as its peers name it.
    pub fn metrics_url(i: usize) -> String {
        format!("http://{}:9469", gw_out(i))
    }

    /// Starts ipnat on gateway `i`.
    pub fn start_ipnat(&self, i: usize) -> Result<Ipnat> {
        self.start_ipnat_with(i, "")
    }

    /// Starts ipnat on gateway `i` with [`FleetLab::config_with`] `extra`.
    pub fn start_ipnat_with(&self, i: usize, extra: &str) -> Result<Ipnat> {
        Ipnat::start(
            &self.gateways[i - 1],
            &self.config_with(i, &Self::pin(i), extra),
            &Self::pin(i),
        )
    }

    /// Gateway `i`'s pin path.
    pub fn pin(i: usize) -> String {
        format!("/sys/fs/bpf/ipnat-fleet-{}-gw{i}", std::process::id())
    }

    /// The outside router's next hops towards mapping `m`'s public address.
    pub fn outside_hops(&self, m: usize) -> Result<Vec<String>> {
        crate::bird::next_hops(&self.outside, &fleet_mapping(m).0.to_string())
    }

    /// The inside router's next hops of its default route.
    pub fn inside_hops(&self) -> Result<Vec<String>> {
        crate::bird::next_hops(&self.inside, "default")
    }

    /// Waits up to `secs` until both routers reach mapping 0 and the outside through exactly
    /// the gateways `up` (numbers from 1).
    pub fn wait_hops(&self, up: &[usize], secs: u64) -> Result<()> {
        let want_out: Vec<String> = up.iter().map(|i| gw_out(*i).to_string()).collect();
        let want_in: Vec<String> = up.iter().map(|i| gw_in(*i).to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (out, inn) = (self.outside_hops(0)?, self.inside_hops()?);
            if out == want_out && inn == want_in {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "after {secs} s the routers' next hops are outside {out:?}, inside {inn:?}; wanted {want_out:?} and {want_in:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Blocks (or unblocks) gateway `i`'s port on the outside router's bridge: its link stays
    /// up, nothing passes.
    pub fn block_outside(&self, i: usize, blocked: bool) -> Result<()> {
        block(&self.outside, &format!("g{i}o"), blocked)
    }

    /// Blocks (or unblocks) both of gateway `i`'s bridge ports: to everyone else it is dead,
    /// while every link stays up.
    pub fn block_gateway(&self, i: usize, blocked: bool) -> Result<()> {
        block(&self.outside, &format!("g{i}o"), blocked)?;
        block(&self.inside, &format!("g{i}i"), blocked)
    }
}

/// The gateways each TCP flow to or from `public` crossed, one direction and the other,
/// captured on the outside router's port to each gateway. (Not on the gateways' own
/// interfaces: frames the XDP fast path redirects pass no capture there, while the router's
/// ports see every frame a gateway sends or is sent.)
pub struct PathWatch {
    public: Ipv4Addr,
    captures: Vec<Capture>,
}

/// Per TCP flow (client address and port, public address and port): the gateways (from 1)
/// that carried its packets towards the public address, and those that carried the replies.
#[derive(Debug, Default)]
pub struct Paths {
    pub flows: BTreeMap<(SocketAddrV4, SocketAddrV4), (BTreeSet<usize>, BTreeSet<usize>)>,
}

impl Paths {
    /// Flows seen in both directions.
    pub fn seen_both_ways(&self) -> usize {
        self.flows
            .values()
            .filter(|(to, from)| !to.is_empty() && !from.is_empty())
            .count()
    }

    /// Flows whose packets took one gateway each way, and not the same one.
    pub fn crossed(&self) -> usize {
        self.flows
            .values()
            .filter(|(to, from)| to.len() == 1 && from.len() == 1 && to != from)
            .count()
    }
}

impl FleetLab {
    /// Starts recording which gateway each TCP flow of `public` crosses, each way.
    pub fn watch_paths(&self, public: Ipv4Addr) -> Result<PathWatch> {
        let captures = (1..=self.gateways.len())
            .map(|i| Capture::start_snap(&self.outside, &format!("g{i}o"), 64))
            .collect::<Result<_>>()?;
        Ok(PathWatch { public, captures })
    }
}

impl PathWatch {
    pub fn stop(self) -> Result<Paths> {
        let mut paths = Paths::default();
        for (i, capture) in self.captures.into_iter().enumerate() {
            for frame in capture.stop()? {
                let Some(ip) = frame.ipv4() else { continue };
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                // TCP, not a fragment, ports present.
                if ip[9] != 6
                    || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
                    || ip.len() < ihl + 4
                {
                    continue;
                }
                let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
                let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
                let sport = u16::from_be_bytes([ip[ihl], ip[ihl + 1]]);
                let dport = u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]);
                if dst == self.public {
                    let key = (SocketAddrV4::new(src, sport), SocketAddrV4::new(dst, dport));
                    paths.flows.entry(key).or_default().0.insert(i + 1);
                } else if src == self.public {
                    let key = (SocketAddrV4::new(dst, dport), SocketAddrV4::new(src, sport));
                    paths.flows.entry(key).or_default().1.insert(i + 1);
                }
            }
        }
        Ok(paths)
    }
}

/// Disables (or enables) bridge port `port` in `ns`.
fn block(ns: &Netns, port: &str, blocked: bool) -> Result<()> {
    let state = if blocked { "0" } else { "3" };
    ns.run("bridge", &["link", "set", "dev", port, "state", state])?;
    Ok(())
}

/// A router's bird config: dist/bird/router.conf with one session per gateway.
fn router_config(
    local: Ipv4Addr,
    asn: u32,
    n: usize,
    gateway: fn(usize) -> Ipv4Addr,
) -> Result<String> {
    let text = with_defines(
        &dist("bird/router.conf")?,
        &[
            ("LOCAL", local.to_string()),
            ("LOCAL_AS", asn.to_string()),
            ("GATEWAYS_AS", GATEWAYS_AS.to_string()),
        ],
    )?;
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("protocol bgp gw"))
        .map(|l| format!("{l}\n"))
        .collect();
    for i in 1..=n {
        out.push_str(&format!(
            "protocol bgp gw{i} from gateways {{ neighbor {} as GATEWAYS_AS; }}\n",
            gateway(i)
        ));
    }
    Ok(out)
}
