//! Types shared by the eBPF data plane and the controller: one definition each.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding and no `bool`, so the layout the
//! kernel sees is the layout both sides compile. Addresses are IPv4 in network byte order, stored
//! as the `u32` whose in-memory bytes are the address octets (`u32::from_ne_bytes(ip.octets())`).
#![no_std]

/// Version of the map layout below. Bump it whenever a key, value or map changes shape.
pub const SCHEMA_VERSION: u32 = 7;

/// Capacity of the one-to-one mapping tables (each direction) as compiled; the controller
/// resizes them at load time (`max_mappings`).
pub const MAX_MAPPINGS: u32 = 65_536;
/// Capacity of the prefix mapping tables (each direction).
pub const MAX_PREFIXES: u32 = 4096;

/// Where a table entry's translation is: the address to write and the mapping it belongs to.
///
/// Eight bytes, so that the program reads it in a single load and never sees half of an old and
/// half of a new value while the controller replaces it in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatTarget {
    /// The translated address, network byte order.
    pub addr: u32,
    /// The mapping's id (1..=max_mappings; 0: none), which names it in the counters' reports.
    pub id: u32,
}

impl NatTarget {
    /// The value as the data path loads it: its 8 bytes as one word.
    pub const fn to_word(self) -> u64 {
        let (a, i) = (self.addr.to_ne_bytes(), self.id.to_ne_bytes());
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], i[0], i[1], i[2], i[3]])
    }
}

impl PrefixTarget {
    /// The value as the data path loads it: its 8 bytes as one word.
    pub const fn to_word(self) -> u64 {
        NatTarget {
            addr: self.xor,
            id: self.id,
        }
        .to_word()
    }
}

/// Packets and bytes one table entry translated. They live in the entry itself, beside its
/// translation: the lookup that finds the translation has already brought them into the cache
/// (a separate counter array is a second cache miss per packet in a large table). Shared
/// between CPUs and updated with atomic adds: a per-CPU copy would cost entries x CPUs x 16
/// bytes. The controller changes an entry's translation in place and never its counters (see
/// the `ipnat_table_write` program), so replacing a mapping loses no increment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl EntryCounters {
    /// No traffic yet.
    pub const ZERO: Self = Self {
        packets: 0,
        bytes: 0,
    };
}

/// Value of the exact NAT tables. The table keyed by the public address counts what its
/// lookups translate: inbound packets in gateway orientation (destination public -> private),
/// outbound in host orientation (source public -> private); the one keyed by the private
/// address the other direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub target: NatTarget,
    pub counters: EntryCounters,
}

impl NatEntry {
    /// A new entry: its translation, no traffic yet.
    pub const fn new(target: NatTarget) -> Self {
        Self {
            target,
            counters: EntryCounters::ZERO,
        }
    }
}

/// Value of the prefix tables: a block mapping's translation and counters (as [`NatEntry`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixEntry {
    pub target: PrefixTarget,
    pub counters: EntryCounters,
}

impl PrefixEntry {
    /// A new entry: its translation, no traffic yet.
    pub const fn new(target: PrefixTarget) -> Self {
        Self {
            target,
            counters: EntryCounters::ZERO,
        }
    }
}

/// A request to the `ipnat_table_write` program (run with BPF_PROG_TEST_RUN, never attached),
/// for the entry keyed `key` in `table`: [`WRITE_TRANSLATION`] replaces its translation with
/// `value` (a [`NatTarget`] or a [`PrefixTarget`], as 8 bytes) in place, leaving its counters
/// alone; [`WRITE_ADD_COUNTERS`] adds `value` packets and `bytes` bytes to its counters with
/// atomic adds (a table rebuild carries over what the old tables counted after the copy). The
/// packet the program is run on is an Ethernet-sized header followed by up to
/// [`TABLE_WRITES`] requests.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableWrite {
    /// [`TABLE_DNAT`] .. [`TABLE_SNAT_PREFIX`].
    pub table: u32,
    /// The prefix length of a prefix table's key (32 for the exact tables).
    pub prefix_len: u32,
    pub key: u32,
    pub op: u32,
    /// The new [`NatTarget`] or [`PrefixTarget`], as its 8 bytes; or packets to add.
    pub value: u64,
    /// Bytes to add.
    pub bytes: u64,
}

