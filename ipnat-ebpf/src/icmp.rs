//! ICMP errors: the packet they quote was translated too, and must be translated back
//! (RFC 5508, section 4.2), with every checksum that covers it.

use ipnat_common::NatTarget;

use crate::{
    csum::{self, L4Csum},
    ctx::Packet,
    dir::Dir,
    maps,
    parse::{self, Fixed, IP_CHECK, IP_FRAG_OFF, IP_PROTO},
};

/// Offset of the quoted IPv4 header behind the ICMP header (type, code, checksum, 4 bytes).
pub const QUOTE_OFF: usize = 8;
const ICMP_CHECK: usize = 2;

/// ICMP types whose payload quotes the packet that caused them (RFC 792): destination
/// unreachable (incl. fragmentation needed), time exceeded, parameter problem.
#[inline(always)]
fn is_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 11 | 12)
}

/// The quoted IPv4 header of the ICMP error at `icmp_off` and its length; `None` when the
/// packet is no ICMP error or its quote is no IPv4 header ([`parse::fixed_header`]).
#[inline(always)]
pub fn quoted_header<P: Packet>(p: &P, icmp_off: usize) -> Option<(Fixed, usize)> {
    // Type and code as one read (see parse::Fixed).
    let tc = p.read::<[u8; 2]>(icmp_off)?;
    if !is_error(tc[0]) {
        return None;
    }
    parse::fixed_header(p, icmp_off + QUOTE_OFF)
}

/// A quoted packet inside an ICMP error and the translation that applies to it.
pub struct Quote {
    /// Offset of the quoted IPv4 header.
    ip_off: usize,
    /// Offset of its address field that this direction translates.
    addr_off: usize,
    old: u32,
    target: NatTarget,
    /// The quoted L4 checksum, when the quote holds it and it covers the pseudo-header.
    l4_csum: L4Csum,
}

impl Quote {
    /// No quote (`target.id` 0). Explicit zeros rather than an `Option`: see [`L4Csum`].
    pub const NONE: Quote = Quote {
        ip_off: 0,
        addr_off: 0,
        old: 0,
        target: NatTarget { addr: 0, id: 0 },
        l4_csum: L4Csum::none(),
    };

    #[inline(always)]
    pub fn found(&self) -> bool {
        self.target.id != 0
    }

    /// The mapping the quote matched.
    #[inline(always)]
    pub fn mapping(&self) -> &NatTarget {
        &self.target
    }

    /// The quoted address the mapping was found by.
    #[inline(always)]
    pub fn key(&self) -> u32 {
        self.old
    }
}

/// The quote of the ICMP error at `icmp_off` when a mapping applies to it in direction `dir`
/// (its field opposite to the outer one: the quoted packet travelled the other way).
#[inline(always)]
pub fn find_quote<P: Packet>(p: &P, icmp_off: usize, dir: Dir, flags: u32) -> Quote {
    let Some((h, ihl)) = quoted_header(p, icmp_off) else {
        return Quote::NONE;
    };
    let ip_off = icmp_off + QUOTE_OFF;
    let field = dir.quote_field();
    let old = parse::addr(&h, field);
    let Some(target) = maps::lookup(dir, old, flags) else {
        return Quote::NONE;
    };
    let l4_csum = if parse::non_first_fragment(parse::be16(&h, IP_FRAG_OFF)) {
        L4Csum::none()
    } else {
        let l4 = L4Csum::of(h[IP_PROTO], ip_off + ihl);
        if l4.present() && p.read::<u16>(l4.off).is_some() {
            l4
        } else {
            L4Csum::none()
        }
    };
    Quote {
        ip_off,
        addr_off: ip_off + field,
        old,
        target,
        l4_csum,
    }
}

/// Rewrites a quoted packet's address: the quoted IPv4 header checksum, the quoted L4 checksum
/// where the quote holds it, and the ICMP checksum over all three changes. Everything is read
/// before anything is written.
#[inline(always)]
pub fn rewrite_quote<P: Packet>(p: &mut P, icmp_off: usize, q: &Quote) -> Result<(), ()> {
    let new = q.target.addr;
    let icmp_check = p.read::<u16>(icmp_off + ICMP_CHECK).ok_or(())?;
    let ip_check = p.read::<u16>(q.ip_off + IP_CHECK).ok_or(())?;
    let new_ip_check = csum::replace4(ip_check, q.old, new);
    let mut new_icmp = csum::replace4(icmp_check, q.old, new);
    new_icmp = csum::replace2(new_icmp, ip_check, new_ip_check);
    // (offset, new value, write it): defined values, see [`L4Csum`].
    let mut l4 = (0usize, 0u16, false);
    if q.l4_csum.present() {
        let off = q.l4_csum.off;
        let cur = p.read::<u16>(off).ok_or(())?;
        let (next, write) = q.l4_csum.replace4(cur, q.old, new);
        if write {
            new_icmp = csum::replace2(new_icmp, cur, next);
            l4 = (off, next, true);
        }
    }
    p.write(q.addr_off, new)?;
    p.write(q.ip_off + IP_CHECK, new_ip_check)?;
    if l4.2 {
        p.write(l4.0, l4.1)?;
    }
    p.write(icmp_off + ICMP_CHECK, new_icmp)
}
