//! RFC 1624 incremental checksum arithmetic for the XDP hook, where no kernel helper knows the
//! checksum state. All quantities are loaded from packet memory the same way (native-endian views
//! of network-order bytes); the one's complement sum does not depend on byte order.

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
