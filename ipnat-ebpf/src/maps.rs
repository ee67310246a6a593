//! Every map of the product's object, the lookups that read them and the counters they hold.
//! Values the controller replaces in place are read with one 8-byte load (see [`load8`]),
//! paired with the controller's whole-value writes.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use ipnat_common::{
    EntryCounters, FLAG_PREFIXES, FLAG_STEER, IFACE_XDP_TARGET, MAX_INTERNAL_PREFIXES,
    MAX_MAPPINGS, MAX_PREFIXES, MAX_RPF_ENTRIES, MAX_STEER_RULES, NatEntry, NatTarget, PrefixEntry,
    REASON_COUNT, RPF_TTL_NS, Reason, RpfKey, Settings, SteerCounters, SteerTarget, TABLE_DNAT,
    TABLE_DNAT_PREFIX, TABLE_SNAT, TABLE_SNAT_PREFIX, TableWrite, WRITE_ADD_COUNTERS,
};

use crate::dir::Dir;

/// public -> {private, mapping id; counters}
#[map(name = "IPNAT_DNAT")]
static IPNAT_DNAT: HashMap<u32, NatEntry> = HashMap::with_max_entries(MAX_MAPPINGS, 0);
/// private -> {public, mapping id; counters}
#[map(name = "IPNAT_SNAT")]
static IPNAT_SNAT: HashMap<u32, NatEntry> = HashMap::with_max_entries(MAX_MAPPINGS, 0);
/// public prefix -> {public ^ private network, mapping id; counters}
#[map(name = "IPNAT_DNAT_PFX")]
static IPNAT_DNAT_PFX: LpmTrie<u32, PrefixEntry> =
    LpmTrie::with_max_entries(MAX_PREFIXES, BPF_F_NO_PREALLOC);
/// private prefix -> {private ^ public network, mapping id; counters}
#[map(name = "IPNAT_SNAT_PFX")]
static IPNAT_SNAT_PFX: LpmTrie<u32, PrefixEntry> =
    LpmTrie::with_max_entries(MAX_PREFIXES, BPF_F_NO_PREALLOC);
/// source prefix -> where its packets leave (steering).
#[map(name = "IPNAT_STEER")]
static IPNAT_STEER: LpmTrie<u32, SteerTarget> =
    LpmTrie::with_max_entries(MAX_STEER_RULES, BPF_F_NO_PREALLOC);
/// Per-rule steering counters, indexed by rule id (0 unused).
#[map(name = "IPNAT_STEER_CNT")]
static IPNAT_STEER_CNT: Array<SteerCounters> = Array::with_max_entries(MAX_STEER_RULES + 1, 0);
/// The interfaces ipnat is attached to (ifindex -> `IFACE_XDP_TARGET`: XDP may redirect there,
/// it runs ipnat's native XDP program and can transmit XDP frames; `IFACE_TC_ONLY`: only TC
/// may; either with `IFACE_PEER`: TC ingress delivers to its peer directly). Any other egress
/// goes through TC.
#[map(name = "IPNAT_XDP_TARGETS")]
static IPNAT_XDP_TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);
/// Internal prefixes (host orientation): peers there see the private addresses.
#[map(name = "IPNAT_INTERNAL")]
static IPNAT_INTERNAL: LpmTrie<u32, u32> =
    LpmTrie::with_max_entries(MAX_INTERNAL_PREFIXES, BPF_F_NO_PREALLOC);
