//! ipnat's data plane: stateless one-to-one IPv4 NAT.
//!
//! * `ipnat_xdp` (XDP, receive): with the fast path on, translates both addresses and forwards
//!   the packet itself (`fwd`); otherwise, and for what the fast path declines, translates the
//!   destination public -> private before the kernel routes.
//! * `ipnat_tc_ingress` (TC, receive): forwards what XDP handed over because the next hop's
//!   neighbour was unresolved (`bpf_redirect_neigh` resolves it); ignores everything else.
//! * `ipnat_tc_egress` (TC, transmit): source private -> public, after the kernel routed, so
//!   that packets the kernel itself forwards (or answers) are translated on the way out.
#![no_std]
#![no_main]
// Atomic adds on shared counters (built with nightly for the BPF target, as aya requires).
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::mem::size_of;

mod csum;
mod fwd;
mod nat;
mod pkt;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh, xdp_action},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_xdp_adjust_meta},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use ipnat_common::{
    FLAG_FAST_PATH, MAX_MAPPING_ID, MAX_MAPPINGS, MAX_PREFIXES, META_FORWARD, MappingCounters,
    NatTarget, PrefixTarget, REASON_COUNT, Reason, Settings,
};

use crate::{
    fwd::Action,
    nat::{Dir, Verdict},
};

/// public -> {private, mapping id}
#[map(name = "IPNAT_DNAT")]
static IPNAT_DNAT: HashMap<u32, NatTarget> = HashMap::with_max_entries(MAX_MAPPINGS, 0);
/// private -> {public, mapping id}
#[map(name = "IPNAT_SNAT")]
static IPNAT_SNAT: HashMap<u32, NatTarget> = HashMap::with_max_entries(MAX_MAPPINGS, 0);
/// public prefix -> {public ^ private network, mapping id}
#[map(name = "IPNAT_DNAT_PFX")]
static IPNAT_DNAT_PFX: LpmTrie<u32, PrefixTarget> =
    LpmTrie::with_max_entries(MAX_PREFIXES, BPF_F_NO_PREALLOC);
/// private prefix -> {private ^ public network, mapping id}
#[map(name = "IPNAT_SNAT_PFX")]
static IPNAT_SNAT_PFX: LpmTrie<u32, PrefixTarget> =
    LpmTrie::with_max_entries(MAX_PREFIXES, BPF_F_NO_PREALLOC);
/// The data plane's settings (one entry).
#[map(name = "IPNAT_SETTINGS")]
static IPNAT_SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
/// Per-mapping traffic counters, indexed by mapping id (0 unused).
#[map(name = "IPNAT_MAP_CNT")]
static IPNAT_MAP_CNT: Array<MappingCounters> = Array::with_max_entries(MAX_MAPPING_ID + 1, 0);
/// Per-CPU counters of what happened to each packet, indexed by `Reason`.
#[map(name = "IPNAT_REASONS")]
static IPNAT_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[inline(always)]
fn flags() -> u32 {
    IPNAT_SETTINGS.get(0).map_or(0, |s| s.flags)
}

