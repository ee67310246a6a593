//! The stateless one-to-one translation, shared by every hook: one rewrite of an address with
//! the IPv4 and L4 checksums that cover it, and of the packet an ICMP error quotes.

use ipnat_common::{NatTarget, Reason, ipproto};

use crate::{
    csum::L4Csum,
    ctx::{Packet, Rewrite},
    dir::Dir,
    icmp::{self, Quote},
    maps,
    parse::{self, Hdr, IP_CHECK},
};

/// What [`translate`] decided.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the packet continue (translated or not).
    Pass,
    /// Drop it.
    Drop,
}

/// Translates one packet in direction `dir`; returns what happened and whether to keep it.
#[inline(always)]
pub fn translate<P: Packet>(p: &mut P, dir: Dir, flags: u32) -> (Reason, Verdict) {
    let h = match parse::parse(p) {
        Ok(h) => h,
        Err(reason) => return (reason, Verdict::Pass),
    };
    let target = maps::lookup(dir, dir.key(&h), flags);
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
    // A non-first fragment carries no L4 header; its L4 checksum was fixed in the first one.
    let non_first_fragment = h.non_first_fragment();
    let more_fragments = h.more_fragments();
    let l4_off = h.l4_off;

    // An ICMP error (never a fragment of one) may quote a translated packet.
    let quote = if h.proto == ipproto::ICMP && !non_first_fragment && !more_fragments {
        icmp::find_quote(p, l4_off, dir, flags)
    } else {
        Quote::NONE
    };
    let Some(target) = target else {
        if !quote.found() {
            return (Reason::PassNoMapping, Verdict::Pass);
        }
        if icmp::rewrite_quote(p, l4_off, &quote).is_err() {
            return (Reason::DropRewriteFailed, Verdict::Drop);
        }
        maps::count_mapping(quote.mapping(), dir, quote.key(), p.frame_len());
        return (Reason::IcmpQuoteOnly, Verdict::Pass);
    };

    let l4 = if non_first_fragment {
        L4Csum::none()
    } else {
        let l4 = L4Csum::of(h.proto, l4_off);
        if l4.present() && p.read::<u16>(l4.off).is_none() {
            // The L4 checksum field is not in this packet. A first fragment that short cannot
            // be fixed without state, and is an attack (RFC 1858): drop it. An unfragmented
            // packet that short is malformed: the kernel will judge it.
            return if more_fragments {
                (Reason::DropTinyFragment, Verdict::Drop)
            } else {
                (Reason::PassTruncatedL4, Verdict::Pass)
            };
        }
        l4
    };
    let rw = Rewrite {
        check_off: h.ip_off + IP_CHECK,
        addr_off: h.ip_off + dir.field(),
        old: dir.key(h),
        new: target.addr,
        l4,
    };
    if p.rewrite(&rw).is_err() {
        return (Reason::DropRewriteFailed, Verdict::Drop);
    }
    if quote.found() && icmp::rewrite_quote(p, l4_off, &quote).is_err() {
        return (Reason::DropRewriteFailed, Verdict::Drop);
    }
    maps::count_mapping(&target, dir, dir.key(h), p.frame_len());
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
