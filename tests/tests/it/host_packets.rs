//! Host orientation through the real programs with BPF_PROG_TEST_RUN: TC ingress translates
//! the destination private -> public, TC egress the source public -> private, except with
//! internal peers and for sockets bound to the private address. Expected frames are built
//! independently (checksums from scratch) and compared byte for byte, with the counters.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use ipnat_common::Reason;
use ipnat_tests::{
    netns::{Netns, require_root},
    packet::{IPPROTO_GRE, Ipv4, UdpCsum},
    testrun::{
        EIP, EIP2, Fixture, Harness, Hook, INET, PRIV, TC_ACT_OK, assert_no_failures, hex,
        run_fixtures,
    },
};

/// A peer inside the internal prefix (the VPC).
const VPC_PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 30);

/// Received from the internet: the destination PRIV becomes the EIP.
fn inbound(name: &str, p: Ipv4) -> Fixture {
    let expected = p.with_addrs(p.src, EIP).frame();
    Fixture::translated(
        name,
        Hook::TcIngress,
        p.frame(),
        expected,
        Reason::HostIn,
        EIP,
    )
}

/// Sent from the EIP: the source becomes PRIV.
fn outbound(name: &str, p: Ipv4) -> Fixture {
    let expected = p.with_addrs(PRIV, p.dst).frame();
    Fixture::translated(
        name,
        Hook::TcEgress,
        p.frame(),
        expected,
        Reason::HostOut,
        EIP,
    )
}

fn untouched(name: &str, hook: Hook, p: Ipv4, reason: Reason) -> Fixture {
    Fixture::untouched(name, hook, p.frame(), reason)
}

fn fixtures() -> Vec<Fixture> {
    let payload: Vec<u8> = (0..=150u8).collect();
    let mut f = Vec::new();
    // Received from the internet: the cloud delivered INET -> PRIV; the host sees INET -> EIP.
    let mut zero = Ipv4::udp(INET, 40000, PRIV, 5060, b"no checksum");
    zero.udp_csum = UdpCsum::Zero;
    for (name, p) in [
        ("tcp", Ipv4::tcp(INET, 40000, PRIV, 443, &payload)),
        ("udp", Ipv4::udp(INET, 40000, PRIV, 5060, &payload)),
        ("udp with checksum 0 stays 0", zero),
        ("icmp echo", Ipv4::icmp_echo(INET, PRIV, 7, 1, &payload)),
        (
            "gre (IPv4 header only)",
            Ipv4::new(INET, PRIV, IPPROTO_GRE, vec![0, 0, 0x08, 0, 1, 2, 3, 4]),
        ),
    ] {
        f.push(inbound(name, p));
    }
    // An error about a packet the host sent from its EIP (the cloud made it PRIV -> INET on
    // the way out and translated the quote back on the way in).
    let sent = Ipv4::tcp(PRIV, 40000, INET, 443, &payload);
    f.push(Fixture::translated(
        "fragmentation needed quoting the host's tcp",
        Hook::TcIngress,
        Ipv4::icmp_error(INET, PRIV, 3, 4, 1400, &sent, 500).frame(),
        Ipv4::icmp_error(INET, EIP, 3, 4, 1400, &sent.with_addrs(EIP, INET), 500).frame(),
        Reason::HostIn,
        EIP,
    ));
    let mut big = Ipv4::udp(INET, 40000, PRIV, 5060, &[7u8; 300]);
    big.frag = 0;
    f.push(Fixture::translated(
        "non-first fragment",
        Hook::TcIngress,
        big.fragment_frame(96, 308, false),
        big.with_addrs(INET, EIP).fragment_frame(96, 308, false),
        Reason::FragmentTranslated,
        EIP,
    ));
    f.push(untouched(
        "from the VPC: the private address stays",
        Hook::TcIngress,
        Ipv4::tcp(VPC_PEER, 40000, PRIV, 22, &payload),
        Reason::PassInternalPeer,
    ));
    f.push(untouched(
        "to an unmapped private address",
        Hook::TcIngress,
        Ipv4::tcp(INET, 40000, Ipv4Addr::new(10, 0, 1, 99), 22, &payload),
        Reason::PassNoMapping,
    ));
    f.push(untouched(
        "to the EIP itself (not what the cloud delivers): untouched",
        Hook::TcIngress,
        Ipv4::tcp(INET, 40000, EIP, 22, &payload),
        Reason::PassNoMapping,
    ));

    // Sent by an application bound to the EIP: the cloud expects the private source.
    let mut ffff = Ipv4::udp(EIP, 5060, INET, 40000, b"computed zero!");
    ffff.force_zero_checksum_for(PRIV, INET);
    for (name, p) in [
        ("tcp", Ipv4::tcp(EIP, 443, INET, 40000, &payload)),
        ("udp", Ipv4::udp(EIP, 5060, INET, 40000, &payload)),
        (
            "udp whose new checksum computes to 0 is sent as 0xffff",
            ffff,
        ),
        (
            "icmp echo reply",
            Ipv4::icmp_echo(EIP, INET, 7, 1, &payload),
        ),
    ] {
        f.push(outbound(name, p));
    }
    // The host's port unreachable about a datagram it received on its EIP.
    let got = Ipv4::udp(INET, 40000, EIP, 9, &payload);
    f.push(Fixture::translated(
        "port unreachable quoting a datagram to the EIP",
        Hook::TcEgress,
        Ipv4::icmp_error(EIP, INET, 3, 3, 0, &got, 500).frame(),
        Ipv4::icmp_error(PRIV, INET, 3, 3, 0, &got.with_addrs(INET, PRIV), 500).frame(),
        Reason::HostOut,
        EIP,
    ));
    f.push(untouched(
        "from the EIP to the VPC: untouched",
        Hook::TcEgress,
        Ipv4::tcp(EIP, 443, VPC_PEER, 40000, &payload),
        Reason::PassInternalPeer,
    ));
    f.push(untouched(
        "from the private address: untouched (the cloud translates it)",
        Hook::TcEgress,
        Ipv4::tcp(PRIV, 40000, INET, 443, &payload),
        Reason::PassNoMapping,
    ));
    f
}