pub const WRITE_TRANSLATION: u32 = 0;
pub const WRITE_ADD_COUNTERS: u32 = 1;

impl TableWrite {
    /// A new translation (its 8-byte `word`) for the entry keyed (`prefix_len`, `key`).
    const fn translation(table: u32, prefix_len: u32, key: u32, word: u64) -> Self {
        Self {
            table,
            prefix_len,
            key,
            op: WRITE_TRANSLATION,
            value: word,
            bytes: 0,
        }
    }

    /// A new translation for the entry keyed `key` in an exact table.
    pub const fn exact(table: u32, key: u32, target: NatTarget) -> Self {
        Self::translation(table, 32, key, target.to_word())
    }

    /// A new translation for the entry keyed (`prefix_len`, `key`) in a prefix table.
    pub const fn prefix(table: u32, prefix_len: u32, key: u32, target: PrefixTarget) -> Self {
        Self::translation(table, prefix_len, key, target.to_word())
    }

    /// Adds `counters` to the entry keyed `key` in an exact table.
    pub const fn add_counters(table: u32, key: u32, counters: EntryCounters) -> Self {
        Self {
            op: WRITE_ADD_COUNTERS,
            value: counters.packets,
            bytes: counters.bytes,
            ..Self::translation(table, 32, key, 0)
        }
    }
}

pub const TABLE_DNAT: u32 = 0;
pub const TABLE_SNAT: u32 = 1;
pub const TABLE_DNAT_PREFIX: u32 = 2;
pub const TABLE_SNAT_PREFIX: u32 = 3;
/// Requests per run of `ipnat_table_write` (the run's data fits an XDP test run's page).
pub const TABLE_WRITES: usize = 96;
/// The header in front of the requests (an XDP test run needs an Ethernet header's worth).
pub const TABLE_WRITE_HEADER: usize = 16;

/// Value of the prefix tables (LPM tries keyed by prefix length + network address): a block
/// mapping such as `120.0.0.0/25 <-> 10.0.1.0/25` that keeps the host bits, like NETMAP.
///
/// Host bits are kept, so the translation is `new = old ^ xor` with `xor` = the two networks
/// XORed: the value never needs the prefix length, and stays one 8-byte load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixTarget {
    /// `from_network ^ to_network`, network byte order.
    pub xor: u32,
    /// The mapping's id.
    pub id: u32,
}

/// Values of the interface table (`IPNAT_XDP_TARGETS`, ifindex -> value) for every interface
/// ipnat is attached to: XDP may redirect there (its driver can transmit XDP frames), or only
/// TC may send there; either may carry [`IFACE_PEER`].
pub const IFACE_XDP_TARGET: u32 = 1;
pub const IFACE_TC_ONLY: u32 = 2;
/// A flag beside either value: the interface is a veth (or netkit) whose peer lives in another
/// network namespace, so TC ingress hands a packet it forwards there straight to the peer's
/// receive path (`bpf_redirect_peer`) instead of transmitting it on this end: no egress hook,
/// no backlog queue and softirq in between (the peer receives it in the same pass, as a
/// container's veth does under Cilium). The kernel refuses a peer in the same namespace.
pub const IFACE_PEER: u32 = 4;
/// A flag beside [`IFACE_XDP_TARGET`]: ipnat's XDP on this interface can send nowhere but back
/// out of it (no other interface of ipnat's takes XDP frames), so it hands every packet to TC
/// ingress at once, before any lookup, instead of finding the egress only to hand the packet
/// over then (a hairpin, which XDP could send back itself, goes through TC too; never set on
/// a one-NIC gateway's interface that XDP can send back out of).
pub const IFACE_XDP_ALONE: u32 = 8;

/// Put in an skb's `tc_index` by TC ingress when it sends a packet it translated and forwarded
/// (a redirect passes the egress device's TC hook, unlike XDP's): `ipnat_tc_egress` clears it
/// and lets the packet go, as the fast path's XDP redirects go past it. No kernel part in use
/// reads `tc_index` any more (the dsmark qdisc and tcindex classifier are gone), and it never
/// leaves the device: it is only set for an egress that runs `ipnat_tc_egress` (one of the
/// interface table's), which clears it.
pub const TC_FORWARDED: u32 = 0x1a7f;

