//! `ipnat steer list|add|del`: the running data plane's steering rules.

use crate::cli::SteerCommand;
use anyhow::{Context, Result};
use ipnat::dataplane::Tables;

pub fn run(action: SteerCommand) -> Result<()> {
    match action {
        SteerCommand::List { pin_path, json } => {
            let rules = Tables::open_pinned(&pin_path)?.steering()?;
            super::print_list(
                &rules,
                json,
                format!(
                    "{:>4}  {:<18}  {:<10}  {:<15}  {:<18}  {:>10}",
                    "id", "source", "interface", "gateway", "subnet", "packets"
                ),
                |r| {
                    format!(
                        "{:>4}  {:<18}  {:<10}  {:<15}  {:<18}  {:>10}",
                        r.id,
                        r.source.to_string(),
                        r.interface,
                        r.gateway.to_string(),
                        r.subnet.to_string(),
                        r.packets
                    )
                },
            )
        }
        SteerCommand::Add {
            source,
            interface,
            gateway,
            subnet,
            pin_path,
        } => {
            let ifindex = ipnat::dataplane::ifindex(&interface).context("--interface")?;
            let rule = ipnat::config::SteerConfig {
                source,
                interface: interface.clone(),
                gateway,
                subnet,
            };
            let r = Tables::open_pinned(&pin_path)?.add_steer(rule, ifindex)?;
            println!(
                "added steering rule {}: from {} out of {} (via {} outside {})",
                r.id, r.source, r.interface, r.gateway, r.subnet
            );
            for (key, old) in ipnat::system::loosen_rp_filter(&[interface], &pin_path)? {
                println!("set {key} = 2 (was {old}; `ipnat down` restores it)");
            }
            if let Err(e) = ipnat::system::resolve_neighbour(ifindex, gateway) {
                eprintln!("could not ask for the gateway's MAC address: {e}");
            }
            Ok(())
        }
        SteerCommand::Del { source, pin_path } => {
            let r = Tables::open_pinned(&pin_path)?.remove_steer(source)?;
            println!(
                "removed steering rule {}: from {} out of {}",
                r.id, r.source, r.interface
            );
            Ok(())
        }
    }
}
