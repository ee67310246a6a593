//! The gateway's fast path: translate both addresses and forward the packet from the hook,
//! without the kernel's forwarding path.
//!
//! A packet takes it when a mapping applies, it is untagged, its TTL does not expire here, its
//! source routes back through the interface it came in on (the fast path bypasses rp_filter,
//! so it checks the reverse path itself), and the FIB has a forwarding route whose MTU it fits.
//! Everything else goes to the kernel in the form the slow path expects (destination already
//! translated, source translated at TC egress), so that the kernel's ICMP errors name the
//! addresses their receivers used.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup as FibParams, bpf_redir_neigh,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
};
use ipnat_common::{NatTarget, Reason};

use crate::{
    ctx::Packet,
    dir::Dir,
    maps,
    nat::{self, Verdict},
    parse::{self, ETH_DEST, ETH_SOURCE, Hdr, IP_CHECK, IP_TTL},
    zero,
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
    /// XDP only: leave it untouched for TC ingress, which forwards it (it can resolve the
    /// neighbour and send into any interface).
    ToTc,
    /// XDP only: leave it untouched; TC ingress takes the same decision again (the kernel's
    /// path) and counts it. XDP cannot tell TC anything: the packet's metadata area needs
    /// `bpf_xdp_adjust_meta`, which some kernels refuse to XDP programs.
    Kernel,
}

/// The result of a FIB lookup.
pub struct Fib {
    pub rc: i64,
    pub ifindex: u32,
    /// The next hop (the gateway of the route, or the destination itself when on-link).
    pub nexthop: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

impl Fib {
    #[inline(always)]
    pub fn found(&self) -> bool {
        self.rc == BPF_FIB_LKUP_RET_SUCCESS as i64
    }
}

/// Looks up the route (and neighbour) of an IPv4 packet with `bpf_fib_lookup`; `ifindex`: the
/// ingress for a forwarding lookup, the egress with `BPF_FIB_LOOKUP_OUTPUT`.
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
    // All-zero is the documented "no input" value.
    let mut raw = MaybeUninit::<FibParams>::uninit();
    let f = zero::zero_in_place(&mut raw);
    f.family = AF_INET;
    f.ifindex = ifindex;
    f.__bindgen_anon_1.tot_len = tot_len;
    f.__bindgen_anon_2.tos = tos;
    f.__bindgen_anon_3.ipv4_src = src;
    f.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: the helper reads and writes only the struct we pass, of the size we pass.
    let rc = unsafe { bpf_fib_lookup(p.ctx_ptr(), f, size_of::<FibParams>() as i32, flags) };
    Fib {
        rc,
        ifindex: f.ifindex,
        // SAFETY: an IPv4 lookup fills the IPv4 member.
        nexthop: unsafe { f.__bindgen_anon_4.ipv4_dst },
        smac: f.smac,
        dmac: f.dmac,
    }
}

/// Writes the next hop's and the egress's MAC addresses that the FIB returned.
#[inline(always)]
pub fn write_macs<P: Packet>(p: &mut P, f: &Fib) -> Result<(), ()> {
    let mut macs = [0u8; 12];
    macs[ETH_DEST..ETH_DEST + 6].copy_from_slice(&f.dmac);
    macs[ETH_SOURCE..ETH_SOURCE + 6].copy_from_slice(&f.smac);
    p.write_macs(macs)
}

/// TTL - 1, as a router does (the TTL and protocol bytes form one checksummed word).
#[inline(always)]
pub fn decrement_ttl<P: Packet>(p: &mut P, h: &Hdr) -> Result<(), ()> {
    let old = u16::from_ne_bytes([h.ttl, h.proto]);
    let new = u16::from_ne_bytes([h.ttl - 1, h.proto]);
    p.replace_l3_u16(h.ip_off + IP_CHECK, h.ip_off + IP_TTL, old, new)
}

/// `bpf_redirect` out of `ifindex` (the program's return value).
#[inline(always)]
pub fn redirect(ifindex: u32) -> i64 {
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) }
}

/// `bpf_redirect_peer` into the peer of veth (or netkit) `ifindex`: the packet enters the
/// peer's receive path in this pass (TC ingress only; see `IFACE_PEER`).
#[inline(always)]
pub fn redirect_peer(ifindex: u32) -> i32 {
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}

