//! The product's programs, the object `ipnat run` loads (the shared code is the library's):
//!
//! * `ipnat_xdp` (XDP, receive): with the fast path on, translates both addresses and forwards
//!   the packet itself (`fwd`), and leaves what it does not forward untouched for TC ingress;
//!   with the fast path off, translates the destination public -> private before the kernel
//!   routes.
//! * `ipnat_tc_ingress` (TC, receive): decides again for what XDP left untouched: forwards
//!   what XDP could not (an unresolved neighbour: `bpf_redirect_neigh` resolves it; an egress
//!   XDP cannot send into), translates the destination of the rest for the kernel; in host
//!   orientation, the receive path (`host`).
//! * `ipnat_tc_egress` (TC, transmit): source private -> public (host orientation: public ->
//!   private), after the kernel routed, so that packets the kernel itself forwards (or answers)
//!   are translated on the way out; then steering (`steer`).
//! * `ipnat_tc_gateway` (TC, receive): `ipnat_xdp`'s job where native XDP is not available.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use core::mem::size_of;

use ipnat_common::{
    FLAG_FAST_PATH, FLAG_HOST, FLAG_STEER, FLAG_XDP_ALONE, IFACE_PEER, IFACE_XDP_ALONE, Reason,
    TABLE_WRITE_HEADER, TABLE_WRITES, TC_FORWARDED, TableWrite,
};
use ipnat_ebpf::{
    ctx::{Tc, Xdp},
    dir::Dir,
    fwd::{self, Action},
    host,
    maps::{self, count_reason},
    nat::{self, Verdict},
    parse, steer,
};

#[xdp]
pub fn ipnat_xdp(ctx: XdpContext) -> u32 {
    xdp_entry::<false>(&ctx)
}

/// `ipnat_xdp` for interfaces whose MTU needs frames spread over several buffers (jumbo
/// frames): the headers it works on are in the first buffer, as in any frame.
#[xdp(frags)]
pub fn ipnat_xdp_frags(ctx: XdpContext) -> u32 {
    xdp_entry::<true>(&ctx)
}

#[inline(always)]
fn xdp_entry<const FRAGS: bool>(ctx: &XdpContext) -> u32 {
    let flags = maps::flags();
    let p = &mut Xdp::<FRAGS>(ctx);
    if flags & FLAG_FAST_PATH == 0 {
        return xdp_counted(nat::translate(p, Dir::Dnat, flags));
    }
    let ingress = ctx.ingress_ifindex() as u32;
    if flags & FLAG_XDP_ALONE != 0 && maps::interface(ingress) & IFACE_XDP_ALONE != 0 {
        // Nowhere to send it from here: TC ingress forwards it, with one set of lookups.
        count_reason(Reason::PassToTc);
        return xdp_action::XDP_PASS;
    }
    let (reason, action) = fwd::gateway(p, ingress, flags, true);
    match action {
        // Not produced in XDP.
        Action::OutNeigh(..) | Action::Pass => return xdp_action::XDP_ABORTED,
        // Untouched: TC ingress decides again and counts.
        Action::Kernel => return xdp_action::XDP_PASS,
        _ => count_reason(reason),
    }
    match action {
        Action::Out(ifindex) if ifindex == ingress => xdp_action::XDP_TX,
        Action::Out(ifindex) => fwd::redirect(ifindex) as u32,
        Action::Drop => xdp_action::XDP_DROP,
        // Handed over untouched: TC ingress forwards it.
        _ => xdp_action::XDP_PASS,
    }
}

