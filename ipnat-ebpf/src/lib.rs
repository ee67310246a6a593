//! ipnat's data plane, stateless one-to-one IPv4 NAT: the code every program shares. The
//! product's programs are in `main.rs` (the object `ipnat run` loads), the benchmarks' in
//! `bin/bench.rs` (a second object, loaded only by `ipnat bench` and the forwarding benchmark).
//!
//! One file per concern, each using only those listed before it:
//! * `zero`: all-zero values without the compiler's byte-at-a-time memset.
//! * `csum`: RFC 1624 arithmetic and the L4 checksum table (the UDP zero rule).
//! * `ctx`: the `Packet` trait, one implementation per hook (XDP, TC).
//! * `parse`: Ethernet, VLAN and IPv4 headers, named offsets, the header validity rules.
//! * `dir`: which address a hook translates, with which table.
//! * `maps`: every map of the product, their lookups and counters.
//! * `icmp`: ICMP errors' quoted packets (RFC 5508).
//! * `nat`: the translation, one rewrite for L3 and L4.
//! * `fwd`: the FIB and the gateway's fast path.
//! * `steer`: source-based steering of what the kernel sends.
//! * `host`: host orientation's receive path and its socket lookups.
#![no_std]
// Atomic adds on shared counters (built with nightly for the BPF target, as aya requires).
#![allow(internal_features)]
#![feature(core_intrinsics)]

pub mod csum;
pub mod ctx;
pub mod dir;
pub mod fwd;
pub mod host;
pub mod icmp;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod steer;
pub mod zero;