/// The data plane's settings (one entry).
#[map(name = "IPNAT_SETTINGS")]
static IPNAT_SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
/// Reverse-path verdicts the fast path remembered: key -> when the verdict expires
/// (`bpf_ktime_get_coarse_ns`). See [`RpfKey`].
#[map(name = "IPNAT_RPF")]
static IPNAT_RPF: LruHashMap<RpfKey, u64> = LruHashMap::with_max_entries(MAX_RPF_ENTRIES, 0);
/// The route generation (one entry), bumped by the controller whenever the kernel reports a
/// route, rule, address or link change.
#[map(name = "IPNAT_ROUTE_GEN")]
static IPNAT_ROUTE_GEN: Array<u32> = Array::with_max_entries(1, 0);
/// Per-CPU counters of what happened to each packet, indexed by `Reason`.
#[map(name = "IPNAT_REASONS")]
static IPNAT_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// The data plane's `FLAG_*` settings.
#[inline(always)]
pub fn flags() -> u32 {
    IPNAT_SETTINGS.get(0).map_or(0, |s| s.flags)
}

/// Counts one packet under `reason` (the drop reason or what was done).
#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = IPNAT_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}

/// One 8-byte load of a map value: an entry the controller replaces in place is seen whole,
/// old or new, never half of each.
#[inline(always)]
fn load8(p: *const u64) -> (u32, u32) {
    // SAFETY: the map returned a valid pointer to an 8-byte, 8-aligned value.
    let raw = unsafe { core::ptr::read_volatile(p) };
    (raw as u32, (raw >> 32) as u32)
}

/// Set in the id of a [`NatTarget`] that [`lookup`] found in a prefix table (ids stay below
/// 2^24): where [`count_mapping`] finds its entry again.
const IN_PREFIX_TABLE: u32 = 1 << 31;

#[inline(always)]
fn lookup_exact(map: &HashMap<u32, NatEntry>, addr: u32) -> Option<NatTarget> {
    let (addr, id) = load8(map.get_ptr(addr)? as *const u64);
    Some(NatTarget { addr, id })
}

#[inline(always)]
fn lookup_prefix(map: &LpmTrie<u32, PrefixEntry>, addr: u32) -> Option<NatTarget> {
    let v: *const PrefixEntry = map.get(&Key::new(32, addr))?;
    let (xor, id) = load8(v as *const u64);
    Some(NatTarget {
        addr: addr ^ xor,
        id: id | IN_PREFIX_TABLE,
    })
}

/// The tables of direction `dir`: exact and prefix.
#[inline(always)]
fn tables(
    dir: Dir,
) -> (
    &'static HashMap<u32, NatEntry>,
    &'static LpmTrie<u32, PrefixEntry>,
) {
    if dir.keyed_by_public() {
        (&IPNAT_DNAT, &IPNAT_DNAT_PFX)
    } else {
        (&IPNAT_SNAT, &IPNAT_SNAT_PFX)
    }
}

/// The translation of `addr` in direction `dir`: an exact mapping first, then the longest
/// matching prefix mapping (only when the controller installed any: `flags`).
#[inline(always)]
pub fn lookup(dir: Dir, addr: u32, flags: u32) -> Option<NatTarget> {
    let (exact, prefixes) = tables(dir);
    if let Some(t) = lookup_exact(exact, addr) {
        return Some(t);
    }
    if flags & FLAG_PREFIXES == 0 {
        return None;
    }
    lookup_prefix(prefixes, addr)
}

/// [`lookup`] as a plain value, id 0 for none. Mapping ids start at 1. The callers keep it in
/// a register across helper calls: LLVM leaves a `None`'s payload undefined and may spill that
/// register, which the verifier refuses ("!read_ok"); `black_box` materializes the value.
#[inline(always)]
pub fn lookup_or_none(dir: Dir, addr: u32, flags: u32) -> NatTarget {
    core::hint::black_box(lookup(dir, addr, flags).unwrap_or_default())
}

/// Whether `addr` is in one of the internal prefixes (host orientation: the VPC, peered
/// networks, link-local), which the cloud does not translate either.
#[inline(always)]
pub fn is_internal(addr: u32) -> bool {
    IPNAT_INTERNAL.get(&Key::new(32, addr)).is_some()
}

/// Whether XDP may redirect into `ifindex` (it runs ipnat's native XDP program).
#[inline(always)]
pub fn xdp_target(ifindex: u32) -> bool {
    interface(ifindex) & IFACE_XDP_TARGET != 0
}

