//! Packet fixtures run through the real programs with BPF_PROG_TEST_RUN: for each, the map
//! setup, the input frame, the expected verdict, the expected output bytes (built independently,
//! checksums from scratch) and the counters that must move.

use std::net::Ipv4Addr;

use ipnat::{
    config::{Block, MappingConfig},
    dataplane::Dataplane,
};
use ipnat_common::Reason;
use ipnat_tests::{
    netns::require_root,
    packet::{self, IPPROTO_DCCP, IPPROTO_GRE, IPPROTO_UDPLITE, Ipv4, UdpCsum, ethernet},
    testrun::{
        BLOCK_PUBLIC, EIP, EIP2, Fixture, Harness, Hook, INET, PRIV, PRIV2, TC_ACT_OK, XDP_PASS,
        assert_no_failures, block, hex, mapping_counters, run_fixtures,
    },
};

const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);

fn dnat(name: &'static str, p: Ipv4) -> Fixture {
    let out = p.with_addrs(p.src, PRIV);
    Fixture::translated(name, Hook::Xdp, p.frame(), out.frame(), Reason::Dnat, EIP)
}

fn snat(name: &'static str, p: Ipv4) -> Fixture {
    let out = p.with_addrs(EIP, p.dst);
    Fixture::translated(
        name,
        Hook::TcEgress,
        p.frame(),
        out.frame(),
        Reason::Snat,
        EIP,
    )
}

fn untouched(name: &str, hook: Hook, frame: Vec<u8>, reason: Reason) -> Fixture {
    Fixture::untouched(name, hook, frame, reason)
}

