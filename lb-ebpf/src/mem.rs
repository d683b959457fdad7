//! Word-wise copies, compares and keys: what the BPF backend compiles to plain loads and
//! stores, where byte-wise code would become `memset`/`memmove` calls of byte loops.

use lb_common::Addr;

/// A map key built as words on the stack: field-by-field construction of keys with byte
/// arrays and zero padding makes LLVM emit `memset`/`memmove` calls, which the BPF backend
/// here turns into subprograms with byte loops.
#[repr(C, align(4))]
pub struct Words<K, const N: usize>(pub [u32; N], pub core::marker::PhantomData<K>);

impl<K, const N: usize> Words<K, N> {
    #[inline(always)]
    pub fn as_key(&self) -> &K {
        const { assert!(core::mem::size_of::<K>() == N * 4 && core::mem::align_of::<K>() <= 4) };
        // SAFETY: same size, alignment satisfied, every bit pattern of the keys' integer
        // fields is valid.
        unsafe { &*(self.0.as_ptr().cast::<K>()) }
    }
}

/// Copies a value of `T` (4-byte aligned, a multiple of 4 bytes) word by word; the stores
/// are volatile so that LLVM can't turn the copy back into a `memmove` call.
#[inline(always)]
pub fn copy_words<T>(to: &mut T, from: &T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(4) && core::mem::align_of::<T>() >= 4) };
    let (to, from) = ((to as *mut T).cast::<u32>(), (from as *const T).cast::<u32>());
    for i in 0..core::mem::size_of::<T>() / 4 {
        // SAFETY: in bounds and aligned (asserted above).
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read(from.add(i))) };
    }
}

/// Compares two values of `T` (as `copy_words`) word by word.
#[inline(always)]
pub fn words_eq<T>(a: &T, b: &T) -> bool {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(4) && core::mem::align_of::<T>() >= 4) };
    let (a, b) = ((a as *const T).cast::<u32>(), (b as *const T).cast::<u32>());
    let mut diff = 0;
    for i in 0..core::mem::size_of::<T>() / 4 {
        // SAFETY: in bounds and aligned (asserted above).
        diff |= unsafe { core::ptr::read(a.add(i)) ^ core::ptr::read(b.add(i)) };
    }
    diff == 0
}

/// The address `a` as four words in memory order. Every `Addr` the program touches sits
/// 4-byte aligned in a `#[repr(C, align(..))]` struct (see lb-common).
#[inline(always)]
pub fn addr_words(a: &Addr) -> [u32; 4] {
    // SAFETY: 16 bytes, 4-byte aligned as said above.
    unsafe { core::ptr::read(a.as_ptr() as *const [u32; 4]) }
}

/// Stores four words into `a` (4-byte aligned, see `addr_words`). The words go out one by
/// one and volatile, so that LLVM can't merge zeros into a `memset` call (the BPF backend
/// here lowers every memset to a call of a byte loop).
#[inline(always)]
pub fn set_addr_words(a: &mut Addr, w: [u32; 4]) {
    let p = a.as_mut_ptr() as *mut u32;
    // SAFETY: 16 bytes, 4-byte aligned as said above.
    unsafe {
        core::ptr::write_volatile(p, w[0]);
        core::ptr::write_volatile(p.add(1), w[1]);
        core::ptr::write_volatile(p.add(2), w[2]);
        core::ptr::write_volatile(p.add(3), w[3]);
    }
}

/// Copies an address (both 4-byte aligned, see `addr_words`).
#[inline(always)]
pub fn copy_addr(to: &mut Addr, from: &Addr) {
    set_addr_words(to, addr_words(from));
}

#[inline(always)]
pub fn addr_eq(a: &Addr, b: &Addr) -> bool {
    let (a, b) = (addr_words(a), addr_words(b));
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0
}
