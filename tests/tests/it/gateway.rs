//! End to end: real TCP, UDP and ICMP from an internet host to an EIP, through a gateway
//! running the `ipnat` binary, answered by the backend that owns the private address. What
//! crossed the wire is captured on arrival and its checksums recomputed independently.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnat_tests::{
    capture::{Capture, Frame},
    lab::{
        BACKEND, BACKEND2, EIP, EIP2, GatewayLab, INET, LabOptions, ipnat_in, tcp_exchange,
        tcp_exchange_from, udp_exchange,
    },
    netns::require_root,
    packet::verify_ipv4,
};

fn src(ip: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])
}
fn dst(ip: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])
}

/// Checks every IPv4 frame between `a` and `b` (either way) in a capture: addresses as
/// expected, checksums correct, none left partial. Returns how many there were.
fn check_frames(frames: &[Frame], from: Ipv4Addr, to: Ipv4Addr, proto: u8) -> usize {
    verified_frames(frames, from, to, proto, false)
}

/// The frames `from` -> `to` of `proto` in `frames`, each verified; one that arrived with its
/// checksum still to complete fails unless `partial_ok`, and is then verified by its
/// pseudo-header sum.
fn verified_frames(
    frames: &[Frame],
    from: Ipv4Addr,
    to: Ipv4Addr,
    proto: u8,
    partial_ok: bool,
) -> usize {
    let mut n = 0;
    for f in frames {
        let Some(ip) = f.ipv4() else { continue };
        if ip[9] != proto || !(src(ip) == from && dst(ip) == to) {
            continue;
        }
        assert!(
            partial_ok || !f.csum_not_ready,
            "a frame {from} -> {to} arrived with a partial checksum: the capture proves nothing"
        );
        let verified = if f.csum_not_ready {
            ipnat_tests::packet::verify_ipv4_partial(ip)
        } else {
            verify_ipv4(ip)
        };
        verified.unwrap_or_else(|e| panic!("frame {from} -> {to}: {e}"));
        n += 1;
    }
    n
}

/// No frame in the capture may carry `addr` as source or destination.
fn assert_absent(frames: &[Frame], addr: Ipv4Addr, where_: &str) {
    for f in frames {
        if let Some(ip) = f.ipv4() {
            assert!(
                src(ip) != addr && dst(ip) != addr,
                "{addr} leaked onto {where_}: {} -> {}",
                src(ip),
                dst(ip)
            );
        }
    }
}

/// The link between the gateway and the backend carries only 1280 bytes, while the backend
/// announces an MSS for 1500 (a route's advmss, as behind a tunnel or a smaller-MTU hop).
fn smaller_mtu_behind_the_gateway(lab: &GatewayLab) {
    lab.gw.ip(&["link", "set", "int0", "mtu", "1280"]).unwrap();
    lab.backend
        .ip(&["link", "set", "eth0", "mtu", "1280"])
        .unwrap();
    lab.backend
        .ip(&[
            "route",
            "replace",
            "default",
            "via",
            &ipnat_tests::lab::GW_INT.to_string(),
            "advmss",
            "1460",
        ])
        .unwrap();
}

fn mapping_counters(stats: &serde_json::Value) -> (u64, u64) {
    let m = &stats["mappings"][0];
    assert_eq!(m["public"], EIP.to_string());
    assert_eq!(m["private"], BACKEND.to_string());
    (
        m["dnat_packets"].as_u64().unwrap(),
        m["snat_packets"].as_u64().unwrap(),
    )
}

#[test]
fn tcp_to_the_eip_reaches_the_backend_and_replies_come_from_the_eip() {
    require_root();
    let (lab, mut ipnat) = GatewayLab::started(LabOptions::default());
    let at_backend = Capture::start(&lab.backend, "eth0").unwrap();
    let at_inet = Capture::start(&lab.inet, "eth0").unwrap();

    let request: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8080, &request, 200_000).unwrap();

    assert_eq!(
        x.server_saw_peer.ip(),
        IpAddr::V4(INET),
        "the backend sees the real client"
    );
    assert_eq!(
        x.server_local.ip(),
        IpAddr::V4(BACKEND),
        "the backend's socket is on its private address"
    );
    assert_eq!(x.client_saw_peer, SocketAddr::from((EIP, 8080)));
    assert_eq!(x.request, request);
    let mut want: Vec<u8> = request.iter().rev().copied().collect();
    want.extend((0..200_000).map(|i| (i % 251) as u8));
    assert_eq!(x.response.len(), want.len());
    assert_eq!(x.response, want);

    let backend_frames = at_backend.stop().unwrap();
    let inet_frames = at_inet.stop().unwrap();
    let to_backend = check_frames(&backend_frames, INET, BACKEND, 6);
    let from_eip = check_frames(&inet_frames, EIP, INET, 6);
    assert!(
        to_backend >= 5 && from_eip >= 5,
        "too few frames: {to_backend} in, {from_eip} out"
    );
    assert_absent(&inet_frames, BACKEND, "the internet side");
    assert_absent(&backend_frames, EIP, "the backend side");

    let (dnat, snat) = mapping_counters(&ipnat.stats_json().unwrap());
    assert_eq!(
        dnat as usize, to_backend,
        "every packet to the EIP was translated once"
    );
    assert_eq!(snat as usize, from_eip, "every reply was translated once");
    // The fast path forwarded every packet: XDP, or TC for the first packets towards a next
    // hop whose neighbour entry did not exist yet; the kernel forwarded none.
    let stats = ipnat.stats_json().unwrap();
    let r = &stats["reasons"];
    let fast = r["forwarded"].as_u64().unwrap() + r["forwarded_neigh"].as_u64().unwrap();
    assert_eq!(fast as usize, to_backend + from_eip, "{stats}");
    assert!(r["forwarded_neigh"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(r["forwarded_neigh"], r["pass_no_neigh"], "{stats}");
    assert_eq!(lab.kernel_forwarded().unwrap(), 0);
    assert!(ipnat.stop().unwrap().success());
}

#[test]
fn udp_to_the_eip_round_trips() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions::default());
    let at_backend = Capture::start(&lab.backend, "eth0").unwrap();
    let at_inet = Capture::start(&lab.inet, "eth0").unwrap();
    for (i, size) in [1usize, 2, 3, 100, 1401, 8000].into_iter().enumerate() {
        // 8000 bytes: fragmented on a 1500-byte link, reassembled by the backend.
        let request: Vec<u8> = (0..size).map(|j| (j * 13 + i) as u8).collect();
        let x = udp_exchange(&lab.inet, &lab.backend, EIP, 5300 + i as u16, &request).unwrap();
        assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
        assert_eq!(
            x.client_saw_peer.ip(),
            IpAddr::V4(EIP),
            "the reply comes from the EIP"
        );
        assert_eq!(x.request, request);
        assert_eq!(
            x.response,
            request.iter().rev().copied().collect::<Vec<_>>()
        );
    }
    let backend_frames = at_backend.stop().unwrap();
    let inet_frames = at_inet.stop().unwrap();
    let to_backend = check_frames(&backend_frames, INET, BACKEND, 17);
    let from_eip = check_frames(&inet_frames, EIP, INET, 17);
    // Five single datagrams and one in six fragments (8008 bytes over 1480-byte fragments).
    assert_eq!((to_backend, from_eip), (11, 11), "fragments included");
    assert_absent(&inet_frames, BACKEND, "the internet side");
    let (dnat, snat) = mapping_counters(&ipnat.stats_json().unwrap());
    assert_eq!((dnat as usize, snat as usize), (to_backend, from_eip));
}

