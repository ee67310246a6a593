//! `ipnat down`: takes the data plane apart and undoes what ipnat changed on the host.

use anyhow::Result;

pub fn run(pin_path: &std::path::Path) -> Result<()> {
    let removed = ipnat::dataplane::down(&pin_path)?;
    for r in &removed.routes {
        println!("withdrew {r}");
    }
    for l in &removed.links {
        println!("detached {} from {}", l.hook, l.iface);
    }
    for a in &removed.addresses {
        println!("removed address {a}");
    }
    for (key, value) in &removed.restored {
        println!("restored {key} = {value}");
    }
    if removed.pins {
        println!("removed {}", pin_path.display());
    } else {
        println!(
            "nothing was pinned at {} (undid what was recorded for it)",
            pin_path.display()
        );
    }
    Ok(())
}