/// Reverse-path verdicts the fast path remembers (an LRU table: the least recently used go).
pub const MAX_RPF_ENTRIES: u32 = 65_536;

/// How long a remembered reverse-path verdict holds, in nanoseconds, even when nothing says
/// the routes changed (the controller is down and cannot say it).
pub const RPF_TTL_NS: u64 = 1_000_000_000;

/// Key of the remembered reverse-path verdicts: everything the FIB lookup that decides it
/// depends on (the packet's source and destination, its TOS, the interface it came in on),
/// and the route generation it was made in. The controller bumps the generation on every
/// route, rule, address and link change the kernel reports, so a verdict of an older routing
/// state is never found again (and ages out of the LRU table). Only "the source routes back
/// through the ingress" is remembered: spoofed sources leave nothing behind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RpfKey {
    pub src: u32,
    pub dst: u32,
    pub ifindex: u32,
    pub generation: u32,
    pub tos: u8,
    pub _pad: [u8; 3],
}

/// Capacity of the steering table.
pub const MAX_STEER_RULES: u32 = 65_536;

/// Value of the steering table (an LPM trie keyed by source prefix): where packets from that
/// source leave. An LPM trie replaces a node whole (RCU), so a reader never sees a mix of an
/// old and a new value even though this is more than 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerTarget {
    /// The interface the source address belongs to.
    pub ifindex: u32,
    /// Next hop for destinations outside `subnet` (network byte order).
    pub gateway: u32,
    /// The interface's subnet and its mask: destinations inside go direct (network order).
    pub subnet: u32,
    pub mask: u32,
    /// Index into the steering counters (1..=MAX_STEER_RULES).
    pub id: u32,
    pub _pad: u32,
}

/// Counters of one steering rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// `Settings::flags`: the steering table holds rules.
pub const FLAG_STEER: u32 = 4;

/// `Settings::flags`: host orientation. The public addresses are local addresses of this host
/// (applications bind to them) and the cloud translates public <-> private on its side: TC on
/// receive translates the destination private -> public, TC on transmit the source public ->
/// private, both only for peers outside [`names::INTERNAL_MAP`]. No XDP program is attached.
pub const FLAG_HOST: u32 = 8;

/// Capacity of the internal-prefix table (host orientation).
pub const MAX_INTERNAL_PREFIXES: u32 = 1024;

/// `Settings::flags`: forward translated packets in XDP/TC (`bpf_fib_lookup` + redirect)
/// instead of handing them to the kernel's forwarding path.
pub const FLAG_FAST_PATH: u32 = 1;
/// `Settings::flags`: the prefix tables hold entries (skip their lookup otherwise).
pub const FLAG_PREFIXES: u32 = 2;
/// `Settings::flags`: some interface carries [`IFACE_XDP_ALONE`], so XDP looks its ingress up
/// in the interface table (skipped otherwise: no lookup on the fast path for it).
pub const FLAG_XDP_ALONE: u32 = 16;

/// Data-plane settings, the single entry of the settings array; also the meta map that records
/// the layout version of the pinned maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The [`SCHEMA_VERSION`] of the controller that created the maps (0: not yet claimed).
    pub schema: u32,
}

