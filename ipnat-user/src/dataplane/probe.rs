//! The gateway's self-check, part of its readiness (see `crate::fleet::health`): are its
//! programs still attached where it put them, and do the programs the links run translate?
//!
//! The probe runs through the very programs the links point at (BPF_PROG_TEST_RUN on them,
//! with their live tables and settings), on a mapping of its own, [`PROBE_MAPPING`], between
//! two addresses of "this network" (0.0.0.0/8): no packet on a wire carries them, the config
//! refuses them, and the mapping is left out of every listing and count. The probe carries TTL
//! 1, so that whatever the routes, the fast path declines to forward it and the receive path
//! translates it the way the kernel's path would (each probe adds one to the `slow_ttl` reason
//! counter on receive, `dnat` with the fast path off, and one to `snat` on transmit).

use aya::programs::{Program, TestRun, TestRunOptions};
use etherparse::PacketBuilder;

use super::*;

/// The self-check's mapping (see the module's comment).
pub const PROBE_MAPPING: MappingConfig = MappingConfig {
    public: Block(Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 1), 32)),
    private: Block(Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 2), 32)),
};

/// The far end of the probe's flow (TEST-NET-1).
const PEER: [u8; 4] = [192, 0, 2, 1];

/// XDP_PASS and TC_ACT_OK.
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;

/// The probe's frame from `src` to `dst`, checksums computed by etherparse (independently of
/// the data plane's incremental updates).
fn frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let payload = b"ipnat self-check";
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 1)
        .udp(33434, 33434);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("a probe frame");
    v
}

fn octets(b: Block) -> [u8; 4] {
    b.addr().octets()
}

impl Dataplane {
    /// The loaded program whose kernel id is `id`, with its name.
    fn program_by_id(&self, id: u32) -> Option<(&str, &Program)> {
        self.ebpf
            .programs()
            .find(|(_, p)| p.info().is_ok_and(|i| i.id() == id))
    }

    /// Checks that `iface` runs this data plane's programs on every hook `mode` attaches (each
    /// link pinned, attached to the interface of that name, running one of the programs this
    /// controller loaded); returns the programs on receive and transmit, in order.
    fn live_programs(&self, iface: &str, mode: AttachMode) -> Result<(Vec<&str>, &str), String> {
        let dir = self
            .pin_dir
            .as_deref()
            .ok_or("the data plane is not pinned")?;
        let index = ifindex(iface).map_err(|e| e.to_string())?;
        let hooks: &[&str] = match mode {
            AttachMode::XdpNative => &["xdp", "tc-in", "tc-out"],
            AttachMode::TcOnly => &["tc-gw", "tc-out"],
            AttachMode::Host => &["tc-in", "tc-out"],
        };
        let mut names = Vec::new();
        for hook in hooks {
            let path = dir.join(link_pin_name(hook, iface));
            let (prog, attached) = pinned_link_target(&path)
                .map_err(|e| format!("{hook} link on {iface} ({}): {e}", path.display()))?;
            if attached != index {
                return Err(format!(
                    "the {hook} program on {iface} was detached (its link now names interface index {attached})"
                ));
            }
            let (name, _) = self.program_by_id(prog).ok_or_else(|| {
                format!("{iface}'s {hook} link runs program {prog}, which is not one this controller loaded")
            })?;
            names.push(name);
        }
        let out = names.pop().expect("a transmit hook");
        Ok((names, out))
    }

    /// Runs `frame` through the program `name` (BPF_PROG_TEST_RUN); its return value and the
    /// frame it leaves.
    fn run_probe(&self, name: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
        let prog = self
            .ebpf
            .program(name)
            .ok_or_else(|| format!("program {name} is not loaded"))?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let r = match prog {
            Program::Xdp(p) => p.test_run(opts),
            Program::SchedClassifier(p) => p.test_run(opts),
            _ => return Err(format!("program {name} cannot be test-run")),
        }
        .map_err(|e| format!("running {name}: {e}"))?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// The self-check of `iface` attached in `mode`: its links (see `live_programs`), then a
    /// probe through its receive programs in order (public -> private) and through its transmit
    /// program (private -> public), compared byte for byte with frames built independently.
    /// Needs [`PROBE_MAPPING`] installed ([`Tables::install_probe`]).
    pub fn self_check(&self, iface: &str, mode: AttachMode) -> Result<(), String> {
        let (receive, transmit) = self.live_programs(iface, mode)?;
        let (public, private) = (octets(PROBE_MAPPING.public), octets(PROBE_MAPPING.private));
        let mut f = frame(PEER, public);
        for name in receive {
            let pass = if name.starts_with("ipnat_xdp") {
                XDP_PASS
            } else {
                TC_ACT_OK
            };
            let (rc, out) = self.run_probe(name, &f)?;
            if rc != pass {
                return Err(format!(
                    "{name} on {iface} returned {rc} for the probe, not {pass} (passed on)"
                ));
            }
            f = out;
        }
        if f != frame(PEER, private) {
            return Err(format!(
                "the receive programs on {iface} did not translate the probe {} -> {} exactly",
                PROBE_MAPPING.public, PROBE_MAPPING.private
            ));
        }
        let (rc, out) = self.run_probe(transmit, &frame(private, PEER))?;
        if rc != TC_ACT_OK || out != frame(public, PEER) {
            return Err(format!(
                "the transmit program on {iface} did not translate the probe {} -> {} exactly (returned {rc})",
                PROBE_MAPPING.private, PROBE_MAPPING.public
            ));
        }
        Ok(())
    }
}