#[test]
fn ping_to_the_eip_is_answered_by_the_backend() {
    require_root();
    let (lab, _ipnat) = GatewayLab::started(LabOptions::default());
    let at_inet = Capture::start(&lab.inet, "eth0").unwrap();
    let out = lab
        .inet
        .run(
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "2", &EIP.to_string()],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 received"), "{text}");
    let frames = at_inet.stop().unwrap();
    assert_eq!(
        check_frames(&frames, EIP, INET, 1),
        3,
        "three echo replies from the EIP"
    );
    assert_absent(&frames, BACKEND, "the internet side");
}

#[test]
fn partial_checksums_from_the_backend_are_translated_with_the_kernel_helpers() {
    require_root();
    // The backend keeps checksum offload on: its packets reach the gateway's TC hook with only
    // the pseudo-header summed (CHECKSUM_PARTIAL). The gateway's ext0 has offload off, so the
    // kernel completes the checksum after TC, and the internet host can verify it.
    // The kernel's forwarding path (fast path off): veth hands the backend's packets to XDP
    // with partial checksums it cannot see, so only TC may translate them.
    let (lab, _ipnat) = GatewayLab::started(LabOptions {
        backend_tx_csum_off: false,
        fast_path: false,
        ..LabOptions::default()
    });
    let at_gw = Capture::start(&lab.gw, "int0").unwrap();
    let at_inet = Capture::start(&lab.inet, "eth0").unwrap();
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8081, b"partial", 50_000).unwrap();
    assert_eq!(x.response.len(), 7 + 50_000);
    let y = udp_exchange(&lab.inet, &lab.backend, EIP, 5301, b"partial udp").unwrap();
    assert_eq!(y.response, b"pdu laitrap");
    let gw_frames = at_gw.stop().unwrap();
    let partial = gw_frames
        .iter()
        .filter(|f| f.ipv4().is_some_and(|ip| src(ip) == BACKEND) && f.csum_not_ready)
        .count();
    assert!(
        partial > 0,
        "the backend's frames were expected to arrive with partial checksums"
    );
    let frames = at_inet.stop().unwrap();
    assert!(check_frames(&frames, EIP, INET, 6) >= 5);
    assert_eq!(check_frames(&frames, EIP, INET, 17), 1);
}

#[test]
fn the_data_plane_outlives_the_controller_and_down_removes_it() {
    require_root();
    let (lab, mut ipnat) = GatewayLab::started(LabOptions::default());
    let pin = ipnat.pin_path.clone();
    assert!(pin.join("IPNAT_DNAT").exists());
    let xdp_on = || {
        String::from_utf8(lab.gw.ip(&["-d", "link", "show", "ext0"]).unwrap().stdout)
            .unwrap()
            .contains("xdp")
    };
    assert!(xdp_on(), "XDP attached");
    tcp_exchange(&lab.inet, &lab.backend, EIP, 8082, b"before", 10).unwrap();
    assert!(ipnat.stop().unwrap().success());
    // The controller is gone; the pinned programs keep translating.
    assert!(pin.join("link-xdp-ext0").exists() && pin.join("IPNAT_DNAT").exists());
    assert!(xdp_on(), "XDP still attached");
    tcp_exchange(&lab.inet, &lab.backend, EIP, 8083, b"meanwhile", 10).unwrap();
    let (status, out) = ipnat.down().unwrap();
    assert!(status.success(), "{out}");
    for hook in ["xdp", "tc-in", "tc-out"] {
        for iface in ["ext0", "int0"] {
            assert!(
                out.contains(&format!("detached {hook} from {iface}")),
                "{out}"
            );
        }
    }
    assert!(!pin.exists(), "pins removed");
    assert!(!xdp_on(), "XDP detached");
    assert!(
        tcp_exchange(&lab.inet, &lab.backend, EIP, 8084, b"after", 10).is_err(),
        "without ipnat the EIP is not reachable"
    );
    let (status, out) = ipnat.down().unwrap();
    assert!(
        !status.success() && out.contains("nothing is pinned there"),
        "{out}"
    );
}

#[test]
fn a_bad_config_is_refused_and_changes_nothing() {
    require_root();
    let lab = GatewayLab::new(LabOptions::default()).unwrap();
    let pin = format!("/sys/fs/bpf/ipnat-test-bad-{}", std::process::id());
    let unknown_iface = lab
        .config(&pin)
        .replace("name = \"int0\"", "name = \"nosuch0\"");
    let err = ipnat_tests::lab::Ipnat::start(&lab.gw, &unknown_iface, &pin)
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("interface \"nosuch0\" does not exist"),
        "{err}"
    );
    let dup = format!(
        "{}\n[[mapping]]\npublic = \"{EIP}\"\nprivate = \"10.0.1.77\"\n",
        lab.config(&pin)
    );
    let err = ipnat_tests::lab::Ipnat::start(&lab.gw, &dup, &pin)
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("mapping[2].public = \"198.51.100.10\": already mapped by mapping[0]"),
        "{err}"
    );
    assert!(!std::path::Path::new(&pin).exists(), "nothing pinned");
    let link =
        String::from_utf8(lab.gw.ip(&["-d", "link", "show", "ext0"]).unwrap().stdout).unwrap();
    assert!(!link.contains("xdp"), "nothing attached: {link}");
}