/// `bpf_redirect_neigh` out of `ifindex` to the IPv4 `nexthop` (network order): the kernel
/// resolves its MAC address and writes the Ethernet header (TC only).
#[inline(always)]
pub fn redirect_neigh(ifindex: u32, nexthop: u32) -> i32 {
    let mut raw = MaybeUninit::<bpf_redir_neigh>::uninit();
    let nh = zero::zero_in_place(&mut raw);
    nh.nh_family = AF_INET as u32;
    nh.__bindgen_anon_1.ipv4_nh = nexthop;
    // SAFETY: the helper reads the struct we pass, of the size we pass.
    unsafe { bpf_redirect_neigh(ifindex, nh, size_of::<bpf_redir_neigh>() as i32, 0) as i32 }
}

/// What a TC program returns for a forwarding decision.
#[inline(always)]
pub fn tc_action(action: Action) -> i32 {
    match action {
        Action::Pass | Action::ToTc | Action::Kernel => TC_ACT_OK as i32,
        Action::Drop => TC_ACT_SHOT,
        Action::Out(ifindex) => redirect(ifindex) as i32,
        Action::OutNeigh(ifindex, nexthop) => redirect_neigh(ifindex, nexthop),
    }
}

/// The slow path: destination translated before the kernel routes, source left to TC egress.
/// `declined` is why the fast path did not take a packet that a mapping applies to. In XDP
/// nothing is translated: TC ingress decides again and translates (each packet is translated
/// once, by one hook).
#[inline(always)]
fn slow<P: Packet>(
    p: &mut P,
    h: &Hdr,
    dnat: Option<NatTarget>,
    flags: u32,
    declined: Reason,
    xdp: bool,
) -> (Reason, Action) {
    if xdp {
        return (declined, Action::Kernel);
    }
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

/// Reverse path: the replies to this packet must leave by the interface it came in on. They
/// will carry its destination as their source: when that is steered, they leave by the
/// steering rule's interface; otherwise by the route back to its source.
#[inline(always)]
fn reverse_path_ok<P: Packet>(p: &P, h: &Hdr, ingress: u32, flags: u32) -> bool {
    let steer_back = maps::steering(h.dst, flags);
    if steer_back.id != 0 {
        steer_back.ifindex == ingress
    } else {
        routes_back(p, h, ingress)
    }
}

/// Whether the route back to the packet's source (from its destination) leaves by `ingress`:
/// the fast path's own reverse-path filter (it bypasses the kernel's rp_filter). A FIB lookup
/// costs more than the rest of the fast path together, so a positive verdict is remembered per
/// source, destination, TOS and ingress, until the route generation changes (the controller
/// bumps it on every route, rule, address and link change) or a second passes.
#[inline(always)]
fn routes_back<P: Packet>(p: &P, h: &Hdr, ingress: u32) -> bool {
    let key = maps::rpf_key(h.src, h.dst, ingress, h.tos);
    if maps::rpf_remembered(&key) {
        return true;
    }
    let back = fib(
        p,
        ingress,
        h.dst,
        h.src,
        h.tos,
        0,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    );
    let ok = back.found() && back.ifindex == ingress;
    if ok {
        maps::rpf_remember(&key);
    }
    ok
}

/// What happens to a packet the translation declined (nothing written): the kernel's path; in
/// XDP, TC ingress declines it again and counts it.
#[inline(always)]
fn untouched(xdp: bool) -> Action {
    if xdp { Action::Kernel } else { Action::Pass }
}

/// The gateway hook with the fast path on. `xdp`: running in XDP (cannot resolve neighbours,
/// leaves everything it does not forward to TC ingress untouched).
#[inline(always)]
pub fn gateway<P: Packet>(p: &mut P, ingress: u32, flags: u32, xdp: bool) -> (Reason, Action) {
    let h = match parse::parse(p) {
        Ok(h) => h,
        Err(reason) => return (reason, untouched(xdp)),
    };
    // Plain values, id 0 for none (see maps::lookup_or_none).
    let dnat_t = maps::lookup_or_none(Dir::Dnat, h.dst, flags);
    let snat_t = maps::lookup_or_none(Dir::Snat, h.src, flags);
    let dnat = (dnat_t.id != 0).then_some(dnat_t);
    let snat = (snat_t.id != 0).then_some(snat_t);
    if dnat.is_none() && snat.is_none() {
        // Nothing of ours to forward; the slow path still translates a quote that matches.
        return slow(p, &h, None, flags, Reason::PassNoMapping, xdp);
    }
    if !h.untagged() {
        // VLAN-tagged: the FIB knows nothing of the tag; let the kernel forward it.
        return slow(p, &h, dnat, flags, Reason::SlowNoRoute, xdp);
    }
    if h.ttl <= 1 {
        return slow(p, &h, dnat, flags, Reason::SlowTtl, xdp);
    }
    if !xdp && !reverse_path_ok(p, &h, ingress, flags) {
        return slow(p, &h, dnat, flags, Reason::SlowSpoofed, xdp);
    }
    let new_src = snat.map_or(h.src, |t| t.addr);
    let new_dst = dnat.map_or(h.dst, |t| t.addr);
    // An aggregate (GRO) leaves as segments: the FIB checks no length for it (0), its
    // segments are checked against the egress MTU below. Its total length would make the FIB
    // answer "fragmentation needed" and send every aggregate to the slow path.
    let aggregate = p.is_aggregate();
    let tot_len = if aggregate { 0 } else { h.tot_len };
    // Source-based steering of the translated packet: out of the rule's interface, to the
    // destination when it is on that interface's subnet, else to the rule's gateway.
    let steer = maps::steering(new_src, flags);
    let out = if steer.id != 0 {
        let f = fib(
            p,
            steer.ifindex,
            new_src,
            steer.next_hop(new_dst),
            h.tos,
            tot_len,
            BPF_FIB_LOOKUP_OUTPUT,
        );
        if f.ifindex != steer.ifindex {
            return slow(p, &h, dnat, flags, Reason::SlowNoRoute, xdp);
        }
        f
    } else {
        fib(p, ingress, new_src, new_dst, h.tos, tot_len, 0)
    };
    let neigh = if out.found() {
        false
    } else if out.rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        if xdp {
            return (Reason::PassNoNeigh, Action::ToTc);
        }
        true
    } else if out.rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return slow(p, &h, dnat, flags, Reason::SlowFragNeeded, xdp);
    } else {
        return slow(p, &h, dnat, flags, Reason::SlowNoRoute, xdp);
    };

    if xdp && !maps::xdp_target(out.ifindex) {
        // XDP cannot transmit there: TC ingress forwards it (skb redirects work anywhere).
        return (Reason::PassToTc, Action::ToTc);
    }
    // XDP checks the reverse path only now, after the hand-over above (TC ingress checks it
    // first, for what XDP hands over too).
    if xdp && !reverse_path_ok(p, &h, ingress, flags) {
        return slow(p, &h, dnat, flags, Reason::SlowSpoofed, xdp);
    }
    if aggregate && !p.segments_fit(out.ifindex) {
        return slow(p, &h, dnat, flags, Reason::SlowFragNeeded, xdp);
    }

    // Both translations; the first one checks that the L4 checksum field is present, so when
    // it declines (nothing written) the second would too.
    if let Some(t) = dnat {
        match nat::translate_hdr(p, &h, Dir::Dnat, Some(t), flags) {
            (_, Verdict::Drop) => return (Reason::DropRewriteFailed, Action::Drop),
            (Reason::Dnat | Reason::FragmentTranslated, _) => {}
            (other, Verdict::Pass) => return (other, untouched(xdp)),
        }
    }
    if let Some(t) = snat {
        match nat::translate_hdr(p, &h, Dir::Snat, Some(t), flags) {
            (Reason::Snat | Reason::FragmentTranslated, Verdict::Pass) => {}
            (other, Verdict::Pass) if dnat.is_none() => return (other, untouched(xdp)),
            // Half translated: never send that.
            _ => return (Reason::DropRewriteFailed, Action::Drop),
        }
    }
    if decrement_ttl(p, &h).is_err() {
        return (Reason::DropRewriteFailed, Action::Drop);
    }
    if steer.id != 0 {
        maps::count_steer(steer.id, p.frame_len());
    }
    if neigh {
        return (
            Reason::ForwardedNeigh,
            Action::OutNeigh(out.ifindex, out.nexthop),
        );
    }
    if write_macs(p, &out).is_err() {
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
