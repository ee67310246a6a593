//! `ipnat stats`: per-mapping and per-outcome counters, once or every N seconds.

use anyhow::Result;
use ipnat::dataplane::Tables;
use std::time::Duration;

pub fn run(pin_path: &std::path::Path, json: bool, watch: Option<u64>) -> Result<()> {
    let tables = Tables::open_pinned(&pin_path)?;
    let mut prev = tables.snapshot()?;
    let Some(secs) = watch else {
        if json {
            println!("{}", serde_json::to_string_pretty(&prev)?);
        } else {
            print!("{}", prev.render());
        }
        return Ok(());
    };
    let secs = secs.max(1);
    loop {
        std::thread::sleep(Duration::from_secs(secs));
        let snap = tables.snapshot()?;
        let rates = snap.rates(&prev, secs as f64);
        if json {
            let rates: Vec<_> = rates
                    .iter()
                    .map(|(p, ip, ib, op, ob)| serde_json::json!({"public": p.to_string(), "in_pps": ip, "in_bps": ib, "out_pps": op, "out_bps": ob}))
                    .collect();
            println!("{}", serde_json::json!({"stats": snap, "rates": rates}));
        } else {
            print!("{}", snap.render());
            for (p, ip, ib, op, ob) in rates {
                println!(
                    "  {p}: in {ip:.0} pkt/s {:.3} Mbit/s, out {op:.0} pkt/s {:.3} Mbit/s",
                    ib / 1e6,
                    ob / 1e6
                );
            }
            println!();
        }
        prev = snap;
    }
}
