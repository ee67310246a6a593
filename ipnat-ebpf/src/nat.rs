//! The stateless one-to-one translation, shared by every hook.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::maps::{HashMap, LpmTrie, lpm_trie::Key};
use ipnat_common::{FLAG_PREFIXES, MappingCounters, NatTarget, PrefixTarget, Reason};

use crate::{
    IPNAT_DNAT, IPNAT_DNAT_PFX, IPNAT_INTERNAL, IPNAT_MAP_CNT, IPNAT_SNAT, IPNAT_SNAT_PFX, csum,
    pkt::{L4Csum, Packet, Rewrite},
};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags skipped at most (QinQ).
const MAX_VLAN_TAGS: usize = 2;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_UDPLITE: u8 = 136;

/// Which address a hook translates, and with which table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Destination public -> private (packets towards a mapped public address).
    Dnat,
    /// Source private -> public (packets from a mapped private address).
    Snat,
    /// Host orientation, received: destination private -> public (the public address is local
    /// here; the cloud translated it to the private one).
    HostIn,
    /// Host orientation, sent: source public -> private (the cloud translates it back).
    HostOut,
}

impl Dir {
    /// Whether the destination is the translated field (else the source).
    #[inline(always)]
    pub fn rewrites_dst(self) -> bool {
        matches!(self, Dir::Dnat | Dir::HostIn)
    }

    /// Whether the table keyed by the public address is used (else the one keyed by private).
    #[inline(always)]
    fn keyed_by_public(self) -> bool {
        matches!(self, Dir::Dnat | Dir::HostOut)
    }

