//! The configuration file (TOML): what to attach where, and the mappings.
//!
//! Every default is documented in `ipnat.example.toml` at the top of the repository. Validation
//! happens before anything is applied; each error names the key and the value.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
}

/// The `aliyun` provider: every address of a secondary NIC (not the instance's primary MAC) is
/// steered out of that NIC via the gateway the metadata gives, re-read every `interval_secs`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AliyunConfig {
    #[serde(default = "default_ecs_metadata")]
    pub endpoint: String,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// As for `aws`.
    #[serde(default = "default_true")]
    pub addresses: bool,
    /// Host orientation: read every NIC's EIPs from the ECS OpenAPI (DescribeNetworkInterfaces)
    /// instead of the metadata alone, which knows only the primary NIC's.
    #[serde(default)]
    pub openapi: bool,
    /// The ECS OpenAPI endpoint; default `https://ecs-vpc.<region>.aliyuncs.com` (reachable
    /// from inside the VPC), the region from the metadata.
    #[serde(default)]
    pub api_endpoint: Option<String>,
    /// An access key for the OpenAPI (both or neither); default: the environment
    /// (`ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET`), else the instance's
    /// RAM role.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub access_key_secret: Option<String>,
    /// The RAM role whose temporary credentials the metadata serves; default: the first one
    /// it lists.
    #[serde(default)]
    pub ram_role: Option<String>,
}

fn default_ecs_metadata() -> String {
    "http://100.100.100.200".to_owned()
}

impl Config {
    /// Whether the configured provider also manages the OS addresses.
    pub fn provider_addresses(&self) -> bool {
        self.aws
            .as_ref()
            .map(|a| a.addresses)
            .or(self.aliyun.as_ref().map(|a| a.addresses))
            == Some(true)
    }

    /// The configured provider, if any (at most one: see [`Config::validate`]).
    pub fn provider(&self) -> Option<Provider<'_>> {
        if let Some(a) = &self.aws {
            return Some(Provider {
                cloud: Cloud::Aws,
                endpoint: &a.endpoint,
                interval_secs: a.interval_secs,
                timeout_ms: a.timeout_ms,
            });
        }
        self.aliyun.as_ref().map(|a| Provider {
            cloud: Cloud::Aliyun,
            endpoint: &a.endpoint,
            interval_secs: a.interval_secs,
            timeout_ms: a.timeout_ms,
        })
    }
}

/// The clouds ipnat syncs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Aliyun,
}

impl Cloud {
    /// Its config section's name (and the provider's name in status and metrics).
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Aliyun => "aliyun",
        }
    }
}

/// What every provider section has: which cloud, its metadata service, the sync's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provider<'a> {
    pub cloud: Cloud,
    /// The metadata service.
    pub endpoint: &'a str,
    pub interval_secs: u64,
    /// Per request.
    pub timeout_ms: u64,
}

/// The `aws` provider: every address of a secondary NIC (device number > 0) is steered out of
/// that NIC via its subnet's router, as the metadata says, re-read every `interval_secs`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// The instance metadata service.
    #[serde(default = "default_imds")]
    pub endpoint: String,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Per request.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Put the NICs' addresses on the interfaces, and remove those ipnat added when the
    /// metadata no longer lists them (never one ipnat did not add).
    #[serde(default = "default_true")]
    pub addresses: bool,
    /// Gateway orientation: read the backends from the EC2 API (DescribeNetworkInterfaces):
    /// each NIC in the gateway's VPC tagged `backend_tag` = an EIP associated with one of the
    /// gateway's addresses is mapped from that address to the NIC's primary private address.
    #[serde(default)]
    pub api: bool,
    /// The EC2 endpoint; default `https://ec2.<region>.amazonaws.com`, the region from the
    /// metadata.
    #[serde(default)]
    pub api_endpoint: Option<String>,
    /// The tag on a backend's NIC whose value is the EIP it is served by.
    #[serde(default = "default_backend_tag")]
    pub backend_tag: String,
    /// An access key (both or neither); default: the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else the instance profile.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