#[inline(always)]
fn count_reason(reason: Reason) {
    if let Some(c) = IPNAT_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn ipnat_xdp(ctx: XdpContext) -> u32 {
    match try_ipnat_xdp(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn try_ipnat_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let flags = flags();
    let p = &mut pkt::Xdp(ctx);
    if flags & FLAG_FAST_PATH == 0 {
        let (reason, verdict) = nat::translate(p, Dir::Dnat, flags);
        count_reason(reason);
        return Ok(xdp_verdict(verdict));
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let (reason, action) = fwd::gateway(p, ingress, flags, true);
    Ok(match action {
        Action::Pass => {
            count_reason(reason);
            xdp_action::XDP_PASS
        }
        Action::Drop => {
            count_reason(reason);
            xdp_action::XDP_DROP
        }
        Action::Out(ifindex) => {
            count_reason(reason);
            if ifindex == ingress {
                xdp_action::XDP_TX
            } else {
                // SAFETY: plain helper call.
                unsafe { bpf_redirect(ifindex, 0) as u32 }
            }
        }
        // Not produced in XDP.
        Action::OutNeigh(..) => xdp_action::XDP_ABORTED,
        Action::ToTc => {
            if mark_for_tc(ctx).is_ok() {
                count_reason(reason);
                xdp_action::XDP_PASS
            } else {
                // No metadata room: the kernel's slow path instead.
                let (reason, verdict) = nat::translate(&mut pkt::Xdp(ctx), Dir::Dnat, flags);
                count_reason(reason);
                xdp_verdict(verdict)
            }
        }
    })
}

#[inline(always)]
fn xdp_verdict(v: Verdict) -> u32 {
    match v {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// Puts [`META_FORWARD`] in the XDP metadata in front of the packet, for TC ingress.
#[inline(always)]
fn mark_for_tc(ctx: &XdpContext) -> Result<(), ()> {
    // SAFETY: the helper only moves data_meta within the headroom.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(size_of::<u32>() as i32)) } != 0 {
        return Err(());
    }
    // SAFETY: reading the context's fields.
    let (meta, data) = unsafe { ((*ctx.ctx).data_meta as usize, (*ctx.ctx).data as usize) };
    if meta + size_of::<u32>() > data {
        return Err(());
    }
    // SAFETY: bounds-checked against data just above.
    unsafe { (meta as *mut u32).write_unaligned(META_FORWARD) };
    Ok(())
}

/// TC ingress: forwards the packets XDP marked; everything else continues untouched.
#[classifier]
pub fn ipnat_tc_ingress(ctx: TcContext) -> i32 {
    match try_ipnat_tc_ingress(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn try_ipnat_tc_ingress(ctx: &TcContext) -> Result<i32, ()> {
    let skb = ctx.skb.skb;
    // SAFETY: reading the context's fields.
    let (meta, data, ingress) = unsafe {
        (
            (*skb).data_meta as usize,
            (*skb).data as usize,
            (*skb).ifindex,
        )
    };
    if meta + size_of::<u32>() > data {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: bounds-checked against data just above.
    if unsafe { (meta as *const u32).read_unaligned() } != META_FORWARD {
        return Ok(TC_ACT_OK);
    }
    let (reason, action) = fwd::gateway(&mut pkt::Tc(ctx), ingress, flags(), false);
    count_reason(reason);
    Ok(match action {
        Action::Pass | Action::ToTc => TC_ACT_OK as i32,
        Action::Drop => TC_ACT_SHOT,
        // SAFETY: plain helper call.
        Action::Out(ifindex) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Action::OutNeigh(ifindex, nexthop) => {
            let mut nh = bpf_redir_neigh {
                nh_family: 2, // AF_INET
                __bindgen_anon_1: unsafe { core::mem::zeroed() },
            };
            nh.__bindgen_anon_1.ipv4_nh = nexthop;
            // SAFETY: the helper reads the struct we pass, of the size we pass.
            unsafe {
                bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) as i32
            }
        }
    })
}

#[classifier]
pub fn ipnat_tc_egress(ctx: TcContext) -> i32 {
    match try_ipnat_tc_egress(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn try_ipnat_tc_egress(ctx: &TcContext) -> Result<i32, ()> {
    let (reason, verdict) = nat::translate(&mut pkt::Tc(ctx), Dir::Snat, flags());
    count_reason(reason);
    Ok(match verdict {
        Verdict::Pass => TC_ACT_OK as i32,
        // Also when a helper failed after the packet may have been partly rewritten.
        Verdict::Drop => TC_ACT_SHOT,
    })
}

/// Passes every packet. XDP_REDIRECT or XDP_TX into a veth needs an XDP program on its peer
/// (which turns on the peer's NAPI); this one does nothing else. The lab attaches it to the
/// hosts beside the gateway; a gateway that redirects into containers' veths needs it (or any
/// XDP program) on their ends.
#[xdp]
pub fn ipnat_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The floor any table NAT pays, for `ipnat bench`: bounds checks, one hash lookup of the
/// destination, one address store; no checksum, no counters. Never attached.
#[xdp]
pub fn ipnat_bench_floor(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 34 > end {
        return xdp_action::XDP_PASS;
    }
    let dst = (start + 30) as *mut u32;
    // SAFETY: bounds-checked above.
    let key = unsafe { dst.read_unaligned() };
    if let Some(t) = IPNAT_DNAT.get_ptr(key) {
        // SAFETY: as above; the map value is valid while the program runs.
        unsafe { dst.write_unaligned((*t).addr) };
    }
    xdp_action::XDP_PASS
}

/// An empty TC program: the TC baseline of `ipnat bench` (a TC test run costs more than an XDP
/// one before any program code runs). Never attached.
#[classifier]
pub fn ipnat_bench_tc_empty(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
