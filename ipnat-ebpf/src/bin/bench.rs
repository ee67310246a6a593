//! The benchmarks' programs, a second object that only `ipnat bench` and the forwarding
//! benchmark load: `ipnat run` creates none of these programs or maps in the kernel.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use ipnat_common::{MAX_MAPPINGS, NatEntry};
use ipnat_ebpf::{
    ctx::Xdp,
    fwd,
    parse::{self, ETH_HLEN, IP_DADDR, IP_MIN_HLEN},
};

/// The floor's table: the same type, key, value and size as the product's `IPNAT_DNAT`, filled
/// by the benchmark with the same entries.
#[map(name = "IPNAT_BENCH_DNAT")]
static IPNAT_BENCH_DNAT: HashMap<u32, NatEntry> = HashMap::with_max_entries(MAX_MAPPINGS, 0);

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

/// Untagged Ethernet + IPv4 without options + UDP.
const UDP_HEADERS: usize = ETH_HLEN + IP_MIN_HLEN + 8;
const DST_OFF: usize = ETH_HLEN + IP_DADDR;
const UDP_SOURCE_OFF: usize = ETH_HLEN + IP_MIN_HLEN;

/// The floor any table NAT pays, for `ipnat bench`: bounds checks, one hash lookup of the
/// destination, one address store; no checksum, no counters. Never attached.
#[xdp]
pub fn ipnat_bench_floor(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + DST_OFF + 4 > end {
        return xdp_action::XDP_PASS;
    }
    let dst = (start + DST_OFF) as *mut u32;
    // SAFETY: bounds-checked above.
    let key = unsafe { dst.read_unaligned() };
    if let Some(t) = IPNAT_BENCH_DNAT.get_ptr(key) {
        // SAFETY: as above; the map value is valid while the program runs.
        unsafe { dst.write_unaligned((*t).target.addr) };
    }
    xdp_action::XDP_PASS
}

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
    if start + UDP_HEADERS > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(tpl) = IPNAT_BENCH_TPL.get_ptr(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds-checked above; the template is a valid map value of 64 bytes.
    unsafe {
        let headers = (tpl as *const [u8; UDP_HEADERS]).read_unaligned();
        (start as *mut [u8; UDP_HEADERS]).write_unaligned(headers);
    }
    let n = bench_count(0);
    let flows = u64::from(bench_cfg(1).max(1));
    let port = 1024 + (n % flows) as u16;
    // SAFETY: bounds-checked above.
    unsafe { ((start + UDP_SOURCE_OFF) as *mut u16).write_unaligned(port.to_be()) };
    fwd::redirect(bench_cfg(0)) as u32
}

/// What the forwarding benchmark's receivers do with a frame between `start` and `end`:
/// count it as arriving translated as expected (the configured destination) or otherwise, and
/// drop it (true); false for what is not IPv4 (passed on).
#[inline(always)]
fn sink(start: usize, end: usize) -> bool {
    if start + DST_OFF + 4 > end {
        return true;
    }
    // SAFETY: bounds-checked above.
    let dst = unsafe { ((start + DST_OFF) as *const u32).read_unaligned() };
    let ethertype = unsafe { ((start + 12) as *const u16).read_unaligned() };
    if ethertype != 0x0800u16.to_be() {
        return false;
    }
    bench_count(if dst == bench_cfg(2) { 1 } else { 2 });
    true
}

/// The forwarding benchmark's receiver in XDP (see [`sink`]).
#[xdp]
pub fn ipnat_bench_sink(ctx: XdpContext) -> u32 {
    if sink(ctx.data(), ctx.data_end()) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The forwarding benchmark's receiver in TC (see [`sink`]): with no XDP program on the
/// receiving veth, the gateway's XDP cannot send into its peer, and its paths through TC are
/// measured.
#[classifier]
pub fn ipnat_bench_tc_sink(ctx: TcContext) -> i32 {
    if sink(ctx.data(), ctx.data_end()) {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK as i32
    }
}

/// The forwarding benchmark's ceiling: what the fast path does without translating
/// (`bpf_fib_lookup`, TTL, MACs, redirect), as the kernel's xdp_fwd sample does.
#[xdp]
pub fn ipnat_bench_redirect(ctx: XdpContext) -> u32 {
    let p = &mut Xdp::<false>(&ctx);
    let Ok(h) = parse::parse(p) else {
        return xdp_action::XDP_PASS;
    };
    if !h.untagged() || h.ttl <= 1 {
        return xdp_action::XDP_PASS;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let f = fwd::fib(p, ingress, h.src, h.dst, h.tos, h.tot_len, 0);
    if !f.found() {
        return xdp_action::XDP_PASS;
    }
    if fwd::decrement_ttl(p, &h).is_err() || fwd::write_macs(p, &f).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    fwd::redirect(f.ifindex) as u32
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
