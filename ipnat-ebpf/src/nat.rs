//! The stateless one-to-one translation, shared by every hook.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::maps::HashMap;
use ipnat_common::{MappingCounters, NatTarget, Reason};

use crate::{
    IPNAT_DNAT, IPNAT_MAP_CNT, IPNAT_SNAT, csum,
    pkt::{L4Csum, Packet, Rewrite},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags skipped at most (QinQ).
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_UDPLITE: u8 = 136;

/// Which address a hook translates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Destination public -> private (packets towards a mapped public address).
    Dnat,
    /// Source private -> public (packets from a mapped private address).
    Snat,
}

/// Offset of the IPv4 header behind Ethernet and up to two VLAN tags, or the reason to pass.
#[inline(always)]
fn ipv4_offset<P: Packet>(p: &P) -> Result<usize, Reason> {
    let mut off = ETH_HLEN - 2;
    for _ in 0..MAX_VLAN_TAGS {
        let proto = u16::from_be(p.read::<u16>(off).ok_or(Reason::PassMalformed)?);
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        off += 4;
    }
    let proto = u16::from_be(p.read::<u16>(off).ok_or(Reason::PassMalformed)?);
    if proto != ETH_P_IP {
        return Err(Reason::PassNotIpv4);
    }
    Ok(off + 2)
}

#[inline(always)]
fn lookup(map: &HashMap<u32, NatTarget>, addr: u32) -> Option<NatTarget> {
    let p = map.get_ptr(addr)?;
    // One 8-byte load: an entry replaced in place by the controller is seen whole, old or new.
    // SAFETY: the map returned a valid pointer to an 8-byte, 8-aligned value.
    let raw = unsafe { core::ptr::read_volatile(p as *const u64) };
    let v = NatTarget {
        addr: raw as u32,
        id: (raw >> 32) as u32,
    };
    Some(v)
}

#[inline(always)]
fn count_mapping(id: u32, dir: Dir, bytes: u64) {
    let Some(c) = IPNAT_MAP_CNT.get_ptr_mut(id) else {
        return;
    };
    // SAFETY: the array value lives as long as the map; atomics because CPUs share it.
    unsafe {
        let c: *mut MappingCounters = c;
        let (pk, by) = match dir {
            Dir::Dnat => (&raw mut (*c).dnat_packets, &raw mut (*c).dnat_bytes),
            Dir::Snat => (&raw mut (*c).snat_packets, &raw mut (*c).snat_bytes),
        };
        // BPF atomic add (no fetch): the bpfel target has no compare-and-swap, so core's
        // AtomicU64::fetch_add is not available there.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(pk, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(by, bytes);
    }
}

/// Where the L4 checksum covering the pseudo-header of `proto` lives, relative to its header.
#[inline(always)]
fn l4_csum(proto: u8, l4_off: usize) -> L4Csum {
    match proto {
        IPPROTO_TCP => L4Csum::Always(l4_off + 16),
        IPPROTO_UDP => L4Csum::Udp(l4_off + 6),
        IPPROTO_DCCP | IPPROTO_UDPLITE => L4Csum::Always(l4_off + 6),
        _ => L4Csum::None,
    }
}

/// ICMP types whose payload quotes the packet that caused them (RFC 792): destination
/// unreachable (incl. fragmentation needed), time exceeded, parameter problem.
#[inline(always)]
fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 11 | 12)
}

/// A quoted packet inside an ICMP error and the translation that applies to it.
struct Quote {
    /// Offset of the quoted IPv4 header.
    ip_off: usize,
    /// Offset of its address field that this direction translates (the opposite field to the
    /// outer one: the quoted packet travelled the other way).
    addr_off: usize,
    old: u32,
    target: NatTarget,
    /// Offset of the quoted L4 checksum, when the quote holds it and it covers the
    /// pseudo-header; `true` when a zero there means "none" (UDP).
    l4_csum: Option<(usize, bool)>,
}

#[inline(always)]
fn parse_quote<P: Packet>(p: &P, icmp_off: usize, dir: Dir) -> Option<Quote> {
    let ip_off = icmp_off + 8;
    // One bounds check for the whole quoted header (single-byte checks at variable offsets
    // are compiled into a form the verifier cannot follow).
    let h = p.read::<[u8; 20]>(ip_off)?;
    let ihl = (h[0] & 0x0f) as usize * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let field = if dir == Dir::Dnat { 12 } else { 16 };
    let addr_off = ip_off + field;
    let old = u32::from_ne_bytes([h[field], h[field + 1], h[field + 2], h[field + 3]]);
    let map = if dir == Dir::Dnat {
        &IPNAT_DNAT
    } else {
        &IPNAT_SNAT
    };
    let target = lookup(map, old)?;
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let proto = h[9];
    let l4_csum = if frag & 0x1fff != 0 {
        None
    } else {
        match l4_csum(proto, ip_off + ihl) {
            L4Csum::None => None,
            L4Csum::Always(off) => p.read::<u16>(off).map(|_| (off, false)),
            L4Csum::Udp(off) => p.read::<u16>(off).map(|_| (off, true)),
        }
    };
    Some(Quote {
        ip_off,
        addr_off,
        old,
        target,
        l4_csum,
    })
}