#[test]
fn hairpin_a_backend_reaches_another_mapping_through_its_public_address() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions::default());
    // From 10.0.1.10 to the EIP of 10.0.1.11: in at int0, back out of int0, both rewrites.
    let x = tcp_exchange_from(
        &lab.backend,
        Some(BACKEND),
        &lab.backend,
        EIP2,
        8090,
        b"hairpin",
        20_000,
    )
    .unwrap();
    assert_eq!(
        x.server_saw_peer.ip(),
        IpAddr::V4(EIP),
        "the server sees the client's public address"
    );
    assert_eq!(x.server_local.ip(), IpAddr::V4(BACKEND2));
    assert_eq!(
        x.client_saw_peer,
        SocketAddr::from((EIP2, 8090)),
        "replies come from the public address it called"
    );
    assert_eq!(x.response.len(), 7 + 20_000);
    let stats = ipnat.stats_json().unwrap();
    for m in stats["mappings"].as_array().unwrap() {
        assert!(
            m["dnat_packets"].as_u64().unwrap() > 0 && m["snat_packets"].as_u64().unwrap() > 0,
            "{m}"
        );
    }
}

/// A connected UDP socket with IP_RECVERR that sends one datagram with `ttl`, and returns the
/// error the kernel reported to it (e.g. EHOSTUNREACH for a time exceeded it matched).
fn udp_error_with_ttl(
    ns: &ipnat_tests::netns::Netns,
    target: Ipv4Addr,
    port: u16,
    ttl: u32,
) -> std::io::Result<usize> {
    ns.within(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        ipnat_tests::sock::enable(&s, libc::IPPROTO_IP, libc::IP_RECVERR)?;
        s.set_ttl(ttl)?;
        s.connect((target, port))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        s.send(b"probe")?;
        let mut buf = [0u8; 64];
        Ok(s.recv(&mut buf))
    })
    .unwrap()
}

#[test]
fn ttl_expiry_at_the_gateway_reaches_the_sending_socket_both_ways() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions::default());
    // Internet -> EIP with TTL 1: the gateway's kernel answers "time exceeded" quoting the
    // packet it had already translated (to 10.0.1.10); ipnat translates the quote back, so
    // the connected socket (to the EIP) matches it.
    let err = udp_error_with_ttl(&lab.inet, EIP, 33434, 1).expect_err("an error, not a reply");
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "{err}");
    let stats = ipnat.stats_json().unwrap();
    assert_eq!(stats["reasons"]["icmp_quote_only"], 1, "{stats}");
    // Backend -> internet with TTL 1: answered before any translation.
    let err = udp_error_with_ttl(&lab.backend, INET, 33434, 1).expect_err("an error, not a reply");
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "{err}");
    // With TTL 2 the datagram reaches the backend, whose closed port answers through the NAT.
    let err = udp_error_with_ttl(&lab.inet, EIP, 33434, 2).expect_err("port unreachable");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
}

#[test]
fn path_mtu_discovery_through_a_smaller_mtu_behind_the_gateway() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions::default());
    // The link between the gateway and the backend carries only 1280 bytes, but the backend
    // announces an MSS for 1500 (a route's advmss, as behind a tunnel or a smaller-MTU hop).
    // The internet host's full-size segments get "fragmentation needed" from the gateway,
    // quoting the translated packet: only with the quote translated back does the internet
    // host's TCP find its connection and shrink its segments.
    smaller_mtu_behind_the_gateway(&lab);
    let at_backend = Capture::start(&lab.backend, "eth0").unwrap();
    let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8091, &upload, 10).unwrap();
    assert_eq!(x.request, upload);
    let frames = at_backend.stop().unwrap();
    assert!(check_frames(&frames, INET, BACKEND, 6) > 200);
    let biggest = frames
        .iter()
        .filter_map(|f| f.ipv4())
        .map(|ip| u16::from_be_bytes([ip[2], ip[3]]))
        .max()
        .unwrap();
    assert!(biggest <= 1280, "{biggest}");
    let stats = ipnat.stats_json().unwrap();
    assert!(
        stats["reasons"]["icmp_quote_only"].as_u64().unwrap() >= 1,
        "the gateway's own \"fragmentation needed\" went out translated: {stats}"
    );
}

#[test]
fn path_mtu_discovery_through_a_smaller_mtu_in_front_of_the_gateway() {
    require_root();
    let (lab, _ipnat) = GatewayLab::started(LabOptions::default());
    lab.gw.ip(&["link", "set", "ext0", "mtu", "1280"]).unwrap();
    let at_inet = Capture::start(&lab.inet, "eth0").unwrap();
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8092, b"download", 300_000).unwrap();
    assert_eq!(x.response.len(), 8 + 300_000);
    let frames = at_inet.stop().unwrap();
    assert!(check_frames(&frames, EIP, INET, 6) > 200);
}

#[test]
fn a_forward_drop_firewall_accepting_established_flows_keeps_working_on_the_slow_path() {
    require_root();
    let (lab, _ipnat) = GatewayLab::started(LabOptions {
        fast_path: false,
        ..LabOptions::default()
    });
    // What Docker installs: FORWARD policy drop, established/related accepted, plus one rule
    // opening the service. Conntrack sees the private destination (translated before routing)
    // and the private source of replies (translated after netfilter): one consistent flow.
    for rule in [
        "-P FORWARD DROP",
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A FORWARD -i ext0 -o int0 -p tcp -d 10.0.1.10 --dport 8093 -j ACCEPT",
        "-A FORWARD -i ext0 -o int0 -p udp -d 10.0.1.10 --dport 5393 -j ACCEPT",
    ] {
        let rule: Vec<&str> = rule.split(' ').collect();
        lab.gw.run("iptables", &rule).unwrap();
    }
    let x = tcp_exchange(
        &lab.inet,
        &lab.backend,
        EIP,
        8093,
        b"through the firewall",
        100_000,
    )
    .unwrap();
    assert_eq!(x.response.len(), 20 + 100_000);
    let y = udp_exchange(&lab.inet, &lab.backend, EIP, 5393, b"udp too").unwrap();
    assert_eq!(y.client_saw_peer.ip(), IpAddr::V4(EIP));
    // A port the firewall does not open stays closed.
    assert!(tcp_exchange(&lab.inet, &lab.backend, EIP, 8094, b"blocked", 1).is_err());
}

