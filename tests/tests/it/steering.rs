//! Source-based steering in a simulated VPC whose router drops packets a NIC does not own:
//! sockets bound to eth1's addresses reach the internet only when their packets leave by eth1,
//! which ipnat does without any `ip rule`.

use std::net::Ipv4Addr;

use ipnat_tests::{
    lab::{INST_ETH0, SteerLab, tcp_exchange_from},
    netns::{Netns, require_root},
};

const INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn ping_from(ns: &Netns, bind: Ipv4Addr) -> bool {
    ns.run(
        "ping",
        &[
            "-c",
            "1",
            "-W",
            "2",
            "-I",
            &bind.to_string(),
            &INET.to_string(),
        ],
    )
    .is_ok()
}

fn rp_filter(lab: &SteerLab, iface: &str) -> String {
    let out = lab
        .inst
        .run(
            "sysctl",
            &["-n", &format!("net.ipv4.conf.{iface}.rp_filter")],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn check(rp: u8, same_subnet: bool) {
    require_root();
    let lab = SteerLab::new(rp, same_subnet).unwrap();
    // Without ipnat: eth1's addresses leave by eth0 (the default route) and the VPC drops them.
    assert!(
        lab.udp_from(lab.eth1[1], 7001).is_err(),
        "the VPC must drop it"
    );
    assert!(!ping_from(&lab.inst, lab.eth1[1]));

    let mut ipnat = lab.start_ipnat().unwrap();
    for (i, &addr) in lab.eth1.iter().enumerate() {
        let peer = lab.udp_from(addr, 7010 + i as u16).unwrap();
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(addr),
            "the internet sees {addr}"
        );
        let x = tcp_exchange_from(
            &lab.inst,
            Some(addr),
            &lab.inet,
            INET,
            8500 + i as u16,
            b"tcp",
            50_000,
        )
        .unwrap();
        assert_eq!(x.server_saw_peer.ip(), std::net::IpAddr::V4(addr));
        assert_eq!(x.response.len(), 3 + 50_000);
        assert!(ping_from(&lab.inst, addr), "ping from {addr}");
    }
    // eth0's own traffic, and unbound sockets, keep working.
    let peer = lab.udp_from(INST_ETH0, 7020).unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(INST_ETH0));
    assert!(ping_from(&lab.inst, INST_ETH0));
    // No ip rule was added; the rule's counter saw the packets.
    let rules = lab.inst.ip(&["rule", "show"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&rules.stdout).lines().count(),
        3,
        "only the default rules"
    );
    let stats = ipnat.stats_json().unwrap();
    let steered = stats["steering"][0]["packets"].as_u64().unwrap();
    assert!(steered >= 9, "{stats}");
    assert_eq!(stats["reasons"]["steered"].as_u64().unwrap(), steered);
    let metrics = ipnat_tests::lab::metrics(&lab.inst).unwrap();
    let line = format!(
        "ipnat_steer_packets_total{{source=\"{}/30\",interface=\"eth1\"}} {steered}",
        lab.eth1[0]
    );
    assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");

    // Strict reverse-path filtering would drop the replies on eth1: ipnat made it loose there
    // and puts it back on `ipnat down`; a loose host is left alone.
    let status = ipnat::dataplane::status(&ipnat.pin_path).unwrap();
    if rp == 1 {
        assert_eq!(rp_filter(&lab, "eth1"), "2");
        assert_eq!(
            status
                .host_changes
                .get("net.ipv4.conf.eth1.rp_filter")
                .map(String::as_str),
            Some("1"),
            "{status:?}"
        );
    } else {
        assert!(status.host_changes.is_empty(), "{status:?}");
    }
    assert_eq!(rp_filter(&lab, "eth0"), rp.to_string(), "eth0 untouched");
    ipnat.stop().unwrap();
    let (ok, out) = ipnat.down().unwrap();
    assert!(ok.success(), "{out}");
    assert_eq!(rp_filter(&lab, "eth1"), rp.to_string(), "restored: {out}");
    if rp == 1 {
        assert!(
            out.contains("restored net.ipv4.conf.eth1.rp_filter = 1"),
            "{out}"
        );
    }
    assert!(lab.udp_from(lab.eth1[1], 7030).is_err(), "gone with ipnat");
}

