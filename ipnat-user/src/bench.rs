//! `ipnat bench`: the per-packet cost of the rewrite path, measured in the kernel with
//! BPF_PROG_TEST_RUN, against baselines measured in the same run: an empty XDP program
//! (`ipnat_xdp_pass`), an empty TC program and the floor any table NAT pays
//! (`ipnat_bench_floor`: one hash lookup in a table of the same size and contents, one address
//! store). The baselines live in the benchmarks' own object ([`crate::BENCH_OBJECT`]).
//!
//! One packet repeated would keep one hash bucket hot and make every table size look the same,
//! and `repeat` reuses one buffer (the second run would see the packet already translated).
//! So every run is a single repetition on its own packet, cycling through `distinct` packets
//! that hit different, randomly chosen mappings; the cost is the kernel's own timing of the
//! program (no syscall overhead), averaged. Rounds interleave every path and both baselines,
//! and the median round is reported, because these machines are noisy.

use std::{net::Ipv4Addr, time::Instant};

use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use etherparse::{IpNumber, Ipv4Header, PacketBuilder};
use ipnat_common::{NatEntry, NatTarget, names};
use serde::Serialize;

use crate::{
    BENCH_OBJECT,
    config::MappingConfig,
    dataplane::{Dataplane, DataplaneError, MAP_NAMES},
};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("loading the benchmarks' eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("no {kind} {name} in the eBPF object (rebuild with `cargo xtask build`)")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("{name}: {error}")]
    Program {
        name: &'static str,
        error: aya::programs::ProgramError,
    },
    #[error("the floor's table: {0}")]
    Map(#[from] aya::maps::MapError),
}

fn program(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> BenchError {
    move |error| BenchError::Program { name, error }
}

/// The floor's table in the benchmarks' object.
const FLOOR_MAP: &str = "IPNAT_BENCH_DNAT";

/// Loads the benchmarks' object, its floor table sized `floor_entries` (programs not loaded
/// yet). The shared eBPF code brings the product's map definitions along; nothing in this
/// object uses them, so they are created at one entry each.
pub fn load_bench_object(floor_entries: u32) -> Result<Ebpf, BenchError> {
    if BENCH_OBJECT.is_empty() {
        return Err(DataplaneError::NotBuilt.into());
    }
    let mut loader = EbpfLoader::new();
    for name in MAP_NAMES {
        loader.map_max_entries(name, 1);
    }
    loader.map_max_entries(FLOOR_MAP, floor_entries);
    Ok(loader.load(BENCH_OBJECT)?)
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Table sizes (mappings installed) to measure at.
    pub sizes: Vec<u32>,
    /// Distinct packets (and keys) cycled through per path.
    pub distinct: usize,
    /// Rounds; the median is reported.
    pub rounds: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            sizes: vec![1, 1_000, 100_000, 1_000_000],
            distinct: 4096,
            rounds: 7,
        }
    }
}

/// One measured path at one table size.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub path: &'static str,
    pub hook: &'static str,
    pub mappings: u32,
    /// The kernel's timing of one run, averaged: includes the test run's fixed cost.
    pub ns_per_packet: f64,
    /// ns_per_packet less the same hook's empty program: the program's own cost.
    pub net_ns: f64,
    pub mpps_per_core: f64,
    /// ns_per_packet / the same hook's empty program's.
    pub vs_empty: f64,
    /// ns_per_packet / the one-lookup floor's.
    pub vs_floor: f64,
    /// net_ns / the floor's net cost (both less the empty XDP program).
    pub net_vs_floor: f64,
}

