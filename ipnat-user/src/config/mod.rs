//! The configuration file (TOML): what to attach where, and the mappings.
//!
//! Every default is documented in `ipnat.example.toml` at the top of the repository. Validation
//! happens before anything is applied; each error names the key and the value.
//!
//! `mod.rs` holds the file's shape and its loading, `cloud.rs` the provider sections,
//! `block.rs` the address blocks, `validate.rs` every check.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod announce;
mod block;
mod cloud;
mod etcd;
mod failover;
#[cfg(test)]
mod tests;
mod validate;

pub use announce::{AnnounceConfig, DEFAULT_ANNOUNCE_PROTOCOL, DEFAULT_ANNOUNCE_TABLE};
pub use block::Block;
pub use cloud::{AliyunConfig, AwsConfig, Cloud, Provider};
pub use etcd::{DEFAULT_ETCD_PREFIX, EtcdConfig};
pub use failover::{EipConfig, FailoverConfig, RouteConfig, ShardConfig};
pub use validate::*;

/// Where the maps are pinned unless the config says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/ipnat";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// bpffs directory for ipnat's pinned maps (created 0700, root only).
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// Interfaces to attach to: XDP on receive (destination public -> private) and TC on
    /// transmit (source private -> public).
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
    /// Forward translated packets from XDP/TC (`bpf_fib_lookup` + redirect), bypassing the
    /// kernel's forwarding path and its FORWARD chain; false: every packet goes through the
    /// kernel (destination translated before routing, source at transmit).
    #[serde(default = "default_true")]
    pub fast_path: bool,
    /// Where `ipnat run` serves Prometheus metrics (`/metrics`), or `off`.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
    /// Where ipnat sits: between the outside and the private hosts (`gateway`), or on the host
    /// that owns the private addresses, with the public ones local (`host`).
    #[serde(default)]
    pub orientation: Orientation,
    /// Host orientation: peers in these prefixes (the VPC, peered networks, link-local, the
    /// cloud's service range) talk to the private addresses, untranslated.
    #[serde(default = "default_internal")]
    pub internal: Vec<Block>,
    /// Room in the mapping tables (and their counters), fixed when the data plane loads.
    #[serde(default = "default_max_mappings")]
    pub max_mappings: u32,
    /// One-to-one mappings.
    #[serde(default, rename = "mapping")]
    pub mappings: Vec<MappingConfig>,
    /// Source-based steering rules (what rc.local's `ip rule from ... lookup N` did).
    #[serde(default, rename = "steer")]
    pub steering: Vec<SteerConfig>,
    /// Sync steering rules from the EC2 instance metadata (absent: off).
    #[serde(default)]
    pub aws: Option<AwsConfig>,
    /// Sync steering rules from the ECS instance metadata (absent: off).
    #[serde(default)]
    pub aliyun: Option<AliyunConfig>,
    /// Follow the fleet's shared table in etcd (absent: off). Its mappings and steering rules
    /// join the config's own, which win for the same addresses.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    /// Tell the routing daemon what this gateway serves while it is ready (absent: off).
    #[serde(default)]
    pub announce: Option<AnnounceConfig>,
    /// Inside a VPC: hold each shard's addresses and routes while this gateway leads it, and
    /// take them over through the cloud's API when it becomes leader (absent: off).
    #[serde(default)]
    pub failover: Option<FailoverConfig>,
}

/// Packets from `source` leave by `interface`: to the destination itself when it is in
/// `subnet`, else to `gateway`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SteerConfig {
    /// A source address or block (e.g. a NIC's secondary addresses).
    pub source: Block,
    /// The interface that owns those addresses (must be one of the `[[interface]]`s).
    pub interface: String,
    /// Next hop for destinations outside `subnet` (the subnet's gateway; on a VPC, the network
    /// address + 1).
    pub gateway: Ipv4Addr,
    /// The interface's subnet: destinations inside it are reached directly.
    pub subnet: Block,
}

/// Where ipnat sits relative to the mappings' private addresses.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Orientation {
    /// A gateway: public -> private on the way in (XDP), private -> public on the way out,
    /// and the packets forwarded to and from the private hosts.
    #[default]
    Gateway,
    /// The host that owns the private addresses: each public address (the EIP the cloud
    /// translates to the private one) is put on `lo`, applications bind to it, and TC
    /// translates private -> public on receive and public -> private on transmit, except with
    /// internal peers and for sockets bound to the private address.
    Host,
}

impl Orientation {
    pub fn name(self) -> &'static str {
        match self {
            Orientation::Gateway => "gateway",
            Orientation::Host => "host",
        }
    }
}

/// The internal prefixes unless the config says otherwise: every private-use range
/// (RFC 1918), the shared address space clouds use for their services (100.64.0.0/10, e.g.
/// Alibaba Cloud's metadata and DNS), and link-local (169.254.0.0/16, the metadata service).
pub const DEFAULT_INTERNAL: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
];

fn default_internal() -> Vec<Block> {
    DEFAULT_INTERNAL
        .iter()
        .map(|s| s.parse().expect("valid default"))
        .collect()
}

/// Where metrics are served unless the config says otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9469";

fn default_metrics_listen() -> String {
    DEFAULT_METRICS_LISTEN.to_owned()
}

fn default_max_mappings() -> u32 {
    ipnat_common::MAX_MAPPINGS
}

/// The largest `max_mappings` accepted.
pub const MAX_MAPPINGS_LIMIT: u32 = 16 * 1024 * 1024;

fn default_true() -> bool {
    true
}

fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    /// Native XDP on receive where the driver has it (the fast path); false: TC on receive
    /// instead, as on a driver without native XDP (keeps the NIC's receive offloads, e.g.
    /// LRO on virtio_net; forwarding then runs in TC). Changing it needs `ipnat down` first.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub xdp: bool,
}

fn is_true(v: &bool) -> bool {
    *v
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// The address the traffic carries on the outside (an EIP, or the secondary private IP a
    /// NAT-mode EIP is bound to), or a block of them (`120.0.0.0/25`).
    pub public: Block,
    /// The address of the host behind the gateway, or a block of the same size: host bits are
    /// kept (`120.0.0.7` <-> `10.0.1.7` for `120.0.0.0/25` <-> `10.0.1.0/25`), like NETMAP.
    pub private: Block,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value:?}: {why}")]
    Invalid {
        key: String,
        value: String,
        why: String,
    },
}

impl Config {
    /// The metrics address, unless metrics are off.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listen.parse().ok()
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }
}
