//! Host orientation on receive: the cloud delivered a packet to a private address whose public
//! address (EIP) is local here; the destination becomes the public address so that the socket
//! bound to it (or a wildcard one, which then sees it as its local address) receives it.
//!
//! Two kinds of packet keep their private destination: those from internal peers (the VPC
//! talks to private addresses, as the cloud leaves them) and those that belong to a socket
//! bound to the private address itself, e.g. a connection an unbound client made (the kernel
//! chose the private address as its source, and the cloud translated it on the way out).
//! The kernel's own socket tables tell which: the packet's flow is looked up as the stack will
//! look it up, and a socket whose local address is the private one keeps it.

use core::{
    ffi::c_void,
    mem::{MaybeUninit, size_of},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as SockTupleV4},
    helpers::generated::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    programs::TcContext,
};
use ipnat_common::{Reason, ipproto};

use crate::{
    ctx::{Packet, Tc},
    dir::Dir,
    icmp, maps,
    nat::{self, Verdict},
    parse::{self, Hdr, IP_DADDR, IP_FRAG_OFF, IP_PROTO, IP_SADDR},
    zero,
};

/// `BPF_F_CURRENT_NETNS` (-1) as the helpers' `u64` argument: the packet's namespace.
const CURRENT_NETNS: u64 = u64::MAX;

/// A flow as the receiving socket sees it: remote and local address and port (network order).
/// `proto` 0: none (plain values rather than an `Option`: see `csum::L4Csum`).
struct Flow {
    proto: u8,
    remote: u32,
    local: u32,
    remote_port: u16,
    local_port: u16,
}

impl Flow {
    const NONE: Flow = Flow {
        proto: 0,
        remote: 0,
        local: 0,
        remote_port: 0,
        local_port: 0,
    };
}

/// TC ingress in host orientation: what happened and whether to keep the packet.
#[inline(always)]
pub fn receive(ctx: &TcContext, flags: u32) -> (Reason, Verdict) {
    let mut p = Tc(ctx);
    let h = match parse::parse(&p) {
        Ok(h) => h,
        Err(reason) => return (reason, Verdict::Pass),
    };
    let t = maps::lookup_or_none(Dir::HostIn, h.dst, flags);
    if t.id == 0 {
        return (Reason::PassNoMapping, Verdict::Pass);
    }
    if maps::is_internal(h.src) {
        return (Reason::PassInternalPeer, Verdict::Pass);
    }
    let flow = core::hint::black_box(flow(&p, &h));
    if flow.proto != 0 && bound_to(ctx, &flow) {
        return (Reason::PassPrivateSocket, Verdict::Pass);
    }
    nat::translate_hdr(&mut p, &h, Dir::HostIn, Some(t), flags)
}

/// The TCP or UDP flow a received packet belongs to: its own ports, or for an ICMP error the
/// quoted packet's (which this host sent: its source is the local end).
#[inline(always)]
fn flow<P: Packet>(p: &P, h: &Hdr) -> Flow {
    if h.non_first_fragment() {
        return Flow::NONE;
    }
    let l4 = h.l4_off;
    if h.proto == ipproto::TCP || h.proto == ipproto::UDP {
        let Some(ports) = p.read::<[u16; 2]>(l4) else {
            return Flow::NONE;
        };
        return Flow {
            proto: h.proto,
            remote: h.src,
            local: h.dst,
            remote_port: ports[0],
            local_port: ports[1],
        };
    }
    if h.proto != ipproto::ICMP || h.more_fragments() {
        return Flow::NONE;
    }
    let Some((q, ihl)) = icmp::quoted_header(p, l4) else {
        return Flow::NONE;
    };
    let proto = q[IP_PROTO];
    if parse::non_first_fragment(parse::be16(&q, IP_FRAG_OFF))
        || (proto != ipproto::TCP && proto != ipproto::UDP)
    {
        return Flow::NONE;
    }
    let Some(ports) = p.read::<[u16; 2]>(l4 + icmp::QUOTE_OFF + ihl) else {
        return Flow::NONE;
    };
    Flow {
        proto,
        remote: parse::addr(&q, IP_DADDR),
        local: parse::addr(&q, IP_SADDR),
        remote_port: ports[1],
        local_port: ports[0],
    }
}

/// Whether the socket the stack would deliver `flow` to is bound to its local address itself
/// (a listener or socket on the wildcard address is not: it gets the public address).
#[inline(always)]
fn bound_to(ctx: &TcContext, flow: &Flow) -> bool {
    let mut raw = MaybeUninit::<bpf_sock_tuple>::uninit();
    let tuple = zero::zero_in_place(&mut raw);
    tuple.__bindgen_anon_1.ipv4 = SockTupleV4 {
        saddr: flow.remote,
        daddr: flow.local,
        sport: flow.remote_port,
        dport: flow.local_port,
    };
    let skb = ctx.as_ptr();
    let bound = if flow.proto == ipproto::TCP {
        tcp_local_addr(skb, tuple)
    } else {
        udp_local_addr(skb, tuple)
    };
    bound == flow.local
}

const TUPLE_V4: u32 = size_of::<SockTupleV4>() as u32;

// One function per lookup, never inlined: the two helpers return different pointer types
// (a socket, a socket-common), and the verifier refuses one load instruction used with both,
// which is what LLVM makes of a shared `(*sk).src_ip4` after the branches.

/// The local address of the TCP socket (established, request, time-wait, or listener) that
/// `tuple` belongs to; 0 for none or the wildcard.
#[inline(never)]
fn tcp_local_addr(skb: *mut c_void, tuple: &mut bpf_sock_tuple) -> u32 {
    // SAFETY: the helper reads the tuple we pass, of the size we pass; the socket it returns
    // holds a reference, released here.
    unsafe {
        // Also request and time-wait sockets: a connection still closing keeps its address.
        let sk = bpf_skc_lookup_tcp(skb, tuple, TUPLE_V4, CURRENT_NETNS, 0);
        if sk.is_null() {
            return 0;
        }
        let addr = (*sk).src_ip4;
        bpf_sk_release(sk as *mut c_void);
        addr
    }
}

/// The local address of the UDP socket `tuple` would be delivered to; 0 for none or the
/// wildcard.
#[inline(never)]
fn udp_local_addr(skb: *mut c_void, tuple: &mut bpf_sock_tuple) -> u32 {
    // SAFETY: as in `tcp_local_addr`.
    unsafe {
        let sk = bpf_sk_lookup_udp(skb, tuple, TUPLE_V4, CURRENT_NETNS, 0);
        if sk.is_null() {
            return 0;
        }
        let addr = (*sk).src_ip4;
        bpf_sk_release(sk as *mut c_void);
        addr
    }
}
