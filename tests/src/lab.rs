//! A simulated cloud in network namespaces: an internet host, a gateway running `ipnat`, and a
//! backend that owns the private address of a one-to-one mapping.
//!
//! ```text
//!  internet (203.0.113.10) eth0 ── ext0 (203.0.113.1) gateway (10.0.1.1) int0 ── eth0 backend (10.0.1.10)
//!                                       ipnat: 198.51.100.10 <-> 10.0.1.10
//! ```
//! The internet host routes the EIP's block via the gateway, as a provider's edge would.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, veth};

pub const INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const GW_EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const GW_INT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
pub const EIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// A second mapping, to a second address of the backend (for hairpin tests).
pub const EIP2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub const BACKEND2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Options of the lab's links.
#[derive(Clone, Copy, Debug)]
pub struct LabOptions {
    /// Turn off transmit checksum offload on the internet host, so that its frames carry full
    /// checksums like frames off a wire (XDP never sees a partial checksum from a real NIC).
    pub inet_tx_csum_off: bool,
    /// The same for the backend. Left on, the backend's packets reach the gateway's TC hook
    /// with partial checksums, the case the kernel's helpers handle.
    pub backend_tx_csum_off: bool,
    /// Turn off transmit checksum offload on the gateway's interfaces, so the kernel completes
    /// any partial checksum after TC and a capture at the receiver can verify it.
    pub gateway_tx_csum_off: bool,
    /// The config's `fast_path`.
    pub fast_path: bool,
    /// The gateway's external side is a bridge (`brx`, with ext0 as its port): an interface
    /// without native XDP.
    pub bridge_ext: bool,
    /// An XDP program on the backend's end of int0's veth, which XDP_REDIRECT into int0 needs.
    pub backend_xdp: bool,
    /// The MTU of every link (jumbo frames above about 3500: multi-buffer XDP).
    pub mtu: Option<u32>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            inet_tx_csum_off: true,
            backend_tx_csum_off: true,
            gateway_tx_csum_off: true,
            fast_path: true,
            bridge_ext: false,
            backend_xdp: true,
            mtu: None,
        }
    }
}

pub struct GatewayLab {
    pub opts: LabOptions,
    /// The XDP pass programs on the hosts' ends of the veths (detached when dropped).
    peers: std::sync::Mutex<Vec<aya::Ebpf>>,
    pub inet: Netns,
    pub gw: Netns,
    pub backend: Netns,
}

/// `GET /metrics` from an `ipnat run` in `ns` on the default address.
pub fn metrics(ns: &Netns) -> Result<String> {
    ns.within(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9469")?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })
}

/// Packets `ns`'s kernel forwarded (`ForwDatagrams` of /proc/net/snmp).
pub fn kernel_forwarded(ns: &Netns) -> Result<u64> {
    let out = ns.run("cat", &["/proc/net/snmp"])?;
    let text = String::from_utf8(out.stdout)?;
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().context("Ip:")?, ip.next().context("Ip:")?);
    let i = names
        .split_whitespace()
        .position(|n| n == "ForwDatagrams")
        .context("ForwDatagrams")?;
    Ok(values
        .split_whitespace()
        .nth(i)
        .context("ForwDatagrams value")?
        .parse()?)
}

/// Attaches ipnat's pass-everything XDP program to `iface` in `ns`.
pub fn xdp_pass(ns: &Netns, iface: &'static str) -> Result<aya::Ebpf> {
    ns.within(move || {
        let mut ebpf = aya::Ebpf::load(ipnat::EBPF_OBJECT)?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut(ipnat_common::names::XDP_PASS_PROGRAM)
            .context("no pass program in the eBPF object")?
            .try_into()?;
        prog.load()?;
        prog.attach(iface, aya::programs::XdpMode::Driver)?;
        Ok(ebpf)
    })
}

pub fn ethtool_tx_off(ns: &Netns, iface: &str) -> Result<()> {
    ns.run("ethtool", &["-K", iface, "tx", "off"])
        .context("ethtool is needed to turn checksum offload off (run `cargo xtask setup`)")?;
    Ok(())
}

