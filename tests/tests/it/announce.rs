//! A gateway of a fleet announces what it serves through the real bird (dist/bird/'s
//! configs) while it is ready, and withdraws it when drained, when its programs are detached
//! behind its back, when one of its sides is lost (BFD), and before `ipnat down`. Two gateways
//! between two routers with ECMP (`ipnat_tests::lab::fleet`), real packets through them.

use std::time::{Duration, Instant};

use ipnat_tests::{
    etcd::EtcdServer,
    lab::{
        Ipnat,
        fleet::{CLIENT, FLEET_IN_ROUTER, FleetLab, fleet_mapping, gw_out},
        fleet_traffic::tcp_downloads,
        ipnat_in, udp_exchange_at,
    },
    netns::{Netns, require_root},
};

fn status(gw: &Netns, ipnat: &Ipnat) -> serde_json::Value {
    ipnat.status(gw)
}

/// A datagram from the client to mapping 0's public address reaches its backend from the
/// client's address, and the reply comes back from the public address.
fn reaches(lab: &FleetLab, port: u16) -> bool {
    let (public, private) = fleet_mapping(0);
    match udp_exchange_at(
        &lab.outside,
        Some(CLIENT),
        &lab.inside,
        private,
        public,
        port,
        b"fleet",
    ) {
        Ok(x) => x.server_saw_peer.ip() == CLIENT && x.client_saw_peer.ip() == public,
        Err(_) => false,
    }
}

/// Waits up to 10 s for gateway `gw`'s status to say `ok` of its `health`.
fn wait_health(
    gw: &Netns,
    ipnat: &Ipnat,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    ipnat.wait_status(gw, "health", what, ok)
}

#[test]
fn a_gateway_is_announced_while_ready_and_withdrawn_when_drained_detached_cut_off_or_down() {
    require_root();
    let lab = FleetLab::new(2, 1).unwrap();
    let mut g1 = lab.start_ipnat(1).unwrap();
    let mut g2 = lab.start_ipnat(2).unwrap();

    // Both ready: each router has one route over both gateways.
    lab.wait_hops(&[1, 2], 20).unwrap();
    let h = wait_health(&lab.gateways[0], &g1, "gateway 1 ready", |h| {
        h["ready"] == true
    });
    assert_eq!(h["outward"], true, "{h}");
    assert_eq!(h["inward"], true, "{h}");
    assert_eq!(h["sessions"]["outside"], true, "{h}");
    let routes = lab.gateways[0]
        .ip(&["route", "show", "table", "4242", "proto", "73"])
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(
        routes.contains("default dev in0") && routes.contains("198.51.100.10 dev out0"),
        "ipnat's own table: {routes}"
    );
    assert!(reaches(&lab, 7200), "UDP through the fleet");
    let metrics =
        ipnat_tests::lab::metrics_at(&lab.gateways[0], &format!("{}:9469", gw_out(1))).unwrap();
    assert!(metrics.contains("ipnat_ready 1"), "{metrics}");
    assert!(
        metrics.contains("ipnat_announced{side=\"outward\"} 1"),
        "{metrics}"
    );
    // The self-check's probe mapping is nobody's business: not listed, not counted.
    let st = status(&lab.gateways[0], &g1);
    assert_eq!(st["mappings"], 1, "{st}");
    assert!(!st.to_string().contains("0.0.0.1"), "{st}");

    // Drained: both sides withdrawn at once (the routers follow), the data plane still
    // translates; undone: announced again.
    let pin1 = g1.pin_path.to_string_lossy().into_owned();
    let (ok, out) = ipnat_in(&lab.gateways[0], &["drain", "--pin-path", &pin1]);
    assert!(ok, "ipnat drain: {out}");
    assert!(out.contains("withdrew 198.51.100.10/32"), "{out}");
    lab.wait_hops(&[2], 10).unwrap();
    let h = wait_health(&lab.gateways[0], &g1, "drained", |h| h["drained"] == true);
    assert_eq!(h["ready"], true, "{h}");
    assert_eq!(h["outward"], false, "{h}");
    assert!(reaches(&lab, 7201), "UDP through the other gateway");
    let (ok, out) = ipnat_in(&lab.gateways[0], &["drain", "--undo", "--pin-path", &pin1]);
    assert!(ok, "ipnat drain --undo: {out}");
    lab.wait_hops(&[1, 2], 10).unwrap();

    // Gateway 2's XDP program detached behind its back (its link still pinned): it notices
    // and withdraws.
    let link = g2.pin_path.join("link-xdp-out0");
    let out = lab.gateways[1]
        .run(
            "bpftool",
            &["-j", "link", "show", "pinned", link.to_str().unwrap()],
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_u64().expect("the link's id").to_string();
    lab.gateways[1]
        .run("bpftool", &["link", "detach", "id", &id])
        .unwrap();
    let h = wait_health(&lab.gateways[1], &g2, "gateway 2 not ready", |h| {
        h["ready"] == false
    });
    assert!(
        h["reasons"].to_string().contains("detached"),
        "the reason names the detached program: {h}"
    );
    lab.wait_hops(&[1], 10).unwrap();
    assert!(reaches(&lab, 7202), "UDP through gateway 1 alone");
    // Restarted, its controller attaches again and it is announced again.
    g2.stop().unwrap();
    g2.spawn(
        &lab.gateways[1],
        &lab.config(2, &g2.pin_path.to_string_lossy()),
    )
    .unwrap();
    lab.wait_hops(&[1, 2], 20).unwrap();

    // Gateway 1 cut off from the outside router while every link stays up: BFD tells the
    // outside router, long before BGP's hold time (bird's default: 240 s); gateway 1's bird loses its outside
    // session, so ipnat withdraws its default route from the inside too.
    let cut = Instant::now();
    lab.block_outside(1, true).unwrap();
    lab.wait_hops(&[2], 10).unwrap();
    eprintln!(
        "gateway 1 cut off: both routers left it after {:?}",
        cut.elapsed()
    );
    let h = wait_health(&lab.gateways[0], &g1, "gateway 1's inside withdrawn", |h| {
        h["inward"] == false
    });
    assert_eq!(h["ready"], true, "{h}");
    assert!(
        h["reasons"].to_string().contains("outside"),
        "the reason names the lost side: {h}"
    );
    assert!(reaches(&lab, 7203), "UDP through gateway 2");
    lab.block_outside(1, false).unwrap();
    lab.wait_hops(&[1, 2], 20).unwrap();

    // Down: the controller stopped, `ipnat down` withdraws before it detaches.
    g1.stop().unwrap();
    let (status, out) = g1.down().unwrap();
    assert!(status.success(), "ipnat down: {out}");
    assert!(out.contains("withdrew 0.0.0.0/0"), "{out}");
    lab.wait_hops(&[2], 10).unwrap();
    let left = lab.gateways[0]
        .ip(&["route", "show", "table", "4242"])
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "nothing of ipnat's left in its table"
    );
    assert!(reaches(&lab, 7204), "UDP through gateway 2");
}

