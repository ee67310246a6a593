//! `cargo xtask lab`: ipnat at work in a simulated cloud made of network namespaces.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use ipnat_tests::{
    etcd::EtcdServer,
    fakecloud::FakeImds,
    hostlab::{self, EIP0, HostLab, PRIV0},
    lab::{
        BACKEND, EIP, GW_EXT, GW_INT, GatewayLab, INET, Ipnat, LabOptions, METADATA_MACS, SteerLab,
        cleanup_all, cleanup_on_signal,
        fleet::{FLEET_IN_ROUTER, FleetLab, fleet_mapping},
        fleet_traffic::{Traffic, tcp_downloads, udp_stream},
        ipnat_bin, ipnat_in, tcp_exchange_at, tcp_exchange_from, udp_exchange, udp_exchange_at,
        wait_until,
    },
    netns::require_root,
};

const USAGE: &str = "usage: ipnat-lab [--part 1|2|3|4|5|6]   (cargo xtask lab [--part N])

Runs ipnat in a simulated cloud made of network namespaces, and takes it all down again.
  --part 1   a gateway's one-to-one NAT of an elastic IP
  --part 2   host orientation: the EIP visible on the instance itself
  --part 3   a second NIC's addresses, steered from the cloud's metadata (no ip rule)
  --part 4   a fleet of three gateways: one table in etcd, ECMP via bird with BFD, a gateway dies
  --part 5   the same fleet, ipnat against conntrack NAT gateways, steady and a gateway dying
  --part 6   cloud failover in a VPC: the standby takes the EIP over through the API (AWS, Alibaba Cloud; within a zone and across zones)
Without --part, all six, in that order.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parts: Vec<u8> = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => vec![1, 2, 3, 4, 5, 6],
        ["--part", n] if matches!(n, "1" | "2" | "3" | "4" | "5" | "6") => {
            vec![n.parse().unwrap()]
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            return;
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    require_root();
    // Ctrl-C or SIGTERM: the Drop guards would not run; this removes what the lab made (the
    // namespaces, ipnat, and the data plane ipnat leaves pinned).
    cleanup_on_signal();
    for part in parts {
        let result = match part {
            1 => lab(),
            2 => host_lab(),
            3 => steer_lab(),
            4 => fleet_lab(),
            5 => comparison_lab(),
            _ => failover_lab(),
        };
        if let Err(e) = result {
            eprintln!("lab failed: {e:#}");
            cleanup_all();
            std::process::exit(1);
        }
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

/// The instance's eth1 addresses, one line each, those `ipnat status` says ipnat added (while
/// a data plane is pinned at `pin`) marked.
fn eth1_addresses(lab: &SteerLab, pin: Option<&str>) -> Result<Vec<String>> {
    let added = match pin {
        Some(pin) => {
            let out = lab.inst.run(
                &ipnat_bin().to_string_lossy(),
                &["status", "--pin-path", pin],
            )?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("added:"))
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        }
        None => Vec::new(),
    };
    let out = lab.inst.ip(&["-4", "-o", "addr", "show", "eth1"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let addr = w[w.iter().position(|x| *x == "inet")? + 1];
            Some(if added.iter().any(|a| a == addr) {
                format!("{addr}   <- added by ipnat (`ipnat status`)")
            } else {
                addr.to_owned()
            })
        })
        .collect())
}

fn indent(lines: impl IntoIterator<Item = String>) -> String {
    lines
        .into_iter()
        .map(|l| format!("        {l}\n"))
        .collect()
}