impl GatewayLab {
    pub fn new(opts: LabOptions) -> Result<Self> {
        let lab = Self {
            peers: std::sync::Mutex::new(Vec::new()),
            opts,
            inet: Netns::new("inet")?,
            gw: Netns::new("gw")?,
            backend: Netns::new("be")?,
        };
        veth(&lab.inet, "eth0", &lab.gw, "ext0")?;
        veth(&lab.backend, "eth0", &lab.gw, "int0")?;
        if let Some(mtu) = opts.mtu {
            let mtu = mtu.to_string();
            for (ns, dev) in [
                (&lab.inet, "eth0"),
                (&lab.gw, "ext0"),
                (&lab.gw, "int0"),
                (&lab.backend, "eth0"),
            ] {
                ns.ip(&["link", "set", dev, "mtu", &mtu])?;
            }
        }
        lab.inet
            .ip(&["addr", "add", &format!("{INET}/24"), "dev", "eth0"])?;
        lab.inet.ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            &GW_EXT.to_string(),
        ])?;
        if opts.bridge_ext {
            lab.gw.ip(&["link", "add", "brx", "type", "bridge"])?;
            lab.gw.ip(&["link", "set", "ext0", "master", "brx"])?;
            lab.gw.ip(&["link", "set", "brx", "up"])?;
            lab.gw
                .ip(&["addr", "add", &format!("{GW_EXT}/24"), "dev", "brx"])?;
        } else {
            lab.gw
                .ip(&["addr", "add", &format!("{GW_EXT}/24"), "dev", "ext0"])?;
        }
        lab.gw
            .ip(&["addr", "add", &format!("{GW_INT}/24"), "dev", "int0"])?;
        lab.gw.sysctl("net.ipv4.ip_forward", "1")?;
        // A gateway that sends a packet back out of the interface it came in on (hairpin)
        // must not tell the sender to go direct: the sender would then skip the translation.
        for conf in ["all", "default", "ext0", "int0"] {
            lab.gw
                .sysctl(&format!("net.ipv4.conf.{conf}.send_redirects"), "0")?;
        }
        lab.backend
            .ip(&["addr", "add", &format!("{BACKEND}/24"), "dev", "eth0"])?;
        lab.backend
            .ip(&["addr", "add", &format!("{BACKEND2}/24"), "dev", "eth0"])?;
        lab.backend
            .ip(&["route", "add", "default", "via", &GW_INT.to_string()])?;
        // XDP_REDIRECT/XDP_TX into a veth needs an XDP program on its peer (a real NIC needs
        // nothing of the kind). GRO would do too, but would merge what arrives into frames
        // whose checksums a capture cannot verify.
        lab.peers.lock().unwrap().push(xdp_pass(&lab.inet, "eth0")?);
        if opts.backend_xdp {
            lab.peers
                .lock()
                .unwrap()
                .push(xdp_pass(&lab.backend, "eth0")?);
        }
        if opts.inet_tx_csum_off {
            ethtool_tx_off(&lab.inet, "eth0")?;
        }
        if opts.backend_tx_csum_off {
            ethtool_tx_off(&lab.backend, "eth0")?;
        }
        if opts.gateway_tx_csum_off {
            ethtool_tx_off(&lab.gw, "ext0")?;
            ethtool_tx_off(&lab.gw, "int0")?;
        }
        Ok(lab)
    }

    /// Packets the gateway's kernel forwarded.
    pub fn kernel_forwarded(&self) -> Result<u64> {
        kernel_forwarded(&self.gw)
    }

    /// The config the gateway's ipnat runs with.
    pub fn config(&self, pin_path: &str) -> String {
        format!(
            "pin_path = \"{pin_path}\"\nfast_path = {}\n\n\
             [[interface]]\nname = \"{}\"\n\n\
             [[interface]]\nname = \"int0\"\n\n\
             [[mapping]]\npublic = \"{EIP}\"\nprivate = \"{BACKEND}\"\n\n\
             [[mapping]]\npublic = \"{EIP2}\"\nprivate = \"{BACKEND2}\"\n",
            self.opts.fast_path,
            if self.opts.bridge_ext { "brx" } else { "ext0" }
        )
    }

    /// Starts `ipnat run` on the gateway.
    pub fn start_ipnat(&self) -> Result<Ipnat> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin = format!("/sys/fs/bpf/ipnat-lab-{}-{n}", std::process::id());
        Ipnat::start(&self.gw, &self.config(&pin), &pin)
    }
}

