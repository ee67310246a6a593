//! Host orientation end to end, in a simulated VPC whose router does the cloud's 1:1 NAT and
//! drops packets whose source the sending NIC does not own (`ipnat_tests::hostlab`): the EIPs
//! become local addresses of the instance, services and clients bound to them work with the
//! real peer's address, unbound and private-address sockets keep working, VPC peers keep
//! seeing private addresses, and `ipnat down` puts the host back as it was.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnat_tests::{
    hostlab::{EIP0, EIP1, HostLab, INET, PEER, PRIV0, PRIV1},
    lab::{ipnat_bin, tcp_exchange_at, tcp_exchange_from, udp_exchange_at},
    netns::{Netns, require_root},
};

const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

fn ping(ns: &Netns, from: Option<Ipv4Addr>, to: Ipv4Addr) -> bool {
    let mut args = vec!["-c".to_owned(), "1".into(), "-W".into(), "2".into()];
    if let Some(f) = from {
        args.extend(["-I".to_owned(), f.to_string()]);
    }
    args.push(to.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.run("ping", &args).is_ok()
}

fn reason(stats: &serde_json::Value, name: &str) -> u64 {
    stats["reasons"][name].as_u64().unwrap_or(0)
}

#[test]
fn the_eip_is_a_local_address_for_services_and_clients() {
    require_root();
    let lab = HostLab::new().unwrap();
    let ipnat = lab.start_ipnat().unwrap();

    // A TCP service bound to the EIP, reached from the internet: it sees its EIP as the local
    // address and the real peer; the client sees the EIP answer.
    let x = tcp_exchange_at(
        &lab.inet, None, &lab.inst, EIP0, EIP0, 8443, b"INVITE", 200_000,
    )
    .unwrap();
    assert_eq!(x.server_local, SocketAddr::from((EIP0, 8443)));
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(x.client_saw_peer, SocketAddr::from((EIP0, 8443)));
    assert_eq!(x.response.len(), 6 + 200_000);
    // A wildcard listener gets the EIP as its local address too (what SIP/FTP servers read).
    let x = tcp_exchange_at(&lab.inet, None, &lab.inst, ANY, EIP0, 8444, b"any", 10).unwrap();
    assert_eq!(x.server_local, SocketAddr::from((EIP0, 8444)));
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    // A UDP service bound to the EIP.
    let x = udp_exchange_at(&lab.inet, None, &lab.inst, EIP0, EIP0, 5060, b"REGISTER").unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(x.client_saw_peer, SocketAddr::from((EIP0, 5060)));
    assert_eq!(x.response, b"RETSIGER");
    // ICMP echo to the EIP.
    assert!(
        ping(&lab.inet, None, EIP0),
        "ping the EIP from the internet"
    );

    // Clients bound to the EIP reach the internet, which sees the EIP.
    let x =
        tcp_exchange_from(&lab.inst, Some(EIP0), &lab.inet, INET, 8445, b"out", 50_000).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(EIP0));
    assert_eq!(x.response.len(), 3 + 50_000);
    let x = udp_exchange_at(
        &lab.inst,
        Some(EIP0),
        &lab.inet,
        ANY,
        INET,
        5061,
        b"udp out",
    )
    .unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(EIP0));
    assert!(ping(&lab.inst, Some(EIP0), INET), "ping from the EIP");

    // Unbound clients still work (the kernel picks the private address; the cloud shows the
    // EIP), and so do sockets bound to the private address: their replies stay private.
    let x = tcp_exchange_from(&lab.inst, None, &lab.inet, INET, 8446, b"unbound", 50_000).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(EIP0));
    let x = tcp_exchange_from(&lab.inst, Some(PRIV0), &lab.inet, INET, 8447, b"priv", 10).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(EIP0));
    let x = udp_exchange_at(&lab.inst, Some(PRIV0), &lab.inet, ANY, INET, 5062, b"priv").unwrap();
    assert_eq!(x.response, b"virp");
    let x = udp_exchange_at(&lab.inst, None, &lab.inet, ANY, INET, 5063, b"unbound").unwrap();
    assert_eq!(x.response, b"dnuobnu");
    assert!(ping(&lab.inst, None, INET), "unbound ping");

    // A VPC peer reaching the instance's private address sees the private address, and the
    // instance's service sees the peer's.
    let x = tcp_exchange_at(&lab.peer, None, &lab.inst, ANY, PRIV0, 8448, b"vpc", 10).unwrap();
    assert_eq!(x.server_local, SocketAddr::from((PRIV0, 8448)));
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(PEER));
    assert_eq!(x.client_saw_peer, SocketAddr::from((PRIV0, 8448)));
    let x = tcp_exchange_from(&lab.inst, None, &lab.peer, PEER, 8449, b"to vpc", 10).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(PRIV0));

    let stats = ipnat.stats_json().unwrap();
    for (name, at_least) in [
        ("host_in", 20),
        ("host_out", 20),
        ("pass_private_socket", 5),
        ("pass_internal_peer", 5),
    ] {
        assert!(reason(&stats, name) >= at_least, "{name}: {stats}");
    }
    assert_eq!(lab.source_check_drops().unwrap(), 0, "{stats}");
}

