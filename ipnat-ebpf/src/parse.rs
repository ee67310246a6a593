//! Ethernet, VLAN and IPv4 headers: named offsets, the parse every hook starts with, and the
//! one rule for what an IPv4 header must be (outer headers and ICMP quotes alike).

use ipnat_common::Reason;

use crate::{csum, ctx::Packet};

/// Ethernet header: destination MAC, source MAC, EtherType.
pub const ETH_HLEN: usize = 14;
pub const ETH_DEST: usize = 0;
pub const ETH_SOURCE: usize = 6;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags skipped at most (QinQ).
const MAX_VLAN_TAGS: usize = 2;

/// IPv4 header field offsets (RFC 791), relative to the header.
pub const IP_TOT_LEN: usize = 2;
pub const IP_FRAG_OFF: usize = 6;
pub const IP_TTL: usize = 8;
pub const IP_PROTO: usize = 9;
pub const IP_CHECK: usize = 10;
pub const IP_SADDR: usize = 12;
pub const IP_DADDR: usize = 16;
/// The fixed part of the header (IHL 5).
pub const IP_MIN_HLEN: usize = 20;
/// Fragment offset bits of the flags-and-offset field; the More Fragments flag.
const IP_OFFSET: u16 = 0x1fff;
const IP_MF: u16 = 0x2000;

/// The fixed IPv4 header, read with one bounds check (single-byte checks at variable offsets
/// are compiled into a form the verifier cannot follow).
pub type Fixed = [u8; IP_MIN_HLEN];

#[inline(always)]
pub fn be16(h: &Fixed, off: usize) -> u16 {
    u16::from_be_bytes([h[off], h[off + 1]])
}

/// An address field as loaded from packet memory (network order).
#[inline(always)]
pub fn addr(h: &Fixed, off: usize) -> u32 {
    u32::from_ne_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

/// Whether a fragment other than the first (no L4 header), from the flags-and-offset field.
#[inline(always)]
pub fn non_first_fragment(frag: u16) -> bool {
    frag & IP_OFFSET != 0
}

/// The IPv4 header at `off` and its length, when it is one: version 4 and a header length of
/// at least 20 bytes. Every header ipnat reads (outer or quoted) passes this first.
#[inline(always)]
pub fn fixed_header<P: Packet>(p: &P, off: usize) -> Option<(Fixed, usize)> {
    let h = p.read::<Fixed>(off)?;
    let ihl = (h[0] & 0x0f) as usize * 4;
    if h[0] >> 4 != 4 || ihl < IP_MIN_HLEN {
        return None;
    }
    Some((h, ihl))
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
        non_first_fragment(self.frag)
    }

    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.frag & IP_MF != 0
    }

    /// Whether the IPv4 header is untagged, right behind Ethernet.
    #[inline(always)]
    pub fn untagged(&self) -> bool {
        self.ip_off == ETH_HLEN
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
fn forwardable<P: Packet>(p: &P, ip_off: usize, ihl: usize, h: &Fixed) -> bool {
    let frame = p.frame_len();
    let mut total = be16(h, IP_TOT_LEN) as u64;
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
    while i < IP_MIN_HLEN {
        sum += be16(h, i) as u32;
        i += 2;
    }
    // Options, a 32-bit word at a time (at most 10 words: IHL is at most 15).
    for word in 0..10 {
        let off = IP_MIN_HLEN + 4 * word;
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
/// that fails [`fixed_header`] or [`forwardable`] is malformed.
#[inline(always)]
pub fn parse<P: Packet>(p: &P) -> Result<Hdr, Reason> {
    let ip_off = ipv4_offset(p)?;
    let (h, ihl) = fixed_header(p, ip_off).ok_or(Reason::PassMalformed)?;
    if !forwardable(p, ip_off, ihl, &h) {
        return Err(Reason::PassMalformed);
    }
    Ok(Hdr {
        ip_off,
        l4_off: ip_off + ihl,
        tos: h[1],
        tot_len: be16(&h, IP_TOT_LEN),
        frag: be16(&h, IP_FRAG_OFF),
        ttl: h[IP_TTL],
        proto: h[IP_PROTO],
        src: addr(&h, IP_SADDR),
        dst: addr(&h, IP_DADDR),
    })
}