fn default_backend_tag() -> String {
    "ipnat:eip".to_owned()
}

fn default_imds() -> String {
    "http://169.254.169.254".to_owned()
}

fn default_interval() -> u64 {
    30
}

fn default_timeout_ms() -> u64 {
    2000
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

/// An IPv4 address (`198.51.100.10`, a /32) or a network block (`120.0.0.0/25`), written as a
/// string in the config; a block's host bits must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block(pub Ipv4Net);

impl Block {
    pub fn addr(self) -> Ipv4Addr {
        self.0.network()
    }

    pub fn prefix_len(self) -> u8 {
        self.0.prefix_len()
    }

    /// First and last address, as integers.
    pub fn range(self) -> (u32, u32) {
        (u32::from(self.0.network()), u32::from(self.0.broadcast()))
    }

    pub fn is_host(self) -> bool {
        self.0.prefix_len() == 32
    }
}

impl From<Ipv4Addr> for Block {
    fn from(a: Ipv4Addr) -> Self {
        Block(Ipv4Net::from(a))
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl std::str::FromStr for Block {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let net = if s.contains('/') {
            s.parse::<Ipv4Net>()
                .map_err(|_| format!("{s:?} is not an IPv4 address or block (a.b.c.d/len)"))?
        } else {
            Ipv4Net::from(
                s.parse::<Ipv4Addr>()
                    .map_err(|_| format!("{s:?} is not an IPv4 address"))?,
            )
        };
        if net.prefix_len() == 0 {
            return Err(format!("{s:?}: a /0 block would translate everything"));
        }
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set; the block is {}",
                net.trunc()
            ));
        }
        Ok(Block(net))
    }
}

impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Block {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The first pair of overlapping blocks in `blocks` (index, block), if any. O(n log n).
fn first_overlap(blocks: &[(usize, Block)]) -> Option<((usize, Block), (usize, Block))> {
    let mut sorted: Vec<(usize, Block)> = blocks.to_vec();
    sorted.sort_by_key(|(i, b)| (b.range().0, *i));
    let mut widest = *sorted.first()?;
    for &cur in &sorted[1..] {
        if cur.1.range().0 <= widest.1.range().1 {
            let (a, b) = if widest.0 < cur.0 {
                (widest, cur)
            } else {
                (cur, widest)
            };
            return Some((a, b));
        }
        if cur.1.range().1 > widest.1.range().1 {
            widest = cur;
        }
    }
    None
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
    fn validate_steering(&self) -> Result<(), ConfigError> {
        for (i, r) in self.steering.iter().enumerate() {
            if !self.interfaces.iter().any(|f| f.name == r.interface) {
                return Err(ConfigError::Invalid {
                    key: format!("steer[{i}].interface"),
                    value: r.interface.clone(),
                    why: "is not one of the [[interface]]s (ipnat steers on the interfaces it is attached to)".into(),
                });
            }
        }
        validate_steer_rules(&self.steering, &|i| format!("steer[{i}]"))
    }

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

    /// Checks everything that can be checked without touching the kernel.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key: String, value: &dyn std::fmt::Display, why: &str| ConfigError::Invalid {
                key,
                value: value.to_string(),
                why: why.to_owned(),
            };
        if self.interfaces.is_empty() {
            return Err(invalid(
                "interface".into(),
                &"[]",
                "at least one [[interface]] with a name is needed",
            ));
        }
        let mut names = HashMap::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let key = format!("interface[{i}].name");
            if iface.name.is_empty() || iface.name.len() >= libc::IFNAMSIZ {
                return Err(invalid(key, &iface.name, "not a valid interface name"));
            }
            if let Some(j) = names.insert(iface.name.as_str(), i) {
                return Err(invalid(
                    key,
                    &iface.name,
                    &format!("already listed as interface[{j}]"),
                ));
            }
        }
        crate::state::check_pin_path(&self.pin_path)
            .map_err(|why| invalid("pin_path".into(), &self.pin_path.display(), &why))?;
        validate_mappings(&self.mappings, &|i| format!("mapping[{i}]"))?;
        self.validate_steering()?;
        if self.internal.len() > ipnat_common::MAX_INTERNAL_PREFIXES as usize {
            return Err(invalid(
                "internal".into(),
                &self.internal.len(),
                &format!("more than {} prefixes", ipnat_common::MAX_INTERNAL_PREFIXES),
            ));
        }
        if self.orientation == Orientation::Host {
            for (i, m) in self.mappings.iter().enumerate() {
                let internal: Vec<Ipv4Net> = self.internal.iter().map(|b| b.0).collect();
                validate_host_public(&internal, m.public).map_err(|e| match e {
                    ConfigError::Invalid { value, why, .. } => ConfigError::Invalid {
                        key: format!("mapping[{i}].public"),
                        value,
                        why,
                    },
                    other => other,
                })?;
            }
        }
        if self.aws.is_some() && self.aliyun.is_some() {
            return Err(invalid(
                "aliyun".into(),
                &"[aliyun]",
                "one provider at a time: the config also has [aws]",
            ));
        }
        if let Some(Provider {
            cloud,
            endpoint,
            interval_secs: interval,
            timeout_ms: timeout,
        }) = self.provider()
        {
            let name = cloud.name();
            if !endpoint.starts_with("http://") {
                return Err(invalid(
                    format!("{name}.endpoint"),
                    &endpoint,
                    "must be an http:// URL (the metadata service does not speak TLS)",
                ));
            }
            if interval == 0 || timeout == 0 {
                return Err(invalid(
                    format!("{name}.interval_secs"),
                    &interval,
                    "interval and timeout must be positive",
                ));
            }
            // Bounded so that every deadline computed from them (backoff: four intervals)
            // stays representable.
            if interval > MAX_INTERVAL_SECS {
                return Err(invalid(
                    format!("{name}.interval_secs"),
                    &interval,
                    &format!("at most {MAX_INTERVAL_SECS} (a day)"),
                ));
            }
            if timeout > MAX_TIMEOUT_MS {
                return Err(invalid(
                    format!("{name}.timeout_ms"),
                    &timeout,
                    &format!("at most {MAX_TIMEOUT_MS} (ten minutes)"),
                ));
            }
        }
        if let Some(a) = &self.aws {
            if a.access_key_id.is_some() != a.secret_access_key.is_some() {
                return Err(invalid(
                    "aws.secret_access_key".into(),
                    &"<hidden>",
                    "access_key_id and secret_access_key go together",
                ));
            }
            if a.api && self.orientation == Orientation::Host {
                return Err(invalid(
                    "aws.api".into(),
                    &a.api,
                    "the EC2 API serves gateway orientation (host orientation reads its EIPs from the metadata)",
                ));
            }
        }
        if let Some(a) = &self.aliyun {
            if a.access_key_id.is_some() != a.access_key_secret.is_some() {
                return Err(invalid(
                    "aliyun.access_key_secret".into(),
                    &"<hidden>",
                    "access_key_id and access_key_secret go together",
                ));
            }
            if let Some(e) = &a.api_endpoint
                && !(e.starts_with("https://") || e.starts_with("http://"))
            {
                return Err(invalid(
                    "aliyun.api_endpoint".into(),
                    e,
                    "must be an https:// URL",
                ));
            }
        }
        if self.metrics_listen != "off"
            && self.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics_listen".into(),
                &self.metrics_listen,
                "not an address:port (e.g. 127.0.0.1:9469), or \"off\"",
            ));
        }
        if self.max_mappings == 0 || self.max_mappings > MAX_MAPPINGS_LIMIT {
            return Err(invalid(
                "max_mappings".into(),
                &self.max_mappings,
                &format!("must be 1 to {MAX_MAPPINGS_LIMIT}"),
            ));
        }
        if self.mappings.len() > self.max_mappings as usize {
            return Err(invalid(
                "mapping".into(),
                &self.mappings.len(),
                &format!(
                    "more mappings than max_mappings = {}; raise it",
                    self.max_mappings
                ),
            ));
        }
        Ok(())
    }
}

