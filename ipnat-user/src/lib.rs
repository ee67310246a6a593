//! ipnat's controller library: config, data plane and counters. The `ipnat` binary is a thin
//! CLI over it.
pub mod bench;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod fleet;
pub mod import;
pub mod metrics;
pub mod netdev;
pub mod providers;
pub mod state;
pub mod system;

/// The product's eBPF object, the programs and maps `ipnat run` loads (empty when built without bpf-linker; see build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipnat"));
/// The benchmarks' eBPF object (`ipnat bench`, the forwarding benchmark): `ipnat run` never
/// loads it. Empty like [`EBPF_OBJECT`] without bpf-linker.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipnat-bench"));