/// Where the `ipnat` binary is: `$IPNAT_BIN`, else the workspace's `target/debug/ipnat`.
pub fn ipnat_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IPNAT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/ipnat")
}

/// Pin directories of the `ipnat run`s started here, for [`cleanup_all`].
static PINS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Everything this process made, gone: `ipnat down` for every data plane it started, then the
/// namespaces and children ([`crate::netns::cleanup_all`]). For signal handlers.
pub fn cleanup_all() {
    crate::netns::cleanup_all();
    for pin in PINS.lock().map(|p| p.clone()).unwrap_or_default() {
        let _ = ipnat::dataplane::down(&pin);
    }
}

/// On SIGINT or SIGTERM (the `Drop` guards would not run), tears down what this process made
/// ([`cleanup_all`]) and exits 130: the signals are blocked in every thread started after this
/// call and waited for in one. Call it first thing in `main`.
pub fn cleanup_on_signal() {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().expect("block signals");
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("\n{sig}: tearing down");
            cleanup_all();
            std::process::exit(130);
        }
    });
}

/// A running `ipnat run`, stopped with SIGTERM on drop.
pub struct Ipnat {
    child: Option<Child>,
    pub pin_path: PathBuf,
    config_path: PathBuf,
    /// The network namespace `ipnat run` runs in (`ipnat down` must run there too: it puts
    /// back that namespace's settings).
    netns_path: Option<String>,
    /// Whether an `ipnat run` of this instance ever came up: only then is the data plane at
    /// the pin path this instance's to remove on drop.
    owns_pins: bool,
    /// The controller's limit on open files (soft and hard), if not the caller's.
    nofile: Option<u64>,
    /// The `ipnat` binary this instance runs (and takes down with).
    bin: PathBuf,
}

impl Ipnat {
    pub fn start(ns: &Netns, config: &str, pin_path: &str) -> Result<Self> {
        Self::start_limited(ns, config, pin_path, None)
    }

    /// [`Ipnat::start`] with another `ipnat` binary than [`ipnat_bin`] (e.g. a package's).
    pub fn start_binary(ns: &Netns, config: &str, pin_path: &str, bin: &Path) -> Result<Self> {
        Self::start_with(ns, config, pin_path, None, bin.to_owned())
    }

    /// [`Ipnat::start`] with a limit on the controller's open files (`nofile`, soft and hard).
    pub fn start_limited(
        ns: &Netns,
        config: &str,
        pin_path: &str,
        nofile: Option<u64>,
    ) -> Result<Self> {
        Self::start_with(ns, config, pin_path, nofile, ipnat_bin())
    }

