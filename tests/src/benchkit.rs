//! Shared parts of the benchmarks' harnesses: command-line options and the XDP sink that
//! counts what arrives.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use ipnat_common::names;

use crate::netns::Netns;

/// Attaches ipnat's `ipnat_bench_sink` to `iface` in `ns` (XDP): it counts frames whose
/// destination is `expected` and the others, and drops them. Detached when the returned object
/// drops.
pub fn attach_sink(ns: &Netns, iface: &'static str, expected: Ipv4Addr) -> Result<Ebpf> {
    sink_at(ns, iface, expected, false)
}

/// [`attach_sink`] at TC ingress (`ipnat_bench_tc_sink`): the interface runs no XDP program, so
/// the XDP of the host sending into its veth peer cannot transmit there.
pub fn attach_tc_sink(ns: &Netns, iface: &'static str, expected: Ipv4Addr) -> Result<Ebpf> {
    sink_at(ns, iface, expected, true)
}

fn sink_at(ns: &Netns, iface: &'static str, expected: Ipv4Addr, tc: bool) -> Result<Ebpf> {
    ns.within(move || {
        let mut ebpf = ipnat::bench::load_bench_object(1)?;
        let mut cfg: Array<_, u32> =
            Array::try_from(ebpf.map_mut(names::BENCH_CFG_MAP).context("cfg map")?)?;
        cfg.set(2, u32::from_ne_bytes(expected.octets()), 0)?;
        if tc {
            let p: &mut SchedClassifier = ebpf
                .program_mut(names::BENCH_TC_SINK_PROGRAM)
                .context("no TC sink program in the eBPF object")?
                .try_into()?;
            p.load()?;
            p.attach(iface, TcAttachType::Ingress)?;
        } else {
            let p: &mut Xdp = ebpf
                .program_mut(names::BENCH_SINK_PROGRAM)
                .context("no sink program in the eBPF object")?
                .try_into()?;
            p.load()?;
            p.attach(iface, XdpMode::Driver)?;
        }
        Ok(ebpf)
    })
}

/// What a sink counted so far: (to the expected destination, to another).
pub fn sink_counts(sink: &Ebpf) -> Result<(u64, u64)> {
    let cnt: PerCpuArray<_, u64> =
        PerCpuArray::try_from(sink.map(names::BENCH_CNT_MAP).context("sink counters")?)?;
    let sum = |i: u32| -> Result<u64> { Ok(cnt.get(&i, 0)?.iter().sum()) };
    Ok((sum(1)?, sum(2)?))
}

/// The `--name value` options of a benchmark's command line.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Self {
        Self(std::env::args().skip(1).collect())
    }

    /// The value after `name`, or `default`.
    pub fn get(&self, name: &str, default: &str) -> String {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_owned())
    }
}
