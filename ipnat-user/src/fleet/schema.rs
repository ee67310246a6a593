//! The fleet's table in etcd: where each entry lives and what its value holds.
//!
//! Under the configured prefix (`/ipnat` by default):
//! - `<prefix>/mappings/<public>` -> `{"public": "<public>", "private": "<private>"}`: one
//!   mapping, keyed by its public address or block as the config writes it (`198.51.100.10`,
//!   `198.51.100.128/25`).
//! - `<prefix>/steer/<source>` -> `{"source": ..., "interface": ..., "gateway": ...,
//!   "subnet": ...}`: one steering rule, as in the config's `[[steer]]`.
//! - `<prefix>/version`: the write guard. Every write by `ipnat fleet` reads the whole table,
//!   validates the result exactly as a config is validated, and commits in one transaction
//!   that requires this key unchanged since that read and changes it: two writers can never
//!   both commit mappings that conflict (the second one's transaction fails, it reads again,
//!   and its validation sees the first one's mapping).
//!
//! Values are JSON objects with exactly these fields. Other keys under the prefix are left
//! alone: `<prefix>/failover/<shard>/...` (a failover shard's election, `super::leader`) and
//! `<prefix>/failover-move/<shard>` (a move asked, `super::handover`) belong to failover.

use serde::{Deserialize, Serialize};

use crate::config::{
    Block, ConfigError, MappingConfig, SteerConfig, validate_mappings, validate_steer_rules,
};

/// The subtree of mappings.
pub const MAPPINGS: &str = "mappings/";
/// The subtree of steering rules.
pub const STEER: &str = "steer/";
/// The write guard's name.
pub const VERSION: &str = "version";

/// The keys of one fleet (one prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` as the config validated it: starts with `/`, does not end with one.
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// Everything of the fleet: `<prefix>/`.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn mappings(&self) -> String {
        format!("{}/{MAPPINGS}", self.prefix)
    }

    pub fn mapping(&self, public: Block) -> String {
        format!("{}/{MAPPINGS}{public}", self.prefix)
    }

    pub fn steer(&self, source: Block) -> String {
        format!("{}/{STEER}{source}", self.prefix)
    }

    pub fn version(&self) -> String {
        format!("{}/{VERSION}", self.prefix)
    }
}

/// What the fleet's table asks of every gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetTable {
    pub mappings: Vec<MappingConfig>,
    pub steering: Vec<SteerConfig>,
}

/// Why a state of the fleet's table was refused: the key to fix, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{key}: {why}")]
pub struct Refused {
    pub key: String,
    pub why: String,
}

impl FleetTable {
    /// Reads a whole table (the key-value pairs under `keys`' prefix, in any order) and
    /// validates it as a config's mappings and steering rules are validated; the first key in
    /// error is named. `strict` = false skips the validation of the table as a whole (what
    /// `ipnat fleet map del` needs to remove a conflicting entry), never the parsing of each.
    pub fn parse<'a>(
        keys: &Keys,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Self, Refused> {
        let (table, names) = Self::parse_entries(keys, kvs)?;
        table.validate(&names)?;
        Ok(table)
    }

    /// Each entry parsed, none validated against the others; with each mapping's and rule's
    /// key (mappings first, then rules). The first entry that does not parse is refused.
    pub fn parse_entries<'a>(
        keys: &Keys,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(Self, Names), Refused> {
        let (table, names, broken) = Self::parse_each(keys, kvs);
        match broken.into_iter().next() {
            None => Ok((table, names)),
            Some(first) => Err(first),
        }
    }

    /// Every entry that parses, and why each other one does not (in key order).
    pub fn parse_each<'a>(
        keys: &Keys,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> (Self, Names, Vec<Refused>) {
        let mut entries: Vec<(String, &[u8])> = Vec::new();
        let mut broken = Vec::new();
        for (k, v) in kvs {
            match String::from_utf8(k.to_vec()) {
                Ok(key) => entries.push((key, v)),
                Err(_) => broken.push(Refused {
                    key: String::from_utf8_lossy(k).into_owned(),
                    why: "the key is not UTF-8".into(),
                }),
            }
        }
        // etcd returns keys sorted; the table's order (and so its errors) does not depend on
        // who handed them over.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut table = FleetTable::default();
        let mut names = Names::default();
        let all = keys.all();
        for (key, value) in entries {
            let Some(rest) = key.strip_prefix(&all) else {
                continue;
            };
            if let Some(public) = rest.strip_prefix(MAPPINGS) {
                match entry(
                    value,
                    public,
                    &MAPPING,
                    |m: &MappingConfig| m.public,
                    |b| keys.mapping(b),
                ) {
                    Ok(m) => {
                        table.mappings.push(m);
                        names.mappings.push(key);
                    }
                    Err(why) => broken.push(Refused { key, why }),
                }
            } else if let Some(source) = rest.strip_prefix(STEER) {
                match entry(
                    value,
                    source,
                    &RULE,
                    |r: &SteerConfig| r.source,
                    |b| keys.steer(b),
                ) {
                    Ok(r) => {
                        table.steering.push(r);
                        names.steering.push(key);
                    }
                    Err(why) => broken.push(Refused { key, why }),
                }
            }
        }
        (table, names, broken)
    }