/// `ipnat fleet ARGS... --etcd URL --prefix /fleet` in `ns`; panics unless it succeeds.
fn fleet_write(ns: &Netns, etcd: &EtcdServer, args: &[&str]) {
    let mut all: Vec<&str> = vec!["fleet"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--etcd", &etcd.url, "--prefix", "/fleet"]);
    let (ok, out) = ipnat_in(ns, &all);
    assert!(ok, "ipnat {all:?}: {out}");
}

/// Cuts gateway `ns` off from etcd at `etcd` (both directions dropped; everything else
/// flows), or lets it through again.
fn cut_from_etcd(ns: &Netns, etcd: &EtcdServer, cut: bool) {
    if cut {
        let addr = etcd
            .url
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        let rules = format!(
            "table inet etcdcut {{ chain out {{ type filter hook output priority 0; ip daddr {addr} tcp dport 2379 drop; }}; \
             chain in {{ type filter hook input priority 0; ip saddr {addr} tcp sport 2379 drop; }}; }}"
        );
        ns.run("nft", &[&rules]).unwrap();
    } else {
        ns.run("nft", &["delete", "table", "inet", "etcdcut"])
            .unwrap();
    }
}

/// Holds for `secs`: both gateways stay announced on both routers the whole time.
fn stays_announced(lab: &FleetLab, secs: u64, what: &str) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        assert_eq!(
            lab.outside_hops(0).unwrap().len(),
            2,
            "{what}: a gateway was withdrawn outside"
        );
        assert_eq!(
            lab.inside_hops().unwrap().len(),
            2,
            "{what}: a gateway was withdrawn inside"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn only_a_gateway_that_knows_the_fleet_moved_on_withdraws_for_staleness() {
    require_root();
    let lab = FleetLab::new(2, 1).unwrap();
    for m in 1..3 {
        let private = fleet_mapping(m).1;
        lab.inside
            .ip(&["addr", "add", &format!("{private}/32"), "dev", "lo"])
            .unwrap();
    }
    let mut etcd = EtcdServer::start_at(&lab.inside, FLEET_IN_ROUTER, 2379).unwrap();
    let (p1, b1) = fleet_mapping(1);
    fleet_write(
        &lab.gateways[1],
        &etcd,
        &["map", "add", &p1.to_string(), &b1.to_string()],
    );
    let extra = |peer: usize| {
        format!(
            "peers = [\"{}\"]\nstale_grace_ms = 1000\n\n[etcd]\nendpoints = [\"{}\"]\nprefix = \"/fleet\"\nrequest_timeout_ms = 1000\ndial_timeout_ms = 500\n",
            FleetLab::metrics_url(peer),
            etcd.url
        )
    };
    let g1 = lab.start_ipnat_with(1, &extra(2)).unwrap();
    let g2 = lab.start_ipnat_with(2, &extra(1)).unwrap();
    lab.wait_hops(&[1, 2], 20).unwrap();
    for (gw, ipnat) in [(&lab.gateways[0], &g1), (&lab.gateways[1], &g2)] {
        let st = status(gw, ipnat);
        assert!(st["fleet"]["version"].as_i64() > Some(0), "{}", st["fleet"]);
        assert_eq!(st["fleet"]["mappings"], 1, "{}", st["fleet"]);
    }

    // (e) etcd stopped altogether: nothing withdrawn, the tables stay and translate.
    etcd.kill().unwrap();
    stays_announced(&lab, 6, "etcd stopped");
    let st = status(&lab.gateways[0], &g1);
    assert_eq!(st["fleet"]["connected"], false, "{}", st["fleet"]);
    assert_eq!(st["health"]["ready"], true, "{}", st["health"]);
    assert!(
        reaches(&lab, 7300),
        "UDP through the fleet while etcd is down"
    );
    etcd.resume().unwrap();

    // (g) Garbage in etcd: refused by every gateway alike, named in status, and nobody is
    // withdrawn (they all keep the same last good table).
    etcd.ctl(&["put", "/fleet/mappings/198.51.100.99", "garbage"])
        .unwrap();
    g1.wait_status(&lab.gateways[0], "fleet", "garbage seen", |f| {
        f["refused"]["key"] == "/fleet/mappings/198.51.100.99"
    });
    stays_announced(&lab, 3, "garbage in etcd");
    etcd.ctl(&["del", "/fleet/mappings/198.51.100.99"]).unwrap();

    // (f) Gateway 1 cut off from etcd while a mapping is added: gateway 2 serves the new
    // table, tells gateway 1 so, and gateway 1 withdraws, naming why. Let through again, it
    // catches up and is announced again.
    cut_from_etcd(&lab.gateways[0], &etcd, true);
    let (p2, b2) = fleet_mapping(2);
    fleet_write(
        &lab.gateways[1],
        &etcd,
        &["map", "add", &p2.to_string(), &b2.to_string()],
    );
    lab.wait_hops(&[2], 15).unwrap();
    let st = status(&lab.gateways[0], &g1);
    assert_eq!(st["health"]["ready"], false, "{}", st["health"]);
    assert!(
        st["health"]["reasons"]
            .to_string()
            .contains(&FleetLab::metrics_url(2)),
        "the reason names the peer: {}",
        st["health"]
    );
    cut_from_etcd(&lab.gateways[0], &etcd, false);
    lab.wait_hops(&[1, 2], 20).unwrap();
    let st = status(&lab.gateways[0], &g1);
    assert_eq!(st["fleet"]["mappings"], 2, "caught up: {}", st["fleet"]);
}

/// `ping ARGS...` from the client's address in the outside router's namespace; its output
/// (ping exits non-zero when no echo reply came, which some of these expect).
fn ping(lab: &FleetLab, args: &[&str]) -> String {
    let out = lab
        .outside
        .command("ping")
        .args(["-n", "-I", &CLIENT.to_string()])
        .args(args)
        .output()
        .unwrap();
    ipnat_tests::netns::printed(&out)
}

#[test]
fn asymmetric_paths_fragments_icmp_errors_and_path_mtu_discovery_work_through_the_fleet() {
    require_root();
    let lab = FleetLab::new(2, 1).unwrap();
    let _g1 = lab.start_ipnat(1).unwrap();
    let _g2 = lab.start_ipnat(2).unwrap();
    lab.wait_hops(&[1, 2], 20).unwrap();
    let (public, private) = fleet_mapping(0);

    // Asymmetric paths: each router hashes a flow on its own, so many TCP flows go in through
    // one gateway and come back through the other; every one of them completes.
    let watch = lab.watch_paths(public).unwrap();
    let downloads = tcp_downloads(
        &lab.outside,
        &[CLIENT],
        &lab.inside,
        (public, private),
        7300,
        24,
        64 << 10,
        Duration::ZERO,
    )
    .unwrap()
    .join()
    .unwrap();
    let paths = watch.stop().unwrap();
    assert_eq!(downloads.complete, 24, "{downloads:?}");
    assert_eq!(paths.seen_both_ways(), 24, "{paths:?}");
    // Each flow crosses with probability 1/2: all 24 symmetric would be 1 in 16 million.
    assert!(paths.crossed() > 0, "no flow crossed gateways: {paths:?}");
    eprintln!(
        "{} of 24 TCP flows went in through one gateway and came back through the other",
        paths.crossed()
    );

    // Fragmented UDP both ways (the routers hash fragments by addresses alone, so they may
    // cross another gateway than their first fragment: each is translated on its own).
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let x = udp_exchange_at(
        &lab.outside,
        Some(CLIENT),
        &lab.inside,
        private,
        public,
        7400,
        &big,
    )
    .unwrap();
    assert_eq!(x.request, big, "the backend got the whole datagram");
    assert_eq!(x.server_saw_peer.ip(), CLIENT);
    assert_eq!(x.client_saw_peer.ip(), public);
    assert_eq!(x.response.len(), big.len());

    // Echo through the fleet, and a TTL that runs out at a gateway: its "time exceeded" quotes
    // the packet as the client sent it (to the public address), so ping takes it as its own.
    let echo = ping(&lab, &["-c", "1", "-W", "2", &public.to_string()]);
    assert!(echo.contains(&format!("from {public}")), "{echo}");
    // (The client lives in the outside router's namespace: its packets leave it undecremented.)
    let expired = ping(
        &lab,
        &["-c", "1", "-W", "2", "-t", "1", &public.to_string()],
    );
    assert!(
        expired.contains("Time to live exceeded")
            && (expired.contains("From 10.99.0.11") || expired.contains("From 10.99.0.12")),
        "a gateway answers TTL 1 with time exceeded: {expired}"
    );

    // Path MTU discovery: the inside links take 1280 bytes; a DF packet of 1428 bytes is
    // answered with "fragmentation needed" whose quote names the public address, and the
    // client's kernel learns the path MTU of the public address from it.
    for (i, gw) in lab.gateways.iter().enumerate() {
        gw.ip(&["link", "set", "in0", "mtu", "1280"]).unwrap();
        lab.inside
            .ip(&["link", "set", &format!("g{}i", i + 1), "mtu", "1280"])
            .unwrap();
    }
    let pmtu = ping(
        &lab,
        &[
            "-c",
            "3",
            "-i",
            "0.3",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1400",
            &public.to_string(),
        ],
    );
    assert!(
        pmtu.contains("mtu = 1280") || pmtu.contains("mtu=1280"),
        "the client learns the path MTU: {pmtu}"
    );
    let route = lab
        .outside
        .ip(&[
            "route",
            "get",
            &public.to_string(),
            "from",
            &CLIENT.to_string(),
        ])
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    assert!(route.contains("mtu 1280"), "cached: {route}");
}

#[test]
fn a_gateway_without_native_xdp_checks_itself_through_its_tc_programs() {
    require_root();
    let lab = FleetLab::new(1, 1).unwrap();
    // `xdp = false`: TC on receive does XDP's job (the path of drivers without native XDP), and
    // the self-check's probe runs through that program and TC on transmit.
    let pin = FleetLab::pin(1);
    let config = lab
        .config(1, &pin)
        .replace("name = \"out0\"\n", "name = \"out0\"\nxdp = false\n")
        .replace("name = \"in0\"\n", "name = \"in0\"\nxdp = false\n");
    let g1 = Ipnat::start(&lab.gateways[0], &config, &pin).unwrap();
    lab.wait_hops(&[1], 20).unwrap();
    let st = g1.status(&lab.gateways[0]);
    let hooks: Vec<&str> = st["attached"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["hook"].as_str())
        .collect();
    assert!(
        hooks.contains(&"tc-gw") && !hooks.contains(&"xdp"),
        "{hooks:?}"
    );
    assert_eq!(st["health"]["ready"], true, "{}", st["health"]);
    assert!(reaches(&lab, 7500), "UDP through the TC-only gateway");
}