    fn start_with(
        ns: &Netns,
        config: &str,
        pin_path: &str,
        nofile: Option<u64>,
        bin: PathBuf,
    ) -> Result<Self> {
        let config_path = std::env::temp_dir().join(format!(
            "ipnat-{}-{}.toml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut me = Self {
            child: None,
            pin_path: PathBuf::from(pin_path),
            config_path,
            netns_path: None,
            owns_pins: false,
            nofile,
            bin,
        };
        if let Ok(mut pins) = PINS.lock() {
            pins.push(me.pin_path.clone());
        }
        me.spawn(ns, config)?;
        Ok(me)
    }

    /// Starts `ipnat run` (again) with `config`; it adopts whatever an earlier run pinned.
    pub fn spawn(&mut self, ns: &Netns, config: &str) -> Result<()> {
        if self.child.is_some() {
            bail!("ipnat is already running");
        }
        let bin = self.bin.clone();
        if !bin.is_file() {
            bail!(
                "{} not found: build it first (cargo xtask test does)",
                bin.display()
            );
        }
        std::fs::write(&self.config_path, config)?;
        self.netns_path = Some(ns.path());
        let mut cmd = ns.command(bin.to_str().context("binary path")?);
        let nofile = self.nofile;
        // SAFETY: pre_exec only calls sigprocmask and setrlimit, which are async-signal-safe. A
        // caller that blocked SIGINT/SIGTERM to handle them itself must not pass that mask on.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                if let Some(n) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                nix::sys::signal::SigSet::empty()
                    .thread_set_mask()
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        crate::netns::track_child(child.id() as i32, true);
        self.child = Some(child);
        self.wait_ready()?;
        self.owns_pins = true;
        Ok(())
    }

    /// The controller's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Rewrites the config file (ipnat watches it).
    pub fn rewrite_config(&self, config: &str) -> Result<()> {
        // Write then rename, as editors and config management do.
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, config)?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    /// Rewrites the config file and sends SIGHUP.
    pub fn reload(&mut self, config: &str) -> Result<()> {
        std::fs::write(&self.config_path, config)?;
        let child = self.child.as_ref().context("not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        Ok(())
    }

    /// Kills the controller with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        crate::netns::track_child(child.id() as i32, false);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Waits until ipnat has pinned its maps and attached (it logs "running" after attaching).
    fn wait_ready(&mut self) -> Result<()> {
        let child = self.child.as_mut().expect("running");
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let ready = line.contains("ipnat running");
                lines.push(line);
                if ready {
                    let _ = tx.send(Ok(()));
                }
            }
            let _ = tx.send(Err(lines.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(log)) => bail!("ipnat exited before it was ready:\n{log}"),
            Err(_) => bail!("ipnat not ready after 20 s"),
        }
    }

    /// `ipnat stats --json` against this instance.
    pub fn stats_json(&self) -> Result<serde_json::Value> {
        let out = crate::netns::sh(
            std::process::Command::new(&self.bin)
                .args(["stats", "--json", "--pin-path"])
                .arg(&self.pin_path),
        )?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Stops the controller (SIGTERM) and returns its exit status. The data plane stays.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.terminate()
    }

    /// `ipnat down` for this instance's pin path: (exit status, stdout + stderr).
    pub fn down(&self) -> Result<(std::process::ExitStatus, String)> {
        let mut cmd = std::process::Command::new("nsenter");
        if let Some(ns) = &self.netns_path {
            cmd.arg(format!("--net={ns}"));
        }
        let out = cmd
            .arg("--")
            .arg(&self.bin)
            .args(["down", "--pin-path"])
            .arg(&self.pin_path)
            .output()?;
        Ok((
            out.status,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        crate::netns::track_child(child.id() as i32, false);
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Ok(child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ipnat {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
        let _ = std::fs::remove_file(&self.config_path);
        if self.owns_pins
            && self.pin_path.exists()
            && self.down().map(|(s, _)| !s.success()).unwrap_or(true)
        {
            let _ = ipnat::dataplane::down(&self.pin_path);
        }
    }
}

/// What each side of one exchange saw.
#[derive(Debug)]
pub struct Exchange {
    /// The peer address the server's socket reported.
    pub server_saw_peer: SocketAddr,
    /// The local address of the server's accepted socket.
    pub server_local: SocketAddr,
    /// The address the client's reply came from (UDP) or it connected to (TCP).
    pub client_saw_peer: SocketAddr,
    /// The bytes the server received.
    pub request: Vec<u8>,
    /// The bytes the client received.
    pub response: Vec<u8>,
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP request from `client` to `target:port`, served by a listener on `server`. The server
/// answers with the request reversed followed by `response_len` bytes of filler.
pub fn tcp_exchange(
    client: &Netns,
    server: &Netns,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
    response_len: usize,
) -> Result<Exchange> {
    tcp_exchange_from(client, None, server, target, port, request, response_len)
}

/// [`tcp_exchange`] with the client's socket bound to `bind` first.
pub fn tcp_exchange_from(
    client: &Netns,
    bind: Option<Ipv4Addr>,
    server: &Netns,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
    response_len: usize,
) -> Result<Exchange> {
    tcp_exchange_at(
        client,
        bind,
        server,
        Ipv4Addr::UNSPECIFIED,
        target,
        port,
        request,
        response_len,
    )
}

/// [`tcp_exchange_from`] with the server listening on `listen` (the wildcard address for
/// `0.0.0.0`).
#[allow(clippy::too_many_arguments)]
pub fn tcp_exchange_at(
    client: &Netns,
    bind: Option<Ipv4Addr>,
    server: &Netns,
    listen: Ipv4Addr,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
    response_len: usize,
) -> Result<Exchange> {
    let listener = server.within(move || Ok(TcpListener::bind((listen, port))?))?;
    let server_thread = std::thread::spawn(move || -> Result<(SocketAddr, SocketAddr, Vec<u8>)> {
        listener.set_nonblocking(false)?;
        let (mut s, peer) = listener.accept()?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        let local = s.local_addr()?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut req)?;
        let mut resp: Vec<u8> = req.iter().rev().copied().collect();
        resp.extend((0..response_len).map(|i| (i % 251) as u8));
        s.write_all(&resp)?;
        Ok((peer, local, req))
    });
    let req = request.to_vec();
    let client_result = client.within(move || -> Result<(SocketAddr, Vec<u8>)> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if let Some(addr) = bind {
            sock.bind(&SocketAddr::from((addr, 0)).into())?;
        }
        sock.connect_timeout(&SocketAddr::from((target, port)).into(), TIMEOUT)
            .with_context(|| format!("connect to {target}:{port}"))?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        s.write_all(&(req.len() as u32).to_be_bytes())?;
        s.write_all(&req)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        Ok((s.peer_addr()?, resp))
    });
    let (client_saw_peer, response) = match client_result {
        Ok(r) => r,
        Err(e) => {
            // Unblock the server's accept so its thread ends.
            let _ = server.within(move || {
                Ok(TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    TIMEOUT,
                ))
            });
            let _ = server_thread.join();
            return Err(e);
        }
    };
    let (server_saw_peer, server_local, request) = server_thread.join().expect("server thread")?;
    Ok(Exchange {
        server_saw_peer,
        server_local,
        client_saw_peer,
        request,
        response,
    })
}

/// A UDP request from `client` to `target:port`; the server echoes it reversed.
pub fn udp_exchange(
    client: &Netns,
    server: &Netns,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
) -> Result<Exchange> {
    udp_exchange_at(
        client,
        None,
        server,
        Ipv4Addr::UNSPECIFIED,
        target,
        port,
        request,
    )
}

/// [`udp_exchange`] with the client's socket bound to `bind` (else the wildcard, unconnected)
/// and the server's to `listen`.
pub fn udp_exchange_at(
    client: &Netns,
    bind: Option<Ipv4Addr>,
    server: &Netns,
    listen: Ipv4Addr,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
) -> Result<Exchange> {
    let sock = server.within(move || Ok(UdpSocket::bind((listen, port))?))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    let server_thread = std::thread::spawn(move || -> Result<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 65536];
        let (n, peer) = sock.recv_from(&mut buf)?;
        buf.truncate(n);
        let resp: Vec<u8> = buf.iter().rev().copied().collect();
        sock.send_to(&resp, peer)?;
        Ok((peer, buf))
    });
    let req = request.to_vec();
    let (client_saw_peer, response) = client.within(move || -> Result<(SocketAddr, Vec<u8>)> {
        let s = UdpSocket::bind((bind.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send_to(&req, (target, port))?;
        let mut buf = vec![0u8; 65536];
        let (n, from) = s.recv_from(&mut buf).context("no UDP reply")?;
        buf.truncate(n);
        Ok((from, buf))
    })?;
    let (server_saw_peer, request) = server_thread.join().expect("server thread")?;
    Ok(Exchange {
        server_saw_peer,
        server_local: SocketAddr::from((listen, port)),
        client_saw_peer,
        request,
        response,
    })
}

/// The cloud's usual NAT gateway: one NIC. A VPC router (`vpc`) joins three subnets: the
/// internet side (203.0.113.0/24), the gateway's subnet (10.0.0.0/24, gateway 10.0.0.5) and
/// the backends' subnet (10.0.1.0/24). The EIP is routed to the gateway's NIC; the backends'
/// route table sends everything else to the gateway (source/destination check off), so both
/// directions enter and leave the gateway by its only NIC.
pub struct OneNicLab {
    pub inet: Netns,
    pub vpc: Netns,
    pub gw: Netns,
    pub backend: Netns,
    peers: Vec<aya::Ebpf>,
}

pub const ONE_NIC_GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

impl OneNicLab {
    pub fn new() -> Result<Self> {
        let lab = Self {
            inet: Netns::new("inet")?,
            vpc: Netns::new("vpc")?,
            gw: Netns::new("gw1")?,
            backend: Netns::new("be")?,
            peers: Vec::new(),
        };
        veth(&lab.inet, "eth0", &lab.vpc, "inet0")?;
        veth(&lab.gw, "eth0", &lab.vpc, "gw0")?;
        veth(&lab.backend, "eth0", &lab.vpc, "be0")?;
        for (ns, addr, via) in [
            (&lab.inet, "203.0.113.10/24", "203.0.113.1"),
            (&lab.gw, "10.0.0.5/24", "10.0.0.1"),
            (&lab.backend, "10.0.1.10/24", "10.0.1.1"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", "eth0"])?;
            ns.ip(&["route", "add", "default", "via", via])?;
            ethtool_tx_off(ns, "eth0")?;
        }
        for (dev, addr) in [
            ("inet0", "203.0.113.1/24"),
            ("gw0", "10.0.0.1/24"),
            ("be0", "10.0.1.1/24"),
        ] {
            lab.vpc.ip(&["addr", "add", addr, "dev", dev])?;
            ethtool_tx_off(&lab.vpc, dev)?;
        }
        lab.vpc.sysctl("net.ipv4.ip_forward", "1")?;
        // The EIP's block is routed to the gateway; what the backends' subnet sends goes to
        // the gateway too (the VPC route table entry pointing at the NAT instance).
        lab.vpc
            .ip(&["route", "add", "198.51.100.0/24", "via", "10.0.0.5"])?;
        lab.vpc
            .ip(&["rule", "add", "iif", "be0", "lookup", "100"])?;
        lab.vpc
            .ip(&["route", "add", "default", "via", "10.0.0.5", "table", "100"])?;
        lab.gw.sysctl("net.ipv4.ip_forward", "1")?;
        for conf in ["all", "default", "eth0"] {
            lab.gw
                .sysctl(&format!("net.ipv4.conf.{conf}.send_redirects"), "0")?;
        }
        let mut lab = lab;
        lab.peers.push(xdp_pass(&lab.inet, "eth0")?);
        lab.peers.push(xdp_pass(&lab.backend, "eth0")?);
        lab.peers.push(xdp_pass(&lab.vpc, "gw0")?);
        Ok(lab)
    }

    pub fn start_ipnat(&self) -> Result<Ipnat> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin = format!("/sys/fs/bpf/ipnat-lab1-{}-{n}", std::process::id());
        let config = format!(
            "pin_path = \"{pin}\"\n\n[[interface]]\nname = \"eth0\"\n\n\
             [[mapping]]\npublic = \"{EIP}\"\nprivate = \"{BACKEND}\"\n"
        );
        Ipnat::start(&self.gw, &config, &pin)
    }
}

/// A VPC like the clouds': a router (`vpc`) that drops packets whose source does not belong to
/// the NIC they arrive on, an internet host behind it, and an instance with two NICs: eth0
/// (10.0.0.10, the default route) and eth1 with three addresses, either in a second subnet
/// (10.0.1.20-22, router 10.0.1.1) or in eth0's own subnet (10.0.0.20-22: the router's side is
/// then a bridge, whose port the source check looks at).
pub struct SteerLab {
    pub inet: Netns,
    pub vpc: Netns,
    pub inst: Netns,
    /// eth1's addresses.
    pub eth1: [Ipv4Addr; 3],
    /// eth1's subnet and its gateway.
    pub subnet1: &'static str,
    pub gateway1: Ipv4Addr,
}

pub const INST_ETH0: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

impl SteerLab {
    /// `rp_filter`: the instance's reverse-path filtering (1 strict, 2 loose) on all its
    /// interfaces; `same_subnet`: eth1 in eth0's subnet.
    pub fn new(rp_filter: u8, same_subnet: bool) -> Result<Self> {
        let third = if same_subnet { 0 } else { 1 };
        let lab = Self {
            inet: Netns::new("inet")?,
            vpc: Netns::new("vpc")?,
            inst: Netns::new("inst")?,
            eth1: [20, 21, 22].map(|h| Ipv4Addr::new(10, 0, third, h)),
            subnet1: if same_subnet {
                "10.0.0.0/24"
            } else {
                "10.0.1.0/24"
            },
            gateway1: Ipv4Addr::new(10, 0, third, 1),
        };
        veth(&lab.inet, "eth0", &lab.vpc, "inet0")?;
        veth(&lab.inst, "eth0", &lab.vpc, "v0")?;
        veth(&lab.inst, "eth1", &lab.vpc, "v1")?;
        lab.inet
            .ip(&["addr", "add", "203.0.113.10/24", "dev", "eth0"])?;
        lab.inet
            .ip(&["route", "add", "default", "via", "203.0.113.1"])?;
        lab.vpc
            .ip(&["addr", "add", "203.0.113.1/24", "dev", "inet0"])?;
        ethtool_tx_off(&lab.vpc, "inet0")?;
        let eth1_set = lab
            .eth1
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if same_subnet {
            lab.vpc.ip(&["link", "add", "br0", "type", "bridge"])?;
            for dev in ["v0", "v1"] {
                lab.vpc.ip(&["link", "set", dev, "master", "br0"])?;
                ethtool_tx_off(&lab.vpc, dev)?;
            }
            lab.vpc.ip(&["link", "set", "br0", "up"])?;
            lab.vpc.ip(&["addr", "add", "10.0.0.1/24", "dev", "br0"])?;
            // The cloud's source check, per bridge port: a NIC may only send its own addresses.
            lab.vpc.run(
                "nft",
                &[&format!(
                    "add table bridge cloud; \
                     add chain bridge cloud srccheck {{ type filter hook prerouting priority 0; }}; \
                     add rule bridge cloud srccheck iifname \"v0\" ether type ip ip saddr != 10.0.0.10 counter drop; \
                     add rule bridge cloud srccheck iifname \"v1\" ether type ip ip saddr != {{ {eth1_set} }} counter drop"
                )],
            )?;
        } else {
            for (dev, addr) in [("v0", "10.0.0.1/24"), ("v1", "10.0.1.1/24")] {
                lab.vpc.ip(&["addr", "add", addr, "dev", dev])?;
                ethtool_tx_off(&lab.vpc, dev)?;
            }
            lab.vpc.run(
                "nft",
                &[&format!(
                    "add table inet cloud; \
                     add chain inet cloud srccheck {{ type filter hook forward priority 0; }}; \
                     add rule inet cloud srccheck iifname \"v0\" ip saddr != 10.0.0.10 counter drop; \
                     add rule inet cloud srccheck iifname \"v1\" ip saddr != {{ {eth1_set} }} counter drop"
                )],
            )?;
        }
        lab.vpc.sysctl("net.ipv4.ip_forward", "1")?;
        lab.inst
            .ip(&["addr", "add", &format!("{INST_ETH0}/24"), "dev", "eth0"])?;
        for a in lab.eth1 {
            lab.inst
                .ip(&["addr", "add", &format!("{a}/24"), "dev", "eth1"])?;
        }
        lab.inst
            .ip(&["route", "add", "default", "via", "10.0.0.1", "dev", "eth0"])?;
        for conf in ["all", "default", "eth0", "eth1"] {
            lab.inst.sysctl(
                &format!("net.ipv4.conf.{conf}.rp_filter"),
                &rp_filter.to_string(),
            )?;
        }
        ethtool_tx_off(&lab.inst, "eth0")?;
        ethtool_tx_off(&lab.inst, "eth1")?;
        ethtool_tx_off(&lab.inet, "eth0")?;
        Ok(lab)
    }

    /// `ipnat run` on the instance, steering eth1's addresses out of eth1.
    pub fn start_ipnat(&self) -> Result<Ipnat> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin = format!("/sys/fs/bpf/ipnat-steer-{}-{n}", std::process::id());
        let config = format!(
            "pin_path = \"{pin}\"\n\n[[interface]]\nname = \"eth0\"\n\n[[interface]]\nname = \"eth1\"\n\n\
             [[steer]]\nsource = \"{}/30\"\ninterface = \"eth1\"\ngateway = \"{}\"\nsubnet = \"{}\"\n",
            self.eth1[0], self.gateway1, self.subnet1
        );
        Ipnat::start(&self.inst, &config, &pin)
    }
}
