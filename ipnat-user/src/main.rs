//! `ipnat`: the command line. A thin layer over the `ipnat` library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ipnat::{
    config::{Block, Config, DEFAULT_PIN_PATH, MappingConfig, Orientation},
    dataplane::{Dataplane, Tables},
    host::AddressOwner,
    providers::Synced,
};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "ipnat",
    version,
    about = "Stateless one-to-one IPv4 NAT (EIP <-> private IP) and source-based steering in XDP and TC",
    after_long_help = "Where ipnat keeps its state: the data plane (maps and links) is pinned under \
pin_path on a bpffs (default /sys/fs/bpf/ipnat; systemd mounts the bpffs at boot, ipnat never \
mounts one) and outlives `ipnat run`, which adopts it on its next start. What ipnat changed on \
the host (addresses it added, sysctls it raised, the cloud's last good sync) and the \
controller's lock are recorded in /run/ipnat, one directory per data plane (bpffs instance and \
pin path). `ipnat down` undoes all of it. Run ipnat inside a network namespace with `nsenter \
--net=/run/netns/NAME` (or ipnat@.service), not `ip netns exec`, whose fresh /sys has no bpffs."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the data plane (or adopt the one an earlier run left pinned), attach it to the
    /// configured interfaces, fill the tables, and run until SIGINT/SIGTERM. SIGHUP, or a
    /// change to the config file, reloads the config. The data plane stays attached when the controller stops: `ipnat down`
    /// removes it.
    Run {
        /// Config file (TOML); see ipnat.example.toml.
        #[arg(long, short, default_value = "/etc/ipnat/ipnat.toml")]
        config: PathBuf,
        /// Print the counters every N seconds (0: never).
        #[arg(long, default_value_t = 0)]
        stats_interval: u64,
    },
    /// List, add or remove source-based steering rules in the running data plane's tables
    /// (validated as the config is). The next reload or restart of `ipnat run` puts the
    /// config's (and the provider's) set back.
    Steer {
        #[command(subcommand)]
        action: SteerCommand,
    },
    /// Secondary private addresses on a NIC, through the cloud's API ([aws] or [aliyun] of the
    /// config, with its credentials). The documented limits are checked first (10 on a NIC that
    /// is not attached, the instance type's quota per NIC when attached) and a request that
    /// would break one is refused before it is sent. A running `ipnat run` puts new addresses
    /// on the interface at its next sync.
    Eni {
        #[command(subcommand)]
        action: EniCommand,
    },
    /// Validate a config file and print what it would install; changes nothing.
    Check {
        #[arg(long, short, default_value = "/etc/ipnat/ipnat.toml")]
        config: PathBuf,
    },
    /// What is attached where, table sizes and settings of the running data plane.
    Status {
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
        pin_path: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List, add or remove mappings in the running data plane's tables (validated as the
    /// config is). The next reload or restart of `ipnat run` puts the config's set back.
    Map {
        #[command(subcommand)]
        action: MapCommand,
    },
    /// Measure the per-packet cost of every rewrite path with BPF_PROG_TEST_RUN (in the
    /// kernel, distinct keys per run) at several table sizes, against an empty program and a
    /// one-lookup floor, and the time to load the tables. Attaches nothing.
    Bench {
        /// Table sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1u32, 1_000, 100_000, 1_000_000])]
        sizes: Vec<u32>,
        /// Distinct packets (keys) per path.
        #[arg(long, default_value_t = 4096)]
        distinct: usize,
        /// Rounds (the median is reported).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        #[arg(long)]
        json: bool,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json_out: Option<PathBuf>,
    },
    /// Turn rc.local / shell scripts with `ip rule`, `ip route`, `ip addr` and `ifconfig` lines,
    /// `ip rule`/`ip route` output and `ifcfg-ethX:N` files into the equivalent ipnat config
    /// (printed on stdout). Every line not converted is reported on stderr with its line
    /// number and why; the exit status is 2 when any was.
    Import {
        /// Files to read (`-` for standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Detach everything `ipnat run` attached, remove its pins, remove the addresses it added,
    /// and put back the sysctls it changed (rp_filter, arp_ignore, arp_announce), as recorded in
    /// /run/ipnat. Refused while an `ipnat run` owns the data plane (stop it first), and from
    /// another network namespace than the one the data plane is attached in.
    Down {
        /// The pin directory of the data plane.
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
        pin_path: PathBuf,
    },
    /// Write the manual pages (ipnat.8 and one per command) into DIR; for packaging.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Print per-mapping packets and bytes, and packets by outcome, of a running `ipnat run`.
    Stats {
        /// The pin directory of the running data plane.
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
        pin_path: PathBuf,
        /// Machine-readable output (with --watch: one JSON object per line).
        #[arg(long)]
        json: bool,
        /// Print again every SECONDS, with per-mapping rates, until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
}

#[derive(Subcommand)]
enum SteerCommand {
    /// The installed rules, with their counters.
    List {
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
        pin_path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Send packets from `--source` (an address or block) out of `--interface`, to the
    /// destination itself inside `--subnet`, else to `--gateway`. Loosens a strict rp_filter
    /// on the interface as `ipnat run` does.
    Add {
        #[arg(long)]
        source: Block,
        #[arg(long)]
        interface: String,
        #[arg(long)]
        gateway: std::net::Ipv4Addr,
        #[arg(long)]
        subnet: Block,
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
        pin_path: PathBuf,
    },
    /// Remove the rule for this source.
    Del {
        #[arg(long)]
        source: Block,
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
        pin_path: PathBuf,
    },
}

#[derive(Subcommand)]
enum EniCommand {
    /// Assign `--count` new addresses (the cloud picks them) or the `--address`es given.
    Assign {
        /// The NIC (eni-...).
        #[arg(long)]
        nic: String,
        #[arg(long, conflicts_with = "address", required_unless_present = "address")]
        count: Option<u32>,
        #[arg(long)]
        address: Vec<std::net::Ipv4Addr>,
        #[arg(long, short, default_value = "/etc/ipnat/ipnat.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Unassign secondary addresses (never the NIC's primary address).
    Unassign {
        #[arg(long)]
        nic: String,
        #[arg(long, required = true)]
        address: Vec<std::net::Ipv4Addr>,
        #[arg(long, short, default_value = "/etc/ipnat/ipnat.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MapCommand {
    /// The installed mappings, with their ids.
    List {
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
        pin_path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Add a mapping: an address or a block on each side (`120.0.0.0/25`). In host
    /// orientation the public side is also put on `lo` (unless it is there already).
    Add {
        #[arg(long)]
        public: Block,
        #[arg(long)]
        private: Block,
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
        pin_path: PathBuf,
    },
    /// Remove the mapping with this public side (in host orientation also its address on
    /// `lo`, if ipnat put it there).
    Del {
        #[arg(long)]
        public: Block,
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
        pin_path: PathBuf,
    },
}

/// A `--pin-path`, checked as the config's `pin_path` is.
fn pin_path_arg(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    ipnat::state::check_pin_path(&path)?;
    Ok(path)
}

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
            | Command::Manpages { .. }
    );
    if !offline {
        let name = match &cli.command {
            Command::Run { .. } => "ipnat run",
            Command::Down { .. } => "ipnat down",
            Command::Bench { .. } => "ipnat bench",
            _ => "reading or changing the running data plane",
        };
        ipnat::host::check_privileges(name).map_err(anyhow::Error::msg)?;
    }
    match cli.command {
        Command::Check { config } => {
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
            if let Some((name, endpoint, interval, _)) = config.provider() {
                println!("  {name}: sync from {endpoint} every {interval} s");
            }
            Ok(())
        }
        Command::Status { pin_path, json } => {
            let st = ipnat::dataplane::status(&pin_path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.render());
            }
            Ok(())
        }
        Command::Map { action } => match action {
            MapCommand::List { pin_path, json } => {
                let maps = Tables::open_pinned(&pin_path)?.mappings()?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&maps)?);
                } else {
                    println!("{:>4}  {:<18}  {:<18}", "id", "public", "private");
                    for m in maps {
                        println!(
                            "{:>4}  {:<18}  {:<18}",
                            m.id,
                            m.public.to_string(),
                            m.private.to_string()
                        );
                    }
                }
                Ok(())
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
                    let (added, _) = ipnat::host::reconcile_addresses(
                        &eip,
                        &pin_path,
                        AddressOwner::Host,
                        true,
                    )?;
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
                        ipnat::host::release_address(&pin_path, AddressOwner::Host, "lo", public.0)?
                    {
                        println!("removed address {a}");
                    }
                }
                Ok(())
            }
        },
        Command::Bench {
            sizes,
            distinct,
            rounds,
            json,
            json_out,
        } => {
            let opts = ipnat::bench::BenchOptions {
                sizes,
                distinct: distinct.max(1),
                rounds: rounds.max(1),
            };
            let report = ipnat::bench::run(&opts, &mut |line| eprintln!("{line}"))
                .map_err(|e| anyhow::anyhow!(e))?;
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
        Command::Steer { action } => match action {
            SteerCommand::List { pin_path, json } => {
                let rules = Tables::open_pinned(&pin_path)?.steering()?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rules)?);
                } else {
                    println!(
                        "{:>4}  {:<18}  {:<10}  {:<15}  {:<18}  {:>10}",
                        "id", "source", "interface", "gateway", "subnet", "packets"
                    );
                    for r in rules {
                        println!(
                            "{:>4}  {:<18}  {:<10}  {:<15}  {:<18}  {:>10}",
                            r.id,
                            r.source.to_string(),
                            r.interface,
                            r.gateway.to_string(),
                            r.subnet.to_string(),
                            r.packets
                        );
                    }
                }
                Ok(())
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
                for (key, old) in ipnat::host::loosen_rp_filter(&[interface], &pin_path)? {
                    println!("set {key} = 2 (was {old}; `ipnat down` restores it)");
                }
                if let Err(e) = ipnat::host::resolve_neighbour(ifindex, gateway) {
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
        },
        Command::Eni { action } => {
            use ipnat::providers::ec2::Assign;
            let (nic, assign, unassign, config, json) = match action {
                EniCommand::Assign {
                    nic,
                    count,
                    address,
                    config,
                    json,
                } => {
                    let what = match count {
                        Some(n) => Assign::Count(n),
                        None => Assign::List(address),
                    };
                    (nic, Some(what), Vec::new(), config, json)
                }
                EniCommand::Unassign {
                    nic,
                    address,
                    config,
                    json,
                } => (nic, None, address, config, json),
            };
            let config = Config::load(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let out = rt.block_on(ipnat::providers::eni::run(&config, &nic, assign, unassign))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{}: {} private addresses before; limit {} ({})",
                    out.nic, out.before, out.limit, out.limit_why
                );
                for a in &out.assigned {
                    println!("assigned {a}");
                }
                for a in &out.unassigned {
                    println!("unassigned {a}");
                }
            }
            Ok(())
        }
        Command::Manpages { dir } => {
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
        Command::Import { files } => {
            let mut texts = Vec::new();
            for f in &files {
                let bytes = if f.as_os_str() == "-" {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                    b
                } else {
                    std::fs::read(f).with_context(|| format!("reading {}", f.display()))?
                };
                let text = String::from_utf8(bytes).map_err(|e| {
                    let bad = e.utf8_error().valid_up_to();
                    let line = e.as_bytes()[..bad].iter().filter(|&&b| b == b'\n').count() + 1;
                    anyhow::anyhow!("{}:{line}: not UTF-8 text", f.display())
                })?;
                texts.push((f.display().to_string(), text));
            }
            let inputs: Vec<ipnat::import::Input> = texts
                .iter()
                .map(|(name, text)| ipnat::import::Input { name, text })
                .collect();
            let out = ipnat::import::import(&inputs);
            print!("{}", out.render());
            for s in &out.skipped {
                eprintln!(
                    "{}:{}: not converted: {}: {}",
                    s.file, s.line, s.text, s.why
                );
            }
            if !out.skipped.is_empty() {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Down { pin_path } => {
            let removed = ipnat::dataplane::down(&pin_path)?;
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
        Command::Stats {
            pin_path,
            json,
            watch,
        } => {
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
        Command::Run {
            config,
            stats_interval,
        } => {
            let parsed = Config::load(&config)?;
            run_dataplane(&config, parsed, stats_interval)
        }
    }
}

/// Warns about host settings that break a gateway; changes nothing.
fn check_sysctls(config: &Config) {
    if config.orientation == Orientation::Host {
        // Nothing is forwarded: the public addresses are local.
        return;
    }
    let read = |key: &str| ipnat::host::read(key).unwrap_or_default();
    if read("net.ipv4.ip_forward") != "1" {
        warn!(
            "net.ipv4.ip_forward is off: translated packets will not be forwarded (sysctl -w net.ipv4.ip_forward=1)"
        );
    }
    for iface in &config.interfaces {
        let key = format!("net.ipv4.conf.{}.send_redirects", iface.name);
        if read(&key) == "1" || read("net.ipv4.conf.all.send_redirects") == "1" {
            warn!(interface = %iface.name, "ICMP redirects are on: a gateway that sends packets back out of the NIC they came in on tells the senders to go direct, past the translation (sysctl -w net.ipv4.conf.all.send_redirects=0 {key}=0)");
        }
    }
}

fn run_dataplane(config_path: &std::path::Path, config: Config, stats_interval: u64) -> Result<()> {
    // The soft limit on open files up to the hard one (the unit's LimitNOFILE=): BPF objects,
    // netlink sockets and the metrics server's connections share it.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    // Check every interface before touching the kernel: a bad config changes nothing.
    for iface in &config.interfaces {
        ipnat::dataplane::ifindex(&iface.name).with_context(|| "in [[interface]]".to_string())?;
    }
    check_sysctls(&config);
    // One controller per data plane: a second `ipnat run` on the same pins is refused before
    // it touches anything.
    let records = ipnat::state::Records::of(&config.pin_path)?;
    let had_records = records.exist();
    let owner = records.lock()?;
    if owner.netns_gone {
        anyhow::bail!(
            "the data plane at {} was attached in a network namespace that no longer exists: `ipnat down --pin-path {}` clears what is left of it",
            config.pin_path.display(),
            config.pin_path.display()
        );
    }
    // The metrics port, bound before anything changes: a port in use fails the start while
    // nothing is attached, added or raised yet (and no record is left for a new data plane).
    let metrics = match config.metrics_addr() {
        Some(addr) => {
            let bound = std::net::TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            });
            match bound {
                Ok(listener) => Some((addr, listener)),
                Err(e) => {
                    if !had_records {
                        let _ = records.remove_all();
                    }
                    return Err(e).with_context(|| format!("metrics_listen = {addr}"));
                }
            }
        }
        None => None,
    };
    let fresh = !config.pin_path.exists();
    let mut dp = match Dataplane::load(Some(&config.pin_path), config.max_mappings) {
        Ok(dp) => dp,
        Err(e) => {
            // Leave nothing of a start that failed: what the loader pinned in a directory it
            // made, and the records of a data plane that never ran.
            if fresh {
                if let Err(undo) = ipnat::dataplane::teardown(&config.pin_path, &owner) {
                    warn!("undoing the failed start: {undo}");
                }
            } else if !had_records {
                let _ = records.remove_all();
            }
            return Err(e.into());
        }
    };
    if dp.adopted() {
        info!(pin_path = %config.pin_path.display(), "adopting the data plane an earlier run left pinned (it kept forwarding meanwhile)");
        if dp.tables.capacity() != config.max_mappings {
            warn!(
                pinned = dp.tables.capacity(),
                configured = config.max_mappings,
                "max_mappings differs from the pinned tables, which keep their size until `ipnat down`"
            );
        }
    }
    let host = config.orientation == Orientation::Host;
    if dp.adopted() && (dp.tables.flags()? & ipnat_common::FLAG_HOST != 0) != host {
        anyhow::bail!(
            "the data plane pinned at {} runs in the other orientation than orientation = \"{}\": run `ipnat down --pin-path {}` first (it detaches the programs)",
            config.pin_path.display(),
            config.orientation.name(),
            config.pin_path.display()
        );
    }
    // What the provider's last good sync asked for (an earlier run's, still in /run), applied
    // with the config so that a restart does not take it away until the first sync.
    let last_good = match config.provider() {
        Some(_) => ipnat::providers::SyncState::load(&config.pin_path)
            .map(|s| s.last_good)
            .unwrap_or_default(),
        None => Synced::default(),
    };
    let start = match effective(&config, &last_good) {
        Ok(c) => c,
        Err(e) => {
            warn!(
                "the provider's last sync no longer fits the config, waiting for the next: {e:#}"
            );
            config.clone()
        }
    };
    let mut modes: Vec<(u32, ipnat::dataplane::AttachMode)> = Vec::new();
    let setup = (|| -> Result<()> {
        apply_config(&mut dp, &start)?;
        if host {
            let ifaces: Vec<String> = config.interfaces.iter().map(|i| i.name.clone()).collect();
            for (key, old) in ipnat::host::quiet_arp(&ifaces, &config.pin_path)? {
                info!(%key, old = %old, "raised so that the public addresses on lo are never announced or answered for by ARP; `ipnat down` restores it");
            }
        }
        for iface in &config.interfaces {
            let mode = dp.attach(&iface.name, host)?;
            let index = ipnat::dataplane::ifindex(&iface.name)?;
            let features = ipnat::netdev::xdp_features(index).ok().flatten();
            let xdp = features.map_or("unknown".to_owned(), ipnat::netdev::describe);
            modes.push((index, mode));
            match mode {
                ipnat::dataplane::AttachMode::XdpNative => {
                    let frags = if dp.uses_frags(index) {
                        " (frags-capable: jumbo frames)"
                    } else {
                        ""
                    };
                    info!(interface = %iface.name, xdp_features = %xdp, "attached XDP (native){frags} and TC on receive, TC on transmit");
                    if features.is_some_and(|f| f & ipnat::netdev::XDP_NDO_XMIT == 0) {
                        warn!(interface = %iface.name, "XDP cannot send into this interface (no ndo-xmit; a veth has it only while its peer runs an XDP program): packets for it are forwarded by TC until it can (checked every 20 s)");
                    }
                }
                ipnat::dataplane::AttachMode::Host => {
                    info!(interface = %iface.name, "attached TC on receive and transmit (host orientation)")
                }
                ipnat::dataplane::AttachMode::TcOnly => warn!(
                    interface = %iface.name,
                    xdp_features = %xdp,
                    "no native XDP on this interface: attached TC on receive and transmit instead (slower; generic XDP is not used, it runs after GRO and sees partial checksums)"
                ),
            }
        }
        // Now that every interface is attached: which of them XDP may send into.
        dp.refresh_xdp_targets(&modes)?;
        let keep: Vec<String> = config.interfaces.iter().map(|i| i.name.clone()).collect();
        for gone in dp.detach_others(&keep)? {
            info!(link = %gone, "detached: interface no longer configured");
        }
        Ok(())
    })();
    if let Err(e) = setup {
        if !dp.adopted() {
            // Leave nothing behind from a start that failed.
            drop(dp);
            if let Err(undo) = ipnat::dataplane::teardown(&config.pin_path, &owner) {
                warn!("undoing the failed start: {undo}");
            }
        }
        return Err(e);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Handlers first, then "running": a signal sent as soon as that line appears is handled.
    let (mut int, mut term, mut hup) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _rt = rt.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        )
    };
    let ctl = std::sync::Arc::new(ipnat::metrics::ControllerCounters::default());
    ctl.last_apply_unix
        .store(unix_now(), std::sync::atomic::Ordering::Relaxed);
    if let Some((addr, listener)) = metrics {
        let listener = {
            let _rt = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let tables = Tables::open_pinned(&config.pin_path)?;
        let ctl = ctl.clone();
        rt.spawn(async move {
            if let Err(e) = ipnat::metrics::serve(listener, tables, ctl).await {
                warn!("metrics server stopped: {e}");
            }
        });
        info!(%addr, "serving Prometheus metrics at /metrics");
    }
    info!(mappings = config.mappings.len(), pin_path = %config.pin_path.display(), "ipnat running; SIGHUP reloads the config; SIGINT/SIGTERM stop the controller and leave the data plane running (`ipnat down` removes it)");
    let mut config = config;
    // Reload on changes to the config file too: watch its directory (editors replace files).
    let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let name = config_path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && ev.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    })
    .context("watching the config file")?;
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if let Err(e) = notify::Watcher::watch(&mut watcher, dir, notify::RecursiveMode::NonRecursive) {
        warn!(
            "not watching {} for changes (SIGHUP still reloads): {e}",
            dir.display()
        );
    }
    let mut last_text = std::fs::read_to_string(config_path).ok();
    let mut synced = last_good;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs(stats_interval.max(1)));
        let mut neighbours = tokio::time::interval(Duration::from_secs(20));
        // The next sync: at once, then every interval; after a failure sooner at first and
        // backing off (see providers::retry_delay).
        let next_sync = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(next_sync);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    last_text = std::fs::read_to_string(config_path).ok();
                    if do_reload(&mut dp, config_path, &mut config, &ctl, &synced) {
                        // A config that fixes the provider's settings takes effect now, not
                        // after the schedule or its backoff.
                        failures = 0;
                        next_sync.as_mut().reset(tokio::time::Instant::now());
                    }
                }
                Some(()) = changed.recv() => {
                    // Editors write in several steps: let them finish, then reload only when
                    // the text really changed.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while changed.try_recv().is_ok() {}
                    let text = std::fs::read_to_string(config_path).ok();
                    if text.is_some() && text != last_text {
                        info!("{} changed", config_path.display());
                        last_text = text;
                        if do_reload(&mut dp, config_path, &mut config, &ctl, &synced) {
                            failures = 0;
                            next_sync.as_mut().reset(tokio::time::Instant::now());
                        }
                    }
                }
                _ = tick.tick(), if stats_interval > 0 => print!("{}", dp.tables.snapshot()?.render()),
                _ = neighbours.tick() => {
                    if let Ok(eff) = effective(&config, &synced) {
                        resolve_gateways(&eff);
                    }
                    // What XDP may redirect to follows the drivers (a veth's peer may have
                    // gained or lost its XDP program).
                    if let Err(e) = dp.refresh_xdp_targets(&modes) {
                        warn!("updating the XDP redirect targets: {e}");
                    }
                }
                () = &mut next_sync, if config.provider().is_some() => {
                    let name = config.provider().map_or("", |p| p.0);
                    let mut state = ipnat::providers::SyncState::load(&config.pin_path).unwrap_or_default();
                    state.provider = name.into();
                    state.last_attempt_unix = unix_now();
                    let outcome = match ipnat::providers::sync(&config).await.map_err(anyhow::Error::from) {
                        Ok(new) => apply_synced(&mut dp, &config, &new).map(|()| new),
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(new) => {
                            if new != synced {
                                info!(provider = name, rules = new.rules.len(), mappings = new.mappings.len(), "synced from the cloud");
                                for w in &new.warnings {
                                    warn!(provider = name, "{w}");
                                }
                            }
                            state.rules = new.rules.len();
                            state.mappings = new.mappings.len();
                            state.last_good = new.clone();
                            synced = new;
                            state.last_success_unix = state.last_attempt_unix;
                            state.result = "ok".into();
                            ctl.syncs_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            ctl.last_sync_unix.store(state.last_attempt_unix, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            warn!(provider = name, "sync failed, the data plane keeps its tables: {e:#}");
                            state.result = format!("error: {e:#}");
                            ctl.syncs_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    let interval = Duration::from_secs(config.provider().map_or(3600, |p| p.2.max(1)));
                    let delay = if state.result == "ok" {
                        failures = 0;
                        interval
                    } else {
                        failures += 1;
                        ipnat::providers::retry_delay(interval, failures, ipnat::providers::jitter())
                    };
                    state.consecutive_failures = failures;
                    state.next_attempt_unix = unix_now() + delay.as_secs();
                    next_sync.as_mut().reset(tokio::time::Instant::now() + delay);
                    if let Err(e) = state.save(&config.pin_path) {
                        warn!("recording the sync state: {e}");
                    }
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    info!("controller stopping; the data plane stays attached and keeps translating");
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Asks the kernel to resolve (or refresh) the steering gateways' MAC addresses, so that
/// steered packets find them: the data path's own redirects do not keep neighbours alive.
fn resolve_gateways(config: &Config) {
    for r in &config.steering {
        let result = ipnat::dataplane::ifindex(&r.interface)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|ifindex| ipnat::host::resolve_neighbour(ifindex, r.gateway));
        if let Err(e) = result {
            warn!(gateway = %r.gateway, interface = %r.interface, "could not ask for the gateway's MAC address: {e}");
        }
    }
}

/// Writes the config's tables and settings. In host orientation the public addresses are put
/// on `lo` before their mappings are installed, and those of removed mappings taken off after.
fn apply_config(dp: &mut Dataplane, config: &Config) -> Result<()> {
    let host = config.orientation == Orientation::Host;
    let eips: Vec<(String, ipnet::Ipv4Net)> = if host {
        config
            .mappings
            .iter()
            .map(|m| ("lo".to_owned(), m.public.0))
            .collect()
    } else {
        Vec::new()
    };
    let reconcile = |keep_others: bool| -> Result<()> {
        let (added, removed) = ipnat::host::reconcile_addresses(
            &eips,
            &config.pin_path,
            AddressOwner::Host,
            keep_others,
        )?;
        for a in added {
            info!(address = %a, "added: a public address of host orientation");
        }
        for a in removed {
            info!(address = %a, "removed: its mapping is gone");
        }
        Ok(())
    };
    reconcile(true)?;
    dp.tables
        .apply_internal(&config.internal.iter().map(|b| b.0).collect::<Vec<_>>())?;
    dp.tables.set_host(host)?;
    dp.tables.apply(&config.mappings)?;
    dp.tables.set_fast_path(config.fast_path)?;
    reconcile(false)?;
    apply_steering(dp, config)
}

/// Writes the config's steering rules (and what they need of the host).
fn apply_steering(dp: &mut Dataplane, config: &Config) -> Result<()> {
    let mut rules = Vec::new();
    for (i, r) in config.steering.iter().enumerate() {
        let ifindex = ipnat::dataplane::ifindex(&r.interface)
            .with_context(|| format!("steer[{i}].interface"))?;
        rules.push((r.clone(), ifindex));
    }
    dp.tables.apply_steering(&rules)?;
    resolve_gateways(config);
    if !config.steering.is_empty() {
        let mut ifaces: Vec<String> = config
            .steering
            .iter()
            .map(|r| r.interface.clone())
            .collect();
        ifaces.sort();
        ifaces.dedup();
        for (key, old) in ipnat::host::loosen_rp_filter(&ifaces, &config.pin_path)? {
            warn!(%key, old = %old, "reverse-path filtering was strict: set to loose (2) so that replies to steered sources are accepted; `ipnat down` restores it");
        }
    }
    Ok(())
}

/// Reloads the config file (see [`reload`]) and records the outcome for the metrics; whether
/// it was applied.
fn do_reload(
    dp: &mut Dataplane,
    path: &std::path::Path,
    config: &mut Config,
    ctl: &ipnat::metrics::ControllerCounters,
    synced: &Synced,
) -> bool {
    use std::sync::atomic::Ordering;
    match reload(dp, path, config, synced) {
        Ok(new) => {
            info!(mappings = new.mappings.len(), "reloaded {}", path.display());
            *config = new;
            ctl.reloads_ok.fetch_add(1, Ordering::Relaxed);
            ctl.last_apply_unix.store(unix_now(), Ordering::Relaxed);
            true
        }
        Err(e) => {
            warn!("reload refused, the data plane keeps its tables: {e:#}");
            ctl.reloads_failed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Re-reads the config file: a valid one is applied (tables and settings; interfaces, the pin
/// path, max_mappings, metrics_listen and the provider's interval need a restart), an invalid
/// one changes nothing.
fn reload(
    dp: &mut Dataplane,
    path: &std::path::Path,
    old: &Config,
    synced: &Synced,
) -> Result<Config> {
    let new = Config::load(path)?;
    if new.interfaces != old.interfaces
        || new.pin_path != old.pin_path
        || new.max_mappings != old.max_mappings
        || new.metrics_listen != old.metrics_listen
        || new.orientation != old.orientation
        || new.provider().map(|p| (p.0, p.2)) != old.provider().map(|p| (p.0, p.2))
    {
        anyhow::bail!(
            "interfaces, pin_path, max_mappings, metrics_listen, orientation and the provider and its interval change only with a restart of `ipnat run` (orientation: after `ipnat down`)"
        );
    }
    apply_config(dp, &effective(&new, synced)?)?;
    Ok(new)
}

/// The config with what the provider's last good sync asks for added, validated as a whole:
/// its steering rules (the config's own win for the same source) and its mappings (host
/// orientation: the EIP associations; a gateway: the tagged backends), the config's own
/// winning for the same public or private address.
fn effective(config: &Config, synced: &Synced) -> Result<Config> {
    let mut c = config.clone();
    c.steering.extend(
        synced
            .rules
            .iter()
            .filter(|r| !config.steering.iter().any(|s| s.source == r.source))
            .cloned(),
    );
    {
        c.mappings.extend(synced.mappings.iter().filter(|m| {
            !config.mappings.iter().any(|own| {
                own.public.0.contains(&m.public.0)
                    || m.public.0.contains(&own.public.0)
                    || own.private.0.contains(&m.private.0)
                    || m.private.0.contains(&own.private.0)
            })
        }));
    }
    c.validate()
        .context("what the provider asks for conflicts with the config")?;
    Ok(c)
}

/// Applies a successful sync: the NICs' addresses (when the provider manages them), then the
/// tables with its rules and mappings. An error leaves the last good state in place.
fn apply_synced(dp: &mut Dataplane, config: &Config, new: &Synced) -> Result<()> {
    let eff = effective(config, new)?;
    if config.provider_addresses() {
        let (added, removed) = ipnat::host::reconcile_addresses(
            &new.addresses,
            &config.pin_path,
            AddressOwner::Provider,
            false,
        )?;
        for a in added {
            info!(address = %a, "added: the cloud assigned it");
        }
        for a in removed {
            info!(address = %a, "removed: the cloud no longer assigns it");
        }
    }
    apply_config(dp, &eff)
}