#[test]
fn ipv6_and_neighbour_discovery_pass_untouched() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions::default());
    lab.inet
        .ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8::10/64",
            "dev",
            "eth0",
            "nodad",
        ])
        .unwrap();
    lab.gw
        .ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            "ext0",
            "nodad",
        ])
        .unwrap();
    let out = lab
        .inet
        .run(
            "ping",
            &["-6", "-c", "2", "-i", "0.2", "-W", "2", "2001:db8::1"],
        )
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 received"));
    let stats = ipnat.stats_json().unwrap();
    assert!(
        stats["reasons"]["pass_not_ipv4"].as_u64().unwrap() >= 4,
        "{stats}"
    );
    assert_eq!(stats["reasons"]["dnat"], 0);
}

#[test]
fn a_forward_drop_firewall_does_not_break_flows_split_between_fast_and_slow_path() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions::default());
    // Docker's FORWARD chain: policy drop, established/related accepted, nothing opened for
    // this service. The fast path forwards the mapped flows without the FORWARD chain; the
    // packets it declines (too big for the link behind, so answered "fragmentation needed";
    // next hop unresolved, so forwarded from TC) never reach FORWARD either, so no flow ends
    // up half seen by conntrack.
    lab.gw.run("iptables", &["-P", "FORWARD", "DROP"]).unwrap();
    lab.gw
        .run(
            "iptables",
            &[
                "-A",
                "FORWARD",
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
        )
        .unwrap();
    smaller_mtu_behind_the_gateway(&lab);
    let upload: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8095, &upload, 100_000).unwrap();
    assert_eq!(x.request, upload);
    assert_eq!(x.response.len(), upload.len() + 100_000);
    // Forget the neighbours: the next flow's first packets take TC's redirect_neigh.
    lab.gw.ip(&["neigh", "flush", "all"]).unwrap();
    let y = udp_exchange(&lab.inet, &lab.backend, EIP, 5395, b"after the flush").unwrap();
    assert_eq!(y.client_saw_peer.ip(), IpAddr::V4(EIP));
    let stats = ipnat.stats_json().unwrap();
    let r = &stats["reasons"];
    for (reason, at_least) in [
        ("forwarded", 100),
        ("forwarded_neigh", 2),
        ("slow_frag_needed", 1),
    ] {
        assert!(r[reason].as_u64().unwrap() >= at_least, "{reason}: {stats}");
    }
    // Nothing met the FORWARD chain's drop policy.
    let fw = lab.gw.run("iptables", &["-nvx", "-L", "FORWARD"]).unwrap();
    let fw = String::from_utf8_lossy(&fw.stdout).into_owned();
    assert!(fw.contains("policy DROP 0 packets"), "{fw}");
}

#[test]
fn spoofed_sources_are_left_to_the_kernel() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions::default());
    // The internet host claims the backend's private address as its source: the route back
    // to 10.0.1.10 leaves by int0, not ext0, so the fast path will not forward (and
    // translate) it; the kernel's rp_filter drops it.
    lab.gw.sysctl("net.ipv4.conf.all.rp_filter", "1").unwrap();
    lab.gw.sysctl("net.ipv4.conf.ext0.rp_filter", "1").unwrap();
    lab.inet
        .ip(&["addr", "add", "10.0.1.10/32", "dev", "eth0"])
        .unwrap();
    lab.inet
        .ip(&[
            "route",
            "add",
            "10.9.9.0/24",
            "via",
            &ipnat_tests::lab::GW_EXT.to_string(),
        ])
        .unwrap();
    // Resolve the gateway's address first (its ARP would refuse the spoofed sender).
    lab.inet
        .run(
            "ping",
            &["-c", "1", "-W", "2", &ipnat_tests::lab::GW_EXT.to_string()],
        )
        .unwrap();
    let at_backend = Capture::start(&lab.backend, "eth0").unwrap();
    lab.inet
        .within(|| {
            let s = std::net::UdpSocket::bind("10.0.1.10:0")?;
            s.send_to(b"spoofed", "198.51.100.11:5396")?;
            s.send_to(b"spoofed", "10.9.9.9:5396")?;
            Ok(())
        })
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let frames = at_backend.stop().unwrap();
    assert!(
        frames.iter().filter_map(|f| f.ipv4()).all(|ip| ip[9] != 17),
        "a spoofed datagram got through"
    );
    let stats = ipnat.stats_json().unwrap();
    assert_eq!(stats["reasons"]["slow_spoofed"], 2, "{stats}");
    assert_eq!(stats["reasons"]["forwarded"], 0, "{stats}");
}

#[test]
fn a_one_nic_gateway_translates_and_sends_back_out_of_the_same_nic() {
    require_root();
    let lab = ipnat_tests::lab::OneNicLab::new().unwrap();
    let ipnat = lab.start_ipnat().unwrap();
    let at_backend = Capture::start(&lab.backend, "eth0").unwrap();
    let at_inet = Capture::start(&lab.inet, "eth0").unwrap();
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8096, b"one nic", 200_000).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(x.client_saw_peer, SocketAddr::from((EIP, 8096)));
    assert_eq!(x.response.len(), 7 + 200_000);
    let y = udp_exchange(&lab.inet, &lab.backend, EIP, 5397, b"one nic udp").unwrap();
    assert_eq!(y.client_saw_peer.ip(), IpAddr::V4(EIP));
    let (to_backend, from_eip) = (
        check_frames(&at_backend.stop().unwrap(), INET, BACKEND, 6),
        check_frames(&at_inet.stop().unwrap(), EIP, INET, 6),
    );
    assert!(to_backend >= 5 && from_eip >= 5, "{to_backend} {from_eip}");
    let stats = ipnat.stats_json().unwrap();
    let r = &stats["reasons"];
    // XDP_TX back out of eth0 (or TC for first packets to an unresolved next hop).
    let fast = r["forwarded"].as_u64().unwrap() + r["forwarded_neigh"].as_u64().unwrap();
    assert!(fast as usize >= to_backend + from_eip, "{stats}");
    // Most of it by XDP itself: the only interface's XDP, which can send back out of it, does
    // not hand everything to TC as one that can send nowhere does.
    assert!(
        r["forwarded"].as_u64().unwrap() > r["forwarded_neigh"].as_u64().unwrap(),
        "{stats}"
    );
    let out = lab.gw.run("cat", &["/proc/net/snmp"]).unwrap();
    let snmp = String::from_utf8_lossy(&out.stdout).into_owned();
    let ip: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Ip:")).collect();
    let i = ip[0]
        .split_whitespace()
        .position(|n| n == "ForwDatagrams")
        .unwrap();
    assert_eq!(ip[1].split_whitespace().nth(i), Some("0"), "{snmp}");
}

