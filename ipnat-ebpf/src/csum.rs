//! Checksums: RFC 1624 incremental arithmetic for the XDP hook, where no kernel helper knows
//! the checksum state, and where each protocol's L4 checksum lives and how it is updated. All
//! quantities are loaded from packet memory the same way (native-endian views of network-order
//! bytes); the one's complement sum does not depend on byte order.

use ipnat_common::ipproto;

/// Folds a 32-bit accumulator into 16 bits with end-around carry.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New value of a checksum field (`check`, as stored) after a 32-bit word it covers changed from
/// `old` to `new`: HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3).
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check as u32)
        + (!(old as u16) as u32)
        + (!((old >> 16) as u16) as u32)
        + (new & 0xffff)
        + (new >> 16);
    !fold(sum)
}

/// New value of a checksum field after a 16-bit word it covers changed from `old` to `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check as u32) + (!old as u32) + (new as u32))
}

/// Where the L4 checksum that covers the IPv4 pseudo-header lives, if any.
///
/// A plain struct rather than an enum with payloads: LLVM leaves the payload of a variant
/// without one undefined, may spill that register, and the verifier refuses the read.
#[derive(Clone, Copy)]
pub struct L4Csum {
    /// Packet offset of the checksum field (0 with `NONE`).
    pub off: usize,
    pub kind: u8,
}

impl L4Csum {
    /// No L4 checksum over the addresses (ICMP, non-first fragments, other protocols).
    pub const NONE: u8 = 0;
    /// Always covers the pseudo-header (TCP, DCCP, UDP-Lite).
    pub const ALWAYS: u8 = 1;
    /// UDP: a zero checksum means "none" and must stay zero; a computed zero is sent as 0xffff
    /// (RFC 768). [`L4Csum::replace4`] applies it by hand; the TC path asks the kernel's helper
    /// for the same with `BPF_F_MARK_MANGLED_0`.
    pub const UDP: u8 = 2;

    #[inline(always)]
    pub const fn none() -> Self {
        Self {
            off: 0,
            kind: Self::NONE,
        }
    }

    /// The checksum of `proto`'s header at `l4_off` (the offset table, after Cilium's csum.h).
    #[inline(always)]
    pub fn of(proto: u8, l4_off: usize) -> Self {
        let (off, kind) = match proto {
            ipproto::TCP => (16, Self::ALWAYS),
            ipproto::UDP => (6, Self::UDP),
            ipproto::DCCP | ipproto::UDPLITE => (6, Self::ALWAYS),
            _ => return Self::none(),
        };
        Self {
            off: l4_off + off,
            kind,
        }
    }

    #[inline(always)]
    pub fn present(&self) -> bool {
        self.kind != Self::NONE
    }

    /// The field's new value after a covered 32-bit word changed from `old` to `new`, and
    /// whether to write it (not for a UDP checksum of zero, which stays "none").
    #[inline(always)]
    pub fn replace4(&self, cur: u16, old: u32, new: u32) -> (u16, bool) {
        let udp = self.kind == Self::UDP;
        if udp && cur == 0 {
            return (0, false);
        }
        let next = replace4(cur, old, new);
        (if udp && next == 0 { 0xffff } else { next }, true)
    }
}