#[test]
fn steering_on_a_strict_rp_filter_host() {
    check(1, false);
}

#[test]
fn steering_on_a_loose_rp_filter_host() {
    check(2, false);
}

#[test]
fn steering_with_both_nics_in_one_subnet_strict_rp_filter() {
    check(1, true);
}

#[test]
fn steering_with_both_nics_in_one_subnet_loose_rp_filter() {
    check(2, true);
}

#[test]
fn an_imported_rc_local_gives_the_same_reachability_without_ip_rules() {
    require_root();
    let lab = SteerLab::new(2, false).unwrap();
    let recipe = "#!/bin/sh -e\n\
        # rc.local: the secondary NIC's addresses leave by eth1\n\
        ip route add default via 10.0.1.1 dev eth1 table 1001\n\
        ip route add 10.0.1.0/24 dev eth1 table 1001\n\
        ip rule add from 10.0.1.20 lookup 1001\n\
        ip rule add from 10.0.1.21 lookup 1001\n\
        ip rule add from 10.0.1.22 lookup 1001\n\
        logger \"routes set\"\n\
        exit 0\n";
    let reach = |port: u16| -> Vec<bool> {
        lab.eth1
            .iter()
            .enumerate()
            .map(|(i, &a)| lab.udp_from(a, port + i as u16).is_ok())
            .collect()
    };
    // The recipe itself, with ip rules.
    for line in recipe.lines().filter(|l| l.starts_with("ip ")) {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        lab.inst.ip(&args).unwrap();
    }
    assert_eq!(reach(7100), [true; 3], "the recipe works");
    for a in lab.eth1 {
        lab.inst
            .ip(&["rule", "del", "from", &a.to_string(), "lookup", "1001"])
            .unwrap();
    }
    lab.inst.ip(&["route", "flush", "table", "1001"]).unwrap();
    assert_eq!(reach(7110), [false; 3], "and without it nothing does");

    // ipnat import: the config, and the lines it did not convert, by number.
    let file = std::env::temp_dir().join(format!("rc.local-{}", std::process::id()));
    std::fs::write(&file, recipe).unwrap();
    let out = std::process::Command::new(ipnat_tests::lab::ipnat_bin())
        .arg("import")
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(":8: not converted: logger"), "{stderr}");
    assert!(stderr.contains(":9: not converted: exit 0"), "{stderr}");
    let config = String::from_utf8(out.stdout).unwrap();
    assert_eq!(config.matches("[[steer]]").count(), 3, "{config}");
    let pin = format!("/sys/fs/bpf/ipnat-import-{}", std::process::id());
    let full = format!("pin_path = \"{pin}\"\n[[interface]]\nname = \"eth0\"\n\n{config}");
    let _ipnat = ipnat_tests::lab::Ipnat::start(&lab.inst, &full, &pin).unwrap();
    assert_eq!(
        reach(7120),
        [true; 3],
        "the imported config gives the same reachability"
    );
    let rules = lab.inst.ip(&["rule", "show"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&rules.stdout).lines().count(), 3);
}

/// A gateway with two uplinks: ext0 (the default route) and ext1, whose subnet holds the public
/// address. The upstream router drops packets from ext1's subnet that arrive from ext0, as a
/// cloud does for an address that does not belong to the NIC.
struct TwoUplinks {
    inet: Netns,
    up: Netns,
    gw: Netns,
    backend: Netns,
    _peers: Vec<aya::Ebpf>,
}

const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