    /// Validates the table as a whole, as a config's mappings and steering rules are.
    pub fn validate(&self, names: &Names) -> Result<(), Refused> {
        // The validators name each entry as they are told: by its key. The error's key is
        // `<entry key>.<field>` (or the table's, for its size): the entry is the one it
        // starts with.
        let refused = |e: ConfigError, keys: &[String]| {
            let key = match &e {
                ConfigError::Invalid { key, .. } => keys
                    .iter()
                    .find(|k| {
                        key.strip_prefix(k.as_str())
                            .is_some_and(|f| f.starts_with('.'))
                    })
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            };
            Refused {
                key,
                why: e.to_string(),
            }
        };
        validate_mappings(&self.mappings, &|i| names.mappings[i].clone())
            .map_err(|e| refused(e, &names.mappings))?;
        validate_steer_rules(&self.steering, &|i| names.steering[i].clone())
            .map_err(|e| refused(e, &names.steering))?;
        Ok(())
    }
}

/// What an entry of one subtree is, for its errors.
struct Kind {
    /// `not a <what>`
    what: &'static str,
    /// The fields it must have.
    shape: &'static str,
    /// `the value <verb> <address>`
    verb: &'static str,
}

const MAPPING: Kind = Kind {
    what: "mapping",
    shape: r#"{"public": "<address or block>", "private": "<address or block>"}"#,
    verb: "maps",
};

const RULE: Kind = Kind {
    what: "steering rule",
    shape: r#"{"source", "interface", "gateway", "subnet"}"#,
    verb: "steers",
};

/// One entry's value: a `T` in JSON, for the address its key names (`named`); why not
/// otherwise. `addr` is the address a value is keyed by, `key_of` the key it belongs at.
fn entry<T: serde::de::DeserializeOwned>(
    value: &[u8],
    named: &str,
    kind: &Kind,
    addr: impl Fn(&T) -> Block,
    key_of: impl Fn(Block) -> String,
) -> Result<T, String> {
    let v: T = serde_json::from_slice(value)
        .map_err(|e| format!("not a {} ({e}): expected {}", kind.what, kind.shape))?;
    let a = addr(&v);
    if named != a.to_string() {
        return Err(format!(
            "the key names {named:?} but the value {} {a} (the key must be {})",
            kind.verb,
            key_of(a)
        ));
    }
    Ok(v)
}

/// The key of each of a table's mappings and rules, in the table's order.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub mappings: Vec<String>,
    pub steering: Vec<String>,
}

/// A mapping's value as stored.
pub fn mapping_value(m: &MappingConfig) -> String {
    serde_json::to_string(m).expect("a mapping serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kvs: &[(&str, &str)]) -> Result<FleetTable, Refused> {
        FleetTable::parse(
            &Keys::new("/f"),
            kvs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        )
    }

    #[test]
    fn a_table_reads_back_what_was_written() {
        let m: MappingConfig = MappingConfig {
            public: "198.51.100.128/25".parse().unwrap(),
            private: "10.0.2.0/25".parse().unwrap(),
        };
        let keys = Keys::new("/f");
        assert_eq!(keys.mapping(m.public), "/f/mappings/198.51.100.128/25");
        let value = mapping_value(&m);
        let t = parse(&[
            (&keys.mapping(m.public), &value),
            (
                "/f/mappings/198.51.100.10",
                r#"{"public":"198.51.100.10","private":"10.0.1.10"}"#,
            ),
            ("/f/version", "7"),
            ("/f/members/gw1", "anything: not the table's"),
            ("/g/mappings/1.2.3.4", "another fleet's"),
        ])
        .unwrap();
        assert_eq!(t.mappings.len(), 2);
        assert_eq!(t.mappings[0].public.to_string(), "198.51.100.10");
        assert_eq!(t.mappings[1], m);
    }

    #[test]
    fn garbage_and_conflicts_are_refused_by_key() {
        let good = (
            "/f/mappings/198.51.100.10",
            r#"{"public":"198.51.100.10","private":"10.0.1.10"}"#,
        );
        let e = parse(&[good, ("/f/mappings/198.51.100.11", "{not json")]).unwrap_err();
        assert_eq!(e.key, "/f/mappings/198.51.100.11");
        assert!(e.why.starts_with("not a mapping"), "{e}");
        let e = parse(&[
            good,
            (
                "/f/mappings/198.51.100.11",
                r#"{"public":"198.51.100.11","private":"10.0.1.11","extra":1}"#,
            ),
        ])
        .unwrap_err();
        assert!(e.why.contains("unknown field"), "{e}");
        let e = parse(&[(
            "/f/mappings/198.51.100.12",
            r#"{"public":"198.51.100.11","private":"10.0.1.11"}"#,
        )])
        .unwrap_err();
        assert!(
            e.why.contains("the key must be /f/mappings/198.51.100.11"),
            "{e}"
        );
        // Two public addresses for one private one: the later key is named, with the other.
        let e = parse(&[
            good,
            (
                "/f/mappings/198.51.100.20",
                r#"{"public":"198.51.100.20","private":"10.0.1.10"}"#,
            ),
        ])
        .unwrap_err();
        assert_eq!(e.key, "/f/mappings/198.51.100.20");
        assert!(
            e.why
                .contains("already mapped by /f/mappings/198.51.100.10"),
            "{e}"
        );
        let e = parse(&[(
            "/f/mappings/127.0.0.1",
            r#"{"public":"127.0.0.1","private":"10.0.1.10"}"#,
        )])
        .unwrap_err();
        assert!(e.why.contains("loopback"), "{e}");
    }
}
