//! Which address a hook translates, and with which table.

use crate::parse::{Hdr, IP_DADDR, IP_SADDR};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Destination public -> private (packets towards a mapped public address).
    Dnat,
    /// Source private -> public (packets from a mapped private address).
    Snat,
    /// Host orientation, received: destination private -> public (the public address is local
    /// here; the cloud translated it to the private one).
    HostIn,
    /// Host orientation, sent: source public -> private (the cloud translates it back).
    HostOut,
}

impl Dir {
    /// Whether the destination is the translated field (else the source). Also: whether the
    /// packet travels towards the mapping's host (inbound), for its counters.
    #[inline(always)]
    pub fn rewrites_dst(self) -> bool {
        matches!(self, Dir::Dnat | Dir::HostIn)
    }

    /// Whether the table keyed by the public address is used (else the one keyed by private).
    #[inline(always)]
    pub fn keyed_by_public(self) -> bool {
        matches!(self, Dir::Dnat | Dir::HostOut)
    }

    /// `dst` in a direction that rewrites the destination, else `src`.
    #[inline(always)]
    fn side<T>(self, dst: T, src: T) -> T {
        if self.rewrites_dst() { dst } else { src }
    }

    /// Offset of the translated address field in an IPv4 header.
    #[inline(always)]
    pub fn field(self) -> usize {
        self.side(IP_DADDR, IP_SADDR)
    }

    /// Offset of the field an ICMP error's quote translates: the opposite one, since the
    /// quoted packet travelled the other way.
    #[inline(always)]
    pub fn quote_field(self) -> usize {
        self.side(IP_SADDR, IP_DADDR)
    }

    /// The packet's address that this direction looks up.
    #[inline(always)]
    pub fn key(self, h: &Hdr) -> u32 {
        self.side(h.dst, h.src)
    }
}