fn fixtures() -> Vec<Fixture> {
    let payload: Vec<u8> = (0..=200u8).collect();
    let mut f = Vec::new();
    for (hook, build) in [
        (Hook::Xdp, dnat as fn(&'static str, Ipv4) -> Fixture),
        (Hook::TcEgress, snat),
    ] {
        let (src, dst) = if hook == Hook::Xdp {
            (INET, EIP)
        } else {
            (PRIV, INET)
        };
        f.push(build("tcp", Ipv4::tcp(src, 40000, dst, 80, &payload)));
        f.push(build(
            "tcp, odd payload",
            Ipv4::tcp(src, 40000, dst, 80, b"odd"),
        ));
        f.push(build("udp", Ipv4::udp(src, 40000, dst, 53, &payload)));
        let mut zero = Ipv4::udp(src, 40000, dst, 53, b"no checksum");
        zero.udp_csum = UdpCsum::Zero;
        f.push(build("udp with checksum 0 stays 0", zero));
        // Payload chosen so that the translated datagram's checksum computes to 0: sent as 0xffff.
        let mut ffff = Ipv4::udp(src, 40000, dst, 53, b"computed zero!");
        let (osrc, odst) = if hook == Hook::Xdp {
            (src, PRIV)
        } else {
            (EIP, dst)
        };
        ffff.force_zero_checksum_for(osrc, odst);
        let fx = build(
            "udp whose new checksum computes to 0 is sent as 0xffff",
            ffff,
        );
        let ip_off = 14 + 20;
        assert_eq!(&fx.expected[ip_off + 6..ip_off + 8], &[0xff, 0xff]);
        f.push(fx);
        f.push(build(
            "icmp echo (no pseudo-header)",
            Ipv4::icmp_echo(src, dst, 77, 1, &payload),
        ));
        f.push(build(
            "gre (other protocol: IPv4 header only)",
            Ipv4::new(src, dst, IPPROTO_GRE, vec![0, 0, 0x08, 0, 1, 2, 3, 4]),
        ));
        f.push(build(
            "udp-lite",
            Ipv4::new(
                src,
                dst,
                IPPROTO_UDPLITE,
                [&[0x9c, 0x40, 0, 53, 0, 0, 0, 0][..], b"lite"].concat(),
            ),
        ));
        f.push(build(
            "dccp",
            Ipv4::new(
                src,
                dst,
                IPPROTO_DCCP,
                [&[0x9c, 0x40, 0, 80, 5, 0, 0, 0][..], &[0; 8], b"dccp"].concat(),
            ),
        ));
        let mut vlan = Ipv4::tcp(src, 40000, dst, 80, b"tagged");
        vlan.vlan = Some(100);
        f.push(build("tcp in an 802.1Q tag", vlan));
        let mut opts = Ipv4::tcp(src, 40000, dst, 80, b"options");
        opts.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
        f.push(build("tcp with IPv4 options (IHL 6)", opts));
        // Fragments: the first carries the L4 checksum of the whole datagram; the others only
        // get their IPv4 header rewritten.
        let mut big = Ipv4::udp(src, 40000, dst, 53, &payload);
        big.id = 0x4242;
        big.frag = 0;
        let out = if hook == Hook::Xdp {
            big.with_addrs(src, PRIV)
        } else {
            big.with_addrs(EIP, dst)
        };
        f.push(Fixture::translated(
            "first fragment",
            hook,
            big.fragment_frame(0, 96, true),
            out.fragment_frame(0, 96, true),
            if hook == Hook::Xdp {
                Reason::Dnat
            } else {
                Reason::Snat
            },
            EIP,
        ));
        f.push(Fixture::translated(
            "last fragment",
            hook,
            big.fragment_frame(96, 1000, false),
            out.fragment_frame(96, 1000, false),
            Reason::FragmentTranslated,
            EIP,
        ));
        // A first fragment too short to hold the UDP checksum: dropped, untouched.
        let tiny = big.fragment_frame(0, 4, true);
        f.push(Fixture {
            name: "first fragment without room for the L4 checksum (RFC 1858)".into(),
            hook,
            expected: tiny.clone(),
            input: tiny,
            drop: true,
            reason: Reason::DropTinyFragment,
            mapping: None,
        });
        f.extend(icmp_error_fixtures(hook));
        // Untouched.
        let unmapped = if hook == Hook::Xdp {
            Ipv4::tcp(INET, 1, OTHER, 2, b"x")
        } else {
            Ipv4::tcp(Ipv4Addr::new(10, 0, 1, 99), 1, INET, 2, b"x")
        };
        f.push(untouched(
            "no mapping",
            hook,
            unmapped.frame(),
            Reason::PassNoMapping,
        ));
        // The other direction's address is not this hook's business.
        let wrong_way = if hook == Hook::Xdp {
            Ipv4::tcp(PRIV, 1, INET, 2, b"x")
        } else {
            Ipv4::tcp(INET, 1, EIP, 2, b"x")
        };
        f.push(untouched(
            "other direction's address",
            hook,
            wrong_way.frame(),
            Reason::PassNoMapping,
        ));
        let mut ipv6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        ipv6.extend_from_slice(&[0u8; 32]);
        ipv6.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
        f.push(untouched(
            "ipv6",
            hook,
            ethernet(None, 0x86dd, &ipv6),
            Reason::PassNotIpv4,
        ));
        let arp = [
            &[0, 1, 8, 0, 6, 4, 0, 1][..],
            &packet::MAC_A,
            &INET.octets(),
            &[0; 6],
            &EIP.octets(),
        ]
        .concat();
        f.push(untouched(
            "arp request for the public address",
            hook,
            ethernet(None, 0x0806, &arp),
            Reason::PassNotIpv4,
        ));
        let full = Ipv4::tcp(src, 1, dst, 2, b"").frame();
        f.push(untouched(
            "tcp header cut short",
            hook,
            {
                let mut t = full[..14 + 20 + 10].to_vec();
                t[14 + 3] = 30; // total length 30: header claims what is there
                t[14 + 10] = 0;
                t[14 + 11] = 0;
                let c = packet::checksum(&t[14..34]);
                t[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
                t
            },
            Reason::PassTruncatedL4,
        ));
        let mut bad_ihl = Ipv4::tcp(src, 1, dst, 2, b"x").frame();
        bad_ihl[14] = 0x44;
        f.push(untouched(
            "IHL below 5",
            hook,
            bad_ihl,
            Reason::PassMalformed,
        ));
        // RFC 1812 5.2.2: what a router must check before forwarding (the fast path bypasses
        // ip_rcv). Each header's checksum is recomputed, so only the named field is wrong.
        let with_total = |total: u16| {
            let mut t = Ipv4::tcp(src, 40000, dst, 80, b"truncated").frame();
            t[14 + 2..14 + 4].copy_from_slice(&total.to_be_bytes());
            t[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
            let c = packet::checksum(&t[14..34]);
            t[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
            t
        };
        let whole = Ipv4::tcp(src, 40000, dst, 80, b"truncated")
            .ip_bytes()
            .len() as u16;
        f.push(untouched(
            "total length beyond the frame",
            hook,
            with_total(whole + 4),
            Reason::PassMalformed,
        ));
        f.push(untouched(
            "total length below the header",
            hook,
            with_total(16),
            Reason::PassMalformed,
        ));
        let mut bad_check = Ipv4::tcp(src, 40000, dst, 80, b"bad header checksum").frame();
        bad_check[14 + 11] ^= 0x5a;
        f.push(untouched(
            "bad header checksum",
            hook,
            bad_check,
            Reason::PassMalformed,
        ));
        // A frame longer than its packet (Ethernet padding of a short one) is legal: translated,
        // the padding kept.
        let short = Ipv4::udp(src, 40000, dst, 53, b"pad");
        let mut padded = build("ethernet padding behind a short packet", short);
        padded.input.extend_from_slice(&[0u8; 12]);
        padded.expected.extend_from_slice(&[0u8; 12]);
        f.push(padded);
        if hook == Hook::Xdp {
            // The kernel's skb test-run refuses an IPv4 frame shorter than an IPv4 header (and
            // the stack never hands TC one), so this one is XDP's alone.
            f.push(untouched(
                "ethernet header and two bytes",
                hook,
                ethernet(None, 0x0800, &[0x45, 0]),
                Reason::PassMalformed,
            ));
        }
    }
    f
}

const GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// A packet builder: (source, destination, payload).
type Build = fn(Ipv4Addr, Ipv4Addr, &[u8]) -> Ipv4;

/// ICMP errors quoting a translated packet (RFC 5508): the quote is translated the opposite
/// way to the outer header, with its IPv4, L4 and the ICMP checksums.
fn icmp_error_fixtures(hook: Hook) -> Vec<Fixture> {
    let mut f = Vec::new();
    let payload: Vec<u8> = (0..64u8).collect();
    // The packets that caused the errors, as they were on the wire where the error was made.
    let quoted_kinds: [(&'static str, Build, usize); 5] = [
        ("quoting tcp", |s, d, p| Ipv4::tcp(s, 80, d, 40000, p), 500),
        ("quoting udp", |s, d, p| Ipv4::udp(s, 53, d, 40000, p), 500),
        (
            "quoting udp without checksum",
            |s, d, p| {
                let mut u = Ipv4::udp(s, 53, d, 40000, p);
                u.udp_csum = UdpCsum::Zero;
                u
            },
            500,
        ),
        (
            "quoting tcp, only 8 bytes of it (no checksum in the quote)",
            |s, d, p| Ipv4::tcp(s, 80, d, 40000, p),
            28,
        ),
        (
            "quoting an echo request",
            |s, d, p| Ipv4::icmp_echo(s, d, 9, 9, p),
            500,
        ),
    ];
    for (name, make, len) in quoted_kinds {
        let (input, expected, reason) = match hook {
            // The internet reports on a packet the backend sent (it left as EIP -> INET).
            Hook::Xdp => (
                Ipv4::icmp_error(INET, EIP, 3, 3, 0, &make(EIP, INET, &payload), len),
                Ipv4::icmp_error(INET, PRIV, 3, 3, 0, &make(PRIV, INET, &payload), len),
                Reason::Dnat,
            ),
            // The backend reports on a packet it received (INET -> PRIV after translation).
            Hook::TcEgress => (
                Ipv4::icmp_error(PRIV, INET, 3, 3, 0, &make(INET, PRIV, &payload), len),
                Ipv4::icmp_error(EIP, INET, 3, 3, 0, &make(INET, EIP, &payload), len),
                Reason::Snat,
            ),
            Hook::TcIngress => unreachable!("gateway fixtures do not run TC ingress"),
        };
        f.push(Fixture {
            name: name.into(),
            hook,
            input: input.frame(),
            expected: expected.frame(),
            drop: false,
            reason,
            mapping: Some(EIP.into()),
        });
    }
    if hook == Hook::TcEgress {
        // The gateway's own kernel: TTL expired / fragmentation needed for a packet it had
        // already translated INET -> PRIV. Only the quote names a mapped address.
        for (name, t, code, mtu) in [
            ("gateway's time exceeded, quote only", 11u8, 0u8, 0u16),
            ("gateway's fragmentation needed, quote only", 3, 4, 1400),
        ] {
            let q = Ipv4::tcp(INET, 40000, PRIV, 80, &payload);
            f.push(Fixture::translated(
                name,
                hook,
                Ipv4::icmp_error(GW, INET, t, code, mtu, &q, 548).frame(),
                Ipv4::icmp_error(GW, INET, t, code, mtu, &q.with_addrs(INET, EIP), 548).frame(),
                Reason::IcmpQuoteOnly,
                EIP,
            ));
        }
    }
    // Block mappings: host bits kept, the longest prefix wins, addresses beyond the block
    // untouched. 120.0.0.0/25 covers .0-.127.
    let a = Ipv4Addr::new(120, 0, 0, 7);
    let a_priv = Ipv4Addr::new(10, 0, 2, 7);
    let b_priv = Ipv4Addr::new(10, 0, 2, 127);
    let b = Ipv4Addr::new(120, 0, 0, 127);
    if hook == Hook::Xdp {
        let p = Ipv4::tcp(INET, 40000, a, 443, &payload);
        f.push(Fixture::translated(
            "block: TCP to 120.0.0.7 -> 10.0.2.7",
            hook,
            p.frame(),
            p.with_addrs(INET, a_priv).frame(),
            Reason::Dnat,
            block(BLOCK_PUBLIC),
        ));
        f.push(untouched(
            "block: 120.0.0.128 is outside the /25",
            hook,
            Ipv4::tcp(INET, 40000, Ipv4Addr::new(120, 0, 0, 128), 443, &payload).frame(),
            Reason::PassNoMapping,
        ));
    } else {
        let p = Ipv4::udp(b_priv, 53, INET, 40000, &payload);
        f.push(Fixture::translated(
            "block: UDP from 10.0.2.127 -> 120.0.0.127",
            hook,
            p.frame(),
            p.with_addrs(b, INET).frame(),
            Reason::Snat,
            block(BLOCK_PUBLIC),
        ));
        // The gateway's own error about a packet it translated into the block.
        let q = Ipv4::udp(INET, 40000, a_priv, 53, &payload);
        f.push(Fixture::translated(
            "block: gateway's time exceeded quoting 10.0.2.7",
            hook,
            Ipv4::icmp_error(GW, INET, 11, 0, 0, &q, 548).frame(),
            Ipv4::icmp_error(GW, INET, 11, 0, 0, &q.with_addrs(INET, a), 548).frame(),
            Reason::IcmpQuoteOnly,
            block(BLOCK_PUBLIC),
        ));
    }
    f
}

#[test]
fn fixtures_translate_exactly() {
    let h = Harness::new();
    assert_no_failures(run_fixtures(
        &h,
        fixtures(),
        &[EIP.into(), EIP2.into(), block(BLOCK_PUBLIC)],
    ));
}

#[test]
fn second_mapping_counts_separately() {
    let h = Harness::new();
    let p = Ipv4::udp(INET, 1234, EIP2, 53, b"to the second mapping");
    let (_, out) = h.run(Hook::Xdp, &p.frame());
    assert_eq!(out, p.with_addrs(INET, PRIV2).frame());
    let s = h.snapshot();
    assert_eq!(mapping_counters(&s, EIP2, Hook::Xdp).0, 1);
    assert_eq!(mapping_counters(&s, EIP, Hook::Xdp).0, 0);
}

#[test]
fn replacing_a_mapping_keeps_the_others_and_removes_the_old() {
    let mut h = Harness::new();
    let new_priv = Ipv4Addr::new(10, 0, 1, 50);
    h.dp.tables
        .apply(&[
            MappingConfig {
                public: EIP.into(),
                private: new_priv.into(),
            },
            MappingConfig {
                public: EIP2.into(),
                private: PRIV2.into(),
            },
        ])
        .unwrap();
    let p = Ipv4::tcp(INET, 1, EIP, 80, b"moved");
    assert_eq!(
        h.run(Hook::Xdp, &p.frame()).1,
        p.with_addrs(INET, new_priv).frame()
    );
    // The old private address no longer translates; the new one does.
    let old = Ipv4::tcp(PRIV, 80, INET, 1, b"old");
    assert_eq!(h.run(Hook::TcEgress, &old.frame()).1, old.frame());
    let new = Ipv4::tcp(new_priv, 80, INET, 1, b"new");
    assert_eq!(
        h.run(Hook::TcEgress, &new.frame()).1,
        new.with_addrs(EIP, INET).frame()
    );
    // Removing a mapping removes both directions.
    h.dp.tables
        .apply(&[MappingConfig {
            public: EIP2.into(),
            private: PRIV2.into(),
        }])
        .unwrap();
    assert_eq!(h.run(Hook::Xdp, &p.frame()).1, p.frame());
    let ids: Vec<_> =
        h.dp.tables
            .mappings()
            .unwrap()
            .iter()
            .map(|m| (m.public, m.id))
            .collect();
    assert_eq!(
        ids,
        vec![(EIP2.into(), 2)],
        "the remaining mapping keeps its id"
    );
    // The block went with the first apply (it was not in the list): both directions.
    let to_block = Ipv4::tcp(INET, 1, Ipv4Addr::new(120, 0, 0, 7), 80, b"gone");
    assert_eq!(h.run(Hook::Xdp, &to_block.frame()).1, to_block.frame());
    let from_block = Ipv4::tcp(Ipv4Addr::new(10, 0, 2, 7), 80, INET, 1, b"gone");
    assert_eq!(
        h.run(Hook::TcEgress, &from_block.frame()).1,
        from_block.frame()
    );
}

#[test]
fn a_million_mappings_with_counters_fit_well_under_a_gib() {
    require_root();
    let dp = Dataplane::load(None, 1_000_000).expect("load with room for 1,000,000 mappings");
    let m = dp.tables.memory();
    println!(
        "1,000,000 mappings: {} MiB of map memory, {:.1} bytes per mapping; per map: {:?}",
        m.total_bytes >> 20,
        m.bytes_per_mapping,
        m.maps
    );
    assert_eq!(m.capacity, 1_000_000);
    assert!(m.bytes_per_mapping > 40.0, "memlock not read: {m:?}");
    assert!(
        m.bytes_per_mapping <= 256.0,
        "over 256 bytes per mapping: {m:?}"
    );
    // No per-CPU state grows with the mappings: the figure holds on a 16-CPU host too.
    assert!(m.total_bytes < 512 << 20, "{m:?}");
}

/// The tables are written and read in batches (BPF_MAP_UPDATE_BATCH / LOOKUP_BATCH, 65,536
/// entries a call): more entries than one batch come back exactly, every one translates, and a
/// change in the middle of a large table is applied alone.
#[test]
fn batched_writes_and_reads_cover_every_entry() {
    require_root();
    let n = 70_000u32;
    let mut h = Harness {
        dp: Dataplane::load(None, n + 10).unwrap(),
    };
    let mut desired: Vec<MappingConfig> = (0..n)
        .map(|i| MappingConfig {
            public: Ipv4Addr::from(0x6440_0000 + i).into(),
            private: Ipv4Addr::from(0x0a40_0000 + i).into(),
        })
        .collect();
    h.dp.tables.apply(&desired).unwrap();
    let installed = h.dp.tables.mappings().unwrap();
    assert_eq!(installed.len(), n as usize);
    let mut got: Vec<(Block, Block)> = installed.iter().map(|m| (m.public, m.private)).collect();
    got.sort();
    let mut want: Vec<(Block, Block)> = desired.iter().map(|m| (m.public, m.private)).collect();
    want.sort();
    assert_eq!(got, want);
    let mut ids: Vec<u32> = installed.iter().map(|m| m.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), n as usize, "ids unique");
    for i in [0, 65_535, 65_536, n - 1] {
        let public = Ipv4Addr::from(0x6440_0000 + i);
        let p = Ipv4::udp(INET, 1, public, 2, b"x");
        let (_, out) = h.run(Hook::Xdp, &p.frame());
        assert_eq!(
            out,
            p.with_addrs(INET, Ipv4Addr::from(0x0a40_0000 + i)).frame(),
            "{i}"
        );
    }
    // One change among 70,000: only it moves, its id stays.
    let before = installed
        .iter()
        .find(|m| m.public == desired[66_000].public)
        .unwrap()
        .id;
    desired[66_000].private = Ipv4Addr::new(10, 99, 0, 1).into();
    h.dp.tables.apply(&desired).unwrap();
    let after = h.dp.tables.mappings().unwrap();
    let m = after
        .iter()
        .find(|m| m.public == desired[66_000].public)
        .unwrap();
    assert_eq!((m.id, m.private), (before, desired[66_000].private));
    assert_eq!(after.len(), n as usize);
    h.dp.tables.apply(&desired[..10]).unwrap();
    assert_eq!(h.dp.tables.mappings().unwrap().len(), 10);
}

/// The fast path (XDP forwarding by itself, past `ip_rcv`) leaves a truncated packet to the
/// kernel untouched, counted as malformed once: XDP passes it on as it came, and TC ingress
/// (which decides again for whatever XDP did not forward) counts it.
#[test]
fn the_fast_path_leaves_malformed_headers_to_the_kernel() {
    let mut h = Harness::new();
    h.dp.tables.set_fast_path(true).unwrap();
    let mut frame = Ipv4::tcp(INET, 40000, EIP, 80, b"fast path").frame();
    let total = u16::from_be_bytes([frame[16], frame[17]]) + 8;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    let before = h.snapshot();
    let (verdict, out) = h.run(Hook::Xdp, &frame);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(hex(&out), hex(&frame));
    let (verdict, out) = h.run(Hook::TcIngress, &out);
    let after = h.snapshot();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&frame));
    assert_eq!(
        after.reasons["pass_malformed"] - before.reasons["pass_malformed"],
        1
    );
}

/// With the fast path on, what XDP does not forward (here a TTL that expires at the gateway:
/// the kernel must answer it) leaves XDP untouched and uncounted, and TC ingress translates
/// the destination for the kernel and counts it once. XDP tells TC nothing: the metadata area
/// in front of the packet needs `bpf_xdp_adjust_meta`, which some kernels refuse to XDP.
#[test]
fn the_fast_path_leaves_the_kernels_packets_to_tc_ingress_untouched() {
    let mut h = Harness::new();
    h.dp.tables.set_fast_path(true).unwrap();
    let mut p = Ipv4::udp(INET, 40000, EIP, 53, b"ttl one");
    p.ttl = 1;
    let frame = p.frame();
    let translated = p.with_addrs(INET, PRIV).frame();
    let before = h.snapshot();
    let (verdict, out) = h.run(Hook::Xdp, &frame);
    let mid = h.snapshot();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(hex(&out), hex(&frame), "XDP must leave it untouched");
    assert_eq!(mid.reasons, before.reasons, "XDP must count nothing");
    let (verdict, out) = h.run(Hook::TcIngress, &out);
    let after = h.snapshot();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&translated));
    assert_eq!(after.reasons["slow_ttl"] - before.reasons["slow_ttl"], 1);
    let moved: u64 = Reason::ALL
        .iter()
        .map(|r| after.reasons[r.name()] - before.reasons[r.name()])
        .sum();
    assert_eq!(moved, 1, "counted once: {:?}", after.reasons);
}

/// A mapping's counters live in its table entries, and the controller rewrites a changed
/// entry's translation in place (`ipnat_table_write`), never its counters: every packet
/// translated while the mapping is replaced again and again is counted, none is lost to a
/// replacement (a map update from user space would replace the entry, counters and all, and
/// lose what the data path adds between reading the old counters and writing the new entry).
#[test]
fn replacing_a_mapping_under_traffic_loses_no_counter_increment() {
    use std::{
        os::fd::AsFd,
        sync::atomic::{AtomicBool, Ordering},
    };
    const PRIV3: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 12);
    let mut h = Harness::new();
    let prog: &aya::programs::Xdp =
        h.dp.ebpf()
            .program(ipnat_common::names::XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
    let fd = prog.fd().unwrap().as_fd().try_clone_to_owned().unwrap();
    let frame = Ipv4::udp(INET, 40000, EIP, 53, b"count me").frame();
    let before = mapping_counters(&h.snapshot(), EIP, Hook::Xdp).0;
    let stop = AtomicBool::new(false);
    let mut mappings = ipnat_tests::testrun::standard_mappings();
    let (sent, seen) = std::thread::scope(|s| {
        let runner = s.spawn(|| {
            let (mut sent, mut seen) = (0u64, [0u64; 2]);
            while !stop.load(Ordering::Relaxed) || sent < 1000 {
                let (verdict, out) = ipnat_tests::testrun::run_fd(fd.as_fd(), &frame);
                assert_eq!(verdict, XDP_PASS);
                let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
                match dst {
                    PRIV => seen[0] += 1,
                    PRIV3 => seen[1] += 1,
                    other => panic!("translated to {other}"),
                }
                sent += 1;
            }
            (sent, seen)
        });
        for i in 0..400 {
            mappings[0].private = if i % 2 == 0 { PRIV3 } else { PRIV }.into();
            h.dp.tables.apply(&mappings).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        runner.join().unwrap()
    });
    let after = mapping_counters(&h.snapshot(), EIP, Hook::Xdp).0;
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "the replacements happened under traffic: {seen:?}"
    );
    assert_eq!(after - before, sent, "{seen:?}");
}
