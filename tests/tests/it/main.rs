//! ipnat's integration tests, one binary (each test binary would link the whole controller), a
//! module per area. `cargo xtask test` runs them one at a time: they share bpffs and the kernel.

mod announce;
mod cli;
mod controller;
mod eni;
mod failover;
mod fleet;
mod gateway;
mod host;
mod host_packets;
mod lab;
mod package;
mod packets;
mod properties;
mod providers;
mod state;
mod steering;