/// Packets the VPC router's source check dropped from the instance's eth0.
fn source_check_drops(lab: &SteerLab) -> Result<u64> {
    let out = lab
        .vpc
        .run("nft", &["list", "chain", "inet", "cloud", "srccheck"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("\"v0\""))
        .context("no source check rule for v0")?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let i = w
        .iter()
        .position(|x| *x == "packets")
        .context("no counter")?;
    Ok(w[i + 1].parse()?)
}

/// The fake Alibaba Cloud metadata's list of eth1's private addresses.
fn set_eth1_ips(meta: &FakeImds, m1: &str, ips: &[Ipv4Addr]) {
    let list: Vec<String> = ips.iter().map(|a| format!("\"{a}\"")).collect();
    meta.set(
        &format!("{METADATA_MACS}{m1}/private-ipv4s"),
        &format!("[{}]", list.join(",")),
    );
}

/// Part three: the problem most users come with. A second NIC's addresses get nowhere, because
/// their packets leave by eth0 and the VPC drops what a NIC does not own; the cloud's documented
/// fix is rc.local `ip addr` / `ip rule` / `ip route ... table`, lost at reboot and blind to the
/// console. ipnat reads the NIC's addresses from the cloud's metadata and steers them instead.
fn steer_lab() -> Result<()> {
    say("\n== part three: a second NIC's addresses, from the cloud's metadata ==\n");
    say(
        "  internet host 203.0.113.10  --  [VPC router, source check]  --  eth0 10.0.0.10 [instance]\n  \
         \x20                                                              eth1 10.0.1.20 (+ secondaries)\n\n  \
         The VPC router drops a packet whose source does not belong to the NIC it comes from (the\n  \
         clouds' source/destination check). The instance's default route is eth0, so whatever\n  \
         eth1's addresses send leaves by eth0 and is dropped. The fake cloud here is Alibaba\n  \
         Cloud's ECS metadata (100.100.100.200 in the real cloud; AWS's IMDSv2 works the same way\n  \
         with [aws]).\n",
    );
    let lab = SteerLab::new(1, false)?;
    let [primary, second, third] = lab.eth1;
    // The OS has eth1's primary address (DHCP gives it); the secondaries are only in the cloud.
    for a in [second, third] {
        lab.inst
            .ip(&["addr", "del", &format!("{a}/24"), "dev", "eth1"])?;
    }
    let inet = Ipv4Addr::new(203, 0, 113, 10);
    say(&format!(
        "[1/5] without ipnat: a UDP socket bound to eth1's {primary} sends to the internet host"
    ));
    let route = lab.inst.ip(&[
        "route",
        "get",
        &inet.to_string(),
        "from",
        &primary.to_string(),
    ])?;
    let before = source_check_drops(&lab)?;
    let r = udp_exchange_at(
        &lab.inst,
        Some(primary),
        &lab.inet,
        inet,
        inet,
        7400,
        b"hello",
    );
    if r.is_ok() {
        bail!("the VPC let eth1's address out of eth0: the lab's source check is broken");
    }
    say(&format!(
        "      no reply. The kernel routes it `{}`:\n      \
         out of eth0, and the VPC router's source check dropped {} packet(s) from eth0.",
        String::from_utf8_lossy(&route.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim(),
        source_check_drops(&lab)? - before
    ));

    let recipe = std::env::temp_dir().join(format!("ipnat-lab-rc.local-{}", std::process::id()));
    let rc = format!(
        "ip addr add {second}/24 dev eth1\n\
         ip rule add from {primary} lookup 1001\n\
         ip rule add from {second} lookup 1001\n\
         ip route add default via {gw} dev eth1 table 1001\n",
        gw = lab.gateway1
    );
    std::fs::write(&recipe, &rc)?;
    let out = std::process::Command::new(ipnat_bin())
        .arg("import")
        .arg(&recipe)
        .output()?;
    let _ = std::fs::remove_file(&recipe);
    if !out.status.success() {
        bail!(
            "ipnat import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    say(&format!(
        "[2/5] the clouds' documented fix, as rc.local has it:\n{}      \
         `ipnat import` turns it into ipnat's config:\n{}",
        indent(rc.lines().map(str::to_owned)),
        indent(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
        )
    ));

    let (meta, m1) = lab.aliyun_metadata("[]")?;
    set_eth1_ips(&meta, &m1, &[primary, second]);
    let pin = format!("/sys/fs/bpf/ipnat-lab-steer-{}", std::process::id());
    let config = format!(
        "pin_path = \"{pin}\"\n\n[[interface]]\nname = \"eth0\"\n\n[[interface]]\nname = \"eth1\"\n\n\
         [aliyun]\nendpoint = \"http://127.0.0.1:{}\"\ninterval_secs = 1\n",
        meta.port
    );
    let mut ipnat = Ipnat::start(&lab.inst, &config, &pin)?;
    wait_until("the first sync", || {
        Ok(eth1_addresses(&lab, Some(&pin))?
            .iter()
            .any(|a| a.starts_with(&format!("{second}/"))))
    })?;
    let steer = lab.inst.run(
        &ipnat_bin().to_string_lossy(),
        &["steer", "list", "--pin-path", &pin],
    )?;
    say(&format!(
        "[3/5] instead: `ipnat run` with this config (the metadata lists eth1's {primary} and {second}):\n{}      \
         eth1's addresses now:\n{}      `ipnat steer list`:\n{}",
        indent(config.lines().map(str::to_owned)),
        indent(eth1_addresses(&lab, Some(&pin))?),
        indent(
            String::from_utf8_lossy(&steer.stdout)
                .lines()
                .map(str::to_owned)
        )
    ));
    for (i, a) in [primary, second].into_iter().enumerate() {
        let x = udp_exchange_at(
            &lab.inst,
            Some(a),
            &lab.inet,
            inet,
            inet,
            7401 + i as u16,
            b"hello",
        )
        .with_context(|| format!("UDP from {a} with ipnat"))?;
        say(&format!(
            "      a socket bound to {a} reached the internet host, which saw it come from {}",
            x.server_saw_peer.ip()
        ));
    }
    let rules = lab.inst.ip(&["rule", "show"])?;
    say(&format!(
        "      and the instance has no ip rule of its own (`ip rule show`):\n{}",
        indent(
            String::from_utf8_lossy(&rules.stdout)
                .lines()
                .map(str::to_owned)
        )
    ));

    let own = Ipv4Addr::new(10, 0, 1, 99);
    lab.inst
        .ip(&["addr", "add", &format!("{own}/24"), "dev", "eth1"])?;
    set_eth1_ips(&meta, &m1, &[primary, third]);
    wait_until("the sync to follow the cloud", || {
        let now = eth1_addresses(&lab, Some(&pin))?;
        Ok(now.iter().any(|a| a.starts_with(&format!("{third}/")))
            && !now.iter().any(|a| a.starts_with(&format!("{second}/"))))
    })?;
    say(&format!(
        "[4/5] the user adds {own} to eth1 by hand; the cloud assigns {third} and unassigns {second}.\n      \
         The next sync follows the cloud and leaves the user's address alone:\n{}",
        indent(eth1_addresses(&lab, Some(&pin))?)
    ));
    let x = udp_exchange_at(
        &lab.inst,
        Some(third),
        &lab.inet,
        inet,
        inet,
        7403,
        b"hello",
    )
    .with_context(|| format!("UDP from {third} after the sync"))?;
    say(&format!(
        "      {third} reaches the internet host as {}",
        x.server_saw_peer.ip()
    ));

    let out = stop_and_down(&mut ipnat)?;
    say(&format!(
        "[5/5] `ipnat down` removed the rules and the addresses ipnat added:\n{out}      \
         eth1 is back as it was, with the user's address:\n{}",
        indent(eth1_addresses(&lab, None)?)
    ));
    drop(meta);
    drop(lab);
    say("done: deleted the namespaces.");
    Ok(())
}

/// The mappings gateway `i`'s data plane holds now: (public, private).
fn served(i: usize) -> Result<Vec<(String, String)>> {
    let tables = ipnat::dataplane::Tables::open_pinned(std::path::Path::new(&FleetLab::pin(i)))?;
    Ok(tables
        .mappings()?
        .iter()
        .map(|m| (m.public.to_string(), m.private.to_string()))
        .collect())
}

/// `ipnat fleet ARGS... --etcd ENDPOINTS --prefix /ipnat` from gateway 1.
fn fleet_cmd(lab: &FleetLab, endpoints: &str, args: &[&str]) -> Result<()> {
    let mut all: Vec<&str> = vec!["fleet"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--etcd", endpoints]);
    let (ok, out) = ipnat_in(&lab.gateways[0], &all);
    if !ok {
        bail!("ipnat {}: {out}", all.join(" "));
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn fleet_lab() -> Result<()> {
    say(
        "== ipnat lab, part 4: a fleet of three gateways, one table in etcd, ECMP on both sides ==\n",
    );
    say(
        "  client 203.0.113.10-13 [outside router] ==ECMP==> gw1 | gw2 | gw3 ==ECMP<== [inside router] backends 10.0.1.x\n\
         \n  Each gateway runs ipnat and bird (dist/bird/ipnat-gateway.conf); the routers run bird with\n  \
         one BGP session with BFD per gateway and install one multipath route (dist/bird/router.conf).\n  \
         The table lives in a three-member etcd cluster; no gateway keeps any per-flow state, so any\n  \
         gateway translates any packet of any flow, in either direction.\n",
    );
    let mut lab = FleetLab::new(3, 3)?;
    lab.own_mappings = 0;
    let clients: Vec<Ipv4Addr> = (10..14).map(|h| Ipv4Addr::new(203, 0, 113, h)).collect();
    for c in &clients[1..] {
        lab.outside
            .ip(&["addr", "add", &format!("{c}/32"), "dev", "lo"])?;
    }
    let mut etcd = EtcdServer::cluster(&lab.inside, FLEET_IN_ROUTER, &[2379, 2479, 2579])?;
    let endpoints: Vec<String> = etcd.iter().map(|m| m.url.clone()).collect();
    let endpoints_arg = endpoints.join(",");
    say(&format!(
        "[1/7] etcd cluster of three members at {endpoints_arg}; routers and gateways with bird"
    ));
    let (public0, private0) = fleet_mapping(0);
    fleet_cmd(
        &lab,
        &endpoints_arg,
        &["map", "add", &public0.to_string(), &private0.to_string()],
    )?;
    say(&format!(
        "      ipnat fleet map add {public0} {private0}   (one etcd transaction, validated as the config is)"
    ));
    let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let extra = |i: usize| {
        let peers: Vec<String> = (1..=3)
            .filter(|j| *j != i)
            .map(|j| format!("\"{}\"", FleetLab::metrics_url(j)))
            .collect();
        format!(
            "peers = [{}]\n\n[etcd]\nendpoints = [{}]\nrequest_timeout_ms = 1000\ndial_timeout_ms = 500\n",
            peers.join(", "),
            quoted.join(", ")
        )
    };
    let mut gws: Vec<Ipnat> = Vec::new();
    for i in 1..=3 {
        gws.push(lab.start_ipnat_with(i, &extra(i))?);
    }
    lab.wait_hops(&[1, 2, 3], 30)?;
    say("[2/7] three gateways ready and announced; the routers' routes:");
    for (ns, dst) in [
        (&lab.outside, public0.to_string()),
        (&lab.inside, "default".to_owned()),
    ] {
        let out = ns.ip(&["route", "show", "exact", &dst])?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            say(&format!(
                "      {}: {line}",
                if dst == "default" {
                    "inside "
                } else {
                    "outside"
                }
            ));
        }
    }
    // Which gateway each direction of each flow takes: each router hashes on its own.
    let watch = lab.watch_paths(public0)?;
    let d = tcp_downloads(
        &lab.outside,
        &clients,
        &lab.inside,
        (public0, private0),
        7900,
        30,
        64 << 10,
        Duration::ZERO,
    )?
    .join()
    .map_err(|_| anyhow::anyhow!("downloads panicked"))?;
    let paths = watch.stop()?;
    say(&format!(
        "      30 short TCP downloads, captured on the outside router's port to each gateway: {} complete;\n      \
         {} of {} flows went in through one gateway and came back through another (any gateway translates any packet)",
        d.complete,
        paths.crossed(),
        paths.seen_both_ways()
    ));

    say(
        "\n[3/7] a change through etcd, until all three gateways serve it (20 changes: add, remove, ...)",
    );
    let (public1, private1) = fleet_mapping(1);
    let (mut times, mut commands) = (Vec::new(), Vec::new());
    // Opened once: the poll below reads the three gateways' tables as fast as it can.
    let tables: Vec<ipnat::dataplane::Tables> = (1..=3)
        .map(|i| ipnat::dataplane::Tables::open_pinned(std::path::Path::new(&FleetLab::pin(i))))
        .collect::<Result<_, _>>()?;
    for k in 0..20 {
        let add = k % 2 == 0;
        let start = std::time::Instant::now();
        if add {
            fleet_cmd(
                &lab,
                &endpoints_arg,
                &["map", "add", &public1.to_string(), &private1.to_string()],
            )?;
        } else {
            fleet_cmd(&lab, &endpoints_arg, &["map", "del", &public1.to_string()])?;
        }
        let committed = std::time::Instant::now();
        commands.push(start.elapsed().as_secs_f64() * 1000.0);
        loop {
            let mut all = true;
            for t in &tables {
                all &= t.mappings()?.iter().any(|m| m.public.addr() == public1) == add;
            }
            if all {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("change {k} not served by all three gateways after 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        times.push(committed.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    commands.sort_by(f64::total_cmp);
    say(&format!(
        "      from the write's commit (the command's exit) to all three serving it: p50 {:.0} ms, max {:.0} ms\n      \
         the command itself (a process, a connection, a read and a transaction): p50 {:.0} ms, max {:.0} ms",
        percentile(&times, 0.5),
        times[times.len() - 1],
        percentile(&commands, 0.5),
        commands[commands.len() - 1]
    ));

    say(
        "\n[4/7] 60 TCP downloads (8 MiB each, from four client addresses) and 8 UDP flows (250/s each) through the EIP;\n      3 s in, gateway 2 dies: both its bridge ports blocked, every link stays up",
    );
    // Eight UDP flows, so that some cross the gateway that dies (the routers hash by ports).
    let traffic = Traffic::start(
        &lab.outside,
        &clients,
        &lab.inside,
        (public0, private0),
        8000,
        (60, 8 << 20, Duration::from_millis(15)),
        (8, 250, 12.0),
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let killed = std::time::Instant::now();
    lab.block_gateway(2, true)?;
    lab.wait_hops(&[1, 3], 15)?;
    say(&format!(
        "      both routers left gateway 2 after {:.0} ms (BFD: 3 x 100 ms)",
        killed.elapsed().as_secs_f64() * 1000.0
    ));
    let r = traffic.join()?;
    say(&format!(
        "      TCP: {}, in {:.1} s",
        r.downloads.summary(),
        r.downloads.secs
    ));
    let hit: Vec<String> = r
        .flows
        .iter()
        .filter(|u| u.received < u.sent)
        .map(|u| format!("{:.0} ms", u.longest_gap_ms))
        .collect();
    say(&format!(
        "      UDP: 8 flows, {} of {} datagrams received; {} flow(s) crossed gateway 2 and lost: {}; {} reordered",
        r.received(),
        r.sent(),
        hit.len(),
        if hit.is_empty() {
            "nothing".to_owned()
        } else {
            hit.join(", ")
        },
        r.reordered()
    ));
    lab.block_gateway(2, false)?;
    lab.wait_hops(&[1, 2, 3], 30)?;
    say("      gateway 2 back: announced again");

    say(
        "\n[5/7] etcd's leader killed, then all of etcd stopped and started: nothing withdrawn, tables unchanged",
    );
    let leader = etcd
        .iter()
        .position(|m| m.is_leader().unwrap_or(false))
        .context("no etcd leader")?;
    let udp = udp_stream(
        &lab.outside,
        clients[1],
        &lab.inside,
        (public0, private0),
        9001,
        1000,
        10.0,
    )?;
    etcd[leader].kill()?;
    let (public2, private2) = fleet_mapping(2);
    let rest: Vec<String> = endpoints
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != leader)
        .map(|(_, e)| e.clone())
        .collect();
    fleet_cmd(
        &lab,
        &rest.join(","),
        &["map", "add", &public2.to_string(), &private2.to_string()],
    )?;
    wait_until("the new mapping served by all three", || {
        Ok((1..=3)
            .map(served)
            .collect::<Result<Vec<_>>>()?
            .iter()
            .all(|m| m.iter().any(|(p, _)| p.starts_with(&public2.to_string()))))
    })?;
    say(&format!(
        "      leader m{} killed; a mapping added through the other two members is served by all three",
        endpoints[leader].rsplit(':').next().unwrap_or("")
    ));
    // A gateway whose watch was on the killed member reconnects (with backoff); until it has
    // the new table its peers' newer one makes it stale, and it withdraws meanwhile.
    lab.wait_hops(&[1, 2, 3], 20)?;
    for m in etcd.iter_mut().filter(|m| m.running()) {
        m.kill()?;
    }
    let before: Vec<_> = (1..=3).map(served).collect::<Result<_>>()?;
    for _ in 0..50 {
        if lab.outside_hops(0)?.len() != 3 || lab.inside_hops()?.len() != 3 {
            bail!("a gateway was withdrawn while etcd was down");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after: Vec<_> = (1..=3).map(served).collect::<Result<_>>()?;
    if before != after {
        bail!("a table changed while etcd was down");
    }
    say("      all of etcd down for 5 s: all three still announced, tables unchanged");
    for m in etcd.iter_mut() {
        m.spawn_again()?;
    }
    let u = udp
        .join()
        .map_err(|_| anyhow::anyhow!("UDP stream panicked"))?;
    say(&format!(
        "      UDP meanwhile: {} of {} received",
        u.received, u.sent
    ));

    say(
        "\n[6/7] every gateway restarted in turn under traffic (60 downloads of 10 MiB, 8 UDP flows): drained,\n      stopped, taken down (ipnat down), started",
    );
    let traffic = Traffic::start(
        &lab.outside,
        &clients,
        &lab.inside,
        (public0, private0),
        8100,
        (60, 10 << 20, Duration::from_millis(50)),
        (8, 250, 40.0),
    )?;
    for i in 1..=3 {
        let pin = FleetLab::pin(i);
        let (ok, out) = ipnat_in(&lab.gateways[i - 1], &["drain", "--pin-path", &pin]);
        if !ok {
            bail!("ipnat drain: {out}");
        }
        let others: Vec<usize> = (1..=3).filter(|j| *j != i).collect();
        lab.wait_hops(&others, 15)?;
        // The routers have left it: let what was in flight through, then take it down.
        std::thread::sleep(Duration::from_millis(500));
        gws[i - 1].stop()?;
        let (status, out) = gws[i - 1].down()?;
        if !status.success() {
            bail!("ipnat down: {out}");
        }
        gws[i - 1].spawn(&lab.gateways[i - 1], &lab.config_with(i, &pin, &extra(i)))?;
        lab.wait_hops(&[1, 2, 3], 30)?;
        say(&format!(
            "      gateway {i}: drained, down, up, announced again"
        ));
    }
    let r = traffic.join()?;
    say(&format!(
        "      TCP: {}, in {:.1} s",
        r.downloads.summary(),
        r.downloads.secs
    ));
    say(&format!(
        "      UDP: 8 flows, {} of {} datagrams received; longest loss window {:.0} ms; {} reordered",
        r.received(),
        r.sent(),
        r.longest_gap_ms(),
        r.reordered()
    ));

    say(
        "\n[7/7] one controller SIGKILLed and restarted under traffic: the data plane never stopped",
    );
    let udp = udp_stream(
        &lab.outside,
        clients[2],
        &lab.inside,
        (public0, private0),
        9002,
        1000,
        5.0,
    )?;
    std::thread::sleep(Duration::from_secs(1));
    gws[0].kill()?;
    gws[0].spawn(
        &lab.gateways[0],
        &lab.config_with(1, &FleetLab::pin(1), &extra(1)),
    )?;
    let u = udp
        .join()
        .map_err(|_| anyhow::anyhow!("UDP stream panicked"))?;
    say(&format!(
        "      UDP: {} of {} received; longest loss window {:.0} ms",
        u.received, u.sent, u.longest_gap_ms
    ));
    say("\nlab done: taking it all down");
    drop(gws);
    Ok(())
}

/// How gateways of the comparison translate.
#[derive(Clone, Copy, PartialEq)]
enum Nat {
    Ipnat,
    /// iptables 1:1 DNAT and SNAT, conntrack's defaults.
    Conntrack,
    /// The same with `nf_conntrack_tcp_be_liberal = 1`.
    Liberal,
    /// MASQUERADE to the gateway's own address (fck-nat's design): connections from inside.
    Masquerade,
}

impl Nat {
    fn name(self) -> &'static str {
        match self {
            Nat::Ipnat => "ipnat (stateless 1:1)",
            Nat::Conntrack => "iptables 1:1 DNAT/SNAT, conntrack defaults",
            Nat::Liberal => "iptables 1:1, nf_conntrack_tcp_be_liberal = 1",
            Nat::Masquerade => "iptables MASQUERADE (fck-nat's design), from inside",
        }
    }
}

/// Sets gateway `i` up to translate as `nat` (iptables rules, and the routes ipnat would
/// announce, put into its table by hand); for ipnat, starts it.
fn setup_gateway(lab: &FleetLab, i: usize, nat: Nat) -> Result<Option<Ipnat>> {
    let gw = &lab.gateways[i - 1];
    let (public, private) = fleet_mapping(0);
    if nat == Nat::Ipnat {
        return Ok(Some(lab.start_ipnat(i)?));
    }
    let ipt = |args: &[&str]| gw.run("iptables", args).map(drop);
    if nat == Nat::Masquerade {
        ipt(&[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "out0",
            "-j",
            "MASQUERADE",
        ])?;
    } else {
        ipt(&[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            &public.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &private.to_string(),
        ])?;
        ipt(&[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &private.to_string(),
            "-j",
            "SNAT",
            "--to-source",
            &public.to_string(),
        ])?;
        gw.ip(&[
            "route",
            "add",
            &format!("{public}/32"),
            "dev",
            "out0",
            "table",
            "4242",
            "proto",
            "73",
        ])?;
    }
    // Per namespace, there once the rules have loaded conntrack.
    gw.sysctl(
        "net.netfilter.nf_conntrack_tcp_be_liberal",
        if nat == Nat::Liberal { "1" } else { "0" },
    )?;
    gw.ip(&[
        "route", "add", "default", "dev", "in0", "table", "4242", "proto", "73",
    ])?;
    Ok(None)
}

/// Undoes [`setup_gateway`].
fn teardown_gateway(lab: &FleetLab, i: usize, ipnat: Option<Ipnat>) -> Result<()> {
    let gw = &lab.gateways[i - 1];
    if let Some(mut ipnat) = ipnat {
        ipnat.stop()?;
        let (status, out) = ipnat.down()?;
        if !status.success() {
            bail!("ipnat down: {out}");
        }
        return Ok(());
    }
    gw.run("iptables", &["-t", "nat", "-F"])?;
    gw.run("conntrack", &["-F"]).ok();
    gw.ip(&["route", "flush", "table", "4242"])?;
    Ok(())
}

/// One comparison run: downloads and UDP flows through the fleet; with `kill`, gateway 2 dies
/// 3 s in (and comes back after). Returns the row's figures.
fn comparison_run(lab: &FleetLab, nat: Nat, kill: bool, port: u16) -> Result<String> {
    let (public, private) = fleet_mapping(0);
    let client = fleet_client(0);
    // Outside-in through the EIP; for MASQUERADE, inside-out to the client's address.
    let (from, to, target, listen) = if nat == Nat::Masquerade {
        (&lab.inside, &lab.outside, client, client)
    } else {
        (&lab.outside, &lab.inside, public, private)
    };
    let sources: Vec<Ipv4Addr> = if nat == Nat::Masquerade {
        vec![private]
    } else {
        (0..4).map(fleet_client).collect()
    };
    let traffic = Traffic::start(
        from,
        &sources,
        to,
        (target, listen),
        port,
        (30, 4 << 20, Duration::from_millis(15)),
        (8, 250, 8.0),
    )?;
    if kill {
        std::thread::sleep(Duration::from_secs(3));
        lab.block_gateway(2, true)?;
    }
    let r = traffic.join()?;
    if kill {
        lab.block_gateway(2, false)?;
    }
    Ok(format!(
        "{} | UDP {:>5}/{} received, longest gap {:>4.0} ms",
        r.downloads.summary(),
        r.received(),
        r.sent(),
        r.longest_gap_ms(),
    ))
}

fn fleet_client(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + n as u8)
}

fn comparison_lab() -> Result<()> {
    say("== ipnat lab, part 5: the same fleet, ipnat against conntrack NAT gateways ==\n");
    say(
        "  Three gateways behind the same ECMP on both sides (bird, BFD), 30 TCP downloads (4 MiB,\n  \
         paced) and 8 UDP flows (250/s each); once steady, once with gateway 2 dying 3 s in (both\n  \
         its bridge ports blocked). The conntrack gateways announce the same routes ipnat would.\n",
    );
    let lab = FleetLab::new(3, 1)?;
    for n in 1..4 {
        lab.outside.ip(&[
            "addr",
            "add",
            &format!("{}/32", fleet_client(n)),
            "dev",
            "lo",
        ])?;
    }
    let mut port = 10000;
    for nat in [Nat::Ipnat, Nat::Conntrack, Nat::Liberal, Nat::Masquerade] {
        let mut ipnats = Vec::new();
        for i in 1..=3 {
            ipnats.push(setup_gateway(&lab, i, nat)?);
        }
        if nat == Nat::Masquerade {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while lab.inside_hops()?.len() != 3 {
                if std::time::Instant::now() > deadline {
                    let table = lab.gateways[0].ip(&["route", "show", "table", "4242"])?;
                    bail!(
                        "the inside router's default route: {:?}; gateway 1's table 4242: {}",
                        lab.inside_hops()?,
                        String::from_utf8_lossy(&table.stdout)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            lab.wait_hops(&[1, 2, 3], 30)?;
        }
        say(&format!("{}:", nat.name()));
        say(&format!(
            "      steady:           {}",
            comparison_run(&lab, nat, false, port)?
        ));
        port += 20;
        say(&format!(
            "      gateway 2 dies:   {}",
            comparison_run(&lab, nat, true, port)?
        ));
        port += 20;
        for (i, ipnat) in ipnats.into_iter().enumerate() {
            teardown_gateway(&lab, i + 1, ipnat)?;
        }
        wait_until("every gateway withdrawn", || {
            Ok(lab.inside_hops()?.is_empty())
        })?;
    }
    say("\nlab done: taking it all down");
    Ok(())
}

fn failover_lab() -> Result<()> {
    use ipnat_tests::lab::failover::{
        FO_EIP, FailoverLab, HAVIP_ADDRESS, SHARD_ADDRESS, SecurityGroup, eip_private, fo_nic,
    };
    say("== ipnat lab, part 6: cloud failover in a VPC (fake cloud APIs, real etcd) ==\n");
    say("-- AWS --");
    say(
        "  internet 203.0.113.10 -- [VPC] -- gw-a (eni-a) | gw-b (eni-b) -- backend 10.0.1.20\n\n  \
         The shard's address 10.0.0.50 (a NAT-mode EIP's) is on the leader's NIC; the backends'\n  \
         route table (rtb-private) points at it. The leader is elected in etcd on a 2 s lease;\n  \
         when it dies, the standby moves the address (AssignPrivateIpAddresses, AllowReassignment)\n  \
         and the route (ReplaceRoute) to itself; the fake VPC delivers there 300 ms later.\n  \
         Security groups allow everything both ways (untracked).\n",
    );
    let lab = FailoverLab::new(300, SecurityGroup::Untracked)?;
    ten_failovers(&lab, SHARD_ADDRESS, &|to| {
        lab.holder() == Some(fo_nic(to)) && lab.route_target() == Some(fo_nic(to))
    })?;
    let moves = lab.ec2().moves.lock().unwrap().len();
    say(&format!(
        "      the fake EC2 recorded {moves} moves: one of the address and one of the route per failover, none back and forth"
    ));
    if moves != 20 {
        bail!("expected 20 moves, the API saw {moves}");
    }
    drop(lab);
    say("\n-- Alibaba Cloud --");
    say(
        "  The shard is a HaVip (10.0.0.60) associated with both gateways in advance; the VPC delivers it\n  \
         (and the backends' route, whose next hop is the HaVip) to whoever announces it by ARP. A new\n  \
         leader checks the HaVip (DescribeHaVips), puts its address on its NIC and sends gratuitous ARP.\n",
    );
    let lab = FailoverLab::aliyun(SecurityGroup::Untracked)?;
    ten_failovers(&lab, HAVIP_ADDRESS, &|to| lab.havip_owner() == Some(to))?;
    let calls = lab
        .vpc_api
        .as_ref()
        .expect("aliyun")
        .actions
        .lock()
        .unwrap()
        .clone();
    say(&format!(
        "      the fake VPC API was called {} times, each a DescribeHaVips: nothing to change, the VPC follows ARP",
        calls.len()
    ));
    if calls.iter().any(|a| a != "DescribeHaVips") {
        bail!("a call that changes something: {calls:?}");
    }
    drop(lab);
    say("\n-- AWS across zones --");
    say(
        "  gw-b's NIC is in another subnet (zone): no address can move to it. Each gateway holds its own\n  \
         address for the EIP 198.51.100.50 (gw-a 10.0.0.50, gw-b 10.0.0.52) and maps it to the backend;\n  \
         the new leader re-associates the EIP with its own address (AssociateAddress, AllowReassociation)\n  \
         and moves the route. The VPC's router plays the cloud's EIP translation, 300 ms after each change.\n",
    );
    let lab = FailoverLab::zones(300)?;
    ten_failovers(&lab, FO_EIP, &|to| {
        lab.eip_holder() == Some((fo_nic(to), eip_private(to)))
            && lab.route_target() == Some(fo_nic(to))
    })?;
    let moves = lab.ec2().moves.lock().unwrap().len();
    say(&format!(
        "      the fake EC2 recorded {moves} moves: one association of the EIP and one route per failover"
    ));
    if moves != 20 {
        bail!("expected 20 moves, the API saw {moves}");
    }
    drop(lab);
    say("\n-- Alibaba Cloud across zones --");
    say(
        "  A HaVip lives in one vSwitch; across zones the new leader unbinds the EIP from the old leader's\n  \
         address (UnassociateEipAddress), binds it to its own (AssociateEipAddress; both asynchronous, each\n  \
         waited for) and moves the route entry (ModifyRouteEntry); each takes the fake 300 ms.\n",
    );
    let lab = FailoverLab::aliyun_zones(300)?;
    ten_failovers(&lab, FO_EIP, &|to| {
        lab.aliyun_eip_holder() == Some((fo_nic(to), eip_private(to)))
    })?;
    let moves = lab
        .vpc_api
        .as_ref()
        .expect("aliyun")
        .moves
        .lock()
        .unwrap()
        .len();
    say(&format!(
        "      the fake VPC API recorded {moves} changes: the EIP unbound, bound again, and the route entry, per failover"
    ));
    if moves != 30 {
        bail!("expected 30 changes, the API saw {moves}");
    }
    say("\ndone: the lab's namespaces, etcd and ipnat are removed when it exits.");
    Ok(())
}

/// Ten failovers under traffic through `public`: the leader killed (its controller SIGKILLed,
/// its NIC gone from the VPC), the move timed until `moved(standby)`, the dead gateway back as
/// standby; figures printed.
fn ten_failovers(
    lab: &ipnat_tests::lab::failover::FailoverLab,
    public: Ipv4Addr,
    moved_to: &dyn Fn(usize) -> bool,
) -> Result<()> {
    use ipnat_tests::lab::failover::{FO_BACKEND, FO_INET, fo_name};
    let mut gws: Vec<Option<Ipnat>> = vec![Some(lab.start_ipnat(0)?), None];
    let leads = |i: usize, g: &Ipnat| {
        g.wait_status(&lab.gateways[i], "failover", "leading", |f| {
            f["shards"][0]["role"] == "leader" && f["shards"][0]["last_takeover"]["result"] == "ok"
        })
    };
    let stands_by = |i: usize, g: &Ipnat, leader: usize| {
        g.wait_status(&lab.gateways[i], "failover", "standing by", |f| {
            f["shards"][0]["role"] == "standby" && f["shards"][0]["leader"] == fo_name(leader)
        })
    };
    leads(0, gws[0].as_ref().expect("started"));
    gws[1] = Some(lab.start_ipnat(1)?);
    stands_by(1, gws[1].as_ref().expect("started"), 0);
    say("[1/2] gw-a leads the shard, gw-b stands by");
    say(&format!(
        "\n[2/2] ten failovers, each under 4 TCP downloads and a UDP stream (200/s) through {public}:"
    ));
    let (mut moved, mut gaps, mut elected) = (Vec::new(), Vec::new(), Vec::new());
    let mut leader = 0usize;
    for round in 0..10 {
        let standby = 1 - leader;
        let port = 8100 + (round as u16) * 4;
        let traffic = Traffic::start(
            &lab.inet,
            &[FO_INET],
            &lab.backend,
            (public, FO_BACKEND),
            port,
            (4, 2 << 20, Duration::from_millis(20)),
            (1, 200, 8.0),
        )?;
        std::thread::sleep(Duration::from_secs(2));
        let killed = std::time::Instant::now();
        gws[leader].as_mut().expect("running").kill()?;
        lab.block(leader, true)?;
        while !moved_to(standby) {
            if killed.elapsed() > Duration::from_secs(20) {
                bail!("round {round}: no takeover after 20 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = killed.elapsed().as_secs_f64() * 1000.0;
        let st = leads(standby, gws[standby].as_ref().expect("running"));
        let r = traffic.join()?;
        let gap = r.longest_gap_ms();
        let in_takeover = st["shards"][0]["last_takeover"]["duration_ms"]
            .as_f64()
            .unwrap_or(0.0);
        say(&format!(
            "      {:>2}: {} died; the shard is {}'s after {:.0} ms (of which the takeover {:.0} ms); UDP lost {:.0} ms; TCP {}",
            round + 1,
            fo_name(leader),
            fo_name(standby),
            took,
            in_takeover,
            gap,
            r.downloads.summary()
        ));
        if r.downloads.complete != r.downloads.connections {
            bail!(
                "round {round}: a download did not complete: {:?}",
                r.downloads
            );
        }
        moved.push(took);
        gaps.push(gap);
        elected.push(in_takeover);
        // The dead gateway comes back and stands by (started before its NIC is back in the
        // VPC: a HaVip's address it held goes first, before it could answer ARP for it).
        drop(gws[leader].take());
        gws[leader] = Some(lab.start_ipnat(leader)?);
        lab.block(leader, false)?;
        stands_by(leader, gws[leader].as_ref().expect("running"), standby);
        leader = standby;
    }
    for v in [&mut moved, &mut gaps, &mut elected] {
        v.sort_by(f64::total_cmp);
    }
    say(&format!(
        "\n      over 10 failovers: the leader's death to the shard's move p50 {:.0} ms, max {:.0} ms (lease 2 s: etcd frees\n      \
         the dead leader's key when its lease expires); the takeover p50 {:.0} ms, max {:.0} ms (from the election);\n      \
         UDP loss window p50 {:.0} ms, max {:.0} ms; every TCP download complete, none reset",
        percentile(&moved, 0.5),
        moved[moved.len() - 1],
        percentile(&elected, 0.5),
        elected[elected.len() - 1],
        percentile(&gaps, 0.5),
        gaps[gaps.len() - 1]
    ));
    Ok(())
}
