//! `cargo xtask`: set up a fresh machine, build, test, and run the lab.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// The bpf-linker release that links against the nightly toolchain's own LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the build, the tests and the lab use.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip: namespaces, veth, addresses, routes"),
    (
        "util-linux",
        "nsenter: run ipnat inside a namespace without hiding bpffs",
    ),
    ("procps", "sysctl"),
    (
        "ethtool",
        "turn checksum offload off so frames look like they came off a wire",
    ),
    ("iputils-ping", "ICMP tests"),
    ("nftables", "firewall and NAT baselines"),
    ("iptables", "firewall tests"),
    ("tcpdump", "debugging captures"),
    ("iperf3", "throughput runs"),
    (
        "etcd-server",
        "the fleet's table: the tests start their own etcd (never the system's daemon)",
    ),
    (
        "bpftool",
        "detach a program behind ipnat's back (the fleet's readiness tests)",
    ),
    (
        "bird2",
        "the fleet's routing daemon: the tests and the lab run their own (never the system's)",
    ),
    (
        "protobuf-compiler",
        "protoc: the etcd client's build generates its gRPC code",
    ),
    (
        "libprotobuf-dev",
        "the well-known .proto files the etcd API imports",
    ),
];

/// Debian's policy hook that tells maintainer scripts whether they may start services.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ipnat's project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (idempotent): rust-src for nightly, bpf-linker
    /// built against nightly's LLVM, and the Debian packages.
    Setup,
    /// Build the `ipnat` binary with its embedded eBPF programs.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run the unit tests and the root-only integration tests (serially).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, then show ipnat at work in a simulated cloud made of network namespaces:
    /// part 1 a gateway's 1:1 NAT, part 2 host orientation, part 3 a second NIC's addresses
    /// steered from the cloud's metadata, part 4 a fleet of three gateways (etcd, bird, ECMP,
    /// a gateway dying under traffic), part 5 that fleet against conntrack NAT gateways, part 6
    /// cloud failover in a VPC (ten failovers per cloud and mode through the fake APIs). All
    /// six, or one with `--part N`.
    Lab {
        /// Run only this part (1 to 6).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=6))]
        part: Option<u8>,
    },
    /// Set up, build (release), then run `ipnat bench ARGS` (per-packet cost; see `ipnat bench
    /// --help`), the forwarding benchmark (`--forward` then its arguments: --rounds N, --secs S,
    /// --flows 1,1000,100000) and the steering benchmark (`--steer` then --rounds N, --secs S,
    /// --sources 1,100,1000,10000), and the control-plane benchmark (a fake cloud of 1,000 NICs
    /// with 20 addresses each; table loads), writing their reports to docs/benchmarks/.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Redraw docs/benchmarks/forwarding.svg from the last forwarding report.
    Chart,
    /// Set up, build (release), and package `ipnat` as a Debian package (dpkg-deb): the binary
    /// in /usr/sbin, ipnat.service and ipnat@.service (installed, not enabled), the example
    /// config as /etc/ipnat/ipnat.toml (a conffile), the manual pages. Prints its path.
    Deb {
        /// Package the debug build instead (what the tests install).
        #[arg(long)]
        debug: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup(),
        Task::Build { release } => setup().and_then(|()| build(release)),
        Task::Test { args } => setup().and_then(|()| test(&args)),
        Task::Lab { part } => setup().and_then(|()| lab(part)),
        Task::Bench { args } => setup().and_then(|()| bench(&args)),
        Task::Chart => chart(),
        Task::Deb { debug } => setup()
            .and_then(|()| build(!debug))
            .and_then(|()| deb(!debug))
            .map(|path| println!("{}", path.display())),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// PATH with `$CARGO_HOME/bin` first, so child builds find the bpf-linker we installed.
fn path_env() -> OsString {
    let bin = cargo_home().join("bin");
    let mut paths = vec![bin.clone()];
    if let Some(p) = env::var_os("PATH") {
        paths.extend(env::split_paths(&p).filter(|p| *p != bin));
    }
    env::join_paths(paths).expect("PATH")
}

fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// Runs a command, streaming its output; fails if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    cmd.env("PATH", path_env());
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None if it could not run or failed.
fn output(cmd: &mut Command) -> Option<String> {
    cmd.env("PATH", path_env()).stderr(Stdio::null());
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn setup() -> Result<()> {
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    bpffs()?;
    step("setup complete");
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(pkg, _)| {
            output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", pkg]))
                .is_none_or(|s| !s.starts_with("ii"))
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    for (pkg, why) in DEBIAN_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        step(&format!("Debian package {pkg} missing ({why})"));
    }
    if !is_root() {
        bail!(
            "installing Debian packages needs root: run as root, or `apt-get install {}`",
            missing.join(" ")
        );
    }
    step("apt-get update");
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    step(&format!("apt-get install {}", missing.join(" ")));
    // etcd's package starts a system daemon on install (on port 2379, with its data in
    // /var/lib/etcd): the tests and the lab run their own instances and want none. Debian's
    // policy hook denies the start; one already there is left as it is.
    let hook = Path::new(POLICY_RC_D);
    let own_hook = !hook.exists();
    if own_hook {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            hook,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(hook, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if own_hook {
        std::fs::remove_file(hook).with_context(|| format!("removing {POLICY_RC_D}"))?;
    }
    installed
}

/// A bpffs at /sys/fs/bpf, as systemd mounts one at boot: ipnat never mounts one itself (it
/// cannot tell whether the mount would outlive it), and a fresh machine without systemd has
/// none.
fn bpffs() -> Result<()> {
    const BPFFS: &str = "/sys/fs/bpf";
    let fs = output(Command::new("stat").args(["-f", "-c", "%T", BPFFS]));
    if fs.as_deref().map(str::trim) == Some("bpf_fs") {
        step(&format!("bpffs: mounted at {BPFFS}"));
        return Ok(());
    }
    if !is_root() {
        bail!("no bpffs at {BPFFS}: run as root, or `mount -t bpf bpf {BPFFS}`");
    }
    step(&format!(
        "bpffs: none at {BPFFS}; mount -t bpf bpf {BPFFS} (as systemd does at boot)"
    ));
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

fn nightly_rust_src() -> Result<()> {
    let toolchains =
        output(Command::new("rustup").args(["toolchain", "list"])).context("rustup not found")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain (the eBPF programs need -Z build-std)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src for nightly: present");
        return Ok(());
    }
    step("adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly sysroot's lib directory, its LLVM shared library's link name, and LLVM's major.
fn nightly_llvm() -> Result<(PathBuf, String, String)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let name = std::fs::read_dir(&lib)
        .with_context(|| format!("read {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM*.so in {}", lib.display()))?;
    let link_name = name
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_owned();
    let vv =
        output(Command::new("rustc").args(["+nightly", "-vV"])).context("rustc +nightly -vV")?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in rustc -vV")?
        .to_owned();
    Ok((lib, link_name, major))
}

fn bpf_linker() -> Result<()> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        if v.contains(BPF_LINKER_VERSION) {
            step(&format!("bpf-linker: {}", v.trim()));
            return Ok(());
        }
        step(&format!(
            "bpf-linker present but not {BPF_LINKER_VERSION} ({}): reinstalling",
            v.trim()
        ));
    }
    let (lib, link_name, major) = nightly_llvm()?;
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's own LLVM {major} ({}/lib{link_name}.so), about a minute",
        lib.display()
    ));
    let rustflags = format!(
        "-L native={l} -l dylib={link_name} -C link-arg=-Wl,-rpath,{l}",
        l = lib.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major},no-llvm-linking")])
        .arg("--root")
        .arg(cargo_home())
        .env("RUSTFLAGS", rustflags))?;
    let v = output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker does not run after install")?;
    step(&format!("bpf-linker: {}", v.trim()));
    Ok(())
}

