//! The cloud provider sections (`[aws]`, `[aliyun]`) and what the controller reads of them.
//! The two sections repeat their four common keys: serde's `flatten` cannot be combined with
//! `deny_unknown_fields`, which catches typos.

use serde::{Deserialize, Serialize};

use super::{Config, default_true};

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
    /// The VPC OpenAPI endpoint (`[failover]`'s HaVips); default
    /// `https://vpc-vpc.<region>.aliyuncs.com` (reachable from inside the VPC).
    #[serde(default)]
    pub vpc_api_endpoint: Option<String>,
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
