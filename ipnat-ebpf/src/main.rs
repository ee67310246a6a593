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
mod host;
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
    FLAG_FAST_PATH, FLAG_HOST, FLAG_STEER, MAX_INTERNAL_PREFIXES, MAX_MAPPING_ID, MAX_MAPPINGS,
    MAX_PREFIXES, MAX_STEER_RULES, META_FORWARD, MappingCounters, NatTarget, PrefixTarget,
    REASON_COUNT, Reason, Settings, SteerCounters, SteerTarget,
};

use crate::{
    fwd::Action,
    nat::{Dir, Verdict},
    pkt::Packet,
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
/// source prefix -> where its packets leave (steering).
#[map(name = "IPNAT_STEER")]
static IPNAT_STEER: LpmTrie<u32, SteerTarget> =
    LpmTrie::with_max_entries(MAX_STEER_RULES, BPF_F_NO_PREALLOC);
/// Per-rule steering counters, indexed by rule id (0 unused).
#[map(name = "IPNAT_STEER_CNT")]
static IPNAT_STEER_CNT: Array<SteerCounters> = Array::with_max_entries(MAX_STEER_RULES + 1, 0);
/// Interfaces XDP may redirect to (ifindex -> 1): those with ipnat's native XDP program. Any
/// other egress goes through TC.
#[map(name = "IPNAT_XDP_TARGETS")]
static IPNAT_XDP_TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);
/// Internal prefixes (host orientation): peers there see the private addresses.
#[map(name = "IPNAT_INTERNAL")]
static IPNAT_INTERNAL: LpmTrie<u32, u32> =
    LpmTrie::with_max_entries(MAX_INTERNAL_PREFIXES, BPF_F_NO_PREALLOC);
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
    match try_ipnat_xdp::<FRAGS>(ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn try_ipnat_xdp<const FRAGS: bool>(ctx: &XdpContext) -> Result<u32, ()> {
    let flags = flags();
    let p = &mut pkt::Xdp::<FRAGS>(ctx);
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
                let (reason, verdict) =
                    nat::translate(&mut pkt::Xdp::<FRAGS>(ctx), Dir::Dnat, flags);
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

/// TC ingress doing XDP's job, on an interface without native XDP (the controller attaches it
/// there instead of `ipnat_xdp` and `ipnat_tc_ingress`).
#[classifier]
pub fn ipnat_tc_gateway(ctx: TcContext) -> i32 {
    match try_ipnat_tc_gateway(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn try_ipnat_tc_gateway(ctx: &TcContext) -> Result<i32, ()> {
    let flags = flags();
    if flags & FLAG_FAST_PATH == 0 {
        let (reason, verdict) = nat::translate(&mut pkt::Tc(ctx), Dir::Dnat, flags);
        count_reason(reason);
        return Ok(match verdict {
            Verdict::Pass => TC_ACT_OK as i32,
            Verdict::Drop => TC_ACT_SHOT,
        });
    }
    // SAFETY: reading the context's field.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    let (reason, action) = fwd::gateway(&mut pkt::Tc(ctx), ingress, flags, false);
    count_reason(reason);
    Ok(tc_action(action))
}

/// What a TC program returns for a forwarding decision.
#[inline(always)]
fn tc_action(action: Action) -> i32 {
    match action {
        Action::Pass | Action::ToTc => TC_ACT_OK as i32,
        Action::Drop => TC_ACT_SHOT,
        // SAFETY: plain helper call.
        Action::Out(ifindex) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Action::OutNeigh(ifindex, nexthop) => redirect_neigh(ifindex, nexthop),
    }
}

/// `bpf_redirect_neigh` out of `ifindex` to the IPv4 `nexthop` (network order): the kernel
/// resolves its MAC address and writes the Ethernet header.
#[inline(always)]
fn redirect_neigh(ifindex: u32, nexthop: u32) -> i32 {
    let mut nh = bpf_redir_neigh {
        nh_family: 2, // AF_INET
        // SAFETY: all-zero is a valid value of this union.
        __bindgen_anon_1: unsafe { core::mem::zeroed() },
    };
    nh.__bindgen_anon_1.ipv4_nh = nexthop;
    // SAFETY: the helper reads the struct we pass, of the size we pass.
    unsafe { bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) as i32 }
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
    let flags = flags();
    if flags & FLAG_HOST != 0 {
        let (reason, verdict) = host::receive(ctx, flags);
        count_reason(reason);
        return Ok(match verdict {
            Verdict::Pass => TC_ACT_OK as i32,
            Verdict::Drop => TC_ACT_SHOT,
        });
    }
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
    let (reason, action) = fwd::gateway(&mut pkt::Tc(ctx), ingress, flags, false);
    count_reason(reason);
    Ok(tc_action(action))
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
    let flags = flags();
    let p = &mut pkt::Tc(ctx);
    // One parse serves the translation and the steering.
    let h = match nat::parse(p) {
        Ok(h) => h,
        Err(reason) => {
            count_reason(reason);
            return Ok(TC_ACT_OK as i32);
        }
    };
    // Gateway: source private -> public. Host: source public -> private, except towards an
    // internal peer.
    let dir = if flags & FLAG_HOST != 0 {
        Dir::HostOut
    } else {
        Dir::Snat
    };
    // A plain value, id 0 for none (see fwd::gateway on `Option`s and the verifier).
    let t = core::hint::black_box(nat::lookup(dir, h.src, flags).unwrap_or_default());
    let (reason, verdict) = if dir == Dir::HostOut && t.id != 0 && nat::is_internal(h.dst) {
        (Reason::PassInternalPeer, Verdict::Pass)
    } else {
        nat::translate_hdr(p, &h, dir, (t.id != 0).then_some(t), flags)
    };
    count_reason(reason);
    if verdict == Verdict::Drop {
        // Also when a helper failed after the packet may have been partly rewritten.
        return Ok(TC_ACT_SHOT);
    }
    if flags & FLAG_STEER != 0 {
        // The source the packet leaves with: translated when the mapping applied.
        let translated = t.id != 0
            && matches!(
                reason,
                Reason::Snat | Reason::HostOut | Reason::FragmentTranslated
            );
        let src = if translated { t.addr } else { h.src };
        if let Some(action) = steer(ctx, &h, src, flags) {
            return Ok(action);
        }
    }
    Ok(TC_ACT_OK as i32)
}

/// Source-based steering of what the kernel sends (after any translation): a packet whose
/// source a rule covers, routed by the kernel out of another interface, is sent out of the
/// rule's interface instead, to the destination itself when it is on that interface's subnet
/// and to the rule's gateway otherwise (the rc.local recipe's table, without `ip rule`).
/// `None`: leave the packet where it is.
#[inline(always)]
fn steer(ctx: &TcContext, h: &nat::Hdr, src: u32, flags: u32) -> Option<i32> {
    let t = fwd::steering(src, flags);
    if t.id == 0 {
        return None;
    }
    // SAFETY: reading the context's field.
    let here = unsafe { (*ctx.skb.skb).ifindex };
    if t.ifindex == here {
        // Already on its interface (also: what this program itself redirected here).
        return None;
    }
    let nexthop = if h.dst & t.mask == t.subnet {
        h.dst
    } else {
        t.gateway
    };
    fwd::count_steer(t.id, ctx.len() as u64);
    count_reason(Reason::Steered);
    // The next hop's MAC address, when the neighbour is known: write the header and redirect.
    let p = pkt::Tc(ctx);
    let f = fwd::fib(
        &p,
        t.ifindex,
        src,
        nexthop,
        h.tos,
        0,
        aya_ebpf::bindings::BPF_FIB_LOOKUP_OUTPUT,
    );
    if f.rc == aya_ebpf::bindings::BPF_FIB_LKUP_RET_SUCCESS as i64 && f.ifindex == t.ifindex {
        let mut p = p;
        if p.write(0, f.dmac).is_err() || p.write(6, f.smac).is_err() {
            return Some(TC_ACT_SHOT);
        }
        // SAFETY: plain helper call.
        return Some(unsafe { bpf_redirect(t.ifindex, 0) as i32 });
    }
    // Unknown neighbour: let the kernel resolve it. (A packet queued while it does goes out
    // with the header of its original route: the kernel re-derives the neighbour from the
    // skb's route when it flushes the queue. The controller resolves the rules' gateways in
    // advance so that this stays rare.)
    Some(redirect_neigh(t.ifindex, nexthop))
}

/// Passes every packet. XDP_REDIRECT or XDP_TX into a veth needs an XDP program on its peer
/// (which turns on the peer's NAPI); this one does nothing else. The lab attaches it to the
/// hosts beside the gateway; a gateway that redirects into containers' veths needs it (or any
/// XDP program) on their ends.
#[xdp(frags)]
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

/// Settings of the forwarding benchmark's programs: [0] the generator's egress ifindex, [1]
/// distinct flows (source ports) to cycle through, [2] the destination the sink expects.
#[map(name = "IPNAT_BENCH_CFG")]
static IPNAT_BENCH_CFG: Array<u32> = Array::with_max_entries(3, 0);
/// The forwarding benchmark's counters (per CPU): [0] generated, [1] arrived translated as
/// expected, [2] arrived otherwise.
#[map(name = "IPNAT_BENCH_CNT")]
static IPNAT_BENCH_CNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// The generator's frame headers (Ethernet, IPv4, UDP: 42 bytes), rewritten into every frame:
/// live-frames mode recycles pages without restoring what the receivers modified in them.
#[map(name = "IPNAT_BENCH_TPL")]
static IPNAT_BENCH_TPL: Array<[u8; 64]> = Array::with_max_entries(1, 0);

#[inline(always)]
fn bench_cfg(i: u32) -> u32 {
    IPNAT_BENCH_CFG.get(i).copied().unwrap_or(0)
}

#[inline(always)]
fn bench_count(i: u32) -> u64 {
    match IPNAT_BENCH_CNT.get_ptr_mut(i) {
        // SAFETY: per-CPU slot.
        Some(c) => unsafe {
            *c += 1;
            *c
        },
        None => 0,
    }
}

/// The forwarding benchmark's traffic generator, run with BPF_PROG_TEST_RUN in live-frames
/// mode: stamps a UDP source port (cycling through the configured number of flows; the UDP
/// checksum is 0, so nothing else changes) and sends the frame out of the configured interface.
#[xdp]
pub fn ipnat_bench_gen(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 42 > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(tpl) = IPNAT_BENCH_TPL.get_ptr(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds-checked above; the template is a valid map value of 64 bytes.
    unsafe {
        let headers = (tpl as *const [u8; 42]).read_unaligned();
        (start as *mut [u8; 42]).write_unaligned(headers);
    }
    let n = bench_count(0);
    let flows = u64::from(bench_cfg(1).max(1));
    let port = 1024 + (n % flows) as u16;
    // SAFETY: bounds-checked above (UDP source port at 34..36 behind a 20-byte IPv4 header).
    unsafe { ((start + 34) as *mut u16).write_unaligned(port.to_be()) };
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(bench_cfg(0), 0) as u32 }
}

/// The forwarding benchmark's receiver: counts frames whose destination is the configured
/// (translated) address, and the others, and drops them.
#[xdp]
pub fn ipnat_bench_sink(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 34 > end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: bounds-checked above.
    let dst = unsafe { ((start + 30) as *const u32).read_unaligned() };
    let ethertype = unsafe { ((start + 12) as *const u16).read_unaligned() };
    if ethertype != 0x0800u16.to_be() {
        return xdp_action::XDP_PASS;
    }
    bench_count(if dst == bench_cfg(2) { 1 } else { 2 });
    xdp_action::XDP_DROP
}

/// The forwarding benchmark's ceiling: what the fast path does without translating
/// (`bpf_fib_lookup`, TTL, MACs, redirect), as the kernel's xdp_fwd sample does.
#[xdp]
pub fn ipnat_bench_redirect(ctx: XdpContext) -> u32 {
    let p = &mut pkt::Xdp::<false>(&ctx);
    let Ok(h) = nat::parse(p) else {
        return xdp_action::XDP_PASS;
    };
    if h.ip_off != nat::ETH_HLEN || h.ttl <= 1 {
        return xdp_action::XDP_PASS;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let f = fwd::fib(p, ingress, h.src, h.dst, h.tos, h.tot_len, 0);
    if f.rc != 0 {
        return xdp_action::XDP_PASS;
    }
    let old = u16::from_ne_bytes([h.ttl, h.proto]);
    let new = u16::from_ne_bytes([h.ttl - 1, h.proto]);
    if p.replace_l3_u16(h.ip_off, h.ip_off + 8, old, new).is_err()
        || p.write(0, f.dmac).is_err()
        || p.write(6, f.smac).is_err()
    {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(f.ifindex, 0) as u32 }
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
