//! The fleet: gateways that share one table kept in etcd. `schema` says where each entry
//! lives, `client` connects, `write` is what `ipnat fleet` does, `follow` keeps a running
//! controller at the newest table (a snapshot, then a watch from its revision), and `state`
//! records what it serves for `ipnat status` and the metrics. `health` decides whether the
//! gateway is ready and what it announces, `announce` keeps the routes the routing daemon
//! announces, and `bird` reads the daemon's sessions. `leader` elects each failover shard's leader, and
//! `handover` moves a shard's leadership on purpose.

pub mod announce;
pub mod bird;
mod client;
pub mod failover;
mod follow;
pub mod handover;
pub mod health;
pub mod leader;
mod schema;
mod state;
mod write;

pub use client::{Etcd, FleetError};
pub use follow::{Update, follow};
pub use schema::{FleetTable, Keys, MAPPINGS, Names, Refused, STEER, VERSION, mapping_value};
pub use state::{FleetState, PeerView, unix_ms};
pub use write::{Snapshot, Written, map_add, map_del, read};
