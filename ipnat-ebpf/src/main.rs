//! ipnat's data plane: stateless one-to-one IPv4 NAT.
//!
//! * `ipnat_xdp` (XDP, receive): destination public -> private, before the kernel routes.
//! * `ipnat_tc_egress` (TC, transmit): source private -> public, after the kernel routed, so
//!   that packets the kernel itself forwards are translated on the way out.
#![no_std]
#![no_main]
// Atomic adds on shared counters (built with nightly for the BPF target, as aya requires).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod csum;
mod nat;
mod pkt;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use ipnat_common::{
    MAX_MAPPING_ID, MAX_MAPPINGS, MappingCounters, NatTarget, REASON_COUNT, Reason,
};

use crate::nat::{Dir, Verdict};

/// public -> {private, mapping id}
#[map(name = "IPNAT_DNAT")]
static IPNAT_DNAT: HashMap<u32, NatTarget> = HashMap::with_max_entries(MAX_MAPPINGS, 0);
/// private -> {public, mapping id}
#[map(name = "IPNAT_SNAT")]
static IPNAT_SNAT: HashMap<u32, NatTarget> = HashMap::with_max_entries(MAX_MAPPINGS, 0);
/// Per-mapping traffic counters, indexed by mapping id (0 unused).
#[map(name = "IPNAT_MAP_CNT")]
static IPNAT_MAP_CNT: Array<MappingCounters> = Array::with_max_entries(MAX_MAPPING_ID + 1, 0);
/// Per-CPU counters of what happened to each packet, indexed by `Reason`.
#[map(name = "IPNAT_REASONS")]
static IPNAT_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

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
    let (reason, verdict) = nat::translate(&mut pkt::Xdp(ctx), Dir::Dnat);
    count_reason(reason);
    Ok(match verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
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
    let (reason, verdict) = nat::translate(&mut pkt::Tc(ctx), Dir::Snat);
    count_reason(reason);
    Ok(match verdict {
        Verdict::Pass => TC_ACT_OK as i32,
        // Also when a helper failed after the packet may have been partly rewritten.
        Verdict::Drop => TC_ACT_SHOT,
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
