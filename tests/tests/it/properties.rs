//! Property tests: random and malformed frames through the real programs (BPF_PROG_TEST_RUN).
//!
//! For every frame: a checksum that was valid stays valid and one that was corrupt stays
//! corrupt (an incremental update must carry the error along); a frame no mapping applies to
//! comes out byte for byte as it went in; a translated frame differs only in the translated
//! address and the checksums that cover it, and carries the mapping's address.

use std::net::Ipv4Addr;

use ipnat_tests::{
    packet::{checksum, pseudo_header},
    testrun::{EIP, EIP2, Harness, Hook, INET, PRIV, PRIV2, TC_ACT_OK, XDP_PASS, hex},
};
use proptest::prelude::*;

/// Addresses the frames use: mapped (both sides, in and out of the block) and not.
fn address() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        Just(EIP),
        Just(EIP2),
        Just(PRIV),
        Just(PRIV2),
        Just(INET),
        Just(Ipv4Addr::new(120, 0, 0, 7)),
        Just(Ipv4Addr::new(120, 0, 0, 200)),
        Just(Ipv4Addr::new(10, 0, 2, 100)),
        any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

/// The translation a hook applies to an address, per the standard tables: the two exact
/// mappings, then the block 120.0.0.0/25 <-> 10.0.2.0/25 with its host bits kept.
fn translated(hook: Hook, a: Ipv4Addr) -> Option<Ipv4Addr> {
    let (exact, from, to) = match hook {
        Hook::Xdp => ([(EIP, PRIV), (EIP2, PRIV2)], [120, 0, 0], [10, 0, 2]),
        Hook::TcEgress => ([(PRIV, EIP), (PRIV2, EIP2)], [10, 0, 2], [120, 0, 0]),
        Hook::TcIngress => unreachable!("gateway properties do not run TC ingress"),
    };
    let o = a.octets();
    if let Some(&(_, b)) = exact.iter().find(|(x, _)| *x == a) {
        Some(b)
    } else if o[..3] == from && o[3] < 128 {
        Some(Ipv4Addr::new(to[0], to[1], to[2], o[3]))
    } else {
        None
    }
}

#[derive(Debug, Clone)]
struct Spec {
    vlan: bool,
    version: u8,
    ihl: u8,
    frag: u16,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    l4: Vec<u8>,
    udp_zero: bool,
    good_l4: bool,
    good_ip: bool,
    bad_tot_len: Option<u16>,
    cut: Option<usize>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (
            prop::bool::weighted(0.1),
            prop_oneof![9 => Just(4u8), 1 => 0u8..16],
            prop_oneof![8 => Just(5u8), 2 => 0u8..16],
            prop_oneof![
                Just(0u16),
                Just(0x4000),
                Just(0x2000),
                any::<u16>().prop_map(|f| f & 0x3fff),
            ],
            prop_oneof![
                Just(6u8),
                Just(17),
                Just(1),
                Just(33),
                Just(136),
                Just(47),
                any::<u8>()
            ],
        ),
        (address(), address()),
        (
            prop::collection::vec(any::<u8>(), 0..120),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.8),
            prop::option::weighted(0.1, any::<u16>()),
            prop::option::weighted(0.1, 0usize..200),
        ),
    )
        .prop_map(
            |(
                (vlan, version, ihl, frag, proto),
                (src, dst),
                (l4, udp_zero, good_l4, good_ip, bad_tot_len, cut),
            )| Spec {
                vlan,
                version,
                ihl,
                frag,
                proto,
                src,
                dst,
                l4,
                udp_zero,
                good_l4,
                good_ip,
                bad_tot_len,
                cut,
            },
        )
}

/// Offset of the L4 checksum for protocols whose checksum covers the pseudo-header.
fn l4_csum_off(proto: u8) -> Option<usize> {
    match proto {
        6 => Some(16),
        17 | 33 | 136 => Some(6),
        _ => None,
    }
}

struct Built {
    frame: Vec<u8>,
    ip_off: usize,
}

fn build(s: &Spec) -> Built {
    let mut l4 = s.l4.clone();
    // A valid (or deliberately wrong) L4 checksum, when the protocol has one and it fits.
    if let Some(off) = l4_csum_off(s.proto)
        && l4.len() >= off + 2
    {
        l4[off] = 0;
        l4[off + 1] = 0;
        let mut c = if s.proto == 17 && s.udp_zero {
            0
        } else {
            let mut data = pseudo_header(s.src, s.dst, s.proto, l4.len());
            data.extend_from_slice(&l4);
            let c = checksum(&data);
            if s.proto == 17 && c == 0 { 0xffff } else { c }
        };
        if !s.good_l4 && c != 0 {
            c ^= 0x0101;
        }
        l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    }
    let hlen = s.ihl as usize * 4;
    let hlen_bytes = hlen.max(20);
    let mut ip = vec![0u8; hlen_bytes];
    ip[0] = (s.version << 4) | s.ihl;
    let tot = s.bad_tot_len.unwrap_or((hlen_bytes + l4.len()) as u16);
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6..8].copy_from_slice(&s.frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = s.proto;
    ip[12..16].copy_from_slice(&s.src.octets());
    ip[16..20].copy_from_slice(&s.dst.octets());
    for (i, b) in ip.iter_mut().enumerate().skip(20) {
        *b = i as u8; // option bytes
    }
    let covered = hlen.clamp(20, hlen_bytes);
    let mut c = checksum(&ip[..covered]);
    if !s.good_ip {
        c ^= 0x0202;
    }
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa];
    if s.vlan {
        frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    frame.extend_from_slice(&[0x08, 0x00]);
    let ip_off = frame.len();
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&l4);
    if let Some(cut) = s.cut {
        frame.truncate((ip_off + cut).max(ip_off + 1).min(frame.len()));
    }
    Built { frame, ip_off }
}

