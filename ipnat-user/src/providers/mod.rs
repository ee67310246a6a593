//! Where mappings and steering rules come from besides the config file: the clouds' metadata
//! and APIs. `client` (HTTP, metadata, errors) and `nic` (what NICs ask of the host) are shared by both clouds, `sync` runs one sync with whichever the config
//! names; `aws`/`ec2` and `aliyun`/`aliyun_api` are each cloud's metadata and API; `takeover` moves a failover shard onto this gateway.
pub mod aliyun;
pub mod aliyun_api;
pub mod aws;
pub mod client;
pub mod ec2;
pub mod eni;
pub mod nic;
pub mod sync;
pub mod takeover;

pub use client::{Assign, MetadataClient, MetadataError, percent_encode};
pub use sync::{SyncError, SyncState, Synced, jitter, retry_delay, sync};