/// A UDP socket in `ns` bound to `bind` that sends without a checksum (SO_NO_CHECK).
fn udp_no_check(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(bind)?;
    ipnat_tests::sock::enable(&s, libc::SOL_SOCKET, libc::SO_NO_CHECK)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    Ok(s)
}

#[test]
fn udp_without_a_checksum_keeps_it_zero_both_ways() {
    require_root();
    let (lab, _ipnat) = GatewayLab::started(LabOptions::default());
    let at_backend = Capture::start(&lab.backend, "eth0").unwrap();
    let at_inet = Capture::start(&lab.inet, "eth0").unwrap();
    let server = lab
        .backend
        .within(|| Ok(udp_no_check(SocketAddr::from((BACKEND, 5398)))?))
        .unwrap();
    let echo = ipnat_tests::lab::udp_echo_once(server);
    let got = lab
        .inet
        .within(|| {
            let s = udp_no_check(SocketAddr::from((INET, 0)))?;
            s.send_to(b"no checksum, please", (EIP, 5398))?;
            let mut buf = [0u8; 1500];
            let (n, from) = s.recv_from(&mut buf)?;
            Ok((buf[..n].to_vec(), from))
        })
        .unwrap();
    assert_eq!(got.0, b"no checksum, please");
    assert_eq!(got.1, SocketAddr::from((EIP, 5398)));
    assert_eq!(echo.join().unwrap().unwrap().ip(), IpAddr::V4(INET));
    for (frames, from, to) in [
        (at_backend.stop().unwrap(), INET, BACKEND),
        (at_inet.stop().unwrap(), EIP, INET),
    ] {
        assert_eq!(check_frames(&frames, from, to, 17), 1);
        let ip = frames
            .iter()
            .filter_map(|f| f.ipv4())
            .find(|ip| ip[9] == 17 && src(ip) == from)
            .unwrap();
        assert_eq!(
            ip[26..28],
            [0, 0],
            "{from} -> {to}: the zero checksum stays zero"
        );
    }
}

#[test]
fn an_interface_without_native_xdp_gets_the_gateway_in_tc() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions {
        bridge_ext: true,
        ..LabOptions::default()
    });
    let st = ipnat::dataplane::status(&ipnat.pin_path).unwrap();
    let modes: Vec<(String, String, &str)> = st
        .attached
        .iter()
        .map(|a| (a.iface.clone(), a.hook.clone(), a.mode))
        .collect();
    assert!(
        modes.contains(&("brx".into(), "tc-gw".into(), "tcx (no native XDP)")),
        "{modes:?}"
    );
    assert!(
        !modes.iter().any(|(i, h, _)| i == "brx" && h == "xdp"),
        "{modes:?}"
    );
    let at_inet = Capture::start(&lab.inet, "eth0").unwrap();
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8097, b"via a bridge", 100_000).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(x.client_saw_peer, SocketAddr::from((EIP, 8097)));
    assert_eq!(x.response.len(), 12 + 100_000);
    assert!(check_frames(&at_inet.stop().unwrap(), EIP, INET, 6) >= 5);
    let stats = ipnat.stats_json().unwrap();
    let r = &stats["reasons"];
    // In: TC on the bridge forwards; out: XDP on int0 cannot send into the bridge, so it hands
    // the replies to TC, which does. The kernel forwards nothing.
    assert!(r["pass_to_tc"].as_u64().unwrap() >= 5, "{stats}");
    let forwarded = r["forwarded_neigh"].as_u64().unwrap();
    assert!(forwarded >= 10, "{stats}");
    assert_eq!(lab.kernel_forwarded().unwrap(), 0, "{stats}");
    // What TC ingress forwarded passes the egress device's TC hook too (unlike XDP's
    // redirects): ipnat's egress program lets it through without parsing it again, so nothing
    // there counts it (it used to count every one as `pass_no_mapping`).
    assert!(
        r["pass_no_mapping"].as_u64().unwrap() < forwarded / 4,
        "the egress program parsed what TC ingress forwarded: {stats}"
    );
}

#[test]
fn a_block_mapping_keeps_host_bits_end_to_end() {
    require_root();
    let lab = GatewayLab::new(LabOptions::default()).unwrap();
    // 120.0.0.8/30 <-> 10.0.1.8/30: 120.0.0.10 is the backend's 10.0.1.10, .11 its 10.0.1.11.
    lab.inet
        .ip(&["route", "add", "120.0.0.0/24", "via", "203.0.113.1"])
        .unwrap();
    let pin = format!("/sys/fs/bpf/ipnat-block-{}", std::process::id());
    let config = format!(
        "pin_path = \"{pin}\"\n[[interface]]\nname = \"ext0\"\n[[interface]]\nname = \"int0\"\n\
         [[mapping]]\npublic = \"120.0.0.8/30\"\nprivate = \"10.0.1.8/30\"\n"
    );
    let ipnat = ipnat_tests::lab::Ipnat::start(&lab.gw, &config, &pin).unwrap();
    let at_inet = Capture::start(&lab.inet, "eth0").unwrap();
    for (public, private, port) in [
        (Ipv4Addr::new(120, 0, 0, 10), BACKEND, 8701),
        (Ipv4Addr::new(120, 0, 0, 11), BACKEND2, 8702),
    ] {
        let x = tcp_exchange(&lab.inet, &lab.backend, public, port, b"block", 20_000).unwrap();
        assert_eq!(x.server_local.ip(), IpAddr::V4(private));
        assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
        assert_eq!(x.client_saw_peer, SocketAddr::from((public, port)));
        assert_eq!(x.response.len(), 5 + 20_000);
    }
    let frames = at_inet.stop().unwrap();
    assert!(check_frames(&frames, Ipv4Addr::new(120, 0, 0, 10), INET, 6) >= 3);
    assert!(check_frames(&frames, Ipv4Addr::new(120, 0, 0, 11), INET, 6) >= 3);
    assert_absent(&frames, BACKEND, "the internet side");
    let stats = ipnat.stats_json().unwrap();
    let m = &stats["mappings"][0];
    assert_eq!(m["public"], "120.0.0.8/30", "{stats}");
    assert!(
        m["dnat_packets"].as_u64().unwrap() >= 6,
        "one counter for the block: {stats}"
    );
}

