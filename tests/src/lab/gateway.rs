//! The gateway lab: an internet host, a gateway running ipnat, a backend.

use super::*;

pub const INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const GW_EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const GW_INT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
pub const EIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// A second mapping, to a second address of the backend (for hairpin tests).
pub const EIP2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub const BACKEND2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);

/// Options of the lab's links.
#[derive(Clone, Copy, Debug)]
pub struct LabOptions {
    /// Turn off transmit checksum offload on the internet host, so that its frames carry full
    /// checksums like frames off a wire (XDP never sees a partial checksum from a real NIC).
    pub inet_tx_csum_off: bool,
    /// The same for the backend. Left on, the backend's packets reach the gateway's TC hook
    /// with partial checksums, the case the kernel's helpers handle.
    pub backend_tx_csum_off: bool,
    /// Turn off transmit checksum offload on the gateway's interfaces, so the kernel completes
    /// any partial checksum after TC and a capture at the receiver can verify it.
    pub gateway_tx_csum_off: bool,
    /// The config's `fast_path`.
    pub fast_path: bool,
    /// The gateway's external side is a bridge (`brx`, with ext0 as its port): an interface
    /// without native XDP.
    pub bridge_ext: bool,
    /// An XDP program on the backend's end of int0's veth, which XDP_REDIRECT into int0 needs.
    pub backend_xdp: bool,
    /// The MTU of every link (jumbo frames above about 3500: multi-buffer XDP).
    pub mtu: Option<u32>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            inet_tx_csum_off: true,
            backend_tx_csum_off: true,
            gateway_tx_csum_off: true,
            fast_path: true,
            bridge_ext: false,
            backend_xdp: true,
            mtu: None,
        }
    }
}

pub struct GatewayLab {
    pub opts: LabOptions,
    /// The XDP pass programs on the hosts' ends of the veths (detached when dropped).
    peers: std::sync::Mutex<Vec<aya::Ebpf>>,
    pub inet: Netns,
    pub gw: Netns,
    pub backend: Netns,
}

impl GatewayLab {
    pub fn new(opts: LabOptions) -> Result<Self> {
        let lab = Self {
            peers: std::sync::Mutex::new(Vec::new()),
            opts,
            inet: Netns::new("inet")?,
            gw: Netns::new("gw")?,
            backend: Netns::new("be")?,
        };
        veth(&lab.inet, "eth0", &lab.gw, "ext0")?;
        veth(&lab.backend, "eth0", &lab.gw, "int0")?;
        if let Some(mtu) = opts.mtu {
            let mtu = mtu.to_string();
            for (ns, dev) in [
                (&lab.inet, "eth0"),
                (&lab.gw, "ext0"),
                (&lab.gw, "int0"),
                (&lab.backend, "eth0"),
            ] {
                ns.ip(&["link", "set", dev, "mtu", &mtu])?;
            }
        }
        lab.inet
            .ip(&["addr", "add", &format!("{INET}/24"), "dev", "eth0"])?;
        lab.inet.ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            &GW_EXT.to_string(),
        ])?;
        if opts.bridge_ext {
            lab.gw.ip(&["link", "add", "brx", "type", "bridge"])?;
            lab.gw.ip(&["link", "set", "ext0", "master", "brx"])?;
            lab.gw.ip(&["link", "set", "brx", "up"])?;
            lab.gw
                .ip(&["addr", "add", &format!("{GW_EXT}/24"), "dev", "brx"])?;
        } else {
            lab.gw
                .ip(&["addr", "add", &format!("{GW_EXT}/24"), "dev", "ext0"])?;
        }
        lab.gw
            .ip(&["addr", "add", &format!("{GW_INT}/24"), "dev", "int0"])?;
        lab.gw.sysctl("net.ipv4.ip_forward", "1")?;
        // A gateway that sends a packet back out of the interface it came in on (hairpin)
        // must not tell the sender to go direct: the sender would then skip the translation.
        for conf in ["all", "default", "ext0", "int0"] {
            lab.gw
                .sysctl(&format!("net.ipv4.conf.{conf}.send_redirects"), "0")?;
        }
        lab.backend
            .ip(&["addr", "add", &format!("{BACKEND}/24"), "dev", "eth0"])?;
        lab.backend
            .ip(&["addr", "add", &format!("{BACKEND2}/24"), "dev", "eth0"])?;
        lab.backend
            .ip(&["route", "add", "default", "via", &GW_INT.to_string()])?;
        // XDP_REDIRECT/XDP_TX into a veth needs an XDP program on its peer (a real NIC needs
        // nothing of the kind). GRO would do too, but would merge what arrives into frames
        // whose checksums a capture cannot verify.
        lab.peers.lock().unwrap().push(xdp_pass(&lab.inet, "eth0")?);
        if opts.backend_xdp {
            lab.peers
                .lock()
                .unwrap()
                .push(xdp_pass(&lab.backend, "eth0")?);
        }
        if opts.inet_tx_csum_off {
            ethtool_tx_off(&lab.inet, "eth0")?;
        }
        if opts.backend_tx_csum_off {
            ethtool_tx_off(&lab.backend, "eth0")?;
        }
        if opts.gateway_tx_csum_off {
            ethtool_tx_off(&lab.gw, "ext0")?;
            ethtool_tx_off(&lab.gw, "int0")?;
        }
        Ok(lab)
    }

    /// Packets the gateway's kernel forwarded.
    pub fn kernel_forwarded(&self) -> Result<u64> {
        kernel_forwarded(&self.gw)
    }

    /// The config the gateway's ipnat runs with.
    pub fn config(&self, pin_path: &str) -> String {
        format!(
            "pin_path = \"{pin_path}\"\nfast_path = {}\n\n\
             [[interface]]\nname = \"{}\"\n\n\
             [[interface]]\nname = \"int0\"\n\n\
             [[mapping]]\npublic = \"{EIP}\"\nprivate = \"{BACKEND}\"\n\n\
             [[mapping]]\npublic = \"{EIP2}\"\nprivate = \"{BACKEND2}\"\n",
            self.opts.fast_path,
            if self.opts.bridge_ext { "brx" } else { "ext0" }
        )
    }

    /// Starts `ipnat run` on the gateway.
    /// A lab built with `opts` and `ipnat run` started in it; panics on failure (for tests).
    pub fn started(opts: LabOptions) -> (Self, Ipnat) {
        let lab = Self::new(opts).expect("build the gateway lab");
        let ipnat = lab.start_ipnat().expect("start ipnat in the gateway lab");
        (lab, ipnat)
    }

    pub fn start_ipnat(&self) -> Result<Ipnat> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin = format!("/sys/fs/bpf/ipnat-lab-{}-{n}", std::process::id());
        Ipnat::start(&self.gw, &self.config(&pin), &pin)
    }
}