/// Why a packet went where it went. Indexes the per-CPU reason counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 (IPv6, ARP, ...): passed untouched.
    PassNotIpv4 = 0,
    /// IPv4 with no mapping for the address this hook translates: passed untouched.
    PassNoMapping = 1,
    /// Destination translated public -> private.
    Dnat = 2,
    /// Source translated private -> public.
    Snat = 3,
    /// Too short or inconsistent headers: passed untouched for the kernel to judge.
    PassMalformed = 4,
    /// A non-first fragment: only the IPv4 header was translated.
    FragmentTranslated = 5,
    /// An unfragmented packet too short to hold its L4 checksum: passed untouched.
    PassTruncatedL4 = 6,
    /// A kernel helper failed while rewriting (TC); the packet was dropped.
    DropRewriteFailed = 7,
    /// A first fragment too short to hold the L4 checksum field: cannot be fixed without
    /// state, and is an attack (RFC 1858). Dropped.
    DropTinyFragment = 8,
    /// An ICMP error whose outer addresses are not mapped but whose quoted packet is (e.g. the
    /// gateway's own time-exceeded about a translated packet): only the quote was translated.
    IcmpQuoteOnly = 9,
    /// Fast path: translated and forwarded by XDP (redirect or back out of the same NIC).
    Forwarded = 10,
    /// Fast path: translated and forwarded by TC with `bpf_redirect_neigh` (the next hop's
    /// neighbour entry was missing for XDP).
    ForwardedNeigh = 11,
    /// Fast path: XDP handed the packet untouched to TC ingress to resolve the neighbour.
    PassNoNeigh = 12,
    /// Fast path declined, TTL would expire: the kernel answers time exceeded.
    SlowTtl = 13,
    /// Fast path declined, larger than the egress MTU: the kernel fragments or answers
    /// fragmentation needed.
    SlowFragNeeded = 14,
    /// Fast path declined, the source does not route back through the interface it came in
    /// on (spoofed, or asymmetric routing): the kernel's rp_filter and firewall judge it.
    SlowSpoofed = 15,
    /// Fast path declined, no forwarding route (local, unreachable, forwarding off, VLAN): the
    /// kernel handles it.
    SlowNoRoute = 16,
    /// Steering: a packet from a steered source was sent out of the interface that owns it.
    Steered = 17,
    /// Fast path: XDP cannot send out of the egress interface (no native XDP there): handed
    /// untouched to TC ingress, which forwards it.
    PassToTc = 18,
    /// Host orientation: received, destination translated private -> public (the address the
    /// application bound).
    HostIn = 19,
    /// Host orientation: sent, source translated public -> private (the cloud maps it back).
    HostOut = 20,
    /// Host orientation: a mapped address talking to an internal prefix (VPC, peered network,
    /// link-local): left untranslated, as the cloud leaves it.
    PassInternalPeer = 21,
    /// Host orientation: received for a private address by a socket bound to that private
    /// address (a connection made from it): left untranslated.
    PassPrivateSocket = 22,
}

/// Number of [`Reason`] slots.
pub const REASON_COUNT: u32 = 23;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNotIpv4,
        Reason::PassNoMapping,
        Reason::Dnat,
        Reason::Snat,
        Reason::PassMalformed,
        Reason::FragmentTranslated,
        Reason::PassTruncatedL4,
        Reason::DropRewriteFailed,
        Reason::DropTinyFragment,
        Reason::IcmpQuoteOnly,
        Reason::Forwarded,
        Reason::ForwardedNeigh,
        Reason::PassNoNeigh,
        Reason::SlowTtl,
        Reason::SlowFragNeeded,
        Reason::SlowSpoofed,
        Reason::SlowNoRoute,
        Reason::Steered,
        Reason::PassToTc,
        Reason::HostIn,
        Reason::HostOut,
        Reason::PassInternalPeer,
        Reason::PassPrivateSocket,
    ];

    /// Stable name used by `ipnat stats` and the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNoMapping => "pass_no_mapping",
            Reason::Dnat => "dnat",
            Reason::Snat => "snat",
            Reason::PassMalformed => "pass_malformed",
            Reason::FragmentTranslated => "fragment_translated",
            Reason::PassTruncatedL4 => "pass_truncated_l4",
            Reason::DropRewriteFailed => "drop_rewrite_failed",
            Reason::DropTinyFragment => "drop_tiny_fragment",
            Reason::IcmpQuoteOnly => "icmp_quote_only",
            Reason::Forwarded => "forwarded",
            Reason::ForwardedNeigh => "forwarded_neigh",
            Reason::PassNoNeigh => "pass_no_neigh",
            Reason::SlowTtl => "slow_ttl",
            Reason::SlowFragNeeded => "slow_frag_needed",
            Reason::SlowSpoofed => "slow_spoofed",
            Reason::SlowNoRoute => "slow_no_route",
            Reason::Steered => "steered",
            Reason::PassToTc => "pass_to_tc",
            Reason::HostIn => "host_in",
            Reason::HostOut => "host_out",
            Reason::PassInternalPeer => "pass_internal_peer",
            Reason::PassPrivateSocket => "pass_private_socket",
        }
    }
}

