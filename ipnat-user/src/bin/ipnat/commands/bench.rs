//! `ipnat bench`: the rewrite path's cost per packet through BPF_PROG_TEST_RUN.

use anyhow::{Context, Result};
use std::path::PathBuf;

pub fn run(
    sizes: Vec<u32>,
    distinct: usize,
    rounds: usize,
    json: bool,
    json_out: Option<PathBuf>,
) -> Result<()> {
    let opts = ipnat::bench::BenchOptions {
        sizes,
        distinct: distinct.max(1),
        rounds: rounds.max(1),
    };
    let report = ipnat::bench::run(&opts, &mut |line| eprintln!("{line}"))?;
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