/// Time and memory to fill the tables.
#[derive(Clone, Debug, Serialize)]
pub struct LoadRow {
    pub mappings: u32,
    pub seconds: f64,
    pub map_memory_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub loads: Vec<LoadRow>,
    pub kernel: String,
    pub cpu: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Hook {
    Xdp,
    TcEgress,
    /// TC on receive doing XDP's job (an interface without native XDP, or `xdp = false`).
    TcGateway,
    Empty,
    Floor,
    TcEmpty,
    /// Host orientation, TC on receive (with the socket lookup).
    HostIn,
    /// Host orientation, TC on transmit.
    HostOut,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcEgress | Hook::TcGateway | Hook::TcEmpty | Hook::HostIn | Hook::HostOut => "tc",
            Hook::Empty | Hook::Floor => "xdp",
        }
    }
}

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const INET: [u8; 4] = [203, 0, 113, 10];

/// The i-th mapping of a table: public 100.64.0.0 + i <-> private 10.0.0.0 + i (i < 2^22).
fn mapping(i: u32) -> MappingConfig {
    MappingConfig {
        public: Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i).into(),
        private: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i).into(),
    }
}

fn tcp_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let payload = [0x5au8; 64];
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(40000, 443, 1, 65535);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, &payload).expect("build a TCP frame");
    v
}

fn udp_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let payload = [0xa5u8; 64];
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(53, 40000);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, &payload).expect("build a UDP frame");
    v
}

/// A later fragment (offset 1480) of a UDP datagram to `dst`: IPv4 header only.
fn fragment_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let payload = [0x33u8; 200];
    let mut h = Ipv4Header::new(payload.len() as u16, 64, IpNumber::UDP, src, dst)
        .expect("fragment header");
    h.fragment_offset = etherparse::IpFragOffset::try_new(185).expect("offset");
    h.identification = 7;
    let mut v = Vec::new();
    v.extend_from_slice(&MAC_B);
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&[0x08, 0x00]);
    h.write(&mut v).expect("write header");
    v.extend_from_slice(&payload);
    v
}

/// The gateway's own "time exceeded" to the internet host about a packet it had translated
/// to `private`: only the quote names a mapped address.
fn icmp_error_frame(private: [u8; 4]) -> Vec<u8> {
    let mut quote = Vec::new();
    PacketBuilder::ipv4(INET, private, 1)
        .udp(40000, 53)
        .write(&mut quote, &[0u8; 8])
        .expect("quote");
    quote.truncate(28);
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([203, 0, 113, 1], INET, 64)
        .icmpv4_raw(11, 0, [0; 4]);
    let mut v = Vec::with_capacity(b.size(quote.len()));
    b.write(&mut v, &quote).expect("ICMP error");
    v
}

/// A small deterministic generator (xorshift), so runs pick the same keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

struct Path {
    name: &'static str,
    hook: Hook,
    frames: Vec<Vec<u8>>,
}

fn paths(size: u32, distinct: usize, rng: &mut Rng) -> Vec<Path> {
    let mut pick = || mapping(rng.below(size));
    let octets = |b: crate::config::Block| b.addr().octets();
    let hits: Vec<MappingConfig> = (0..distinct).map(|_| pick()).collect();
    let tcp_hits: Vec<Vec<u8>> = hits
        .iter()
        .map(|m| tcp_frame(INET, octets(m.public)))
        .collect();
    vec![
        Path {
            name: "empty program (baseline)",
            hook: Hook::Empty,
            frames: tcp_hits.clone(),
        },
        Path {
            name: "one lookup + store (floor)",
            hook: Hook::Floor,
            frames: tcp_hits.clone(),
        },
        Path {
            name: "empty TC program (baseline)",
            hook: Hook::TcEmpty,
            frames: tcp_hits.clone(),
        },
        Path {
            name: "DNAT TCP hit",
            hook: Hook::Xdp,
            frames: tcp_hits.clone(),
        },
        Path {
            name: "DNAT TCP hit (TC only)",
            hook: Hook::TcGateway,
            frames: tcp_hits,
        },
        Path {
            name: "SNAT UDP hit",
            hook: Hook::TcEgress,
            frames: hits
                .iter()
                .map(|m| udp_frame(octets(m.private), INET))
                .collect(),
        },
        Path {
            name: "miss (no mapping)",
            hook: Hook::Xdp,
            frames: (0..distinct)
                .map(|i| tcp_frame(INET, [192, 0, 2, (i % 250) as u8]))
                .collect(),
        },
        Path {
            name: "ICMP error, quote only",
            hook: Hook::TcEgress,
            frames: hits
                .iter()
                .map(|m| icmp_error_frame(octets(m.private)))
                .collect(),
        },
        Path {
            name: "later fragment hit",
            hook: Hook::Xdp,
            frames: hits
                .iter()
                .map(|m| fragment_frame(INET, octets(m.public)))
                .collect(),
        },
        Path {
            name: "host in: TCP hit + sk lookup",
            hook: Hook::HostIn,
            frames: hits
                .iter()
                .map(|m| tcp_frame(INET, octets(m.private)))
                .collect(),
        },
        Path {
            name: "host out: UDP hit",
            hook: Hook::HostOut,
            frames: hits
                .iter()
                .map(|m| udp_frame(octets(m.public), INET))
                .collect(),
        },
    ]
}

