//! The packet abstraction the translation code runs on, one implementation per hook
//! (Cilium's `ctx` idea): XDP writes the packet directly and fixes checksums with RFC 1624
//! arithmetic; TC does the same for the IPv4 header in the skb's linear data and leaves the L4
//! checksum to the kernel's helper, which knows whether the skb carries a full or a partial
//! (pseudo-header only) L4 checksum.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};

use crate::csum::{self, L4Csum};

pub struct Rewrite {
    /// Offset of the IPv4 header checksum.
    pub check_off: usize,
    /// Offset of the address field being replaced (inside the IPv4 header).
    pub addr_off: usize,
    pub old: u32,
    pub new: u32,
    pub l4: L4Csum,
}

/// The one bounds check of direct packet access, for both hooks: a `T` at `off` from `start`
/// must end by `end` (data_end).
#[inline(always)]
fn bounded<T>(start: usize, end: usize, off: usize) -> Option<*mut T> {
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Writes `new` over an IPv4 header field (32-bit) and updates the header's checksum by
/// RFC 1624, for both hooks.
///
/// # Safety
/// Both pointers must have been bounds-checked.
#[inline(always)]
unsafe fn write_l3_u32(field: *mut u32, check: *mut u16, old: u32, new: u32) {
    unsafe {
        field.write_unaligned(new);
        check.write_unaligned(csum::replace4(check.read_unaligned(), old, new));
    }
}

/// [`write_l3_u32`] for a 16-bit field.
///
/// # Safety
/// Both pointers must have been bounds-checked.
#[inline(always)]
unsafe fn write_l3_u16(field: *mut u16, check: *mut u16, old: u16, new: u16) {
    unsafe {
        field.write_unaligned(new);
        check.write_unaligned(csum::replace2(check.read_unaligned(), old, new));
    }
}

pub trait Packet {
    /// Reads a `T` at `off`, or `None` when the packet is too short.
    fn read<T: Copy>(&self, off: usize) -> Option<T>;
    /// Length of the whole frame in bytes.
    fn frame_len(&self) -> u64;
    /// Writes a `T` at `off` (already known to be inside the packet). Checksums are the
    /// caller's business.
    fn write<T: Copy>(&mut self, off: usize, v: T) -> Result<(), ()>;
    /// Writes the Ethernet destination and source addresses (the first 12 bytes).
    #[inline(always)]
    fn write_macs(&mut self, macs: [u8; 12]) -> Result<(), ()> {
        self.write(0, macs)
    }
    /// Replaces one IPv4 address and updates the IPv4 and L4 checksums together.
    /// On error the packet is unchanged (XDP) or must be dropped (TC).
    fn rewrite(&mut self, rw: &Rewrite) -> Result<(), ()>;
    /// Replaces the 16-bit word at `off` (inside an IPv4 header whose checksum is at
    /// `check_off`; `old` and `new` as loaded from packet memory) and fixes the checksum.
    fn replace_l3_u16(
        &mut self,
        check_off: usize,
        off: usize,
        old: u16,
        new: u16,
    ) -> Result<(), ()>;
    /// The program context, for helpers such as `bpf_fib_lookup`.
    fn ctx_ptr(&self) -> *mut c_void;
    /// Whether the packet is an aggregate (GRO, or a local GSO send) that leaves as segments:
    /// its total length then says nothing about the egress MTU. Only an skb can be one.
    #[inline(always)]
    fn is_aggregate(&self) -> bool {
        false
    }
    /// Whether every segment of an aggregate fits the MTU of `ifindex`.
    #[inline(always)]
    fn segments_fit(&self, _ifindex: u32) -> bool {
        true
    }
}

/// An XDP frame; `FRAGS`: the program is frags-capable, so a frame may continue past
/// `data_end` in further buffers (only its length needs to know).
pub struct Xdp<'a, const FRAGS: bool = false>(pub &'a XdpContext);

impl<const FRAGS: bool> Xdp<'_, FRAGS> {
    /// The one bounds-checked accessor of the XDP path.
    #[inline(always)]
    fn ptr_at<T>(&self, off: usize) -> Option<*mut T> {
        bounded(self.0.data(), self.0.data_end(), off)
    }
}

