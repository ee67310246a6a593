//! The command line's grammar: every command, its arguments and their help (also the man
//! pages' source).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipnat::config::{Block, DEFAULT_PIN_PATH};

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
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// The fleet's shared table in etcd (the config's [etcd] section, or --etcd): every
    /// gateway whose config names the same cluster and prefix serves it. Writes are validated
    /// with the whole table exactly as a config is, and committed in one transaction that
    /// fails if another writer got in first (then read and validated again): two conflicting
    /// writes can never both succeed.
    Fleet {
        #[command(subcommand)]
        action: FleetCommand,
    },
    /// Validate a config file and print what it would install; changes nothing.
    Check {
        #[arg(long, short, default_value = "/etc/ipnat/ipnat.toml")]
        config: PathBuf,
    },
    /// What is attached where, table sizes and settings of the running data plane.
    Status {
        #[command(flatten)]
        pin_path: PinPath,
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
        #[command(flatten)]
        pin_path: PinPath,
    },
    /// Withdraw what this gateway announces to its routing daemon ([announce]) at once and keep
    /// it withdrawn, while the data plane keeps translating the flows still arriving: before
    /// maintenance or a restart. `--undo` ends the drain; the running controller announces
    /// again at its next check, once ready.
    Drain {
        #[command(flatten)]
        pin_path: PinPath,
        /// End the drain.
        #[arg(long)]
        undo: bool,
    },
    /// Write the manual pages (ipnat.8 and one per command) into DIR; for packaging.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Print per-mapping packets and bytes, and packets by outcome, of a running `ipnat run`.
    Stats {
        /// The pin directory of the running data plane.
        #[command(flatten)]
        pin_path: PinPath,
        /// Machine-readable output (with --watch: one JSON object per line).
        #[arg(long)]
        json: bool,
        /// Print again every SECONDS, with per-mapping rates, until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum SteerCommand {
    /// The installed rules, with their counters.
    List {
        #[command(flatten)]
        pin_path: PinPath,
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
        #[command(flatten)]
        pin_path: PinPath,
    },
    /// Remove the rule for this source.
    Del {
        #[arg(long)]
        source: Block,
        #[command(flatten)]
        pin_path: PinPath,
    },
}

#[derive(Subcommand)]
pub enum EniCommand {
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
pub enum MapCommand {
    /// The installed mappings, with their ids.
    List {
        #[command(flatten)]
        pin_path: PinPath,
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
        #[command(flatten)]
        pin_path: PinPath,
    },
    /// Remove the mapping with this public side (in host orientation also its address on
    /// `lo`, if ipnat put it there).
    Del {
        #[arg(long)]
        public: Block,
        #[command(flatten)]
        pin_path: PinPath,
    },
}

/// The `--pin-path` of the commands that act on a running data plane.
#[derive(Args)]
pub struct PinPath {
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_parser = pin_path_arg)]
    pin_path: PathBuf,
}

impl std::ops::Deref for PinPath {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.pin_path
    }
}

/// A `--pin-path`, checked as the config's `pin_path` is.
pub fn pin_path_arg(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    ipnat::state::check_pin_path(&path)?;
    Ok(path)
}

/// Where the fleet's etcd is: the config's [etcd] section, or the endpoints given.
#[derive(Args, Clone, Debug)]
pub struct FleetTarget {
    /// Config file whose [etcd] section names the cluster (ignored with --etcd).
    #[arg(long, short, default_value = "/etc/ipnat/ipnat.toml")]
    pub config: PathBuf,
    /// Client URLs of the etcd members, comma-separated (instead of the config's section).
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub etcd: Vec<String>,
    /// The fleet's key prefix, with --etcd.
    #[arg(long, default_value = ipnat::config::DEFAULT_ETCD_PREFIX, requires = "etcd")]
    pub prefix: String,
}

#[derive(Subcommand)]
pub enum FleetCommand {
    /// The fleet's mappings and steering rules (and the revision read), and each failover
    /// shard's leader and standbys in line.
    List {
        #[command(flatten)]
        target: FleetTarget,
        #[arg(long)]
        json: bool,
    },
    /// Mappings in the fleet's table.
    Map {
        #[command(subcommand)]
        action: FleetMapCommand,
    },
    /// Move a failover shard's leadership to GATEWAY (which must be standing by for it): the
    /// gateways ahead of it in the election step back, the leader stops leading, GATEWAY is
    /// elected and takes the shard over through the cloud's API as after a failover. Waits
    /// until it has; a request not done within --timeout-s goes by itself.
    Move {
        /// The shard's name (its [[failover.shard]] name).
        shard: String,
        /// The gateway to lead it (its [failover] name).
        #[arg(long, value_name = "GATEWAY")]
        to: String,
        /// How long the request stands (and this command waits).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=3600))]
        timeout_s: u64,
        #[command(flatten)]
        target: FleetTarget,
    },
}

#[derive(Subcommand)]
pub enum FleetMapCommand {
    /// Add PUBLIC <-> PRIVATE (addresses, or blocks of one size) to the fleet's table.
    Add {
        public: Block,
        private: Block,
        /// Change the mapping PUBLIC already has instead of refusing.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        target: FleetTarget,
    },
    /// Remove PUBLIC's mapping from the fleet's table (also one whose value is broken).
    Del {
        public: Block,
        #[command(flatten)]
        target: FleetTarget,
    },
}