/// Runs the fixtures on `h`, watching both mappings' counters; returns the failures.
fn check(h: &Harness, fixtures: Vec<Fixture>) -> Vec<String> {
    run_fixtures(h, fixtures, &[EIP.into(), EIP2.into()])
}

#[test]
fn host_orientation_translates_exactly() {
    let h = Harness::host();
    assert_no_failures(check(&h, fixtures()));
}

/// Sockets bound to the private address keep their packets untranslated; wildcard sockets
/// get the public address. Run in a namespace that owns PRIV, where BPF_PROG_TEST_RUN's
/// socket lookups see the sockets bound here.
#[test]
fn sockets_bound_to_the_private_address_keep_it() {
    require_root();
    let ns = Netns::new("hostsk").unwrap();
    ns.ip(&["addr", "add", &format!("{PRIV}/32"), "dev", "lo"])
        .unwrap();
    // A route to the internet, so that an unbound socket can connect out.
    ns.ip(&["route", "add", "203.0.113.0/24", "dev", "lo"])
        .unwrap();
    let failures = ns
        .within(|| {
            let h = Harness::host();
            let udp_private = UdpSocket::bind((PRIV, 5353))?;
            let udp_any = UdpSocket::bind(("0.0.0.0", 5354))?;
            let tcp_private = TcpListener::bind((PRIV, 8080))?;
            let tcp_any = TcpListener::bind(("0.0.0.0", 8081))?;
            // A UDP socket of an unbound client that connected out (the kernel chose PRIV).
            let client = UdpSocket::bind("0.0.0.0:0")?;
            client.connect((INET, 53))?;
            let SocketAddr::V4(local) = client.local_addr()? else {
                anyhow::bail!("not IPv4");
            };
            assert_eq!(*local.ip(), PRIV, "the kernel's source for INET");
            let client_port = local.port();
            let payload = b"hello";
            // (what, the packet, whether a socket bound to the private address keeps it)
            let mut f: Vec<Fixture> = [
                (
                    "udp to a socket bound to the private address",
                    Ipv4::udp(INET, 40000, PRIV, 5353, payload),
                    true,
                ),
                (
                    "udp to a wildcard socket: the public address",
                    Ipv4::udp(INET, 40000, PRIV, 5354, payload),
                    false,
                ),
                (
                    "tcp to a listener bound to the private address",
                    Ipv4::tcp(INET, 40000, PRIV, 8080, payload),
                    true,
                ),
                (
                    "tcp to a wildcard listener: the public address",
                    Ipv4::tcp(INET, 40000, PRIV, 8081, payload),
                    false,
                ),
                (
                    "a reply to a private-address client",
                    Ipv4::udp(INET, 53, PRIV, client_port, payload),
                    true,
                ),
                (
                    "to a port nobody listens on: the public address",
                    Ipv4::udp(INET, 40000, PRIV, 5399, payload),
                    false,
                ),
            ]
            .into_iter()
            .map(|(what, p, kept)| match kept {
                true => untouched(what, Hook::TcIngress, p, Reason::PassPrivateSocket),
                false => inbound(what, p),
            })
            .collect();
            // An ICMP error about a datagram the private-address socket sent.
            let sent = Ipv4::udp(PRIV, 5353, INET, 40000, payload);
            f.push(untouched(
                "an ICMP error quoting the private-address socket's datagram",
                Hook::TcIngress,
                Ipv4::icmp_error(INET, PRIV, 3, 4, 1400, &sent, 500),
                Reason::PassPrivateSocket,
            ));
            let sent_any = Ipv4::udp(PRIV, 5354, INET, 40000, payload);
            f.push(Fixture::translated(
                "an ICMP error quoting the wildcard socket's datagram",
                Hook::TcIngress,
                Ipv4::icmp_error(INET, PRIV, 3, 4, 1400, &sent_any, 500).frame(),
                Ipv4::icmp_error(INET, EIP, 3, 4, 1400, &sent_any.with_addrs(EIP, INET), 500)
                    .frame(),
                Reason::HostIn,
                EIP,
            ));
            let failures = check(&h, f);
            drop((udp_private, udp_any, tcp_private, tcp_any, client));
            Ok(failures)
        })
        .unwrap();
    assert_no_failures(failures);
}

#[test]
fn gateway_orientation_ignores_the_internal_prefixes() {
    // The same internal prefixes in gateway orientation: TC ingress leaves everything to XDP.
    let mut h = Harness::host();
    h.dp.tables.set_host(false).unwrap();
    let p = Ipv4::tcp(INET, 40000, PRIV, 443, b"x");
    let (verdict, out) = h.run(Hook::TcIngress, &p.frame());
    assert_eq!((verdict, hex(&out)), (TC_ACT_OK, hex(&p.frame())));
}