impl TwoUplinks {
    fn new() -> Self {
        use ipnat_tests::{lab::ethtool_tx_off, lab::xdp_pass, netns::veth};
        let t = |n: &str| Netns::new(n).unwrap();
        let (inet, up, gw, backend) = (t("inet"), t("up"), t("gw2"), t("be"));
        veth(&inet, "eth0", &up, "i0").unwrap();
        veth(&up, "u0", &gw, "ext0").unwrap();
        veth(&up, "u1", &gw, "ext1").unwrap();
        veth(&gw, "int0", &backend, "eth0").unwrap();
        let ip = |ns: &Netns, args: &str| {
            ns.ip(&args.split_whitespace().collect::<Vec<_>>()).unwrap();
        };
        for (ns, args) in [
            (&inet, "addr add 192.0.2.10/24 dev eth0"),
            (&inet, "route add default via 192.0.2.1"),
            (&up, "addr add 192.0.2.1/24 dev i0"),
            (&up, "addr add 203.0.113.254/24 dev u0"),
            (&up, "addr add 198.18.0.254/24 dev u1"),
            (&gw, "addr add 203.0.113.1/24 dev ext0"),
            (&gw, "addr add 198.18.0.1/24 dev ext1"),
            (&gw, "addr add 198.18.0.10/24 dev ext1"),
            (&gw, "addr add 10.0.1.1/24 dev int0"),
            (&gw, "route add default via 203.0.113.254"),
            (&backend, "addr add 10.0.1.10/24 dev eth0"),
            (&backend, "route add default via 10.0.1.1"),
        ] {
            ip(ns, args);
        }
        up.sysctl("net.ipv4.ip_forward", "1").unwrap();
        gw.sysctl("net.ipv4.ip_forward", "1").unwrap();
        up.run(
            "nft",
            &["add table inet cloud; \
               add chain inet cloud srccheck { type filter hook forward priority 0; }; \
               add rule inet cloud srccheck iifname \"u0\" ip saddr 198.18.0.0/24 counter drop"],
        )
        .unwrap();
        for (ns, dev) in [
            (&inet, "eth0"),
            (&up, "i0"),
            (&up, "u0"),
            (&up, "u1"),
            (&gw, "ext0"),
            (&gw, "ext1"),
            (&gw, "int0"),
            (&backend, "eth0"),
        ] {
            ethtool_tx_off(ns, dev).unwrap();
        }
        // XDP_REDIRECT into a veth needs an XDP program on its peer.
        let peers = vec![
            xdp_pass(&up, "u0").unwrap(),
            xdp_pass(&up, "u1").unwrap(),
            xdp_pass(&backend, "eth0").unwrap(),
        ];
        Self {
            inet,
            up,
            gw,
            backend,
            _peers: peers,
        }
    }

    fn config(&self, pin: &str, steer: bool) -> String {
        let mut c = format!(
            "pin_path = \"{pin}\"\n\
             [[interface]]\nname = \"ext0\"\n[[interface]]\nname = \"ext1\"\n[[interface]]\nname = \"int0\"\n\
             [[mapping]]\npublic = \"{PUBLIC}\"\nprivate = \"10.0.1.10\"\n"
        );
        if steer {
            c.push_str(
                "[[steer]]\nsource = \"198.18.0.10\"\ninterface = \"ext1\"\ngateway = \"198.18.0.254\"\nsubnet = \"198.18.0.0/24\"\n",
            );
        }
        c
    }
}