/// Checks a set of steering rules on their own (gateway inside the subnet, a subnet that is a
/// block, sources that do not overlap, the table's capacity); `name(i)` names rule `i` in
/// the errors (e.g. `steer[3]`).
pub fn validate_steer_rules(
    rules: &[SteerConfig],
    name: &dyn Fn(usize) -> String,
) -> Result<(), ConfigError> {
    let invalid = |key: String, value: &dyn std::fmt::Display, why: &str| ConfigError::Invalid {
        key,
        value: value.to_string(),
        why: why.to_owned(),
    };
    for (i, r) in rules.iter().enumerate() {
        if !r.subnet.0.contains(&r.gateway) {
            return Err(invalid(
                format!("{}.gateway", name(i)),
                &r.gateway,
                &format!("is outside the subnet {}", r.subnet),
            ));
        }
        if r.subnet.is_host() {
            return Err(invalid(
                format!("{}.subnet", name(i)),
                &r.subnet,
                "must be the interface's subnet (a block), not one address",
            ));
        }
    }
    let sources: Vec<(usize, Block)> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r.source))
        .collect();
    if let Some(((j, a), (i, b))) = first_overlap(&sources) {
        return Err(invalid(
            format!("{}.source", name(i)),
            &b,
            &format!("overlaps {a} of {}", name(j)),
        ));
    }
    if rules.len() > ipnat_common::MAX_STEER_RULES as usize {
        return Err(invalid(
            "steer".into(),
            &rules.len(),
            &format!("more than {} rules", ipnat_common::MAX_STEER_RULES),
        ));
    }
    Ok(())
}

/// Host orientation: a public address must lie outside the internal prefixes. Inside one it
/// would be reached untranslated from that prefix while the cloud translates it from outside:
/// one address, two meanings. (The private side belongs there; the public one does not.)
pub fn validate_host_public(internal: &[Ipv4Net], public: Block) -> Result<(), ConfigError> {
    match internal
        .iter()
        .find(|p| p.contains(&public.0) || public.0.contains(*p))
    {
        Some(p) => Err(ConfigError::Invalid {
            key: "public".into(),
            value: public.to_string(),
            why: format!(
                "is inside the internal prefix {p}: in host orientation the public side is the EIP the cloud translates, outside the internal prefixes"
            ),
        }),
        None => Ok(()),
    }
}

/// The longest sync interval accepted.
pub const MAX_INTERVAL_SECS: u64 = 86_400;
/// The longest cloud call timeout accepted.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// Why no address of `block` may be translated, if one may not: the unspecified and the
/// broadcast address, loopback and multicast space. One rule for single addresses and blocks
/// (a block is refused when it holds any such address).
pub fn not_unicast(block: Block) -> Option<&'static str> {
    const SPECIAL: [(Ipv4Addr, u8, &str); 4] = [
        (Ipv4Addr::UNSPECIFIED, 32, "the unspecified address 0.0.0.0"),
        (
            Ipv4Addr::BROADCAST,
            32,
            "the broadcast address 255.255.255.255",
        ),
        (
            Ipv4Addr::new(127, 0, 0, 0),
            8,
            "loopback space (127.0.0.0/8)",
        ),
        (
            Ipv4Addr::new(224, 0, 0, 0),
            4,
            "multicast space (224.0.0.0/4)",
        ),
    ];
    SPECIAL.iter().find_map(|&(addr, len, what)| {
        let special = Ipv4Net::new(addr, len).expect("a valid prefix");
        (block.0.contains(&special.network()) || special.contains(&block.0.network()))
            .then_some(what)
    })
}

