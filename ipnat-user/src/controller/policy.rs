//! The controller's rules for combining its inputs: the config with the fleet's table and the
//! provider's last good sync (the config wins, then the fleet), and what a reload may change
//! without a restart.

use anyhow::{Context, Result};

use crate::{
    config::{Config, MappingConfig},
    fleet::FleetTable,
    providers::Synced,
};

/// What the controller applies besides the config file: each source's last good answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sources {
    /// The cloud provider's last good sync.
    pub synced: Synced,
    /// The fleet's last good table from etcd.
    pub fleet: FleetTable,
}

impl Sources {
    /// The config with these sources added ([`effective`]).
    pub fn effective(&self, config: &Config) -> Result<Config> {
        effective(config, &self.synced, &self.fleet)
    }
}

/// Whether two mappings share an address on either side.
fn overlap(a: &MappingConfig, b: &MappingConfig) -> bool {
    a.public.0.contains(&b.public.0)
        || b.public.0.contains(&a.public.0)
        || a.private.0.contains(&b.private.0)
        || b.private.0.contains(&a.private.0)
}

/// The config with what the fleet's table and the provider's last good sync ask for added,
/// validated as a whole. Precedence, for the same public or private address (mappings) or the
/// same source (steering rules): the config's own, then the fleet's, then the provider's
/// (host orientation: the EIP associations; a gateway: the tagged backends). A gateway's own
/// file thus overrides the fleet for that one gateway.
pub fn effective(config: &Config, synced: &Synced, fleet: &FleetTable) -> Result<Config> {
    let mut c = config.clone();
    for rules in [&fleet.steering, &synced.rules] {
        let before = c.steering.clone();
        c.steering.extend(
            rules
                .iter()
                .filter(|r| !before.iter().any(|s| s.source == r.source))
                .cloned(),
        );
    }
    for (i, mappings) in [&fleet.mappings, &synced.mappings].into_iter().enumerate() {
        let before = c.mappings.clone();
        c.mappings.extend(
            mappings
                .iter()
                .filter(|m| !before.iter().any(|own| overlap(own, m))),
        );
        let who = ["the fleet's table", "the provider"][i];
        c.validate()
            .with_context(|| format!("what {who} asks for conflicts with the config"))?;
    }
    Ok(c)
}

