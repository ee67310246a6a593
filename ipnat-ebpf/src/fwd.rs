//! The gateway's fast path: translate both addresses and forward the packet from the hook,
//! without the kernel's forwarding path.
//!
//! A packet takes it when a mapping applies, it is untagged, its TTL does not expire here, its
//! source routes back through the interface it came in on (the fast path bypasses rp_filter,
//! so it checks the reverse path itself), and the FIB has a forwarding route whose MTU it fits.
//! Everything else goes to the kernel in the form the slow path expects (destination already
//! translated, source translated at TC egress), so that the kernel's ICMP errors name the
//! addresses their receivers used.

use core::mem::size_of;

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, BPF_FIB_LOOKUP_SKIP_NEIGH, bpf_fib_lookup as FibParams,
    },
    helpers::generated::bpf_fib_lookup,
};
use ipnat_common::{FLAG_STEER, Reason, SteerTarget};

use crate::{
    nat::{self, Dir, ETH_HLEN, Hdr, Verdict},
    pkt::Packet,
};

const AF_INET: u8 = 2;

/// What the hook does with the packet.
#[derive(Clone, Copy)]
pub enum Action {
    /// Continue into the kernel.
    Pass,
    Drop,
    /// Translated, TTL decremented, MACs written: send it out of this interface.
    Out(u32),
    /// Translated and TTL decremented, the next hop's neighbour is unresolved: send it out of
    /// this interface to this next hop (network order), resolving the neighbour (TC only).
    OutNeigh(u32, u32),
    /// XDP only: leave it untouched for TC ingress, which can resolve the neighbour.
    ToTc,
}

pub struct Fib {
    pub rc: i64,
    pub ifindex: u32,
    /// The next hop (the gateway of the route, or the destination itself when on-link).
    pub nexthop: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

#[inline(always)]
pub fn fib<P: Packet>(
    p: &P,
    ifindex: u32,
    src: u32,
    dst: u32,
    tos: u8,
    tot_len: u16,
    flags: u32,
) -> Fib {
    // SAFETY: a plain C struct for which all-zero is the documented "no input" value.
    let mut f: FibParams = unsafe { core::mem::zeroed() };
    f.family = AF_INET;
    f.ifindex = ifindex;
    f.__bindgen_anon_1.tot_len = tot_len;
    f.__bindgen_anon_2.tos = tos;
    f.__bindgen_anon_3.ipv4_src = src;
    f.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: the helper reads and writes only the struct we pass, of the size we pass.
    let rc = unsafe { bpf_fib_lookup(p.ctx_ptr(), &mut f, size_of::<FibParams>() as i32, flags) };
    Fib {
        rc,
        ifindex: f.ifindex,
        // SAFETY: an IPv4 lookup fills the IPv4 member.
        nexthop: unsafe { f.__bindgen_anon_4.ipv4_dst },
        smac: f.smac,
        dmac: f.dmac,
    }
}

/// The steering rule for `src` (id 0: none), as plain values (see `gateway`'s note on
/// `Option`s).
#[inline(always)]
pub fn steering(src: u32, flags: u32) -> SteerTarget {
    if flags & FLAG_STEER == 0 {
        return SteerTarget::default();
    }
    match crate::IPNAT_STEER.get(&Key::new(32, src)) {
        Some(t) => core::hint::black_box(*t),
        None => core::hint::black_box(SteerTarget::default()),
    }
}

/// Counts one packet of `bytes` on steering rule `id`.
#[inline(always)]
pub fn count_steer(id: u32, bytes: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    if let Some(c) = crate::IPNAT_STEER_CNT.get_ptr_mut(id) {
        // SAFETY: the array value lives as long as the map; atomics because CPUs share it.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*c).packets, 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*c).bytes, bytes);
        }
    }
}

/// The slow path: destination translated before the kernel routes, source left to TC egress.
/// `declined` is why the fast path did not take a packet that a mapping applies to.
#[inline(always)]
fn slow<P: Packet>(
    p: &mut P,
    h: &Hdr,
    dnat: Option<ipnat_common::NatTarget>,
    flags: u32,
    declined: Reason,
) -> (Reason, Action) {
    let (reason, verdict) = nat::translate_hdr(p, h, Dir::Dnat, dnat, flags);
    let reason = match reason {
        Reason::Dnat | Reason::FragmentTranslated | Reason::PassNoMapping => declined,
        other => other,
    };
    match verdict {
        Verdict::Pass => (reason, Action::Pass),
        Verdict::Drop => (reason, Action::Drop),
    }
}