#[test]
fn several_eips_on_a_secondary_nic_each_work() {
    require_root();
    let lab = HostLab::new().unwrap();
    let ipnat = lab.start_ipnat().unwrap();
    for (i, (eip, private)) in EIP1.into_iter().zip(PRIV1).enumerate() {
        let port = 9000 + i as u16;
        // In through eth1 (the cloud delivers to the secondary private address).
        let x =
            tcp_exchange_at(&lab.inet, None, &lab.inst, ANY, eip, port, b"site", 20_000).unwrap();
        assert_eq!(x.server_local, SocketAddr::from((eip, port)), "{private}");
        assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
        // Out from the EIP: translated to its private address and steered out of eth1 (the
        // router drops it if it leaves by eth0).
        let x =
            tcp_exchange_from(&lab.inst, Some(eip), &lab.inet, INET, port + 100, b"o", 10).unwrap();
        assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(eip));
        let x =
            udp_exchange_at(&lab.inst, Some(eip), &lab.inet, ANY, INET, port + 200, b"u").unwrap();
        assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(eip));
    }
    let stats = ipnat.stats_json().unwrap();
    assert!(reason(&stats, "steered") >= 9, "{stats}");
    assert_eq!(lab.source_check_drops().unwrap(), 0, "{stats}");
    // Each EIP's own counters moved.
    for eip in EIP1 {
        let m = ipnat_tests::lab::mapping_stats(&stats, eip)
            .unwrap_or_else(|| panic!("{eip} in {stats}"));
        assert!(m["dnat_packets"].as_u64().unwrap() >= 3, "{m}");
        assert!(m["snat_packets"].as_u64().unwrap() >= 3, "{m}");
    }
}

