//! `ipnat fleet list|map add|map del`: the fleet's shared table in etcd.

use anyhow::{Context, Result};
use ipnat::{
    config::{Config, EtcdConfig, MappingConfig},
    fleet::{Etcd, Keys, Written},
};

use crate::cli::{FleetCommand, FleetMapCommand, FleetTarget};

/// The cluster and prefix a command works on.
fn target(t: &FleetTarget) -> Result<EtcdConfig> {
    if !t.etcd.is_empty() {
        let mut c = EtcdConfig::with_endpoints(t.etcd.clone());
        c.prefix = t.prefix.clone();
        c.validate()?;
        return Ok(c);
    }
    let config = Config::load(&t.config)?;
    config.etcd.with_context(|| {
        format!(
            "{} has no [etcd] section: add one, or name the cluster with --etcd",
            t.config.display()
        )
    })
}

/// The cluster a command works on, its keys, and a connection to it.
async fn connect(t: &FleetTarget) -> Result<(EtcdConfig, Keys, Etcd)> {
    let config = target(t)?;
    let keys = Keys::new(&config.prefix);
    let etcd = Etcd::connect(&config).await?;
    Ok((config, keys, etcd))
}

pub fn run(action: FleetCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match action {
            FleetCommand::List { target: t, json } => {
                let (config, keys, etcd) = connect(&t).await?;
                let snap = ipnat::fleet::read(&etcd, &keys).await?;
                // What parses is listed; a broken entry as it is stored, with why every
                // gateway refuses the table (the first broken entry, else the first conflict).
                let (table, names, broken) = snap.each(&keys);
                let problem = broken
                    .into_iter()
                    .next()
                    .or_else(|| table.validate(&names).err());
                if json {
                    let out = serde_json::json!({
                        "revision": snap.revision,
                        "mappings": table.mappings,
                        "steering": table.steering,
                        "refused": problem,
                    });
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    println!(
                        "revision {} of {} under {}/",
                        snap.revision,
                        config.endpoints.join(","),
                        config.prefix
                    );
                    println!("{:<18}  {:<18}", "public", "private");
                    for m in &table.mappings {
                        println!(
                            "{:<18}  {:<18}",
                            m.public.to_string(),
                            m.private.to_string()
                        );
                    }
                    for r in &table.steering {
                        println!(
                            "steer {} via {} on {} (subnet {})",
                            r.source, r.gateway, r.interface, r.subnet
                        );
                    }
                    if let Some(p) = problem {
                        let raw = snap
                            .kvs
                            .iter()
                            .find(|(k, _)| k == p.key.as_bytes())
                            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                        println!(
                            "REFUSED by every gateway (they serve their last good table): {p}"
                        );
                        if let Some(raw) = raw {
                            println!("  {} = {raw:?}", p.key);
                        }
                    }
                }
                Ok(())
            }
            FleetCommand::Map { action } => match action {
                FleetMapCommand::Add {
                    public,
                    private,
                    replace,
                    target: t,
                } => {
                    let m = MappingConfig { public, private };
                    // The mapping on its own first: the same checks as a config's.
                    ipnat::config::validate_mappings(&[m], &|_| "mapping".into())?;
                    let (_, keys, etcd) = connect(&t).await?;
                    match ipnat::fleet::map_add(&etcd, &keys, m, replace).await? {
                        Written::At(rev) => {
                            println!(
                                "{}: {public} <-> {private} (revision {rev})",
                                keys.mapping(public)
                            )
                        }
                        Written::Unchanged => {
                            println!(
                                "{}: {public} <-> {private} already (unchanged)",
                                keys.mapping(public)
                            )
                        }
                    }
                    Ok(())
                }
                FleetMapCommand::Del { public, target: t } => {
                    let (_, keys, etcd) = connect(&t).await?;
                    if let Written::At(rev) = ipnat::fleet::map_del(&etcd, &keys, public).await? {
                        println!("{}: removed (revision {rev})", keys.mapping(public));
                    }
                    Ok(())
                }
            },
        }
    })
}