/// The interface table's value for `ifindex` (`IFACE_*`), 0 when it is not one of ipnat's
/// interfaces (ipnat's TC egress program runs on every one that is).
#[inline(always)]
pub fn interface(ifindex: u32) -> u32 {
    // SAFETY: the map returns a valid pointer to its u32 value, or none.
    unsafe { IPNAT_XDP_TARGETS.get(&ifindex) }
        .copied()
        .unwrap_or(0)
}

/// Adds `packets` and `bytes` to a pair of shared counters.
#[inline(always)]
fn add(counter_packets: *mut u64, counter_bytes: *mut u64, packets: u64, bytes: u64) {
    // SAFETY: pointers into a map value, which lives as long as the map. BPF atomic add (no
    // fetch), because CPUs share the value: the bpfel target has no compare-and-swap, so
    // core's AtomicU64::fetch_add is not available there.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter_packets, packets);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter_bytes, bytes);
    }
}

/// Counts one packet of `bytes` translated by mapping `t`, found by `key` in direction `dir`'s
/// tables, in its entry: the lookup that found it brought the entry into the cache, so this
/// second one costs a hash of hot lines, not a cache miss. It looks the entry up again, by
/// scalars only, because a pointer to the entry kept from the first lookup to the count
/// (across the packet path's helper calls) doubles the verifier's states at every branch
/// after it, past its limit of a million instructions on the fast path.
#[inline(always)]
pub fn count_mapping(t: &NatTarget, dir: Dir, key: u32, bytes: u64) {
    let (exact, prefixes) = tables(dir);
    let c: *mut EntryCounters = if t.id & IN_PREFIX_TABLE != 0 {
        match prefixes.get(&Key::new(32, key)) {
            // The trie's values are writable memory; aya's getter hands out a shared reference.
            Some(e) => &raw const e.counters as *mut EntryCounters,
            None => return,
        }
    } else {
        match exact.get_ptr_mut(key) {
            // SAFETY: a field of a valid map value.
            Some(e) => unsafe { &raw mut (*e).counters },
            None => return,
        }
    };
    // SAFETY: a pointer into a map value, which lives while the program runs.
    unsafe { add(&raw mut (*c).packets, &raw mut (*c).bytes, 1, bytes) };
}

/// Carries out one [`TableWrite`] request on the entry keyed (`prefix_len`, `key`) in `table`:
/// replaces its translation with `value`, one 8-byte store (a program reading it sees the old
/// or the new translation, and the counters beside it are left alone), or adds to its counters
/// atomically. False when there is no such entry (the controller then inserts one).
#[inline(always)]
pub fn write_in_place(w: &TableWrite) -> bool {
    let (table, prefix_len, key) = (w.table, w.prefix_len, w.key);
    let entry: *mut u64 = match table {
        TABLE_DNAT => match IPNAT_DNAT.get_ptr_mut(key) {
            Some(e) => e as *mut u64,
            None => return false,
        },
        TABLE_SNAT => match IPNAT_SNAT.get_ptr_mut(key) {
            Some(e) => e as *mut u64,
            None => return false,
        },
        TABLE_DNAT_PREFIX | TABLE_SNAT_PREFIX => {
            let trie = if table == TABLE_DNAT_PREFIX {
                &IPNAT_DNAT_PFX
            } else {
                &IPNAT_SNAT_PFX
            };
            // The longest prefix of at most `prefix_len` bits that matches: this very entry
            // when it exists (block mappings never overlap, so none other can match).
            match trie.get(&Key::new(prefix_len, key)) {
                Some(e) => e as *const PrefixEntry as *mut u64,
                None => return false,
            }
        }
        _ => return false,
    };
    if w.op == WRITE_ADD_COUNTERS {
        // SAFETY: the counters follow the 8-byte translation in both entry types.
        unsafe {
            let c = entry.add(1) as *mut EntryCounters;
            add(&raw mut (*c).packets, &raw mut (*c).bytes, w.value, w.bytes);
        }
        return true;
    }
    // SAFETY: the first 8 bytes of a valid map value, 8-aligned.
    unsafe { core::ptr::write_volatile(entry, w.value) };
    true
}

