//! `ipnat drain`: withdraws what the gateway announces and keeps it withdrawn, or ends that.

use anyhow::{Context, Result};

pub fn run(pin_path: &std::path::Path, undo: bool) -> Result<()> {
    if ipnat::system::RouteTable::load(pin_path).is_none()
        && ipnat::fleet::health::HealthState::load(pin_path).is_none()
    {
        anyhow::bail!(
            "nothing is announced for {}: only a controller with [announce] in its config announces (is the pin path right?)",
            pin_path.display()
        );
    }
    let withdrawn = ipnat::fleet::health::set_drained(pin_path, !undo)
        .with_context(|| format!("draining the gateway at {}", pin_path.display()))?;
    if undo {
        println!("drain ended: the controller announces again at its next check, once ready");
    } else {
        for r in &withdrawn {
            println!("withdrew {r}");
        }
        println!(
            "drained: nothing is announced until `ipnat drain --undo`; the data plane keeps translating"
        );
    }
    Ok(())
}