/// `ipnat status` as the gateway's namespace shows it (interface names resolve there).
fn status_in(lab: &GatewayLab, ipnat: &ipnat_tests::lab::Ipnat) -> String {
    let out = lab
        .gw
        .run(
            ipnat_tests::lab::ipnat_bin().to_str().unwrap(),
            &["status", "--pin-path", ipnat.pin_path.to_str().unwrap()],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// int0's veth peer (the backend) runs no XDP program, so int0 cannot transmit what XDP
/// redirects to it (its xdp-features lack ndo-xmit). The controller reads that from the kernel
/// and lets TC forward towards the backend instead: traffic flows (before, XDP redirected into
/// int0 and the frames were dropped).
#[test]
fn a_veth_whose_peer_runs_no_xdp_is_reached_through_tc() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions {
        backend_xdp: false,
        ..LabOptions::default()
    });
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8098, b"no peer xdp", 100_000).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(x.response.len(), 11 + 100_000);
    let stats = ipnat.stats_json().unwrap();
    let r = &stats["reasons"];
    // In: handed to TC, which forwards into int0; out: XDP forwards to the internet.
    assert!(r["pass_to_tc"].as_u64().unwrap() >= 5, "{stats}");
    assert!(r["forwarded_neigh"].as_u64().unwrap() >= 5, "{stats}");
    assert!(r["forwarded"].as_u64().unwrap() >= 5, "{stats}");
    assert_eq!(lab.kernel_forwarded().unwrap(), 0, "{stats}");
    // `ipnat status` in the gateway's namespace names the drivers' features.
    let st = status_in(&lab, &ipnat);
    assert!(
        st.contains("int0") && st.contains("xdp-features: basic redirect rx-sg"),
        "{st}"
    );
    assert!(st.contains("ndo-xmit"), "ext0's peer runs XDP: {st}");
}

/// Packets `iface` in `ns` transmitted so far (its own counter, as `ip -s link` shows it).
fn tx_packets(ns: &ipnat_tests::netns::Netns, iface: &str) -> u64 {
    let out = ns.ip(&["-j", "-s", "link", "show", "dev", iface]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx packets for {iface}: {v}"))
}

/// int0 is a veth whose peer (the backend's eth0) lives in another namespace: what TC ingress
/// forwards there goes straight into the peer's receive path (`bpf_redirect_peer`), not out
/// of int0 and through the backlog queue, so int0 transmits none of it; and ext0's XDP, which
/// can send nowhere but back out of ext0 (int0 takes no XDP frames), hands every packet to
/// TC at once. Traffic is exact both ways.
#[test]
fn tc_delivers_to_a_veth_peer_in_another_namespace_directly() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions {
        backend_xdp: false,
        ..LabOptions::default()
    });
    let before = ipnat.stats_json().unwrap();
    let tx_before = tx_packets(&lab.gw, "int0");
    let at_backend = Capture::start(&lab.backend, "eth0").unwrap();
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8096, b"to the peer", 100_000).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(x.client_saw_peer, SocketAddr::from((EIP, 8096)));
    assert_eq!(x.response.len(), 11 + 100_000);
    let u = udp_exchange(&lab.inet, &lab.backend, EIP, 8095, b"datagram to the peer").unwrap();
    assert_eq!(u.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(u.client_saw_peer.ip(), IpAddr::V4(EIP));
    let tx = tx_packets(&lab.gw, "int0") - tx_before;
    let frames = at_backend.stop().unwrap();
    // What arrived at the backend is translated and exact (complete or to be completed).
    assert!(verified_frames(&frames, INET, BACKEND, 6, true) >= 5);
    assert!(verified_frames(&frames, INET, BACKEND, 17, true) >= 1);
    let stats = ipnat.stats_json().unwrap();
    let delta = |name: &str| {
        stats["reasons"][name].as_u64().unwrap() - before["reasons"][name].as_u64().unwrap()
    };
    let forwarded_in = delta("forwarded_neigh");
    assert!(forwarded_in >= 5, "{stats}");
    // Every packet ext0 received was handed over by XDP before any lookup.
    assert!(delta("pass_to_tc") >= forwarded_in, "{stats}");
    // int0 itself sent only what the gateway's own stack sent (neighbour traffic).
    assert!(
        tx < forwarded_in / 2,
        "int0 transmitted {tx} packets for {forwarded_in} forwarded into it: {stats}"
    );
    assert_eq!(lab.kernel_forwarded().unwrap(), 0, "{stats}");
    // `ipnat status` in the gateway's namespace says so, per interface.
    let st = status_in(&lab, &ipnat);
    let line = |iface: &str| {
        st.lines()
            .find(|l| l.contains(&format!(" {iface} ")) && l.contains("xdp native"))
            .unwrap_or_else(|| panic!("no XDP line for {iface}: {st}"))
            .to_owned()
    };
    assert!(
        line("int0").ends_with("; only TC sends into it, TC delivers to its veth peer)"),
        "{st}"
    );
    assert!(
        line("ext0").ends_with(", its XDP hands every packet to TC)"),
        "{st}"
    );
}

/// The hand-over follows the kernel: once the backend's veth runs an XDP program, int0 takes
/// XDP frames, so ext0's XDP no longer hands everything to TC (the controller reads the
/// drivers' features again every 20 s) and forwards into int0 itself.
#[test]
fn xdp_stops_handing_everything_over_once_the_peer_takes_xdp_frames() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions {
        backend_xdp: false,
        ..LabOptions::default()
    });
    let ext0_line = |st: &str| {
        st.lines()
            .find(|l| l.contains(" ext0 ") && l.contains("xdp native"))
            .unwrap_or_else(|| panic!("no XDP line for ext0: {st}"))
            .to_owned()
    };
    let st = status_in(&lab, &ipnat);
    assert!(
        ext0_line(&st).contains("its XDP hands every packet to TC"),
        "{st}"
    );
    let _backend_xdp = ipnat_tests::lab::xdp_pass(&lab.backend, "eth0").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let st = status_in(&lab, &ipnat);
        if !ext0_line(&st).contains("hands every packet") {
            assert!(
                st.lines()
                    .any(|l| l.contains(" int0 ") && l.contains("XDP sends into it")),
                "{st}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ext0 still hands everything to TC 30 s after int0's peer took XDP: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let before = ipnat.stats_json().unwrap();
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8094, b"xdp again", 100_000).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(x.response.len(), 9 + 100_000);
    let stats = ipnat.stats_json().unwrap();
    let delta = |name: &str| {
        stats["reasons"][name].as_u64().unwrap() - before["reasons"][name].as_u64().unwrap()
    };
    // Both ways by XDP now; nothing handed over.
    assert!(delta("forwarded") >= 10, "{stats}");
    assert_eq!(delta("pass_to_tc"), 0, "{stats}");
}

