//! ipnat's controller library: config, data plane and counters. The `ipnat` binary is a thin
//! CLI over it.
pub mod bench;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod host;
pub mod import;
pub mod metrics;
pub mod netdev;
pub mod providers;
pub mod state;

/// The compiled eBPF object (empty when built without bpf-linker; see build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipnat"));
