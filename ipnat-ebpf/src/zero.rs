//! All-zero values without the compiler's memset. The BPF target lowers a zeroed aggregate
//! (`Default`, `mem::zeroed`, `[0; N]` fields) to a call of compiler_builtins' `memset`, which
//! there is a byte-at-a-time loop: 64 iterations for a FIB lookup's parameters, on every
//! forwarded packet. Volatile 4-byte stores cannot be merged back into that call.

use core::mem::{MaybeUninit, align_of, size_of};

/// Types for which all-zero bytes are a valid value, made of 4-byte words (size a multiple of
/// 4, alignment at least 4: the verifier refuses misaligned stack stores).
///
/// # Safety
/// An implementor must be valid when all its bytes are zero and meet the size and alignment.
pub unsafe trait Zeroable: Sized {}

/// Zeroes `v` in place, one 4-byte word at a time, and hands it out initialized. In place:
/// a zeroed value moved out (returned, copied) is a copy LLVM turns back into a memset.
#[inline(always)]
pub fn zero_in_place<T: Zeroable>(v: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>() % 4 == 0 && align_of::<T>() >= 4) };
    let words = v.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: inside `v` (the size is a multiple of 4), aligned (checked above).
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte was written, and all-zero is a valid `T` (Zeroable).
    unsafe { v.assume_init_mut() }
}

// SAFETY: plain C structs of integers and unions of integers (64, 20 and 36 bytes), 4-byte
// aligned.
unsafe impl Zeroable for aya_ebpf::bindings::bpf_fib_lookup {}
unsafe impl Zeroable for aya_ebpf::bindings::bpf_redir_neigh {}
unsafe impl Zeroable for aya_ebpf::bindings::bpf_sock_tuple {}