    /// The packet's address that this direction looks up.
    #[inline(always)]
    pub fn key(self, h: &Hdr) -> u32 {
        if self.rewrites_dst() { h.dst } else { h.src }
    }
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

/// One 8-byte load of a map value: an entry the controller replaces in place is seen whole,
/// old or new, never half of each.
#[inline(always)]
fn load8(p: *const u64) -> (u32, u32) {
    // SAFETY: the map returned a valid pointer to an 8-byte, 8-aligned value.
    let raw = unsafe { core::ptr::read_volatile(p) };
    (raw as u32, (raw >> 32) as u32)
}

#[inline(always)]
fn lookup_exact(map: &HashMap<u32, NatTarget>, addr: u32) -> Option<NatTarget> {
    let (addr, id) = load8(map.get_ptr(addr)? as *const u64);
    Some(NatTarget { addr, id })
}

#[inline(always)]
fn lookup_prefix(map: &LpmTrie<u32, PrefixTarget>, addr: u32) -> Option<NatTarget> {
    let v: *const PrefixTarget = map.get(&Key::new(32, addr))?;
    let (xor, id) = load8(v as *const u64);
    Some(NatTarget {
        addr: addr ^ xor,
        id,
    })
}

/// The translation of `addr` in direction `dir`: an exact mapping first, then the longest
/// matching prefix mapping (only when the controller installed any: `flags`).
#[inline(always)]
pub fn lookup(dir: Dir, addr: u32, flags: u32) -> Option<NatTarget> {
    let (exact, prefixes) = if dir.keyed_by_public() {
        (&IPNAT_DNAT, &IPNAT_DNAT_PFX)
    } else {
        (&IPNAT_SNAT, &IPNAT_SNAT_PFX)
    };
    if let Some(t) = lookup_exact(exact, addr) {
        return Some(t);
    }
    if flags & FLAG_PREFIXES == 0 {
        return None;
    }
    lookup_prefix(prefixes, addr)
}

/// Whether `addr` is in one of the internal prefixes (host orientation: the VPC, peered
/// networks, link-local), which the cloud does not translate either.
#[inline(always)]
pub fn is_internal(addr: u32) -> bool {
    IPNAT_INTERNAL.get(&Key::new(32, addr)).is_some()
}

#[inline(always)]
fn count_mapping(id: u32, dir: Dir, bytes: u64) {
    let Some(c) = IPNAT_MAP_CNT.get_ptr_mut(id) else {
        return;
    };
    // SAFETY: the array value lives as long as the map; atomics because CPUs share it.
    unsafe {
        let c: *mut MappingCounters = c;
        // Inbound (towards the mapping's host) or outbound.
        let (pk, by) = if dir.rewrites_dst() {
            (&raw mut (*c).dnat_packets, &raw mut (*c).dnat_bytes)
        } else {
            (&raw mut (*c).snat_packets, &raw mut (*c).snat_bytes)
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
        IPPROTO_TCP => L4Csum::at(l4_off + 16, L4Csum::ALWAYS),
        IPPROTO_UDP => L4Csum::at(l4_off + 6, L4Csum::UDP),
        IPPROTO_DCCP | IPPROTO_UDPLITE => L4Csum::at(l4_off + 6, L4Csum::ALWAYS),
        _ => L4Csum::none(),
    }
}

/// ICMP types whose payload quotes the packet that caused them (RFC 792): destination
/// unreachable (incl. fragmentation needed), time exceeded, parameter problem.
#[inline(always)]
pub fn is_icmp_error(icmp_type: u8) -> bool {
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
    /// The quoted L4 checksum, when the quote holds it and it covers the pseudo-header.
    l4_csum: L4Csum,
}

impl Quote {
    /// No quote (`target.id` 0). Explicit zeros rather than an `Option`: see [`L4Csum`].
    const NONE: Quote = Quote {
        ip_off: 0,
        addr_off: 0,
        old: 0,
        target: NatTarget { addr: 0, id: 0 },
        l4_csum: L4Csum::none(),
    };

    #[inline(always)]
    fn found(&self) -> bool {
        self.target.id != 0
    }
}

#[inline(always)]
fn parse_quote<P: Packet>(p: &P, icmp_off: usize, dir: Dir, flags: u32) -> Option<Quote> {
    let ip_off = icmp_off + 8;
    // One bounds check for the whole quoted header (single-byte checks at variable offsets
    // are compiled into a form the verifier cannot follow).
    let h = p.read::<[u8; 20]>(ip_off)?;
    let ihl = (h[0] & 0x0f) as usize * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let field = if dir.rewrites_dst() { 12 } else { 16 };
    let addr_off = ip_off + field;
    let old = u32::from_ne_bytes([h[field], h[field + 1], h[field + 2], h[field + 3]]);
    let target = lookup(dir, old, flags)?;
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let proto = h[9];
    let l4_csum = if frag & 0x1fff != 0 {
        L4Csum::none()
    } else {
        let l4 = l4_csum(proto, ip_off + ihl);
        if l4.kind != L4Csum::NONE && p.read::<u16>(l4.off).is_some() {
            l4
        } else {
            L4Csum::none()
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
    // (offset, new value, write it): defined values, see [`L4Csum`].
    let mut l4 = (0usize, 0u16, false);
    if q.l4_csum.kind != L4Csum::NONE {
        let (off, udp) = (q.l4_csum.off, q.l4_csum.kind == L4Csum::UDP);
        let cur = p.read::<u16>(off).ok_or(())?;
        if !(udp && cur == 0) {
            let mut next = csum::replace4(cur, q.old, new);
            if udp && next == 0 {
                next = 0xffff;
            }
            new_icmp = csum::replace2(new_icmp, cur, next);
            l4 = (off, next, true);
        }
    }
    p.write(q.addr_off, new)?;
    p.write(q.ip_off + 10, new_ip_check)?;
    if l4.2 {
        p.write(l4.0, l4.1)?;
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

/// The IPv4 header fields the data plane works with.
#[derive(Clone, Copy)]
pub struct Hdr {
    /// Offset of the IPv4 header in the frame.
    pub ip_off: usize,
    /// Offset of the L4 header (behind any IP options).
    pub l4_off: usize,
    pub tos: u8,
    pub tot_len: u16,
    /// Flags and fragment offset, host order.
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub src: u32,
    pub dst: u32,
}

impl Hdr {
    /// A fragment other than the first: no L4 header.
    #[inline(always)]
    pub fn non_first_fragment(&self) -> bool {
        self.frag & 0x1fff != 0
    }

    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.frag & 0x2000 != 0
    }
}

/// Whether the IPv4 header at `ip_off` (`h`: its fixed part, `ihl` bytes long) is one a router
/// may forward (RFC 1812, section 5.2.2): a total length of at least the header and at most
/// what the frame holds (a longer frame is Ethernet padding, which is fine), and a valid header
/// checksum. XDP and TC ingress run before the kernel's `ip_rcv`, which would drop such a
/// packet and count it; the fast path bypasses `ip_rcv`, and an incremental checksum update
/// keeps a bad header bad for the next hop to drop silently. So every hook leaves these to the
/// kernel untouched, counted as malformed.
#[inline(always)]
fn header_ok<P: Packet>(p: &P, ip_off: usize, ihl: usize, h: &[u8; 20]) -> bool {
    let frame = p.frame_len();
    let mut total = u16::from_be_bytes([h[2], h[3]]) as u64;
    // IPv4 BIG TCP (kernel 6.3+, opt-in per device): a GSO packet over 64 KiB carries a total
    // length of 0, and its real one is the frame's, as the kernel's skb_ip_totlen() reads it.
    if total == 0 && frame > ip_off as u64 + 0xffff {
        total = frame - ip_off as u64;
    }
    if total < ihl as u64 || ip_off as u64 + total > frame {
        return false;
    }
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    // Options, a 32-bit word at a time (at most 10 words: IHL is at most 15).
    for word in 0..10 {
        let off = 20 + 4 * word;
        if off >= ihl {
            break;
        }
        let Some(w) = p.read::<[u8; 4]>(ip_off + off) else {
            return false;
        };
        sum += u16::from_be_bytes([w[0], w[1]]) as u32 + u16::from_be_bytes([w[2], w[3]]) as u32;
    }
    csum::fold(sum) == 0xffff
}

/// Parses the IPv4 header behind Ethernet (and up to two VLAN tags), or says why not: a header
/// that is not version 4, shorter than 20 bytes, or fails [`header_ok`] is malformed.
#[inline(always)]
pub fn parse<P: Packet>(p: &P) -> Result<Hdr, Reason> {
    let ip_off = ipv4_offset(p)?;
    // One bounds check for the fixed header (see parse_quote).
    let h = p.read::<[u8; 20]>(ip_off).ok_or(Reason::PassMalformed)?;
    let ihl = (h[0] & 0x0f) as usize * 4;
    if h[0] >> 4 != 4 || ihl < 20 || !header_ok(p, ip_off, ihl, &h) {
        return Err(Reason::PassMalformed);
    }
    Ok(Hdr {
        ip_off,
        l4_off: ip_off + ihl,
        tos: h[1],
        tot_len: u16::from_be_bytes([h[2], h[3]]),
        frag: u16::from_be_bytes([h[6], h[7]]),
        ttl: h[8],
        proto: h[9],
        src: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        dst: u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
    })
}

/// Translates one packet in direction `dir`; returns what happened and whether to keep it.
#[inline(always)]
pub fn translate<P: Packet>(p: &mut P, dir: Dir, flags: u32) -> (Reason, Verdict) {
    let h = match parse(p) {
        Ok(h) => h,
        Err(reason) => return (reason, Verdict::Pass),
    };
    let target = lookup(dir, dir.key(&h), flags);
    translate_hdr(p, &h, dir, target, flags)
}

/// [`translate`] for a packet already parsed into `h`, with its address already looked up.
///
/// `Dnat` translates the destination public -> private, and in an ICMP error the quoted
/// packet's source (it was sent from the public address). `Snat` translates the source
/// private -> public, and in an ICMP error the quoted packet's destination, also when only the
/// quote matches (an error the gateway's own kernel generated about a translated packet).
#[inline(always)]
pub fn translate_hdr<P: Packet>(
    p: &mut P,
    h: &Hdr,
    dir: Dir,
    target: Option<NatTarget>,
    flags: u32,
) -> (Reason, Verdict) {
    let ip_off = h.ip_off;
    let (addr_off, old) = if dir.rewrites_dst() {
        (ip_off + 16, h.dst)
    } else {
        (ip_off + 12, h.src)
    };
    let proto = h.proto;
    // A non-first fragment carries no L4 header; its L4 checksum was fixed in the first one.
    let non_first_fragment = h.non_first_fragment();
    let more_fragments = h.more_fragments();
    let l4_off = h.l4_off;

    // An ICMP error (never a fragment of one) may quote a translated packet.
    let mut quote = Quote::NONE;
    if proto == IPPROTO_ICMP && !non_first_fragment && !more_fragments {
        // Type and code as one read (see parse_quote).
        if let Some(tc) = p.read::<[u8; 2]>(l4_off) {
            if is_icmp_error(tc[0]) {
                quote = parse_quote(p, l4_off, dir, flags).unwrap_or(Quote::NONE);
            }
        }
    }
    let Some(target) = target else {
        if !quote.found() {
            return (Reason::PassNoMapping, Verdict::Pass);
        }
        let q = &quote;
        if rewrite_quote(p, l4_off, q).is_err() {
            return (Reason::DropRewriteFailed, Verdict::Drop);
        }
        count_mapping(q.target.id, dir, p.frame_len());
        return (Reason::IcmpQuoteOnly, Verdict::Pass);
    };

    let l4 = if non_first_fragment {
        L4Csum::none()
    } else {
        let l4 = l4_csum(proto, l4_off);
        if l4.kind != L4Csum::NONE {
            if p.read::<u16>(l4.off).is_none() {
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
    if quote.found() {
        if rewrite_quote(p, l4_off, &quote).is_err() {
            return (Reason::DropRewriteFailed, Verdict::Drop);
        }
    }
    count_mapping(target.id, dir, p.frame_len());
    let reason = if non_first_fragment {
        Reason::FragmentTranslated
    } else {
        match dir {
            Dir::Dnat => Reason::Dnat,
            Dir::Snat => Reason::Snat,
            Dir::HostIn => Reason::HostIn,
            Dir::HostOut => Reason::HostOut,
        }
    };
    (reason, Verdict::Pass)
}