/// Names of the maps and programs in the eBPF object.
/// IP protocol numbers (IANA) the data plane tells apart.
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const DCCP: u8 = 33;
    /// One of the protocols translated in the IPv4 header only.
    pub const GRE: u8 = 47;
    pub const UDPLITE: u8 = 136;
}

pub mod names {
    pub const DNAT_MAP: &str = "IPNAT_DNAT";
    pub const SNAT_MAP: &str = "IPNAT_SNAT";
    pub const REASON_COUNTERS: &str = "IPNAT_REASONS";
    pub const DNAT_PREFIX_MAP: &str = "IPNAT_DNAT_PFX";
    pub const SNAT_PREFIX_MAP: &str = "IPNAT_SNAT_PFX";
    pub const SETTINGS: &str = "IPNAT_SETTINGS";
    pub const RPF_MAP: &str = "IPNAT_RPF";
    pub const ROUTE_GENERATION: &str = "IPNAT_ROUTE_GEN";
    pub const STEER_MAP: &str = "IPNAT_STEER";
    pub const STEER_COUNTERS: &str = "IPNAT_STEER_CNT";
    pub const XDP_TARGETS: &str = "IPNAT_XDP_TARGETS";
    pub const INTERNAL_MAP: &str = "IPNAT_INTERNAL";
    pub const TC_GATEWAY_PROGRAM: &str = "ipnat_tc_gateway";
    pub const TC_INGRESS_PROGRAM: &str = "ipnat_tc_ingress";
    pub const XDP_PASS_PROGRAM: &str = "ipnat_xdp_pass";
    pub const BENCH_FLOOR_PROGRAM: &str = "ipnat_bench_floor";
    pub const BENCH_TC_EMPTY_PROGRAM: &str = "ipnat_bench_tc_empty";
    pub const BENCH_GEN_PROGRAM: &str = "ipnat_bench_gen";
    pub const BENCH_SINK_PROGRAM: &str = "ipnat_bench_sink";
    pub const BENCH_TC_SINK_PROGRAM: &str = "ipnat_bench_tc_sink";
    pub const BENCH_REDIRECT_PROGRAM: &str = "ipnat_bench_redirect";
    pub const BENCH_CFG_MAP: &str = "IPNAT_BENCH_CFG";
    pub const BENCH_CNT_MAP: &str = "IPNAT_BENCH_CNT";
    pub const BENCH_TPL_MAP: &str = "IPNAT_BENCH_TPL";
    pub const XDP_PROGRAM: &str = "ipnat_xdp";
    pub const TABLE_WRITE_PROGRAM: &str = "ipnat_table_write";
    pub const XDP_FRAGS_PROGRAM: &str = "ipnat_xdp_frags";
    pub const TC_EGRESS_PROGRAM: &str = "ipnat_tc_egress";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::NatTarget {}
    unsafe impl aya::Pod for super::RpfKey {}
    unsafe impl aya::Pod for super::NatEntry {}
    unsafe impl aya::Pod for super::PrefixEntry {}
    unsafe impl aya::Pod for super::TableWrite {}
    unsafe impl aya::Pod for super::PrefixTarget {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::SteerTarget {}
    unsafe impl aya::Pod for super::SteerCounters {}
}

impl SteerTarget {
    /// Where a packet steered by this rule to `dst` goes next: `dst` itself when it is on the
    /// rule's interface's subnet, the rule's gateway otherwise (addresses in network order).
    /// The one definition, for the fast path and TC egress alike.
    #[inline(always)]
    pub fn next_hop(&self, dst: u32) -> u32 {
        if dst & self.mask == self.subnet {
            dst
        } else {
            self.gateway
        }
    }
}

const _: () = assert!(core::mem::size_of::<NatTarget>() == 8);
const _: () = assert!(core::mem::size_of::<NatEntry>() == 24);
const _: () = assert!(core::mem::size_of::<PrefixEntry>() == 24);
const _: () = assert!(core::mem::size_of::<TableWrite>() == 32);
const _: () = assert!(core::mem::size_of::<PrefixTarget>() == 8);
const _: () = assert!(core::mem::size_of::<Settings>() == 8);
const _: () = assert!(core::mem::size_of::<SteerTarget>() == 24);
const _: () = assert!(core::mem::size_of::<SteerCounters>() == 16);