/// Rewrites a quoted packet's address (RFC 5508): the quoted IPv4 header checksum, the quoted
/// L4 checksum where the quote holds it, and the ICMP checksum over all three changes.
/// Everything is read before anything is written.
#[inline(always)]
fn rewrite_quote<P: Packet>(p: &mut P, icmp_off: usize, q: &Quote) -> Result<(), ()> {
    let new = q.target.addr;
    let icmp_check = p.read::<u16>(icmp_off + 2).ok_or(())?;
    let ip_check = p.read::<u16>(q.ip_off + 10).ok_or(())?;
    let new_ip_check = csum::replace4(ip_check, q.old, new);
    let mut new_icmp = csum::replace4(icmp_check, q.old, new);
    new_icmp = csum::replace2(new_icmp, ip_check, new_ip_check);
    let mut l4 = None;
    if let Some((off, udp)) = q.l4_csum {
        let cur = p.read::<u16>(off).ok_or(())?;
        if !(udp && cur == 0) {
            let mut next = csum::replace4(cur, q.old, new);
            if udp && next == 0 {
                next = 0xffff;
            }
            new_icmp = csum::replace2(new_icmp, cur, next);
            l4 = Some((off, next));
        }
    }
    p.write(q.addr_off, new)?;
    p.write(q.ip_off + 10, new_ip_check)?;
    if let Some((off, v)) = l4 {
        p.write(off, v)?;
    }
    p.write(icmp_off + 2, new_icmp)
}

/// What [`translate`] decided.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the packet continue (translated or not).
    Pass,
    /// Drop it.
    Drop,
}

/// Translates one packet in direction `dir`; returns what happened and whether to keep it.
///
/// `Dnat` translates the destination public -> private, and in an ICMP error the quoted
/// packet's source (it was sent from the public address). `Snat` translates the source
/// private -> public, and in an ICMP error the quoted packet's destination, also when only the
/// quote matches (an error the gateway's own kernel generated about a translated packet).
#[inline(always)]
pub fn translate<P: Packet>(p: &mut P, dir: Dir) -> (Reason, Verdict) {
    let ip_off = match ipv4_offset(p) {
        Ok(off) => off,
        Err(reason) => return (reason, Verdict::Pass),
    };
    let Some(vihl) = p.read::<u8>(ip_off) else {
        return (Reason::PassMalformed, Verdict::Pass);
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return (Reason::PassMalformed, Verdict::Pass);
    }
    let addr_off = ip_off + if dir == Dir::Dnat { 16 } else { 12 };
    let (Some(old), Some(frag), Some(proto)) = (
        p.read::<u32>(addr_off),
        p.read::<u16>(ip_off + 6),
        p.read::<u8>(ip_off + 9),
    ) else {
        return (Reason::PassMalformed, Verdict::Pass);
    };
    let frag = u16::from_be(frag);
    // A non-first fragment carries no L4 header; its L4 checksum was fixed in the first one.
    let non_first_fragment = frag & 0x1fff != 0;
    let more_fragments = frag & 0x2000 != 0;
    let l4_off = ip_off + ihl;
    let map = if dir == Dir::Dnat {
        &IPNAT_DNAT
    } else {
        &IPNAT_SNAT
    };
    let target = lookup(map, old);

    // An ICMP error (never a fragment of one) may quote a translated packet.
    let mut quote = None;
    if proto == IPPROTO_ICMP && !non_first_fragment && !more_fragments {
        // Type and code as one read (see parse_quote).
        if let Some(tc) = p.read::<[u8; 2]>(l4_off) {
            if is_icmp_error(tc[0]) {
                quote = parse_quote(p, l4_off, dir);
            }
        }
    }

    let Some(target) = target else {
        let Some(q) = quote else {
            return (Reason::PassNoMapping, Verdict::Pass);
        };
        if rewrite_quote(p, l4_off, &q).is_err() {
            return (Reason::DropRewriteFailed, Verdict::Drop);
        }
        count_mapping(q.target.id, dir, p.frame_len());
        return (Reason::IcmpQuoteOnly, Verdict::Pass);
    };

    let l4 = if non_first_fragment {
        L4Csum::None
    } else {
        let l4 = l4_csum(proto, l4_off);
        if let L4Csum::Always(off) | L4Csum::Udp(off) = l4 {
            if p.read::<u16>(off).is_none() {
                // The L4 checksum field is not in this packet. A first fragment that short
                // cannot be fixed without state, and is an attack (RFC 1858): drop it.
                // An unfragmented packet that short is malformed: the kernel will judge it.
                return if more_fragments {
                    (Reason::DropTinyFragment, Verdict::Drop)
                } else {
                    (Reason::PassTruncatedL4, Verdict::Pass)
                };
            }
        }
        l4
    };
    let rw = Rewrite {
        ip_off,
        addr_off,
        old,
        new: target.addr,
        l4,
    };
    if p.rewrite(&rw).is_err() {
        return (Reason::DropRewriteFailed, Verdict::Drop);
    }
    if let Some(q) = quote {
        if rewrite_quote(p, l4_off, &q).is_err() {
            return (Reason::DropRewriteFailed, Verdict::Drop);
        }
    }
    count_mapping(target.id, dir, p.frame_len());
    let reason = if non_first_fragment {
        Reason::FragmentTranslated
    } else if dir == Dir::Dnat {
        Reason::Dnat
    } else {
        Reason::Snat
    };
    (reason, Verdict::Pass)
}
