//! `ipnat manpages DIR` (hidden): the man pages, written from the command line's grammar.

use crate::cli::Cli;
use anyhow::Result;
use std::path::PathBuf;

pub fn run(dir: PathBuf) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(&dir)?;
    let top = Cli::command();
    let mut pages = vec![(String::from("ipnat"), top.clone())];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("ipnat-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(&*name.clone().leak())));
    }
    for (name, cmd) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).section("8").render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.8")), out)?;
    }
    Ok(())
}