/// Counts the reason; the verdict as XDP's action.
#[inline(always)]
fn xdp_counted((reason, v): (Reason, Verdict)) -> u32 {
    count_reason(reason);
    match v {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// Counts the reason; the verdict as TC's action.
#[inline(always)]
fn tc_counted((reason, v): (Reason, Verdict)) -> i32 {
    count_reason(reason);
    match v {
        Verdict::Pass => TC_ACT_OK as i32,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// Counts the reason; the forwarding decision as TC's action (TC ingress only). A packet
/// for a veth whose peer is in another namespace goes straight to the peer (see
/// [`IFACE_PEER`]: its neighbour is resolved, the MAC addresses are written); any other
/// packet sent out of one of ipnat's interfaces is marked for the egress device's TC hook to
/// let through (see [`TC_FORWARDED`]).
#[inline(always)]
fn tc_forwarded(ctx: &TcContext, (reason, action): (Reason, Action)) -> i32 {
    count_reason(reason);
    if let Action::Out(egress) | Action::OutNeigh(egress, _) = action {
        let iface = maps::interface(egress);
        if iface & IFACE_PEER != 0 && matches!(action, Action::Out(_)) {
            return fwd::redirect_peer(egress);
        }
        if iface != 0 {
            // SAFETY: a field of the program's own context that TC programs may write.
            unsafe { (*ctx.skb.skb).tc_index = TC_FORWARDED };
        }
    }
    fwd::tc_action(action)
}

/// The gateway's fast path at TC ingress, for both TC receive programs.
#[inline(always)]
fn tc_gateway(ctx: &TcContext, flags: u32) -> i32 {
    // SAFETY: reading the context's field.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    tc_forwarded(ctx, fwd::gateway(&mut Tc(ctx), ingress, flags, false))
}

/// TC ingress doing XDP's job, on an interface without native XDP (the controller attaches it
/// there instead of `ipnat_xdp` and `ipnat_tc_ingress`).
#[classifier]
pub fn ipnat_tc_gateway(ctx: TcContext) -> i32 {
    let flags = maps::flags();
    if flags & FLAG_FAST_PATH == 0 {
        return tc_counted(nat::translate(&mut Tc(&ctx), Dir::Dnat, flags));
    }
    tc_gateway(&ctx, flags)
}

/// TC ingress behind `ipnat_xdp`: with the fast path on, XDP leaves untouched what it does not
/// forward itself (what it cannot send, or the kernel's path), and this decides again: forwards
/// it with skb redirects (which resolve neighbours and reach any interface) or translates the
/// destination for the kernel. With the fast path off XDP has translated already. In host
/// orientation, the receive path (`host`).
#[classifier]
pub fn ipnat_tc_ingress(ctx: TcContext) -> i32 {
    let flags = maps::flags();
    if flags & FLAG_HOST != 0 {
        return tc_counted(host::receive(&ctx, flags));
    }
    if flags & FLAG_FAST_PATH == 0 {
        return TC_ACT_OK as i32;
    }
    tc_gateway(&ctx, flags)
}

#[classifier]
pub fn ipnat_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: a field of the program's own context that TC programs may read and write.
    unsafe {
        if (*ctx.skb.skb).tc_index == TC_FORWARDED {
            // Translated and forwarded by TC ingress: nothing left to do here.
            (*ctx.skb.skb).tc_index = 0;
            return TC_ACT_OK as i32;
        }
    }
    let flags = maps::flags();
    let p = &mut Tc(&ctx);
    // One parse serves the translation and the steering.
    let h = match parse::parse(p) {
        Ok(h) => h,
        Err(reason) => {
            count_reason(reason);
            return TC_ACT_OK as i32;
        }
    };
    // Gateway: source private -> public. Host: source public -> private, except towards an
    // internal peer.
    let dir = if flags & FLAG_HOST != 0 {
        Dir::HostOut
    } else {
        Dir::Snat
    };
    let t = maps::lookup_or_none(dir, h.src, flags);
    let (reason, verdict) = if dir == Dir::HostOut && t.id != 0 && maps::is_internal(h.dst) {
        (Reason::PassInternalPeer, Verdict::Pass)
    } else {
        nat::translate_hdr(p, &h, dir, (t.id != 0).then_some(t), flags)
    };
    count_reason(reason);
    if verdict == Verdict::Drop {
        // Also when a helper failed after the packet may have been partly rewritten.
        return TC_ACT_SHOT;
    }
    if flags & FLAG_STEER != 0 {
        // The source the packet leaves with: translated when the mapping applied.
        let translated = t.id != 0
            && matches!(
                reason,
                Reason::Snat | Reason::HostOut | Reason::FragmentTranslated
            );
        let src = if translated { t.addr } else { h.src };
        if let Some(action) = steer::egress(&ctx, &h, src, flags) {
            return action;
        }
    }
    TC_ACT_OK as i32
}

/// The controller's in-place writer of table entries, run with BPF_PROG_TEST_RUN and never
/// attached: the "packet" is a [`TABLE_WRITE_HEADER`]-byte header followed by [`TableWrite`]
/// requests, and each request's entry gets its new translation in one 8-byte store while its
/// counters stay (a map update from user space would replace the whole entry, counters and
/// all, and lose what running programs add to the old one meanwhile). Returns how many
/// requests found their entry, which the controller checks.
#[xdp]
pub fn ipnat_table_write(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let mut written = 0u32;
    for i in 0..TABLE_WRITES {
        let at = start + TABLE_WRITE_HEADER + i * size_of::<TableWrite>();
        if at + size_of::<TableWrite>() > end {
            break;
        }
        // SAFETY: bounds-checked just above.
        let w = unsafe { (at as *const TableWrite).read_unaligned() };
        if maps::write_in_place(&w) {
            written += 1;
        }
    }
    written
}

/// Passes every packet. XDP_REDIRECT or XDP_TX into a veth needs an XDP program on its peer
/// (which turns on the peer's NAPI); this one does nothing else. The lab attaches it to the
/// hosts beside the gateway; a gateway that redirects into containers' veths needs it (or any
/// XDP program) on their ends.
#[xdp(frags)]
pub fn ipnat_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
