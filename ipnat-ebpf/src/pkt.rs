//! The packet abstraction the translation code runs on, one implementation per hook
//! (Cilium's `ctx` idea): XDP writes the packet directly and fixes checksums with RFC 1624
//! arithmetic; TC uses the kernel's checksum helpers, which know whether the skb carries a full
//! or a partial (pseudo-header only) L4 checksum.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};

use crate::csum;

/// Where the L4 checksum that covers the IPv4 pseudo-header lives, if any.
#[derive(Clone, Copy)]
pub enum L4Csum {
    /// No L4 checksum over the addresses (ICMP, non-first fragments, other protocols).
    None,
    /// A checksum at this packet offset that always covers the pseudo-header (TCP, DCCP, UDP-Lite).
    Always(usize),
    /// UDP: a zero checksum means "none" and must stay zero; a computed zero is sent as 0xffff.
    Udp(usize),
}

pub struct Rewrite {
    /// Offset of the IPv4 header.
    pub ip_off: usize,
    /// Offset of the address field being replaced (inside the IPv4 header).
    pub addr_off: usize,
    pub old: u32,
    pub new: u32,
    pub l4: L4Csum,
}

pub trait Packet {
    /// Reads a `T` at `off`, or `None` when the packet is too short.
    fn read<T: Copy>(&self, off: usize) -> Option<T>;
    /// Length of the whole frame in bytes.
    fn frame_len(&self) -> u64;
    /// Writes a `T` at `off` (already known to be inside the packet). Checksums are the
    /// caller's business.
    fn write<T: Copy>(&mut self, off: usize, v: T) -> Result<(), ()>;
    /// Replaces one IPv4 address and updates the IPv4 and L4 checksums together.
    /// On error the packet is unchanged (XDP) or must be dropped (TC).
    fn rewrite(&mut self, rw: &Rewrite) -> Result<(), ()>;
}

pub struct Xdp<'a>(pub &'a XdpContext);

impl Xdp<'_> {
    /// The one bounds-checked accessor of the XDP path.
    #[inline(always)]
    fn ptr_at<T>(&self, off: usize) -> Option<*mut T> {
        let start = self.0.data();
        let end = self.0.data_end();
        if start + off + size_of::<T>() > end {
            return None;
        }
        Some((start + off) as *mut T)
    }
}

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        // SAFETY: ptr_at checked that the whole T lies inside the packet.
        self.ptr_at::<T>(off).map(|p| unsafe { p.read_unaligned() })
    }

    #[inline(always)]
    fn frame_len(&self) -> u64 {
        (self.0.data_end() - self.0.data()) as u64
    }

    #[inline(always)]
    fn write<T: Copy>(&mut self, off: usize, v: T) -> Result<(), ()> {
        let p = self.ptr_at::<T>(off).ok_or(())?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe { p.write_unaligned(v) };
        Ok(())
    }

    #[inline(always)]
    fn rewrite(&mut self, rw: &Rewrite) -> Result<(), ()> {
        // Resolve every pointer before writing anything, so a short packet is left untouched.
        let addr = self.ptr_at::<u32>(rw.addr_off).ok_or(())?;
        let ip_check = self.ptr_at::<u16>(rw.ip_off + 10).ok_or(())?;
        let l4_check = match rw.l4 {
            L4Csum::None => None,
            L4Csum::Always(off) => Some((self.ptr_at::<u16>(off).ok_or(())?, false)),
            L4Csum::Udp(off) => Some((self.ptr_at::<u16>(off).ok_or(())?, true)),
        };
        // SAFETY: all pointers were bounds-checked above.
        unsafe {
            addr.write_unaligned(rw.new);
            ip_check.write_unaligned(csum::replace4(ip_check.read_unaligned(), rw.old, rw.new));
            if let Some((p, udp)) = l4_check {
                let cur = p.read_unaligned();
                if !(udp && cur == 0) {
                    let mut next = csum::replace4(cur, rw.old, rw.new);
                    if udp && next == 0 {
                        next = 0xffff;
                    }
                    p.write_unaligned(next);
                }
            }
        }
        Ok(())
    }
}

pub struct Tc<'a>(pub &'a TcContext);

impl Packet for Tc<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        self.0.load::<T>(off).ok()
    }

    #[inline(always)]
    fn frame_len(&self) -> u64 {
        self.0.len() as u64
    }

    #[inline(always)]
    fn write<T: Copy>(&mut self, off: usize, v: T) -> Result<(), ()> {
        self.0.store(off, &v, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn rewrite(&mut self, rw: &Rewrite) -> Result<(), ()> {
        let size = size_of::<u32>() as u64;
        let (old, new) = (rw.old as u64, rw.new as u64);
        match rw.l4 {
            L4Csum::None => {}
            L4Csum::Always(off) => self
                .0
                .l4_csum_replace(off, old, new, BPF_F_PSEUDO_HDR as u64 | size)
                .map_err(|_| ())?,
            L4Csum::Udp(off) => self
                .0
                .l4_csum_replace(
                    off,
                    old,
                    new,
                    (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64 | size,
                )
                .map_err(|_| ())?,
        }
        self.0
            .l3_csum_replace(rw.ip_off + 10, old, new, size)
            .map_err(|_| ())?;
        self.0.store(rw.addr_off, &rw.new, 0).map_err(|_| ())
    }
}