fn run_one(
    dp: &Dataplane,
    bench: &Ebpf,
    hook: Hook,
    frame: &[u8],
    out: &mut [u8],
) -> Result<u64, BenchError> {
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        ..Default::default()
    };
    let ebpf = if matches!(hook, Hook::Floor | Hook::TcEmpty) {
        bench
    } else {
        dp.ebpf()
    };
    let name = match hook {
        Hook::Xdp => names::XDP_PROGRAM,
        Hook::TcEgress => names::TC_EGRESS_PROGRAM,
        Hook::TcGateway => names::TC_GATEWAY_PROGRAM,
        Hook::Empty => names::XDP_PASS_PROGRAM,
        Hook::Floor => names::BENCH_FLOOR_PROGRAM,
        Hook::TcEmpty => names::BENCH_TC_EMPTY_PROGRAM,
        Hook::HostIn => names::TC_INGRESS_PROGRAM,
        Hook::HostOut => names::TC_EGRESS_PROGRAM,
    };
    let prog = ebpf.program(name).ok_or(BenchError::Missing {
        kind: "program",
        name,
    })?;
    let r = if hook.name() == "tc" {
        let p: &SchedClassifier = prog.try_into().map_err(program(name))?;
        p.test_run(opts)
    } else {
        let p: &Xdp = prog.try_into().map_err(program(name))?;
        p.test_run(opts)
    }
    .map_err(program(name))?;
    Ok(r.duration.as_nanos() as u64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the benchmark, calling `progress` with a line now and then.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<Report, BenchError> {
    let mut rows = Vec::new();
    let mut loads = Vec::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &size in &opts.sizes {
        let size = size.max(1);
        progress(&format!("loading {size} mappings..."));
        let capacity = size.max(1024);
        let mut dp = Dataplane::load(None, capacity)?;
        load_xdp(dp.ebpf_mut(), names::XDP_PASS_PROGRAM)?;
        let mut bench = load_bench_object(capacity)?;
        load_xdp(&mut bench, names::BENCH_FLOOR_PROGRAM)?;
        let tc: &mut SchedClassifier = bench
            .program_mut(names::BENCH_TC_EMPTY_PROGRAM)
            .ok_or(BenchError::Missing {
                kind: "program",
                name: names::BENCH_TC_EMPTY_PROGRAM,
            })?
            .try_into()
            .map_err(program(names::BENCH_TC_EMPTY_PROGRAM))?;
        tc.load().map_err(program(names::BENCH_TC_EMPTY_PROGRAM))?;
        let all: Vec<MappingConfig> = (0..size).map(mapping).collect();
        let t = Instant::now();
        dp.tables.apply(&all)?;
        let seconds = t.elapsed().as_secs_f64();
        let memory = dp.tables.memory().total_bytes;
        fill_floor(&mut bench, &all)?;
        progress(&format!(
            "  loaded in {seconds:.2} s, {} MiB of map memory",
            memory >> 20
        ));
        loads.push(LoadRow {
            mappings: size,
            seconds,
            map_memory_bytes: memory,
        });
        let paths = paths(size, opts.distinct, &mut rng);
        let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        let mut out = vec![0u8; 2048];
        for round in 0..opts.rounds {
            for (i, p) in paths.iter().enumerate() {
                // Host orientation is a data-plane setting: on for its paths only.
                dp.tables
                    .set_host(matches!(p.hook, Hook::HostIn | Hook::HostOut))?;
                let mut total = 0u64;
                for f in &p.frames {
                    total += run_one(&dp, &bench, p.hook, f, &mut out)?;
                }
                per_round[i].push(total as f64 / p.frames.len() as f64);
            }
            progress(&format!("  round {}/{} done", round + 1, opts.rounds));
        }
        let ns: Vec<f64> = per_round.into_iter().map(median).collect();
        let (empty, floor, tc_empty) = (ns[0], ns[1], ns[2]);
        for (p, ns) in paths.iter().zip(ns) {
            // A hook's own empty program measures the test run's fixed cost.
            let base = if p.hook.name() == "tc" {
                tc_empty
            } else {
                empty
            };
            rows.push(Row {
                path: p.name,
                hook: p.hook.name(),
                mappings: size,
                ns_per_packet: ns,
                net_ns: ns - base,
                mpps_per_core: 1e3 / ns,
                vs_empty: ns / base,
                vs_floor: ns / floor,
                net_vs_floor: (ns - base) / (floor - empty),
            });
        }
    }
    Ok(Report {
        rows,
        loads,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpu: std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default(),
    })
}

/// The floor's table holds what the product's DNAT table holds: public -> private.
fn fill_floor(bench: &mut Ebpf, mappings: &[MappingConfig]) -> Result<(), BenchError> {
    let mut floor: HashMap<_, u32, NatEntry> =
        HashMap::try_from(bench.map_mut(FLOOR_MAP).ok_or(BenchError::Missing {
            kind: "map",
            name: FLOOR_MAP,
        })?)?;
    for (i, m) in mappings.iter().enumerate() {
        let target = NatTarget {
            addr: u32::from_ne_bytes(m.private.0.addr().octets()),
            id: i as u32 + 1,
        };
        floor.insert(
            u32::from_ne_bytes(m.public.0.addr().octets()),
            NatEntry::new(target),
            0,
        )?;
    }
    Ok(())
}

fn load_xdp(ebpf: &mut Ebpf, name: &'static str) -> Result<(), BenchError> {
    let p: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(BenchError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(program(name))?;
    p.load().map_err(program(name))
}

impl Report {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "kernel {}, {}", self.kernel, self.cpu);
        let _ = writeln!(
            s,
            "{:<28} {:<4} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>11}",
            "path",
            "hook",
            "mappings",
            "ns/pkt",
            "net ns",
            "Mpps/core",
            "x empty",
            "x floor",
            "net x floor"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<28} {:<4} {:>9} {:>8.1} {:>8.1} {:>9.2} {:>8.2} {:>8.2} {:>11.2}",
                r.path,
                r.hook,
                r.mappings,
                r.ns_per_packet,
                r.net_ns,
                r.mpps_per_core,
                r.vs_empty,
                r.vs_floor,
                r.net_vs_floor
            );
        }
        let _ = writeln!(
            s,
            "ns/pkt: the kernel's timing of single runs on distinct packets, which includes the \
             test run's fixed cost (the same hook's empty program shows it); net ns: less that; \
             x empty: against the same hook's empty program; x floor: against one lookup + store."
        );
        let _ = writeln!(s, "\n{:>9} {:>10} {:>12}", "mappings", "load s", "map MiB");
        for l in &self.loads {
            let _ = writeln!(
                s,
                "{:>9} {:>10.2} {:>12.1}",
                l.mappings,
                l.seconds,
                l.map_memory_bytes as f64 / (1 << 20) as f64
            );
        }
        s
    }
}