/// The kernel's answer on whether a veth's peer is elsewhere: another namespace, yes; both
/// ends in one namespace (where the kernel refuses `bpf_redirect_peer`), no; a bridge, no.
#[test]
fn a_veth_peer_counts_only_in_another_namespace() {
    require_root();
    let a = ipnat_tests::netns::Netns::new("peer-a").unwrap();
    let b = ipnat_tests::netns::Netns::new("peer-b").unwrap();
    ipnat_tests::netns::veth(&a, "out0", &b, "in0").unwrap();
    a.ip(&[
        "link", "add", "pair0", "type", "veth", "peer", "name", "pair1",
    ])
    .unwrap();
    a.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    let answers = a
        .within(|| {
            let index =
                |name: &str| -> anyhow::Result<u32> { Ok(nix::net::if_::if_nametoindex(name)?) };
            let mut out = Vec::new();
            for name in ["out0", "pair0", "pair1", "br0", "lo"] {
                out.push((name, ipnat::netdev::peer_in_other_namespace(index(name)?)?));
            }
            Ok(out)
        })
        .unwrap();
    assert_eq!(
        answers,
        [
            ("out0", true),
            ("pair0", false),
            ("pair1", false),
            ("br0", false),
            ("lo", false)
        ]
    );
}

/// Jumbo frames (MTU 9000 on every link): a frame no longer fits one buffer, so a veth takes
/// only a frags-capable XDP program; ipnat attaches its frags-capable variant and the fast
/// path translates and forwards multi-buffer frames, counting their full length.
#[test]
fn jumbo_frames_get_the_frags_capable_program_and_the_fast_path() {
    require_root();
    let (lab, ipnat) = GatewayLab::started(LabOptions {
        mtu: Some(9000),
        ..LabOptions::default()
    });
    let modes: Vec<(String, String)> = ipnat::dataplane::status(&ipnat.pin_path)
        .unwrap()
        .attached
        .into_iter()
        .map(|a| (a.iface, a.hook))
        .collect();
    assert!(modes.contains(&("int0".into(), "xdp".into())), "{modes:?}");
    assert!(modes.contains(&("ext0".into(), "xdp".into())), "{modes:?}");
    let before = ipnat.stats_json().unwrap();
    let payload = vec![0x5a; 8000];
    let x = udp_exchange(&lab.inet, &lab.backend, EIP, 5099, &payload).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(x.request.len(), 8000);
    assert_eq!(x.client_saw_peer, SocketAddr::from((EIP, 5099)));
    let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8099, b"jumbo", 500_000).unwrap();
    assert_eq!(x.response.len(), 5 + 500_000);
    let stats = ipnat.stats_json().unwrap();
    let r = &stats["reasons"];
    assert!(r["forwarded"].as_u64().unwrap() >= 10, "{stats}");
    assert_eq!(lab.kernel_forwarded().unwrap(), 0, "{stats}");
    // The 8,000-byte datagram's bytes were counted whole (8,042 bytes on the wire each way).
    let m = &stats["mappings"][0];
    let moved =
        m["dnat_bytes"].as_u64().unwrap() - before["mappings"][0]["dnat_bytes"].as_u64().unwrap();
    assert!(moved >= 8042, "{stats}");
}

/// An interface with a dot in its name, as VLAN interfaces have (`ext0.100`; this kernel has
/// no 802.1Q, so the gateway's outer veth is renamed so): the links are pinned under names
/// bpffs accepts, traffic is translated both ways, and `down` takes it all apart.
#[test]
fn an_interface_with_a_dot_in_its_name_works_end_to_end() {
    require_root();
    let lab = GatewayLab::new(LabOptions::default()).unwrap();
    lab.gw.ip(&["link", "set", "ext0", "down"]).unwrap();
    lab.gw
        .ip(&["link", "set", "ext0", "name", "ext0.100"])
        .unwrap();
    lab.gw.ip(&["link", "set", "ext0.100", "up"]).unwrap();
    let pin = format!("/sys/fs/bpf/ipnat-dot-{}", std::process::id());
    let config = lab
        .config(&pin)
        .replace("name = \"ext0\"", "name = \"ext0.100\"");
    let mut ipnat = ipnat_tests::lab::Ipnat::start(&lab.gw, &config, &pin).unwrap();
    assert!(
        std::path::Path::new(&pin)
            .join("link-xdp-ext0:100")
            .exists()
    );
    let x = udp_exchange(&lab.inet, &lab.backend, EIP, 8120, b"a dot").unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(INET));
    assert_eq!(x.client_saw_peer.ip(), IpAddr::V4(EIP));
    let st = ipnat::dataplane::status(&ipnat.pin_path).unwrap();
    assert!(
        st.attached
            .iter()
            .any(|a| a.iface == "ext0.100" && a.hook == "xdp"),
        "{st:?}"
    );
    ipnat.stop().unwrap();
    let (status, out) = ipnat.down().unwrap();
    assert!(status.success() && out.contains("from ext0.100"), "{out}");
    assert!(!std::path::Path::new(&pin).exists());
}

