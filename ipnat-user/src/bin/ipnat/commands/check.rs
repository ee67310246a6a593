//! `ipnat check`: validates a config and prints what it would install; changes nothing.

use anyhow::Result;
use ipnat::{config::Config, config::Orientation};
use std::path::PathBuf;

pub fn run(config: PathBuf) -> Result<()> {
    let config = Config::load(&config)?;
    // Where the pins would go must be a bpffs here (this only looks).
    ipnat::state::bpffs_of(&config.pin_path)?;
    println!(
        "config OK: {} orientation, {} interface(s), {} mapping(s)",
        config.orientation.name(),
        config.interfaces.len(),
        config.mappings.len()
    );
    if config.orientation == Orientation::Host {
        let internal: Vec<String> = config.internal.iter().map(|b| b.to_string()).collect();
        println!("  internal (untranslated): {}", internal.join(", "));
    }
    for m in &config.mappings {
        println!("  {} <-> {}", m.public, m.private);
    }
    for r in &config.steering {
        println!(
            "  steer from {} out of {} (via {} outside {})",
            r.source, r.interface, r.gateway, r.subnet
        );
    }
    if let Some(p) = config.provider() {
        let (name, endpoint, interval) = (p.cloud.name(), p.endpoint, p.interval_secs);
        println!("  {name}: sync from {endpoint} every {interval} s");
    }
    Ok(())
}
