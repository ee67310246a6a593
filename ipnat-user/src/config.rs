//! The configuration file (TOML): what to attach where, and the mappings.
//!
//! Every default is documented in `ipnat.example.toml` at the top of the repository. Validation
//! happens before anything is applied; each error names the key and the value.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

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
    /// One-to-one mappings.
    #[serde(default, rename = "mapping")]
    pub mappings: Vec<MappingConfig>,
}

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
    /// NAT-mode EIP is bound to).
    pub public: Ipv4Addr,
    /// The address of the host behind the gateway.
    pub private: Ipv4Addr,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
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
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
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
        let mut publics = HashMap::new();
        let mut privates = HashMap::new();
        for (i, m) in self.mappings.iter().enumerate() {
            for (field, addr) in [("public", m.public), ("private", m.private)] {
                if addr.is_unspecified()
                    || addr.is_broadcast()
                    || addr.is_multicast()
                    || addr.is_loopback()
                {
                    return Err(invalid(
                        format!("mapping[{i}].{field}"),
                        &addr,
                        "must be a unicast address",
                    ));
                }
            }
            if m.public == m.private {
                return Err(invalid(
                    format!("mapping[{i}].private"),
                    &m.private,
                    "equals the public address",
                ));
            }
            if let Some(j) = publics.insert(m.public, i) {
                return Err(invalid(
                    format!("mapping[{i}].public"),
                    &m.public,
                    &format!("already mapped by mapping[{j}]"),
                ));
            }
            if let Some(j) = privates.insert(m.private, i) {
                return Err(invalid(
                    format!("mapping[{i}].private"),
                    &m.private,
                    &format!("already mapped by mapping[{j}]"),
                ));
            }
        }
        // An address may not be public in one mapping and private in another: the two
        // translations would chain and neither side could tell which one applies.
        for (i, m) in self.mappings.iter().enumerate() {
            if let Some(j) = privates.get(&m.public) {
                return Err(invalid(
                    format!("mapping[{i}].public"),
                    &m.public,
                    &format!("is the private address of mapping[{j}]"),
                ));
            }
        }
        if self.mappings.len() > ipnat_common::MAX_MAPPINGS as usize {
            return Err(invalid(
                "mapping".into(),
                &self.mappings.len(),
                &format!("more than {} mappings", ipnat_common::MAX_MAPPINGS),
            ));
        }
        Ok(())
    }
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
        assert_eq!(c.mappings[0].public, Ipv4Addr::new(198, 51, 100, 10));
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
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
            err(&chain).contains("is the private address of mapping[0]"),
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
}