/// The steering rule for `src` (id 0: none), as a plain value (see [`lookup_or_none`]).
#[inline(always)]
pub fn steering(src: u32, flags: u32) -> SteerTarget {
    if flags & FLAG_STEER == 0 {
        return no_steering();
    }
    match IPNAT_STEER.get(&Key::new(32, src)) {
        Some(t) => core::hint::black_box(copy_steering(t)),
        None => core::hint::black_box(no_steering()),
    }
}

/// A copy of a steering rule read a word at a time: a plain copy of the 24 bytes becomes a
/// call of the BPF target's byte-at-a-time memmove (see [`crate::zero`]).
#[inline(always)]
fn copy_steering(t: &SteerTarget) -> SteerTarget {
    // SAFETY: reads of fields of a valid map value.
    unsafe {
        SteerTarget {
            ifindex: (&raw const t.ifindex).read_volatile(),
            gateway: (&raw const t.gateway).read_volatile(),
            subnet: (&raw const t.subnet).read_volatile(),
            mask: (&raw const t.mask).read_volatile(),
            id: (&raw const t.id).read_volatile(),
            _pad: 0,
        }
    }
}

/// No steering rule (id 0), built from a zero LLVM cannot see through: a known all-zero
/// struct becomes a call of the BPF target's byte-at-a-time memset (see [`crate::zero`]).
#[inline(always)]
fn no_steering() -> SteerTarget {
    let z = core::hint::black_box(0u32);
    SteerTarget {
        ifindex: z,
        gateway: z,
        subnet: z,
        mask: z,
        id: z,
        _pad: z,
    }
}

/// Counts one packet of `bytes` on steering rule `id`.
#[inline(always)]
pub fn count_steer(id: u32, bytes: u64) {
    if let Some(c) = IPNAT_STEER_CNT.get_ptr_mut(id) {
        let c: *mut SteerCounters = c;
        // SAFETY: taking field addresses of a valid map value.
        unsafe { add(&raw mut (*c).packets, &raw mut (*c).bytes, 1, bytes) };
    }
}

/// The key of the reverse-path verdict for a packet from `src` to `dst` with `tos` that came
/// in on `ifindex`, in the current route generation.
#[inline(always)]
pub fn rpf_key(src: u32, dst: u32, ifindex: u32, tos: u8) -> RpfKey {
    RpfKey {
        src,
        dst,
        ifindex,
        generation: IPNAT_ROUTE_GEN.get(0).copied().unwrap_or(0),
        tos,
        // A zero LLVM cannot see through (see `no_steering`).
        _pad: [
            core::hint::black_box(0u8),
            core::hint::black_box(0u8),
            core::hint::black_box(0u8),
        ],
    }
}

/// Whether "routes back through the ingress" was found for `key` and has not expired.
#[inline(always)]
pub fn rpf_remembered(key: &RpfKey) -> bool {
    // SAFETY: the map returns a valid pointer to its u64 value, or none.
    match unsafe { IPNAT_RPF.get(key) } {
        Some(&expires) => {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_coarse_ns() };
            now < expires
        }
        None => false,
    }
}

/// Remembers "routes back through the ingress" for `key`.
#[inline(always)]
pub fn rpf_remember(key: &RpfKey) {
    // SAFETY: plain helper call.
    let expires = unsafe { bpf_ktime_get_coarse_ns() } + RPF_TTL_NS;
    // A full table evicts its least recently used entry; a failure only costs a FIB lookup.
    let _ = IPNAT_RPF.insert(key, &expires, 0);
}