/// Whether `new` may replace `old` in a running controller: the tables and settings may change;
/// the interfaces, the pin path, max_mappings, metrics_listen, the orientation, and the
/// provider and its interval need a restart (the orientation after `ipnat down`).
pub fn reloadable(old: &Config, new: &Config) -> Result<()> {
    if new.interfaces != old.interfaces
        || new.pin_path != old.pin_path
        || new.max_mappings != old.max_mappings
        || new.metrics_listen != old.metrics_listen
        || new.orientation != old.orientation
        || new.etcd != old.etcd
        || new.announce != old.announce
        || new.provider().map(|p| (p.cloud, p.interval_secs))
            != old.provider().map(|p| (p.cloud, p.interval_secs))
    {
        anyhow::bail!(
            "interfaces, pin_path, max_mappings, metrics_listen, orientation, [etcd], [announce] and the provider and its interval change only with a restart of `ipnat run` (orientation: after `ipnat down`)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [[interface]]
        name = "eth0"
        [[interface]]
        name = "eth1"
        [[mapping]]
        public = "198.51.100.10"
        private = "10.0.1.10"
        [[steer]]
        source = "10.0.1.20"
        interface = "eth1"
        gateway = "10.0.1.1"
        subnet = "10.0.1.0/24"
        [aws]
        interval_secs = 30
    "#;

    /// What a provider asks for (not validated as a whole: a provider's answer may conflict
    /// with itself): mappings as (public, private), steering rules as (source, gateway) on
    /// eth1 in 10.0.1.0/24.
    fn synced(mappings: &[(&str, &str)], rules: &[(&str, &str)]) -> Synced {
        Synced {
            mappings: mappings
                .iter()
                .map(|(p, q)| crate::config::MappingConfig {
                    public: p.parse().unwrap(),
                    private: q.parse().unwrap(),
                })
                .collect(),
            rules: rules
                .iter()
                .map(|(source, gateway)| crate::config::SteerConfig {
                    source: source.parse().unwrap(),
                    interface: "eth1".into(),
                    gateway: gateway.parse().unwrap(),
                    subnet: "10.0.1.0/24".parse().unwrap(),
                })
                .collect(),
            ..Synced::default()
        }
    }

    fn pairs(c: &Config) -> Vec<(String, String)> {
        c.mappings
            .iter()
            .map(|m| (m.public.to_string(), m.private.to_string()))
            .collect()
    }

    #[test]
    fn the_config_wins_over_the_provider_on_either_side_and_the_rest_is_added() {
        let config = Config::parse(BASE).unwrap();
        let from_cloud = synced(
            &[
                ("198.51.100.10", "10.0.1.99"),
                ("198.51.100.99", "10.0.1.10"),
                ("198.51.100.10/31", "10.0.2.0/31"),
                ("198.51.100.20", "10.0.1.11"),
            ],
            &[("10.0.1.20", "10.0.1.254"), ("10.0.1.21", "10.0.1.1")],
        );
        let eff = effective(&config, &from_cloud, &FleetTable::default()).unwrap();
        // Same public, same private, and a block holding the config's public: the config's.
        assert_eq!(
            pairs(&eff),
            [
                ("198.51.100.10".into(), "10.0.1.10".into()),
                ("198.51.100.20".into(), "10.0.1.11".into())
            ]
        );
        let rules: Vec<(String, String)> = eff
            .steering
            .iter()
            .map(|r| (r.source.to_string(), r.gateway.to_string()))
            .collect();
        assert_eq!(
            rules,
            [
                ("10.0.1.20".into(), "10.0.1.1".into()),
                ("10.0.1.21".into(), "10.0.1.1".into())
            ]
        );
        // Nothing synced: the config as it is.
        assert_eq!(
            pairs(&Sources::default().effective(&config).unwrap()),
            pairs(&config)
        );
    }

    #[test]
    fn the_config_wins_over_the_fleet_and_the_fleet_over_the_provider() {
        let config = Config::parse(BASE).unwrap();
        let fleet = synced(
            &[
                ("198.51.100.10", "10.0.1.98"), // the config's public: the config's
                ("198.51.100.30", "10.0.1.30"),
            ],
            &[],
        );
        let sources = Sources {
            fleet: FleetTable {
                mappings: fleet.mappings,
                steering: Vec::new(),
            },
            synced: synced(
                &[
                    ("198.51.100.31", "10.0.1.30"), // the fleet's private: the fleet's
                    ("198.51.100.40", "10.0.1.40"),
                ],
                &[],
            ),
        };
        assert_eq!(
            pairs(&sources.effective(&config).unwrap()),
            [
                ("198.51.100.10".into(), "10.0.1.10".into()),
                ("198.51.100.30".into(), "10.0.1.30".into()),
                ("198.51.100.40".into(), "10.0.1.40".into())
            ]
        );
    }

    #[test]
    fn a_provider_that_conflicts_with_itself_is_refused_whole() {
        let config = Config::parse(BASE).unwrap();
        // Two public addresses for one private one.
        let twice = [
            ("198.51.100.20", "10.0.1.20"),
            ("198.51.100.21", "10.0.1.20"),
        ];
        let from_cloud = synced(&twice, &[]);
        let err = format!(
            "{:#}",
            effective(&config, &from_cloud, &FleetTable::default()).unwrap_err()
        );
        assert!(
            err.starts_with("what the provider asks for conflicts with the config"),
            "{err}"
        );
    }

    #[test]
    fn a_reload_changes_the_tables_never_what_needs_a_restart() {
        let old = Config::parse(BASE).unwrap();
        let tables = BASE.replace("198.51.100.10", "198.51.100.12");
        reloadable(&old, &Config::parse(&tables).unwrap()).unwrap();
        for (what, text) in [
            ("interfaces", format!("[[interface]]\nname = \"eth2\"\n{BASE}")),
            ("interval", BASE.replace("interval_secs = 30", "interval_secs = 60")),
            ("provider", BASE.replace("[aws]", "[aliyun]")),
            ("max_mappings", format!("max_mappings = 128\n{BASE}")),
            ("pin_path", format!("pin_path = \"/sys/fs/bpf/other\"\n{BASE}")),
            ("orientation", format!("orientation = \"host\"\n{BASE}").replace(
                "[[steer]]\n        source = \"10.0.1.20\"\n        interface = \"eth1\"\n        gateway = \"10.0.1.1\"\n        subnet = \"10.0.1.0/24\"\n",
                "",
            )),
        ] {
            let new = Config::parse(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
            let err = reloadable(&old, &new).expect_err(what).to_string();
            assert!(err.contains("only with a restart"), "{what}: {err}");
        }
    }
}
