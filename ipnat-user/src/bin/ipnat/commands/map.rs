//! `ipnat map list|add|del`: the running data plane's mappings.

use crate::cli::MapCommand;
use anyhow::Result;
use ipnat::{config::MappingConfig, dataplane::Tables, system::AddressOwner};

pub fn run(action: MapCommand) -> Result<()> {
    match action {
        MapCommand::List { pin_path, json } => {
            let maps = Tables::open_pinned(&pin_path)?.mappings()?;
            super::print_list(
                &maps,
                json,
                format!("{:>4}  {:<18}  {:<18}", "id", "public", "private"),
                |m| {
                    format!(
                        "{:>4}  {:<18}  {:<18}",
                        m.id,
                        m.public.to_string(),
                        m.private.to_string()
                    )
                },
            )
        }
        MapCommand::Add {
            public,
            private,
            pin_path,
        } => {
            let mut tables = Tables::open_pinned(&pin_path)?;
            let host = tables.flags()? & ipnat_common::FLAG_HOST != 0;
            if host {
                // The address first: translated packets find it local.
                ipnat::config::validate_host_public(&tables.internal_prefixes()?, public)?;
                let eip = [("lo".to_owned(), public.0)];
                let (added, _) =
                    ipnat::system::reconcile_addresses(&eip, &pin_path, AddressOwner::Host, true)?;
                for a in added {
                    println!("added address {a}");
                }
            }
            let m = tables.add_mapping(MappingConfig { public, private })?;
            println!("added mapping {}: {} <-> {}", m.id, m.public, m.private);
            Ok(())
        }
        MapCommand::Del { public, pin_path } => {
            let mut tables = Tables::open_pinned(&pin_path)?;
            let m = tables.remove_mapping(public)?;
            println!("removed mapping {}: {} <-> {}", m.id, m.public, m.private);
            if tables.flags()? & ipnat_common::FLAG_HOST != 0 {
                for a in
                    ipnat::system::release_address(&pin_path, AddressOwner::Host, "lo", public.0)?
                {
                    println!("removed address {a}");
                }
            }
            Ok(())
        }
    }
}