/// The kernel's count of "hw csum failure" reports so far (it logs one when a CHECKSUM_COMPLETE
/// sum no longer matches the data: a helper that changed the packet without keeping
/// `skb->csum` in step).
fn hw_csum_failures() -> usize {
    let out = std::process::Command::new("dmesg")
        .output()
        .expect("run dmesg");
    assert!(out.status.success(), "dmesg: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .matches("hw csum failure")
        .count()
}

/// The TC path in both directions (the external side a bridge: TC receives from the internet
/// and forwards into int0, whose veth peer runs no XDP; XDP on int0 cannot send into the
/// bridge and hands the replies to TC), with GRO, GSO and TSO on, then off, on every interface:
/// TCP and UDP arrive with exact checksums (verified in captures on both sides: complete ones
/// in full, those still to be completed by their pseudo-header sum), and the kernel reports no
/// checksum failure.
#[test]
fn the_tc_path_keeps_checksums_exact_with_offloads_on_and_off() {
    require_root();
    let failures_before = hw_csum_failures();
    for offloads in ["on", "off"] {
        let (lab, ipnat) = GatewayLab::started(LabOptions {
            bridge_ext: true,
            backend_xdp: false,
            ..LabOptions::default()
        });
        for (ns, ifaces) in [
            (&lab.inet, &["eth0"][..]),
            (&lab.gw, &["ext0", "brx", "int0"]),
            (&lab.backend, &["eth0"]),
        ] {
            for iface in ifaces {
                for feature in ["gro", "gso", "tso"] {
                    // Not every device has every feature (a bridge has no GRO of its own).
                    let _ = ns.run("ethtool", &["-K", iface, feature, offloads]);
                }
            }
        }
        let at_inet = Capture::start(&lab.inet, "eth0").unwrap();
        let at_backend = Capture::start(&lab.backend, "eth0").unwrap();
        let x = tcp_exchange(&lab.inet, &lab.backend, EIP, 8110, b"offloads", 400_000).unwrap();
        assert_eq!(x.response.len(), 8 + 400_000, "offloads {offloads}");
        let u = udp_exchange(&lab.inet, &lab.backend, EIP, 8111, &[7u8; 1200]).unwrap();
        assert_eq!(
            u.server_saw_peer.ip(),
            IpAddr::V4(INET),
            "offloads {offloads}"
        );
        let (inet_frames, backend_frames) = (at_inet.stop().unwrap(), at_backend.stop().unwrap());
        for (frames, from, to, proto, at_least) in [
            (&inet_frames, EIP, INET, 6, 5),
            (&inet_frames, EIP, INET, 17, 1),
            (&backend_frames, INET, BACKEND, 6, 5),
            (&backend_frames, INET, BACKEND, 17, 1),
        ] {
            let n = verified_frames(frames, from, to, proto, true);
            assert!(
                n >= at_least,
                "offloads {offloads}: {n} frames {from} -> {to} proto {proto}"
            );
        }
        let stats = ipnat.stats_json().unwrap();
        let r = &stats["reasons"];
        assert!(r["forwarded_neigh"].as_u64().unwrap() >= 10, "{stats}");
        // With GRO on, TC sees aggregates longer than the MTU: they are forwarded as such
        // (their segments fit), not left to the kernel.
        assert_eq!(r["slow_frag_needed"], 0, "offloads {offloads}: {stats}");
        assert_eq!(lab.kernel_forwarded().unwrap(), 0, "{stats}");
    }
    assert_eq!(
        hw_csum_failures(),
        failures_before,
        "the kernel logged hw csum failure"
    );
}

/// The fast path remembers its reverse-path verdicts (a FIB lookup per packet costs more than
/// the rest of it), and forgets them on every routing change: with a route that sends the
/// internet host's replies out of the inner interface, the next datagram from it fails the
/// reverse-path check at once (not a second later, when a verdict would expire by itself), and
/// with the route gone the fast path takes the flow back.
#[test]
fn a_route_change_under_traffic_reaches_the_fast_paths_reverse_path_check() {
    require_root();
    let (lab, mut ipnat) = GatewayLab::started(LabOptions::default());
    let pin = ipnat.pin_path.to_str().unwrap().to_owned();
    let status = |lab: &GatewayLab| -> serde_json::Value {
        let (ok, out) = ipnat_in(&lab.gw, &["status", "--json", "--pin-path", &pin]);
        assert!(ok, "{out}");
        serde_json::from_str(&out).unwrap()
    };
    let reasons = |ipnat: &ipnat_tests::lab::Ipnat| -> (u64, u64) {
        let stats = ipnat.stats_json().unwrap();
        let r = &stats["reasons"];
        (
            r["forwarded"].as_u64().unwrap() + r["forwarded_neigh"].as_u64().unwrap(),
            r["slow_spoofed"].as_u64().unwrap(),
        )
    };
    // Waits until the controller has seen the routing change (its generation moved).
    let await_generation = |lab: &GatewayLab, before: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let g = status(lab)["route_generation"].as_u64().unwrap();
            if g != before {
                return g;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the route generation stayed at {before}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // Fast path, and the verdict remembered.
    for i in 0..3 {
        udp_exchange(&lab.inet, &lab.backend, EIP, 7000 + i, b"before").unwrap();
    }
    let st = status(&lab);
    assert!(
        st["remembered_reverse_paths"].as_u64().unwrap() >= 1,
        "{st}"
    );
    let (fast0, spoofed0) = reasons(&ipnat);
    assert!(fast0 >= 6, "the exchanges took the fast path: {fast0}");
    assert_eq!(spoofed0, 0);

    // The route back to the internet host now leaves by the inner interface.
    let generation = st["route_generation"].as_u64().unwrap();
    lab.gw
        .ip(&["route", "add", &format!("{INET}/32"), "dev", "int0"])
        .unwrap();
    let generation = await_generation(&lab, generation);
    // One datagram, to a socket that answers nothing: the fast path must refuse it, and the
    // kernel's path still delivers it.
    let sink = lab
        .backend
        .within(|| Ok(std::net::UdpSocket::bind((BACKEND, 7100))?))
        .unwrap();
    sink.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    lab.inet
        .within(|| {
            let s = std::net::UdpSocket::bind((INET, 0))?;
            s.send_to(b"after the change", (EIP, 7100))?;
            Ok(())
        })
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = sink.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"after the change"[..], IpAddr::V4(INET))
    );
    let (fast1, spoofed1) = reasons(&ipnat);
    assert_eq!(
        spoofed1, 1,
        "the changed route was not seen: {fast1} forwarded"
    );
    assert_eq!(fast1, fast0, "forwarded against the new route");

    // Route gone: the fast path takes the flow again.
    lab.gw
        .ip(&["route", "del", &format!("{INET}/32"), "dev", "int0"])
        .unwrap();
    await_generation(&lab, generation);
    udp_exchange(&lab.inet, &lab.backend, EIP, 7200, b"after").unwrap();
    let (fast2, spoofed2) = reasons(&ipnat);
    assert_eq!(spoofed2, 1);
    assert_eq!(fast2, fast1 + 2, "request and reply forwarded again");
    assert!(ipnat.stop().unwrap().success());
}
