//! The `[etcd]` section: where the fleet's shared table lives (see `crate::fleet`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, validate::invalid};

/// The fleet's etcd cluster. Every gateway of a fleet names the same cluster and prefix.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members (`http://` or, with TLS, `https://`).
    pub endpoints: Vec<String>,
    /// The key prefix the fleet's table lives under (one fleet per prefix).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// etcd user (with `password` or `password_file`), when the cluster has auth on.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// A file holding the password (first line), instead of `password` in the config.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) to verify the members with (TLS on when set).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for clusters that verify clients.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Connecting to a member gives up after this long.
    #[serde(default = "default_dial_timeout_ms")]
    pub dial_timeout_ms: u64,
    /// One request (a read, a transaction) gives up after this long.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

/// The key prefix unless the config says otherwise.
pub const DEFAULT_ETCD_PREFIX: &str = "/ipnat";

fn default_prefix() -> String {
    DEFAULT_ETCD_PREFIX.to_owned()
}

fn default_dial_timeout_ms() -> u64 {
    2_000
}

fn default_request_timeout_ms() -> u64 {
    5_000
}

impl EtcdConfig {
    /// A section with `endpoints` and every default (for commands given `--etcd`).
    pub fn with_endpoints(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: default_prefix(),
            user: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            dial_timeout_ms: default_dial_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid(
                "etcd.endpoints".into(),
                &"[]",
                "at least one member's client URL is needed (e.g. \"http://10.0.0.5:2379\")",
            ));
        }
        let tls = self.ca_file.is_some();
        for (i, e) in self.endpoints.iter().enumerate() {
            let ok = if tls {
                e.starts_with("https://")
            } else {
                e.starts_with("http://")
            };
            if !ok {
                return Err(invalid(
                    format!("etcd.endpoints[{i}]"),
                    e,
                    if tls {
                        "must be an https:// URL (ca_file turns TLS on)"
                    } else {
                        "must be an http:// URL, or https:// with ca_file"
                    },
                ));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 || self.prefix.ends_with('/') {
            return Err(invalid(
                "etcd.prefix".into(),
                &self.prefix,
                "must start with / and not end with one (e.g. \"/ipnat\")",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(invalid(
                "etcd.password_file".into(),
                &"<hidden>",
                "password or password_file, not both",
            ));
        }
        if self.user.is_some() != (self.password.is_some() || self.password_file.is_some()) {
            return Err(invalid(
                "etcd.user".into(),
                &self.user.as_deref().unwrap_or(""),
                "user and a password (password or password_file) go together",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                "etcd.key_file".into(),
                &shown(&self.key_file),
                "cert_file and key_file go together",
            ));
        }
        if self.cert_file.is_some() && !tls {
            return Err(invalid(
                "etcd.cert_file".into(),
                &shown(&self.cert_file),
                "a client certificate needs TLS: set ca_file too",
            ));
        }
        for (key, ms) in [
            ("etcd.dial_timeout_ms", self.dial_timeout_ms),
            ("etcd.request_timeout_ms", self.request_timeout_ms),
        ] {
            if ms == 0 || ms > super::MAX_TIMEOUT_MS {
                return Err(invalid(
                    key.into(),
                    &ms,
                    &format!("must be 1 to {}", super::MAX_TIMEOUT_MS),
                ));
            }
        }
        Ok(())
    }
}

/// An optional path as an error shows it (empty when unset).
fn shown(path: &Option<PathBuf>) -> String {
    path.as_deref()
        .map_or(String::new(), |p| p.display().to_string())
}