/// Checks a set of mappings on their own (addresses, sizes, overlaps, capacity of the block
/// tables); `name(i)` names mapping `i` in the errors (e.g. `mapping[3]`).
pub fn validate_mappings(
    mappings: &[MappingConfig],
    name: &dyn Fn(usize) -> String,
) -> Result<(), ConfigError> {
    let invalid = |key: String, value: &dyn std::fmt::Display, why: &str| ConfigError::Invalid {
        key,
        value: value.to_string(),
        why: why.to_owned(),
    };
    let mut prefixes = 0usize;
    for (i, m) in mappings.iter().enumerate() {
        for (field, block) in [("public", m.public), ("private", m.private)] {
            if let Some(what) = not_unicast(block) {
                return Err(invalid(
                    format!("{}.{field}", name(i)),
                    &block,
                    &format!("must be unicast: it holds {what}"),
                ));
            }
        }
        if m.public.prefix_len() != m.private.prefix_len() {
            return Err(invalid(
                format!("{}.private", name(i)),
                &m.private,
                &format!(
                    "is a /{} but the public side {} is a /{}: blocks map host bits one \
                     to one and must be the same size",
                    m.private.prefix_len(),
                    m.public,
                    m.public.prefix_len()
                ),
            ));
        }
        if m.public == m.private {
            return Err(invalid(
                format!("{}.private", name(i)),
                &m.private,
                "equals the public address",
            ));
        }
        if !m.public.is_host() {
            prefixes += 1;
        }
    }
    let publics: Vec<(usize, Block)> = mappings
        .iter()
        .enumerate()
        .map(|(i, m)| (i, m.public))
        .collect();
    let privates: Vec<(usize, Block)> = mappings
        .iter()
        .enumerate()
        .map(|(i, m)| (i, m.private))
        .collect();
    for (side, blocks) in [("public", &publics), ("private", &privates)] {
        if let Some(((j, a), (i, b))) = first_overlap(blocks) {
            let why = if a == b {
                format!("already mapped by {}", name(j))
            } else {
                format!("overlaps {a} of {}", name(j))
            };
            return Err(invalid(format!("{}.{side}", name(i)), &b, &why));
        }
    }
    // No address may be public in one mapping and private in another: the two
    // translations would chain and neither side could tell which one applies.
    let n = mappings.len();
    let both: Vec<(usize, Block)> = publics
        .iter()
        .copied()
        .chain(privates.iter().map(|&(i, b)| (i + n, b)))
        .collect();
    if let Some(((x, a), (y, b))) = first_overlap(&both) {
        // One of the two is a public block, the other a private one.
        let ((pi, pb), (qi, qb)) = if x < n {
            ((x, a), (y - n, b))
        } else {
            ((y, b), (x - n, a))
        };
        return Err(invalid(
            format!("{}.public", name(pi)),
            &pb,
            &format!("overlaps the private side {qb} of {}", name(qi)),
        ));
    }
    if prefixes > ipnat_common::MAX_PREFIXES as usize {
        return Err(invalid(
            "mapping".into(),
            &prefixes,
            &format!("more than {} block mappings", ipnat_common::MAX_PREFIXES),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[interface]]
        name = "eth0"
        [[mapping]]
        public = "198.51.100.10"
        private = "10.0.1.10"
    "#;

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
        assert_eq!(c.interfaces[0].name, "eth0");
        assert_eq!(c.mappings[0].public, Ipv4Addr::new(198, 51, 100, 10).into());
        assert!(c.fast_path);
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn blocks_in_non_unicast_space_are_refused_like_single_addresses() {
        for (public, private) in [
            ("127.0.0.0/24", "10.0.2.0/24"),
            ("224.0.0.0/24", "10.0.2.0/24"),
            ("0.0.0.0/8", "10.0.0.0/8"),
            ("255.255.255.0/24", "10.0.2.0/24"),
            ("198.51.100.0/24", "127.0.1.0/24"),
            ("0.0.0.0", "10.0.2.1"),
            ("239.1.2.3", "10.0.2.1"),
        ] {
            let text = format!(
                "[[interface]]\nname = \"eth0\"\n[[mapping]]\npublic = \"{public}\"\nprivate = \"{private}\"\n"
            );
            let e = err(&text);
            assert!(e.contains("must be unicast"), "{public} <-> {private}: {e}");
        }
        let text = "[[interface]]\nname = \"eth0\"\n[[mapping]]\npublic = \"120.0.0.0/25\"\nprivate = \"10.0.1.0/25\"\n";
        Config::parse(text).unwrap();
    }

    #[test]
    fn durations_are_bounded() {
        for (key, value, want) in [
            ("interval_secs", "9223372036854775807", "aws.interval_secs"),
            ("interval_secs", "86401", "aws.interval_secs"),
            ("timeout_ms", "9223372036854775807", "aws.timeout_ms"),
        ] {
            let text = format!("{GOOD}\n[aws]\n{key} = {value}\n");
            let e = err(&text);
            assert!(
                e.contains(want) && e.contains("at most"),
                "{key} = {value}: {e}"
            );
        }
        Config::parse(&format!("{GOOD}\n[aws]\ninterval_secs = 86400\n")).unwrap();
    }

    #[test]
    fn rejects_duplicates_and_chains_naming_the_key() {
        let dup_public =
            format!("{GOOD}\n[[mapping]]\npublic = \"198.51.100.10\"\nprivate = \"10.0.1.11\"\n");
        assert_eq!(
            err(&dup_public),
            "mapping[1].public = \"198.51.100.10\": already mapped by mapping[0]"
        );
        let dup_private =
            format!("{GOOD}\n[[mapping]]\npublic = \"198.51.100.11\"\nprivate = \"10.0.1.10\"\n");
        assert!(err(&dup_private).starts_with("mapping[1].private = \"10.0.1.10\""));
        let chain =
            format!("{GOOD}\n[[mapping]]\npublic = \"10.0.1.10\"\nprivate = \"10.0.1.12\"\n");
        assert!(
            err(&chain).contains("overlaps the private side 10.0.1.10 of mapping[0]"),
            "{}",
            err(&chain)
        );
    }

    #[test]
    fn rejects_garbage_and_unknown_keys() {
        assert!(
            err("[[mapping]]\npublic = \"1.2.3\"\nprivate = \"10.0.0.1\"").contains("not valid")
        );
        assert!(err(&format!("{GOOD}\nbogus = 1\n")).contains("unknown field"));
        assert!(err("").starts_with("interface"));
        let mcast = "[[interface]]\nname=\"a\"\n[[mapping]]\npublic = \"224.0.0.1\"\nprivate = \"10.0.0.1\"";
        assert!(err(mcast).contains("unicast"));
    }

    fn with(public: &str, private: &str) -> String {
        format!("{GOOD}\n[[mapping]]\npublic = \"{public}\"\nprivate = \"{private}\"\n")
    }

    #[test]
    fn block_mappings_are_checked_for_size_host_bits_and_overlaps() {
        let c = Config::parse(&with("120.0.0.0/25", "10.0.2.0/25")).unwrap();
        assert_eq!(c.mappings[1].public.to_string(), "120.0.0.0/25");
        assert_eq!(c.mappings[1].private.prefix_len(), 25);
        assert_eq!(
            err(&with("120.0.0.0/25", "10.0.2.0/24")),
            "mapping[1].private = \"10.0.2.0/24\": is a /24 but the public side 120.0.0.0/25 \
             is a /25: blocks map host bits one to one and must be the same size"
        );
        assert!(err(&with("120.0.0.1/25", "10.0.2.0/25")).contains("host bits set"));
        assert!(err(&with("0.0.0.0/0", "0.0.0.0/0")).contains("/0"));
        // A block over an existing single mapping, on either side.
        assert_eq!(
            err(&with("198.51.100.0/24", "10.0.2.0/24")),
            "mapping[1].public = \"198.51.100.0/24\": overlaps 198.51.100.10 of mapping[0]"
        );
        assert!(
            err(&with("120.0.0.0/24", "10.0.1.0/24"))
                .starts_with("mapping[1].private = \"10.0.1.0/24\"")
        );
        // A public block that covers a private address.
        assert!(
            err(&with("10.0.0.0/16", "172.16.0.0/16"))
                .contains("overlaps the private side 10.0.1.10 of mapping[0]")
        );
    }

    #[test]
    fn the_example_parses_and_states_the_defaults() {
        let example = Config::parse(include_str!("../../ipnat.example.toml")).unwrap();
        let minimal = Config::parse(GOOD).unwrap();
        assert_eq!(example.pin_path, minimal.pin_path);
        assert_eq!(example.fast_path, minimal.fast_path);
        assert_eq!(example.metrics_listen, minimal.metrics_listen);
        assert_eq!(example.max_mappings, minimal.max_mappings);
        assert_eq!(example.orientation, minimal.orientation);
        assert_eq!(example.orientation, Orientation::Gateway);
        assert_eq!(example.internal, minimal.internal);
    }

    #[test]
    fn host_orientation_keeps_public_addresses_outside_the_internal_prefixes() {
        let host = format!("orientation = \"host\"\n{GOOD}");
        let c = Config::parse(&host).unwrap();
        assert_eq!(c.orientation, Orientation::Host);
        assert_eq!(c.internal.len(), DEFAULT_INTERNAL.len());
        let inside = format!(
            "orientation = \"host\"\n{}",
            with("100.64.1.1", "10.0.1.20")
        );
        assert_eq!(
            err(&inside),
            "mapping[1].public = \"100.64.1.1\": is inside the internal prefix 100.64.0.0/10: \
             in host orientation the public side is the EIP the cloud translates, outside the \
             internal prefixes"
        );
        // The same mapping is fine on a gateway, and with narrower internal prefixes.
        Config::parse(&with("100.64.1.1", "10.0.1.20")).unwrap();
        Config::parse(&format!(
            "orientation = \"host\"\ninternal = [\"10.0.0.0/16\"]\n{}",
            with("100.64.1.1", "10.0.1.20")
        ))
        .unwrap();
        assert!(err(&format!("orientation = \"router\"\n{GOOD}")).contains("unknown variant"));
        assert!(err(&format!("internal = [\"10.0.0.1/8\"]\n{GOOD}")).contains("host bits"));
    }

    #[test]
    fn steering_rules_are_checked() {
        let base = "[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth1\"\n";
        let rule = |src: &str, iface: &str, gw: &str, subnet: &str| {
            format!(
                "[[steer]]\nsource = \"{src}\"\ninterface = \"{iface}\"\ngateway = \"{gw}\"\nsubnet = \"{subnet}\"\n"
            )
        };
        let good = format!(
            "{base}{}",
            rule("10.0.1.20/30", "eth1", "10.0.1.1", "10.0.1.0/24")
        );
        assert_eq!(Config::parse(&good).unwrap().steering[0].interface, "eth1");
        let e = |t: String| Config::parse(&t).unwrap_err().to_string();
        assert!(
            e(format!(
                "{base}{}",
                rule("10.0.1.20", "eth9", "10.0.1.1", "10.0.1.0/24")
            ))
            .starts_with("steer[0].interface = \"eth9\"")
        );
        assert!(
            e(format!(
                "{base}{}",
                rule("10.0.1.20", "eth1", "10.0.2.1", "10.0.1.0/24")
            ))
            .contains("outside the subnet 10.0.1.0/24")
        );
        assert!(
            e(format!(
                "{base}{}{}",
                rule("10.0.1.20/30", "eth1", "10.0.1.1", "10.0.1.0/24"),
                rule("10.0.1.21", "eth1", "10.0.1.1", "10.0.1.0/24")
            ))
            .contains("steer[1].source = \"10.0.1.21\": overlaps 10.0.1.20/30 of steer[0]")
        );
    }
}
