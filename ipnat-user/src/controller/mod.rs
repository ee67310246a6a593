//! The controller behind `ipnat run`: it owns one data plane (its pins, lock and records),
//! applies the config and the provider's syncs to its tables, and reloads on SIGHUP or when
//! the config file changes.

mod apply;
mod failover;
mod fleet;
mod health;
pub mod policy;
mod run;

pub use run::run;

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