/// The gateway hook with the fast path on. `xdp`: running in XDP (cannot resolve neighbours).
#[inline(always)]
pub fn gateway<P: Packet>(p: &mut P, ingress: u32, flags: u32, xdp: bool) -> (Reason, Action) {
    let h = match nat::parse(p) {
        Ok(h) => h,
        Err(reason) => return (reason, Action::Pass),
    };
    // Mapping ids start at 1: id 0 stands for "none" below. Materialized values rather than
    // `Option`s: LLVM leaves a `None`'s payload undefined and may spill that register, which
    // the verifier refuses ("!read_ok").
    let dnat_t = core::hint::black_box(nat::lookup(Dir::Dnat, h.dst, flags).unwrap_or_default());
    let snat_t = core::hint::black_box(nat::lookup(Dir::Snat, h.src, flags).unwrap_or_default());
    let dnat = (dnat_t.id != 0).then_some(dnat_t);
    let snat = (snat_t.id != 0).then_some(snat_t);
    if dnat.is_none() && snat.is_none() {
        // Nothing of ours to forward; the slow path still translates a quote that matches.
        return slow(p, &h, None, flags, Reason::PassNoMapping);
    }
    if h.ip_off != ETH_HLEN {
        // VLAN-tagged: the FIB knows nothing of the tag; let the kernel forward it.
        return slow(p, &h, dnat, flags, Reason::SlowNoRoute);
    }
    if h.ttl <= 1 {
        return slow(p, &h, dnat, flags, Reason::SlowTtl);
    }
    // Reverse path: the replies to this packet must leave by the interface it came in on.
    // They will carry its destination as their source: when that is steered, they leave by
    // the steering rule's interface; otherwise by the route back to its source.
    let steer_back = steering(h.dst, flags);
    let back_ok = if steer_back.id != 0 {
        steer_back.ifindex == ingress
    } else {
        let back = fib(
            p,
            ingress,
            h.dst,
            h.src,
            h.tos,
            0,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        );
        back.rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && back.ifindex == ingress
    };
    if !back_ok {
        return slow(p, &h, dnat, flags, Reason::SlowSpoofed);
    }
    let new_src = snat.map_or(h.src, |t| t.addr);
    let new_dst = dnat.map_or(h.dst, |t| t.addr);
    // Source-based steering of the translated packet: out of the rule's interface, to the
    // destination when it is on that interface's subnet, else to the rule's gateway.
    let steer = steering(new_src, flags);
    let out = if steer.id != 0 {
        let nexthop = if new_dst & steer.mask == steer.subnet {
            new_dst
        } else {
            steer.gateway
        };
        let f = fib(
            p,
            steer.ifindex,
            new_src,
            nexthop,
            h.tos,
            h.tot_len,
            BPF_FIB_LOOKUP_OUTPUT,
        );
        if f.ifindex != steer.ifindex {
            return slow(p, &h, dnat, flags, Reason::SlowNoRoute);
        }
        f
    } else {
        fib(p, ingress, new_src, new_dst, h.tos, h.tot_len, 0)
    };
    let neigh = if out.rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        false
    } else if out.rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        if xdp {
            return (Reason::PassNoNeigh, Action::ToTc);
        }
        true
    } else if out.rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return slow(p, &h, dnat, flags, Reason::SlowFragNeeded);
    } else {
        return slow(p, &h, dnat, flags, Reason::SlowNoRoute);
    };

    if xdp && crate::IPNAT_XDP_TARGETS.get_ptr(out.ifindex).is_none() {
        // XDP cannot transmit there: TC ingress forwards it (skb redirects work anywhere).
        return (Reason::PassToTc, Action::ToTc);
    }

    // Both translations; the first one checks that the L4 checksum field is present, so when
    // it declines (nothing written) the second would too.
    if let Some(t) = dnat {
        match nat::translate_hdr(p, &h, Dir::Dnat, Some(t), flags) {
            (_, Verdict::Drop) => return (Reason::DropRewriteFailed, Action::Drop),
            (Reason::Dnat | Reason::FragmentTranslated, _) => {}
            (other, Verdict::Pass) => return (other, Action::Pass),
        }
    }
    if let Some(t) = snat {
        match nat::translate_hdr(p, &h, Dir::Snat, Some(t), flags) {
            (Reason::Snat | Reason::FragmentTranslated, Verdict::Pass) => {}
            (other, Verdict::Pass) if dnat.is_none() => return (other, Action::Pass),
            // Half translated: never send that.
            _ => return (Reason::DropRewriteFailed, Action::Drop),
        }
    }
    // TTL - 1 (the TTL and protocol bytes form one checksummed word).
    let old = u16::from_ne_bytes([h.ttl, h.proto]);
    let new = u16::from_ne_bytes([h.ttl - 1, h.proto]);
    if p.replace_l3_u16(h.ip_off, h.ip_off + 8, old, new).is_err() {
        return (Reason::DropRewriteFailed, Action::Drop);
    }
    if steer.id != 0 {
        count_steer(steer.id, p.frame_len());
    }
    if neigh {
        return (
            Reason::ForwardedNeigh,
            Action::OutNeigh(out.ifindex, out.nexthop),
        );
    }
    if p.write(0, out.dmac).is_err() || p.write(6, out.smac).is_err() {
        return (Reason::DropRewriteFailed, Action::Drop);
    }
    (
        if xdp {
            Reason::Forwarded
        } else {
            Reason::ForwardedNeigh
        },
        Action::Out(out.ifindex),
    )
}
