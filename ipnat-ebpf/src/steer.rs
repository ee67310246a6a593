//! Source-based steering of what the kernel sends (TC egress, after any translation): the
//! rc.local recipe's `ip rule from <ip> lookup N` + `ip route default via <gw> table N`,
//! without either. The fast path steers what it forwards itself (`fwd::gateway`).

use aya_ebpf::{
    bindings::{BPF_FIB_LOOKUP_OUTPUT, TC_ACT_SHOT},
    programs::TcContext,
};
use ipnat_common::Reason;

use crate::{
    ctx::Tc,
    fwd::{self, fib, redirect, redirect_neigh},
    maps,
    parse::Hdr,
};

/// A packet whose source `src` a rule covers, routed by the kernel out of another interface,
/// is sent out of the rule's interface instead (to the rule's next hop, `SteerTarget::next_hop`).
/// `None`: leave the packet where it is.
#[inline(always)]
pub fn egress(ctx: &TcContext, h: &Hdr, src: u32, flags: u32) -> Option<i32> {
    let t = maps::steering(src, flags);
    if t.id == 0 {
        return None;
    }
    // SAFETY: reading the context's field.
    let here = unsafe { (*ctx.skb.skb).ifindex };
    if t.ifindex == here {
        // Already on its interface (also: what this program itself redirected here).
        return None;
    }
    let nexthop = t.next_hop(h.dst);
    maps::count_steer(t.id, ctx.len() as u64);
    maps::count_reason(Reason::Steered);
    // The next hop's MAC address, when the neighbour is known: write the header and redirect.
    let mut p = Tc(ctx);
    let f = fib(&p, t.ifindex, src, nexthop, h.tos, 0, BPF_FIB_LOOKUP_OUTPUT);
    if f.found() && f.ifindex == t.ifindex {
        if fwd::write_macs(&mut p, &f).is_err() {
            return Some(TC_ACT_SHOT);
        }
        return Some(redirect(t.ifindex) as i32);
    }
    // Unknown neighbour: let the kernel resolve it. (A packet queued while it does goes out
    // with the header of its original route: the kernel re-derives the neighbour from the
    // skb's route when it flushes the queue. The controller resolves the rules' gateways in
    // advance so that this stays rare.)
    Some(redirect_neigh(t.ifindex, nexthop))
}
