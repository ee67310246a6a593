//! `ipnat fleet list|map add|map del`: the fleet's shared table in etcd; `ipnat fleet move`:
//! a failover shard's leadership moved on purpose.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnat::{
    config::{Config, EtcdConfig, MappingConfig},
    fleet::{
        Etcd, Keys, Written,
        handover::{self, MoveRequest},
        leader,
    },
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
                let shards = handover::shards(&etcd.client, &config.prefix).await?;
                if json {
                    let out = serde_json::json!({
                        "revision": snap.revision,
                        "mappings": table.mappings,
                        "steering": table.steering,
                        "refused": problem,
                        "failover": shards,
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
                    for sh in &shards {
                        match sh.line.split_first() {
                            Some((first, rest)) if rest.is_empty() => {
                                println!(
                                    "failover shard {}: {first} leads, nobody stands by",
                                    sh.shard
                                )
                            }
                            Some((first, rest)) => println!(
                                "failover shard {}: {first} leads; standing by: {}",
                                sh.shard,
                                rest.join(", ")
                            ),
                            None => {}
                        }
                        match &sh.request {
                            Some(Ok(m)) => println!("  move to {} asked by {}", m.to, m.by),
                            Some(Err(why)) => println!("  {why}"),
                            None => {}
                        }
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
            FleetCommand::Move {
                shard,
                to,
                timeout_s,
                target: t,
            } => move_shard(&t, &shard, &to, Duration::from_secs(timeout_s)).await,
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

/// `ipnat fleet move SHARD --to GATEWAY`: checks that GATEWAY stands by for the shard, asks for
/// the move (see `ipnat::fleet::handover`) and waits until GATEWAY leads and has taken the
/// shard over (it then removes the request).
async fn move_shard(t: &FleetTarget, shard: &str, to: &str, timeout: Duration) -> Result<()> {
    let config = target(t)?;
    // Each request is bounded by the section's request_timeout_ms.
    let etcd = Etcd::connect(&config).await?;
    let client = &etcd.client;
    let name = leader::election_name(&config.prefix, shard);
    let key = handover::move_key(&config.prefix, shard);
    let line = handover::candidates(client, &name).await?;
    let nodes: Vec<&str> = line.iter().map(|c| c.node.as_str()).collect();
    match nodes.first() {
        None => bail!(
            "no gateway campaigns for shard {shard:?} under {name}/ (is a controller with this \
             [[failover.shard]] running, and not refused? see its ipnat status): nothing changed"
        ),
        Some(first) if *first == to => {
            println!("{to} leads shard {shard} already: nothing changed");
            return Ok(());
        }
        Some(_) if !nodes.contains(&to) => bail!(
            "{to} does not stand by for shard {shard} (in line: {}): it is not running, or \
             its preflight refused the shard (see its ipnat status); nothing changed",
            nodes.join(", ")
        ),
        Some(_) => {}
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let request = MoveRequest {
        to: to.to_owned(),
        by: format!("ipnat fleet move on {}", host.trim()),
    };
    let ttl = timeout.as_secs() as i64;
    let asked = handover::request_move(client, &key, &request, ttl).await?;
    if let Err(other) = asked {
        bail!(
            "a move of shard {shard} to {} is under way already (asked by {}): nothing changed",
            other.to,
            other.by
        );
    }
    println!(
        "asked for shard {shard} to move from {} to {to} (in line: {})",
        nodes[0],
        nodes.join(", ")
    );
    let start = Instant::now();
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut interrupted => {
                let _ = handover::cancel_move(client, &key).await;
                bail!("interrupted: the request was withdrawn; whoever leads shard {shard} now keeps it");
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let Ok(pending) = handover::read_move(client, &key).await else {
            continue;
        };
        let leads = leader::leader(client, &name).await.ok().flatten();
        match pending {
            // The new leader removes the request once it has taken the shard over.
            None if leads.as_deref() == Some(to) => {
                println!(
                    "{to} leads shard {shard} and has taken it over ({} ms)",
                    start.elapsed().as_millis()
                );
                return Ok(());
            }
            None => bail!(
                "the request went unanswered: shard {shard} is led by {} (see ipnat status on \
                 {to} for why it did not take it over)",
                leads.as_deref().unwrap_or("nobody")
            ),
            Some(_) if start.elapsed() > timeout + Duration::from_secs(2) => {
                let _ = handover::cancel_move(client, &key).await;
                bail!(
                    "shard {shard} did not move to {to} within {} s (led by {}): the request \
                     was withdrawn; see ipnat status on {to}",
                    timeout.as_secs(),
                    leads.as_deref().unwrap_or("nobody")
                );
            }
            Some(_) => {}
        }
    }
}