/// Whether the IPv4 header checksum of the frame verifies (None: header not all there).
fn ip_valid(frame: &[u8], ip_off: usize) -> Option<bool> {
    let ihl = (*frame.get(ip_off)? & 0x0f) as usize * 4;
    if ihl < 20 {
        return None;
    }
    Some(checksum(frame.get(ip_off..ip_off + ihl)?) == 0)
}

/// Whether the L4 checksum verifies, for an unfragmented packet whose L4 part is all there
/// and whose header says so (None otherwise; UDP's "no checksum" is None too).
fn l4_valid(frame: &[u8], ip_off: usize) -> Option<bool> {
    let ip = frame.get(ip_off..)?;
    let ihl = (*ip.first()? & 0x0f) as usize * 4;
    if ip.len() < 20 || ihl < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 || tot != ip.len() || tot < ihl {
        return None;
    }
    let proto = ip[9];
    let off = l4_csum_off(proto)?;
    let l4 = &ip[ihl..];
    if l4.len() < off + 2 || (proto == 17 && l4[off..off + 2] == [0, 0]) {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let mut data = pseudo_header(src, dst, proto, l4.len());
    data.extend_from_slice(l4);
    Some(checksum(&data) == 0)
}

fn check(h: &Harness, hook: Hook, s: &Spec) -> Result<(), TestCaseError> {
    let b = build(s);
    let input = &b.frame;
    // The kernel's skb test-run refuses an untagged IPv4 frame shorter than an IPv4 header
    // (and the stack never hands TC one).
    if hook == Hook::TcEgress && !s.vlan && input.len() < b.ip_off + 20 {
        return Ok(());
    }
    let (verdict, out) = h.run(hook, input);
    let ctx = || format!("{hook:?} {s:?}\n in  {}\n out {}", hex(input), hex(&out));
    let pass = match hook {
        Hook::Xdp => XDP_PASS,
        Hook::TcEgress | Hook::TcIngress => TC_ACT_OK,
    };
    prop_assert_eq!(out.len(), input.len(), "{}", ctx());
    let ip_off = b.ip_off;
    let addr_field = ip_off + if hook == Hook::Xdp { 16 } else { 12 };
    let old = input
        .get(addr_field..addr_field + 4)
        .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]));
    let mapped = old.and_then(|a| translated(hook, a));
    let ihl = (input[ip_off] & 0x0f) as usize * 4;
    let well_formed_header = input[ip_off] >> 4 == 4 && ihl >= 20 && input.len() >= ip_off + 20;
    if verdict != pass {
        // Only a first fragment too short for its L4 checksum may be dropped (RFC 1858).
        let frag = u16::from_be_bytes([input[ip_off + 6], input[ip_off + 7]]);
        let tiny = frag & 0x2000 != 0
            && frag & 0x1fff == 0
            && l4_csum_off(s.proto).is_some_and(|o| input.len() < ip_off + ihl + o + 2);
        prop_assert!(mapped.is_some() && tiny, "unexpected drop: {}", ctx());
        return Ok(());
    }
    if out == *input {
        return Ok(());
    }
    // Something changed: it must be a translation the tables call for.
    prop_assert!(
        well_formed_header,
        "a malformed frame was changed: {}",
        ctx()
    );
    let is_icmp = s.proto == 1;
    if !is_icmp {
        let new = mapped
            .ok_or_else(|| TestCaseError::fail(format!("unmapped frame changed: {}", ctx())))?;
        prop_assert_eq!(
            &out[addr_field..addr_field + 4],
            &new.octets()[..],
            "{}",
            ctx()
        );
        let l4_check = l4_csum_off(s.proto).map(|o| ip_off + ihl + o);
        for (i, (a, b)) in input.iter().zip(&out).enumerate() {
            let allowed = (addr_field..addr_field + 4).contains(&i)
                || (ip_off + 10..ip_off + 12).contains(&i)
                || l4_check.is_some_and(|c| (c..c + 2).contains(&i));
            prop_assert!(a == b || allowed, "byte {} changed: {}", i, ctx());
        }
    } else {
        // ICMP: the outer address and checksum, and the ICMP message (a quote).
        for (i, (a, b)) in input.iter().zip(&out).enumerate() {
            let allowed = (addr_field..addr_field + 4).contains(&i)
                || (ip_off + 10..ip_off + 12).contains(&i)
                || i >= ip_off + ihl;
            prop_assert!(a == b || allowed, "byte {} changed: {}", i, ctx());
        }
    }
    prop_assert_eq!(
        ip_valid(&out, ip_off),
        ip_valid(input, ip_off),
        "IPv4 checksum validity: {}",
        ctx()
    );
    prop_assert_eq!(
        l4_valid(&out, ip_off),
        l4_valid(input, ip_off),
        "L4 checksum validity: {}",
        ctx()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_frames_through_xdp(s in spec()) {
        thread_local!(static H: Harness = Harness::new());
        H.with(|h| check(h, Hook::Xdp, &s))?;
    }

    #[test]
    fn random_frames_through_tc_egress(s in spec()) {
        thread_local!(static H: Harness = Harness::new());
        H.with(|h| check(h, Hook::TcEgress, &s))?;
    }
}