impl<const FRAGS: bool> Packet for Xdp<'_, FRAGS> {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        // SAFETY: ptr_at checked that the whole T lies inside the packet.
        self.ptr_at::<T>(off).map(|p| unsafe { p.read_unaligned() })
    }

    #[inline(always)]
    fn frame_len(&self) -> u64 {
        if FRAGS {
            // All buffers of a multi-buffer (jumbo) frame: a helper call, paid only by the
            // frags-capable program.
            // SAFETY: plain helper call on the program's own context.
            unsafe { aya_ebpf::helpers::generated::bpf_xdp_get_buff_len(self.0.ctx) }
        } else {
            (self.0.data_end() - self.0.data()) as u64
        }
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
        let ip_check = self.ptr_at::<u16>(rw.check_off).ok_or(())?;
        let l4_check = if rw.l4.present() {
            Some(self.ptr_at::<u16>(rw.l4.off).ok_or(())?)
        } else {
            None
        };
        // SAFETY: all pointers were bounds-checked above.
        unsafe {
            write_l3_u32(addr, ip_check, rw.old, rw.new);
            if let Some(p) = l4_check {
                let (next, write) = rw.l4.replace4(p.read_unaligned(), rw.old, rw.new);
                if write {
                    p.write_unaligned(next);
                }
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn replace_l3_u16(
        &mut self,
        check_off: usize,
        off: usize,
        old: u16,
        new: u16,
    ) -> Result<(), ()> {
        let word = self.ptr_at::<u16>(off).ok_or(())?;
        let check = self.ptr_at::<u16>(check_off).ok_or(())?;
        // SAFETY: both pointers were bounds-checked.
        unsafe { write_l3_u16(word, check, old, new) };
        Ok(())
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut c_void {
        self.0.as_ptr()
    }
}

/// An skb at TC. A rewrite writes the IPv4 address and header checksum directly when they lie
/// in the skb's linear data (two helper calls fewer), else through `bpf_l3_csum_replace` and
/// `bpf_skb_store_bytes`; reads go through `bpf_skb_load_bytes`. The L4
/// checksum always goes through `bpf_l4_csum_replace`: only the kernel knows whether the skb
/// carries a full or a partial checksum and keeps `skb->csum` in step. The IPv4 header's own
/// checksum is self-contained (the header sums to the same whatever its fields), so writing
/// it directly keeps a CHECKSUM_COMPLETE sum valid.
pub struct Tc<'a>(pub &'a TcContext);

impl Tc<'_> {
    /// The bounds-checked accessor of the TC path's linear data; `None` past it. The verifier
    /// requires data/data_end to be reloaded after any helper that may move the data (the L4
    /// checksum helper does): every call here reads them afresh.
    #[inline(always)]
    fn ptr_at<T>(&self, off: usize) -> Option<*mut T> {
        bounded(self.0.data(), self.0.data_end(), off)
    }
}

impl Packet for Tc<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        // Through the helper, one code path: a direct read with a helper fallback for each
        // field multiplies the verifier's states past its limit.
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
        // The IPv4 address and header checksum first, directly when both are in the linear
        // data; the L4 helper below may move the data, and nothing is read after it here.
        match (
            self.ptr_at::<u32>(rw.addr_off),
            self.ptr_at::<u16>(rw.check_off),
        ) {
            // SAFETY: both pointers were bounds-checked.
            (Some(addr), Some(check)) => unsafe { write_l3_u32(addr, check, rw.old, rw.new) },
            _ => {
                self.0
                    .l3_csum_replace(rw.check_off, old, new, size)
                    .map_err(|_| ())?;
                self.0.store(rw.addr_off, &rw.new, 0).map_err(|_| ())?;
            }
        }
        if rw.l4.present() {
            let mut flags = BPF_F_PSEUDO_HDR as u64 | size;
            // The kernel's form of the UDP zero rule (see L4Csum::UDP).
            if rw.l4.kind == L4Csum::UDP {
                flags |= BPF_F_MARK_MANGLED_0 as u64;
            }
            self.0
                .l4_csum_replace(rw.l4.off, old, new, flags)
                .map_err(|_| ())?;
        }
        Ok(())
    }

    #[inline(always)]
    fn replace_l3_u16(
        &mut self,
        check_off: usize,
        off: usize,
        old: u16,
        new: u16,
    ) -> Result<(), ()> {
        match (self.ptr_at::<u16>(off), self.ptr_at::<u16>(check_off)) {
            (Some(word), Some(check)) => {
                // SAFETY: both pointers were bounds-checked.
                unsafe { write_l3_u16(word, check, old, new) };
                Ok(())
            }
            _ => {
                self.0
                    .l3_csum_replace(check_off, old as u64, new as u64, size_of::<u16>() as u64)
                    .map_err(|_| ())?;
                self.0.store(off, &new, 0).map_err(|_| ())
            }
        }
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut c_void {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn write_macs(&mut self, macs: [u8; 12]) -> Result<(), ()> {
        match self.ptr_at::<[u8; 12]>(0) {
            // The Ethernet header is in the linear data of any skb that has one: a store, not
            // a helper call (the header is outside every checksum).
            // SAFETY: bounds-checked by ptr_at.
            Some(p) => unsafe { p.write_unaligned(macs) },
            None => return self.0.store(0, &macs, 0).map_err(|_| ()),
        }
        Ok(())
    }

    #[inline(always)]
    fn is_aggregate(&self) -> bool {
        // SAFETY: reading a field of the program's own context.
        unsafe { (*self.0.skb.skb).gso_size != 0 }
    }

    #[inline(always)]
    fn segments_fit(&self, ifindex: u32) -> bool {
        // 0 in, no length change: the helper checks the skb's own segments (the kernel
        // refuses a length with BPF_MTU_CHK_SEGS).
        let mut mtu_len = 0u32;
        // SAFETY: the helper writes only the u32 we pass.
        let rc = unsafe {
            aya_ebpf::helpers::generated::bpf_check_mtu(
                self.0.as_ptr(),
                ifindex,
                &mut mtu_len,
                0,
                aya_ebpf::bindings::bpf_check_mtu_flags::BPF_MTU_CHK_SEGS as u64,
            )
        };
        rc == 0
    }
}
