//! `ipnat`: the command line. Parses the arguments and hands each command to its module in
//! `commands/`; the work is done by the `ipnat` library (the controller included).

mod cli;
mod commands;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use cli::{Cli, Command};
use ipnat::config::Config;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A command whose output goes to a pipe that closes (`ipnat check | head -1`) ends
        // quietly, as the standard tools do, instead of panicking on the failed write. The
        // controller keeps Rust's default (writes fail with EPIPE; it never dies of a reader).
        // SAFETY: restoring a signal's default disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipnat: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Everything but the offline commands touches BPF objects or pins that only root opens.
    let offline = matches!(
        &cli.command,
        Command::Check { .. }
            | Command::Import { .. }
            | Command::Eni { .. }
            | Command::Fleet { .. }
            | Command::Manpages { .. }
    );
    if !offline {
        let name = match &cli.command {
            Command::Run { .. } => "ipnat run",
            Command::Down { .. } => "ipnat down",
            Command::Bench { .. } => "ipnat bench",
            _ => "reading or changing the running data plane",
        };
        ipnat::system::check_privileges(name).map_err(anyhow::Error::msg)?;
    }
    match cli.command {
        Command::Check { config } => commands::check::run(config),
        Command::Status { pin_path, json } => commands::status::run(&pin_path, json),
        Command::Map { action } => commands::map::run(action),
        Command::Bench {
            sizes,
            distinct,
            rounds,
            json,
            json_out,
        } => commands::bench::run(sizes, distinct, rounds, json, json_out),
        Command::Steer { action } => commands::steer::run(action),
        Command::Eni { action } => commands::eni::run(action),
        Command::Fleet { action } => commands::fleet::run(action),
        Command::Manpages { dir } => commands::manpages::run(dir),
        Command::Import { files } => commands::import::run(files),
        Command::Down { pin_path } => commands::down::run(&pin_path),
        Command::Drain { pin_path, undo } => commands::drain::run(&pin_path, undo),
        Command::Stats {
            pin_path,
            json,
            watch,
        } => commands::stats::run(&pin_path, json, watch),
        Command::Run {
            config,
            stats_interval,
        } => {
            let parsed = Config::load(&config)?;
            ipnat::controller::run(&config, parsed, stats_interval)
        }
    }
}