/// `cargo` in the workspace, with the eBPF build required (never stubbed).
fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root())
        .args(args)
        .env("IPNAT_REQUIRE_EBPF", "1");
    c
}

fn build(release: bool) -> Result<()> {
    let mut args = vec![
        "build",
        "--package",
        "ipnat-user",
        "--package",
        "ipnat-tests",
    ];
    if release {
        args.push("--release");
    }
    step("building ipnat (eBPF programs embedded)");
    run(&mut cargo(&args))
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The maintainer scripts: the data plane outlives the controller, so removing the package
/// takes it apart while the binary is still there; an upgrade restarts the controller, which
/// adopts the running data plane without a gap.
const PRERM: &str = r#"#!/bin/sh
set -e
case "$1" in
remove|deconfigure)
    if [ -d /run/systemd/system ]; then
        systemctl stop ipnat.service 'ipnat@*.service' || true
    fi
    # Every config's data plane: ipnat.toml on the host, NAME.toml in /run/netns/NAME.
    for conf in /etc/ipnat/*.toml; do
        [ -e "$conf" ] || continue
        pin=$(sed -n 's/^[[:space:]]*pin_path[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$conf" | head -n 1)
        pin=${pin:-/sys/fs/bpf/ipnat}
        [ -d "$pin" ] || continue
        name=$(basename "$conf" .toml)
        if [ "$name" != ipnat ] && [ -e "/run/netns/$name" ]; then
            nsenter --net="/run/netns/$name" -- /usr/sbin/ipnat down --pin-path "$pin" || true
        else
            /usr/sbin/ipnat down --pin-path "$pin" || true
        fi
    done
    ;;
esac
exit 0
"#;

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade: a running controller is restarted and adopts its data plane without a gap.
    # A new install enables and starts nothing (the example config maps addresses on eth0).
    if [ -n "$2" ]; then
        systemctl try-restart ipnat.service 'ipnat@*.service' || true
    fi
fi
exit 0
"#;

/// Stages and builds the .deb from the (release or debug) build; returns its path.
fn deb(release: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("ipnat");
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture")?
        .trim()
        .to_owned();
    let out_dir = target_dir().join("debian");
    let stage = out_dir.join(format!("ipnat_{version}_{arch}"));
    let _ = std::fs::remove_dir_all(&stage);
    let install = |from: &Path, to: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dest = stage.join(to);
        std::fs::create_dir_all(dest.parent().expect("a parent"))?;
        std::fs::copy(from, &dest).with_context(|| format!("copy {}", from.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let write = |to: &str, text: &str, mode: u32| -> Result<()> {
        let tmp = out_dir.join("file.tmp");
        std::fs::create_dir_all(&out_dir)?;
        std::fs::write(&tmp, text)?;
        install(&tmp, to, mode)?;
        std::fs::remove_file(tmp)?;
        Ok(())
    };
    step(&format!(
        "packaging {} as ipnat {version} ({arch})",
        bin.display()
    ));
    install(&bin, "usr/sbin/ipnat", 0o755)?;
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg(stage.join("usr/sbin/ipnat")))?;
    for unit in ["ipnat.service", "ipnat@.service"] {
        install(
            &root.join("dist").join(unit),
            &format!("lib/systemd/system/{unit}"),
            0o644,
        )?;
    }
    install(
        &root.join("ipnat.example.toml"),
        "etc/ipnat/ipnat.toml",
        0o600,
    )?;
    install(
        &root.join("README.md"),
        "usr/share/doc/ipnat/README.md",
        0o644,
    )?;
    write(
        "usr/share/doc/ipnat/copyright",
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: ipnat\n\nFiles: *\nCopyright: the ipnat authors\nLicense: MIT or Apache-2.0\n",
        0o644,
    )?;
    let man = stage.join("usr/share/man/man8");
    run(Command::new(&bin).arg("manpages").arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        run(Command::new("gzip").args(["-9n"]).arg(page?.path()))?;
    }
    let size_kib = output(Command::new("du").args(["-sk"]).arg(&stage))
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "0".into());
    write(
        "DEBIAN/control",
        &format!(
            "Package: ipnat\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: ipnat developers <ipnat@localhost>\nInstalled-Size: {size_kib}\n\
             Depends: libc6, libgcc-s1, util-linux\nSection: net\nPriority: optional\n\
             Description: stateless one-to-one IPv4 NAT in XDP/TC\n \
             ipnat rewrites elastic IP <-> private IP one to one in the kernel (XDP and TC)\n \
             with exact checksums, steers a secondary NIC's addresses out of that NIC, and\n \
             keeps both in step with AWS or Alibaba Cloud metadata or a config file.\n"
        ),
        0o644,
    )?;
    write("DEBIAN/conffiles", "/etc/ipnat/ipnat.toml\n", 0o644)?;
    write("DEBIAN/prerm", PRERM, 0o755)?;
    write("DEBIAN/postinst", POSTINST, 0o755)?;
    let deb = out_dir.join(format!("ipnat_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

fn test(extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the integration tests create network namespaces and load eBPF programs: run as root"
        );
    }
    build(false)?;
    // The package test installs this one.
    let deb = deb(false)?;
    step("running unit and integration tests (serially: they share bpffs and the kernel)");
    // Default members: the eBPF crate only builds for the BPF target.
    let mut c = cargo(&["test", "--no-fail-fast"]);
    c.env("IPNAT_BIN", target_dir().join("debug/ipnat"))
        .env("IPNAT_DEB", &deb);
    c.args(["--", "--test-threads=1"]).args(extra);
    c.env("PATH", path_env()).stdout(Stdio::piped());
    let mut child = c.spawn().context("cannot start cargo test")?;
    // Pass the output through and add up cargo's "test result:" lines into one closing line.
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (kind, n) = (
                    words.next(),
                    words.next().and_then(|n| n.parse::<u64>().ok()),
                );
                match (kind, n) {
                    (Some("passed"), Some(n)) => passed += n,
                    (Some("failed"), Some(n)) => failed += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and make network namespaces: run as root");
    }
    step("building ipnat and the forwarding benchmark (release)");
    run(&mut cargo(&[
        "build",
        "--release",
        "--package",
        "ipnat-user",
        "--package",
        "ipnat-tests",
    ]))?;
    let release = target_dir().join("release");
    let dir = workspace_root().join("docs/benchmarks");
    std::fs::create_dir_all(&dir)?;
    // `--forward ARGS...` and `--steer ARGS...` after the per-packet arguments go to the
    // forwarding and the steering benchmarks.
    let mut sections: [Vec<String>; 3] = Default::default();
    let mut at = 0;
    for a in args {
        match a.as_str() {
            "--forward" => at = 1,
            "--steer" => at = 2,
            _ => sections[at].push(a.clone()),
        }
    }
    let json = dir.join("per-packet.json");
    step(&format!("ipnat bench {}", sections[0].join(" ")));
    run(Command::new(release.join("ipnat"))
        .arg("bench")
        .arg("--json-out")
        .arg(&json)
        .args(&sections[0]))?;
    let none = Vec::new();
    for (bin, report, extra) in [
        ("ipnat-fwd-bench", "forwarding.json", &sections[1]),
        ("ipnat-steer-bench", "steering.json", &sections[2]),
        ("ipnat-sync-bench", "control-plane.json", &none),
    ] {
        step(&format!("{bin} {}", extra.join(" ")));
        run(Command::new(release.join(bin))
            .env("IPNAT_BIN", release.join("ipnat"))
            .arg("--json-out")
            .arg(dir.join(report))
            .args(extra))?;
    }
    let chart = dir.join("forwarding.svg");
    std::fs::write(
        &chart,
        forwarding_chart(&serde_json::from_slice(&std::fs::read(
            dir.join("forwarding.json"),
        )?)?),
    )?;
    println!("reports: {} (chart: {})", dir.display(), chart.display());
    Ok(())
}

/// A forwarding report row's name in the chart: the setup, with its generator and sink when
/// the report has them.
fn row_label(r: &serde_json::Value) -> String {
    let setup = r["setup"].as_str().unwrap_or("");
    match (r["generator"].as_str(), r["sink"].as_str()) {
        (Some(g), Some(k)) => format!("{setup} ({g}, {k} sink)"),
        _ => setup.to_owned(),
    }
}

/// A grouped bar chart (SVG) of the forwarding report: Mpps per setup, one group per flow
/// count.
fn forwarding_chart(rows: &serde_json::Value) -> String {
    let rows = rows.as_array().cloned().unwrap_or_default();
    let mut setups: Vec<String> = Vec::new();
    let mut flows: Vec<u64> = Vec::new();
    for r in &rows {
        let s = row_label(r);
        if !setups.contains(&s) {
            setups.push(s);
        }
        let f = r["flows"].as_u64().unwrap_or(0);
        if !flows.contains(&f) {
            flows.push(f);
        }
    }
    let max = rows
        .iter()
        .filter_map(|r| r["mpps"].as_f64())
        .fold(0.1, f64::max);
    let colours = [
        "#1f77b4", "#9467bd", "#7f7f7f", "#ff7f0e", "#d62728", "#2ca02c",
    ];
    let (bar, gap, left, top, height) = (22.0, 30.0, 60.0, 40.0, 260.0);
    let group = bar * setups.len() as f64 + gap;
    let width = left + group * flows.len() as f64 + 260.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">Forwarded and translated, Mpps (median of rounds; see benchmarks.md)</text>\n",
        top + height + 50.0
    );
    for (gi, f) in flows.iter().enumerate() {
        let x0 = left + gi as f64 * group;
        for (si, s) in setups.iter().enumerate() {
            let Some(m) = rows
                .iter()
                .find(|r| row_label(r) == *s && r["flows"].as_u64() == Some(*f))
                .and_then(|r| r["mpps"].as_f64())
            else {
                continue;
            };
            let h = m / max * height;
            svg += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{}\" height=\"{h:.1}\" fill=\"{}\"><title>{s}: {m:.3} Mpps</title></rect>\n",
                x0 + si as f64 * bar,
                top + height - h,
                bar - 2.0,
                colours[si % colours.len()]
            );
        }
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">{f} flow{}</text>\n",
            x0,
            top + height + 18.0,
            if *f == 1 { "" } else { "s" }
        );
    }
    for (si, s) in setups.iter().enumerate() {
        let y = top + 10.0 + si as f64 * 18.0;
        let x = left + group * flows.len() as f64 + 10.0;
        svg += &format!(
            "<rect x=\"{x}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{y:.1}\" dy=\"10\">{s}</text>\n",
            y,
            colours[si % colours.len()],
            x + 18.0
        );
    }
    svg += &format!(
        "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n<text x=\"5\" y=\"{top}\">{max:.2}</text>\n</svg>\n",
        top + height,
        left + group * flows.len() as f64,
        top + height
    );
    svg
}

/// `cargo xtask chart`: redraws docs/benchmarks/forwarding.svg from forwarding.json.
fn chart() -> Result<()> {
    let dir = workspace_root().join("docs/benchmarks");
    let rows = serde_json::from_slice(&std::fs::read(dir.join("forwarding.json"))?)?;
    std::fs::write(dir.join("forwarding.svg"), forwarding_chart(&rows))?;
    Ok(())
}

fn lab(part: Option<u8>) -> Result<()> {
    if !is_root() {
        bail!("the lab creates network namespaces and loads eBPF programs: run as root");
    }
    build(false)?;
    let mut c = Command::new(target_dir().join("debug/ipnat-lab"));
    c.env("IPNAT_BIN", target_dir().join("debug/ipnat"));
    if let Some(part) = part {
        c.args(["--part", &part.to_string()]);
    }
    run(&mut c)
}
