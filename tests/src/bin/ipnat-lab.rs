//! `cargo xtask lab`: ipnat at work in a simulated cloud made of network namespaces.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};
use ipnat_tests::{
    hostlab::{self, EIP0, HostLab, PRIV0},
    lab::{
        BACKEND, EIP, GW_EXT, GW_INT, GatewayLab, INET, LabOptions, cleanup_all, cleanup_on_signal,
        ipnat_bin, tcp_exchange_at, tcp_exchange_from, udp_exchange,
    },
    netns::require_root,
};

fn main() {
    require_root();
    // Ctrl-C or SIGTERM: the Drop guards would not run; this removes what the lab made (the
    // namespaces, ipnat, and the data plane ipnat leaves pinned).
    cleanup_on_signal();
    if let Err(e) = lab().and_then(|()| host_lab()) {
        eprintln!("lab failed: {e:#}");
        cleanup_all();
        std::process::exit(1);
    }
}

fn say(s: &str) {
    println!("{s}");
}

fn lab() -> Result<()> {
    say("== ipnat lab: one-to-one NAT of an elastic IP, in network namespaces ==\n");
    say(&format!(
        "  internet host {INET}  --  {GW_EXT} [gateway, runs ipnat] {GW_INT}  --  backend {BACKEND}\n\
         \n  The cloud's elastic IP {EIP} is not on any host. The internet routes it to the\n  \
         gateway; ipnat there rewrites destination {EIP} -> {BACKEND} on the way in and\n  \
         source {BACKEND} -> {EIP} on the way out, statelessly, and forwards the packets\n  \
         itself from XDP (\"forwarded\" below; \"forwarded_neigh\": from TC, for a first\n  \
         packet whose next hop's MAC address the gateway had yet to learn).\n"
    ));
    let lab = GatewayLab::new(LabOptions::default())?;
    say(&format!(
        "[1/5] made namespaces {}, {}, {} with veth links and routes",
        lab.inet.name(),
        lab.gw.name(),
        lab.backend.name()
    ));
    let mut ipnat = lab.start_ipnat()?;
    say(&format!(
        "[2/5] started `{} run --config ...` on the gateway with:\n{}",
        ipnat_bin().display(),
        lab.config(&ipnat.pin_path.to_string_lossy())
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    ));

    // A tiny HTTP server on the backend, reporting who it saw.
    let listener = lab
        .backend
        .within(|| Ok(TcpListener::bind(("0.0.0.0", 8080))?))?;
    let server = std::thread::spawn(move || -> Result<String> {
        let (mut s, peer) = listener.accept()?;
        let local = s.local_addr()?;
        let mut reader = BufReader::new(s.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        // Read the headers up to the blank line: closing with unread data would reset.
        let mut header = String::new();
        while reader.read_line(&mut header)? > 2 {
            header.clear();
        }
        let body = format!("hello from the backend: I am {local}, you are {peer}\n");
        write!(
            s,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        Ok(format!(
            "backend accepted {} on {local} from {peer}",
            line.trim()
        ))
    });
    let reply = lab.inet.within(|| {
        let target = SocketAddr::from((EIP, 8080));
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connect {target}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET / HTTP/1.0\r\nHost: {EIP}\r\n\r\n")?;
        let mut resp = String::new();
        std::io::Read::read_to_string(&mut s, &mut resp)?;
        Ok(format!(
            "internet host ({}) connected to {} and got:\n        {}",
            s.local_addr()?,
            s.peer_addr()?,
            resp.trim().replace("\r\n", "\n        ")
        ))
    })?;
    let seen = server.join().expect("server thread")?;
    say(&format!(
        "[3/5] TCP through the EIP:\n      {seen}\n      {reply}"
    ));

    let udp = udp_exchange(&lab.inet, &lab.backend, EIP, 5353, b"ping over udp")?;
    say(&format!(
        "[4/5] UDP through the EIP: the backend saw {} ; the internet host got {:?} back from {}",
        udp.server_saw_peer,
        String::from_utf8_lossy(&udp.response),
        udp.client_saw_peer
    ));

    let stats = std::process::Command::new(ipnat_bin())
        .args(["stats", "--pin-path"])
        .arg(&ipnat.pin_path)
        .output()?;
    say(&format!(
        "[5/5] `ipnat stats` on the gateway:\n{}",
        String::from_utf8_lossy(&stats.stdout)
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    ));
    let out = stop_and_down(&mut ipnat)?;
    drop(lab);
    say(&format!(
        "done: stopped `ipnat run` (the programs stay attached without it), then `ipnat down`:\n{out}      and deleted the namespaces."
    ));
    Ok(())
}

/// Stops `ipnat run` and runs `ipnat down`; what it printed, indented.
fn stop_and_down(ipnat: &mut ipnat_tests::lab::Ipnat) -> Result<String> {
    ipnat.stop()?;
    let (status, out) = ipnat.down()?;
    if !status.success() {
        anyhow::bail!("ipnat down failed: {out}");
    }
    Ok(out.lines().map(|l| format!("        {l}\n")).collect())
}

/// Part two: host orientation, the EIP as an address of the instance itself.
fn host_lab() -> Result<()> {
    say("\n== part two: host orientation (the EIP visible on the instance) ==\n");
    say(&format!(
        "  internet host {}  --  [VPC router: the cloud's 1:1 NAT {EIP0} <-> {PRIV0}]  --  instance {PRIV0}\n\n  \
         Applications on the instance bind to the EIP; ipnat puts it on lo, turns the destination\n  \
         {PRIV0} -> {EIP0} on the way in and the source back on the way out (TC), and leaves VPC\n  \
         traffic and sockets bound to {PRIV0} alone.\n",
        hostlab::INET
    ));
    let lab = HostLab::new()?;
    let mut ipnat = lab.start_ipnat()?;
    say("[1/3] started `ipnat run` on the instance with orientation = \"host\"");
    let x = tcp_exchange_at(&lab.inet, None, &lab.inst, EIP0, EIP0, 5060, b"INVITE", 10)?;
    say(&format!(
        "[2/3] a TCP service bound to {EIP0} on the instance: local address {}, peer {}",
        x.server_local, x.server_saw_peer
    ));
    let x = tcp_exchange_from(
        &lab.inst,
        Some(EIP0),
        &lab.inet,
        hostlab::INET,
        5061,
        b"hi",
        10,
    )?;
    say(&format!(
        "[3/3] a client bound to {EIP0}: the internet host saw it as {}",
        x.server_saw_peer
    ));
    let out = stop_and_down(&mut ipnat)?;
    drop(lab);
    say(&format!("done: `ipnat down` put the instance back:\n{out}"));
    Ok(())
}
