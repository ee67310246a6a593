//! The stateless one-to-one translation, shared by every hook.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::maps::HashMap;
use ipnat_common::{MappingCounters, NatTarget, Reason};

use crate::{
    IPNAT_DNAT, IPNAT_MAP_CNT, IPNAT_SNAT,
    pkt::{L4Csum, Packet, Rewrite},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags skipped at most (QinQ).
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_UDPLITE: u8 = 136;

/// Which address a hook translates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Destination public -> private (packets towards a mapped public address).
    Dnat,
    /// Source private -> public (packets from a mapped private address).
    Snat,
}

/// Offset of the IPv4 header behind Ethernet and up to two VLAN tags, or the reason to pass.
#[inline(always)]
fn ipv4_offset<P: Packet>(p: &P) -> Result<usize, Reason> {
    let mut off = ETH_HLEN - 2;
    for _ in 0..MAX_VLAN_TAGS {
        let proto = u16::from_be(p.read::<u16>(off).ok_or(Reason::PassMalformed)?);
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        off += 4;
    }
    let proto = u16::from_be(p.read::<u16>(off).ok_or(Reason::PassMalformed)?);
    if proto != ETH_P_IP {
        return Err(Reason::PassNotIpv4);
    }
    Ok(off + 2)
}

#[inline(always)]
fn lookup(map: &HashMap<u32, NatTarget>, addr: u32) -> Option<NatTarget> {
    let p = map.get_ptr(addr)?;
    // One 8-byte load: an entry replaced in place by the controller is seen whole, old or new.
    // SAFETY: the map returned a valid pointer to an 8-byte, 8-aligned value.
    let raw = unsafe { core::ptr::read_volatile(p as *const u64) };
    let v = NatTarget {
        addr: raw as u32,
        id: (raw >> 32) as u32,
    };
    Some(v)
}

#[inline(always)]
fn count_mapping(id: u32, dir: Dir, bytes: u64) {
    let Some(c) = IPNAT_MAP_CNT.get_ptr_mut(id) else {
        return;
    };
    // SAFETY: the array value lives as long as the map; atomics because CPUs share it.
    unsafe {
        let c: *mut MappingCounters = c;
        let (pk, by) = match dir {
            Dir::Dnat => (&raw mut (*c).dnat_packets, &raw mut (*c).dnat_bytes),
            Dir::Snat => (&raw mut (*c).snat_packets, &raw mut (*c).snat_bytes),
        };
        // BPF atomic add (no fetch): the bpfel target has no compare-and-swap, so core's
        // AtomicU64::fetch_add is not available there.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(pk, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(by, bytes);
    }
}

/// Translates one packet in direction `dir`; returns what happened.
#[inline(always)]
pub fn translate<P: Packet>(p: &mut P, dir: Dir) -> Reason {
    let ip_off = match ipv4_offset(p) {
        Ok(off) => off,
        Err(reason) => return reason,
    };
    let Some(vihl) = p.read::<u8>(ip_off) else {
        return Reason::PassMalformed;
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Reason::PassMalformed;
    }
    let addr_off = ip_off + if dir == Dir::Dnat { 16 } else { 12 };
    let Some(old) = p.read::<u32>(addr_off) else {
        return Reason::PassMalformed;
    };
    let map = if dir == Dir::Dnat {
        &IPNAT_DNAT
    } else {
        &IPNAT_SNAT
    };
    let Some(target) = lookup(map, old) else {
        return Reason::PassNoMapping;
    };
    let (Some(frag), Some(proto)) = (p.read::<u16>(ip_off + 6), p.read::<u8>(ip_off + 9)) else {
        return Reason::PassMalformed;
    };
    // A non-first fragment carries no L4 header; its L4 checksum was fixed in the first one.
    let non_first_fragment = u16::from_be(frag) & 0x1fff != 0;
    let l4_off = ip_off + ihl;
    let l4 = if non_first_fragment {
        L4Csum::None
    } else {
        let l4 = match proto {
            IPPROTO_TCP => L4Csum::Always(l4_off + 16),
            IPPROTO_UDP => L4Csum::Udp(l4_off + 6),
            IPPROTO_DCCP | IPPROTO_UDPLITE => L4Csum::Always(l4_off + 6),
            _ => L4Csum::None,
        };
        if let L4Csum::Always(off) | L4Csum::Udp(off) = l4 {
            if p.read::<u16>(off).is_none() {
                return Reason::PassTruncatedL4;
            }
        }
        l4
    };
    let rw = Rewrite {
        ip_off,
        addr_off,
        old,
        new: target.addr,
        l4,
    };
    if p.rewrite(&rw).is_err() {
        return Reason::DropRewriteFailed;
    }
    count_mapping(target.id, dir, p.frame_len());
    if non_first_fragment {
        Reason::FragmentTranslated
    } else if dir == Dir::Dnat {
        Reason::Dnat
    } else {
        Reason::Snat
    }
}