#[test]
fn the_fast_path_steers_translated_replies_out_of_the_uplink_that_owns_the_public_address() {
    require_root();
    let lab = TwoUplinks::new();
    let pin = format!("/sys/fs/bpf/ipnat-uplinks-{}", std::process::id());
    let inet = Ipv4Addr::new(192, 0, 2, 10);
    {
        // Without steering the replies leave by the default route, ext0, and are dropped.
        let _ipnat =
            ipnat_tests::lab::Ipnat::start(&lab.gw, &lab.config(&pin, false), &pin).unwrap();
        assert!(
            tcp_exchange_from(&lab.inet, None, &lab.backend, PUBLIC, 8600, b"x", 10).is_err(),
            "replies through ext0 must be dropped upstream"
        );
    }
    let ipnat = ipnat_tests::lab::Ipnat::start(&lab.gw, &lab.config(&pin, true), &pin).unwrap();
    let x = tcp_exchange_from(
        &lab.inet,
        None,
        &lab.backend,
        PUBLIC,
        8601,
        b"steered",
        100_000,
    )
    .unwrap();
    assert_eq!(x.server_saw_peer.ip(), std::net::IpAddr::V4(inet));
    assert_eq!(x.client_saw_peer.ip(), std::net::IpAddr::V4(PUBLIC));
    assert_eq!(x.response.len(), 7 + 100_000);
    let stats = ipnat.stats_json().unwrap();
    let r = &stats["reasons"];
    assert!(r["forwarded"].as_u64().unwrap() > 20, "{stats}");
    assert_eq!(r["slow_spoofed"], 0, "{stats}");
    // Every reply was steered by the fast path, and counted on the rule.
    assert_eq!(
        stats["steering"][0]["packets"], stats["mappings"][0]["snat_packets"],
        "{stats}"
    );
    // (No count of what the kernel forwarded here: the backend keeps retransmitting for the
    // first, failed connection, and the kernel forwards that while no ipnat runs.)
    let _ = &lab.up;
}

/// `ipnat steer add|list|del` against a running data plane that started without rules: the
/// rule takes effect at once (and loosens the strict rp_filter), bad rules are refused with
/// the key named and change nothing, and removing it takes the steering away again.
#[test]
fn steer_commands_change_the_running_rules() {
    require_root();
    let lab = SteerLab::new(1, false).unwrap();
    let pin = format!("/sys/fs/bpf/ipnat-steercli-{}", std::process::id());
    let config = format!(
        "pin_path = \"{pin}\"\n[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth1\"\n"
    );
    let _ipnat = ipnat_tests::lab::Ipnat::start(&lab.inst, &config, &pin).unwrap();
    // `ipnat steer ARGS --pin-path PIN` (ARGS split at white space).
    let steer = |args: &str| {
        let mut a = vec!["steer"];
        a.extend(args.split_whitespace());
        a.extend_from_slice(&["--pin-path", &pin]);
        ipnat_tests::lab::ipnat_in(&lab.inst, &a)
    };
    assert!(lab.udp_from(lab.eth1[0], 7600).is_err(), "no rule yet");
    let (ok, out) =
        steer("add --source 10.0.1.20/30 --interface eth1 --gateway 10.0.1.1 --subnet 10.0.1.0/24");
    assert!(ok && out.contains("added steering rule"), "{out}");
    assert!(
        out.contains("net.ipv4.conf.eth1.rp_filter = 2 (was 1"),
        "{out}"
    );
    let peer = lab.udp_from(lab.eth1[0], 7601).unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(lab.eth1[0]));
    // Refused, nothing changed.
    #[rustfmt::skip]
    let refused = [
        ("add --source 10.0.1.21 --interface eth1 --gateway 10.0.1.1 --subnet 10.0.1.0/24",
         "the new rule.source = \"10.0.1.21\": overlaps 10.0.1.20/30"),
        ("add --source 10.0.1.40 --interface eth1 --gateway 10.0.2.1 --subnet 10.0.1.0/24",
         "is outside the subnet 10.0.1.0/24"),
        ("add --source 10.0.1.40 --interface eth9 --gateway 10.0.1.1 --subnet 10.0.1.0/24",
         "--interface"),
    ];
    for (args, why) in refused {
        let (ok, out) = steer(args);
        assert!(!ok && out.contains(why), "{args}: {out}");
    }
    let (ok, out) = steer("list --json");
    assert!(ok, "{out}");
    let rules: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rules.as_array().unwrap().len(), 1, "{out}");
    assert!(rules[0]["packets"].as_u64().unwrap() >= 1, "{out}");
    let (ok, out) = steer("del --source 10.0.1.40");
    assert!(
        !ok && out.contains("no steering rule from 10.0.1.40"),
        "{out}"
    );
    let (ok, out) = steer("del --source 10.0.1.20/30");
    assert!(ok, "{out}");
    assert!(lab.udp_from(lab.eth1[0], 7602).is_err(), "steering gone");
}