/// Everything ipnat changes on the host that `ipnat down` must put back.
fn host_state(ns: &Netns) -> String {
    let mut s = String::new();
    for args in [
        &["-4", "addr", "show"][..],
        &["-4", "route", "show", "table", "all"],
        &["-4", "rule", "show"],
    ] {
        let out = ns.ip(args).unwrap();
        s.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    for key in ["arp_ignore", "arp_announce", "rp_filter"] {
        for conf in ["all", "eth0", "eth1", "lo"] {
            let out = ns
                .run("sysctl", &["-n", &format!("net.ipv4.conf.{conf}.{key}")])
                .unwrap();
            s.push_str(&format!(
                "{conf}.{key} = {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    s
}

#[test]
fn arp_never_gives_the_eip_away_and_down_restores_the_host() {
    require_root();
    let lab = HostLab::new().unwrap();
    let before = host_state(&lab.inst);
    let mut ipnat = lab.start_ipnat().unwrap();
    let during = host_state(&lab.inst);
    assert!(
        during.contains(&format!("inet {EIP0}/32 scope global lo")),
        "{during}"
    );
    assert!(during.contains("eth0.arp_ignore = 1"), "{during}");
    assert!(during.contains("eth0.arp_announce = 2"), "{during}");
    // The router asks on the instance's link who has the EIP: nobody may answer.
    lab.vpc
        .ip(&["route", "add", &format!("{EIP0}/32"), "dev", "v0"])
        .unwrap();
    assert!(
        !ping(&lab.vpc, None, EIP0),
        "the instance answered ARP for its EIP"
    );
    let neigh = lab.vpc.ip(&["neigh", "show", &EIP0.to_string()]).unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    assert!(!neigh.contains("lladdr"), "{neigh}");
    lab.vpc
        .ip(&["route", "del", &format!("{EIP0}/32"), "dev", "v0"])
        .unwrap();
    // The service still works meanwhile.
    let x = tcp_exchange_at(&lab.inet, None, &lab.inst, ANY, EIP0, 8450, b"x", 10).unwrap();
    assert_eq!(x.server_local, SocketAddr::from((EIP0, 8450)));

    // `ipnat map add|del` on the running data plane also manage the public address.
    let bin = ipnat_bin();
    let bin = bin.to_str().unwrap();
    let pin = ipnat.pin_path.to_str().unwrap();
    let extra = "inet 198.51.100.30/32 scope global lo";
    // `ipnat map ARGS --pin-path PIN` (ARGS split at white space): whether it succeeded.
    let map = |args: &str| {
        let mut a: Vec<&str> = vec!["map"];
        a.extend(args.split_whitespace());
        a.extend_from_slice(&["--pin-path", pin]);
        lab.inst.run(bin, &a).is_ok()
    };
    assert!(map("add --public 198.51.100.30 --private 10.0.0.11"));
    assert!(host_state(&lab.inst).contains(extra));
    // Inside an internal prefix: refused, nothing added.
    assert!(!map("add --public 10.0.5.5 --private 10.0.0.12"));
    assert!(map("del --public 198.51.100.30"));
    let now = host_state(&lab.inst);
    assert!(!now.contains(extra) && !now.contains("10.0.5.5"), "{now}");
    // An address ipnat added, then removed and added back by hand, is the admin's now: ipnat
    // checks its mark (IFA_PROTO) before removing and leaves it.
    assert!(map("add --public 198.51.100.31 --private 10.0.0.13"));
    lab.inst
        .ip(&["addr", "del", "198.51.100.31/32", "dev", "lo"])
        .unwrap();
    lab.inst
        .ip(&["addr", "add", "198.51.100.31/32", "dev", "lo"])
        .unwrap();
    assert!(map("del --public 198.51.100.31"));
    assert!(host_state(&lab.inst).contains("inet 198.51.100.31/32 scope global lo"));
    lab.inst
        .ip(&["addr", "del", "198.51.100.31/32", "dev", "lo"])
        .unwrap();

    // `down` is refused while the controller runs; stopped, it undoes everything.
    ipnat.stop().unwrap();
    let (status, out) = ipnat.down().unwrap();
    assert!(status.success(), "{out}");
    assert!(
        out.contains(&format!("removed address {EIP0}/32 on lo")),
        "{out}"
    );
    let after = host_state(&lab.inst);
    assert_eq!(before, after, "ipnat down left the host changed:\n{out}");
}

/// A host-orientation start that fails (here: the metrics port is taken) changes nothing on
/// the host: no EIP left on lo, no sysctl raised, nothing pinned.
#[test]
fn a_failed_start_leaves_the_host_as_it_was() {
    require_root();
    let lab = HostLab::new().unwrap();
    let taken = lab
        .inst
        .within(|| Ok(std::net::TcpListener::bind("127.0.0.1:0")?))
        .unwrap();
    let port = taken.local_addr().unwrap().port();
    let before = host_state(&lab.inst);
    let pin = format!("/sys/fs/bpf/ipnat-host-failed-{}", std::process::id());
    let config = format!(
        "metrics_listen = \"127.0.0.1:{port}\"\n{}",
        HostLab::config(&pin)
    );
    let err = ipnat_tests::lab::Ipnat::start(&lab.inst, &config, &pin)
        .err()
        .expect("started with its metrics port taken");
    assert!(format!("{err:#}").contains("metrics_listen"), "{err:#}");
    assert_eq!(
        host_state(&lab.inst),
        before,
        "the failed start changed the host"
    );
    assert!(!std::path::Path::new(&pin).exists());
    drop(taken);
}
