//! What drivers need from the firmware (DMA memory, address translation, register access), and
//! the one typed form in which every MMIO register and DMA descriptor field is reached.
//!
//! Drivers know nothing else about the machine. The firmware implements [`Hal`] once over
//! its page tables and physical allocator; host tests implement it over a fake device that
//! behaves like the hardware's registers and DMA engine.
//!
//! # Typed register access
//! A register layout is a [`Block`] (its size and alignment); a register or descriptor field
//! is a [`Reg`] of a block, or an element of a [`RegArray`]. Both check their offset against the
//! block when the program is compiled, so an offset outside the block, or misaligned for its
//! width, does not build:
//!
//! ```compile_fail,E0080
//! use gestalt_netstack::hal::{Block, Reg};
//! struct Bar;
//! impl Block for Bar {
//!     const SIZE: usize = 0x100;
//!     const ALIGN: usize = 4;
//! }
//! const PAST_THE_END: Reg<Bar, u32> = Reg::at::<0x100>();
//! ```
//!
//! A mapped instance of a block is a [`Window`]; making one is the single `unsafe` step (the
//! caller vouches for the mapping), after which every access through it is in bounds, of the
//! register's width, and volatile: [`Bus`]'s default methods are `volatile::VolatilePtr`
//! reads and writes, and host tests swap in a fake device by implementing [`Bus`].
//!
//! ```
//! use gestalt_netstack::hal::{Block, Reg, Window};
//! struct Pair;
//! impl Block for Pair {
//!     const SIZE: usize = 8;
//!     const ALIGN: usize = 4;
//! }
//! const HIGH: Reg<Pair, u32> = Reg::at::<4>();
//! let mut memory = [0u32; 2];
//! // SAFETY: `memory` is 8 bytes, 4-aligned, and outlives the window.
//! let w = unsafe { Window::<Pair>::new(memory.as_mut_ptr() as usize) };
//! w.set(HIGH, 7);
//! assert_eq!(w.get(HIGH), 7);
//! ```

use core::marker::PhantomData;
use core::ptr::NonNull;

use volatile::access::{ReadOnly, WriteOnly};
use volatile::VolatilePtr;

// PCI registers, 8254x descriptors and virtio 1.x structures are little-endian; registers and
// fields are read as native integers, which is right only on a little-endian CPU.
const _: () = assert!(cfg!(target_endian = "little"));

/// A physically contiguous, DMA-coherent region, mapped at `virt` and seen by devices at
/// `phys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRegion {
    /// Address devices use.
    pub phys: u64,
    /// Address the CPU uses.
    pub virt: NonNull<u8>,
    /// Length in bytes.
    pub len: usize,
}

/// How a register access reaches its target. The default methods are one volatile access of
/// the register's width through `volatile::VolatilePtr` (what the CPU does for MMIO and for
/// memory it shares with a device); host tests implement the methods over a fake device.
///
/// Code reaches a bus through a [`Window`], never directly.
///
/// # Safety
/// An implementation that overrides a method performs the one access it names, or, in a
/// fake, emulates it without touching memory.
pub unsafe trait Bus {
    /// Reads an 8-bit register.
    ///
    /// # Safety
    /// `addr` must be valid for a volatile access of this width (mapped, aligned, owned by the
    /// caller); [`Window`] guarantees it.
    unsafe fn read8(&self, addr: usize) -> u8 {
        // SAFETY: forwarded from the caller.
        unsafe { read_direct(addr) }
    }

    /// Reads a 16-bit register.
    ///
    /// # Safety
    /// As for [`Bus::read8`].
    unsafe fn read16(&self, addr: usize) -> u16 {
        // SAFETY: forwarded from the caller.
        unsafe { read_direct(addr) }
    }

    /// Reads a 32-bit register.
    ///
    /// # Safety
    /// As for [`Bus::read8`].
    unsafe fn read32(&self, addr: usize) -> u32 {
        // SAFETY: forwarded from the caller.
        unsafe { read_direct(addr) }
    }

    /// Reads a 64-bit register.
    ///
    /// # Safety
    /// As for [`Bus::read8`].
    unsafe fn read64(&self, addr: usize) -> u64 {
        // SAFETY: forwarded from the caller.
        unsafe { read_direct(addr) }
    }

    /// Writes an 8-bit register.
    ///
    /// # Safety
    /// As for [`Bus::read8`].
    unsafe fn write8(&self, addr: usize, value: u8) {
        // SAFETY: forwarded from the caller.
        unsafe { write_direct(addr, value) }
    }

    /// Writes a 16-bit register.
    ///
    /// # Safety
    /// As for [`Bus::read8`].
    unsafe fn write16(&self, addr: usize, value: u16) {
        // SAFETY: forwarded from the caller.
        unsafe { write_direct(addr, value) }
    }

    /// Writes a 32-bit register.
    ///
    /// # Safety
    /// As for [`Bus::read8`].
    unsafe fn write32(&self, addr: usize, value: u32) {
        // SAFETY: forwarded from the caller.
        unsafe { write_direct(addr, value) }
    }

    /// Writes a 64-bit register.
    ///
    /// # Safety
    /// As for [`Bus::read8`].
    unsafe fn write64(&self, addr: usize, value: u64) {
        // SAFETY: forwarded from the caller.
        unsafe { write_direct(addr, value) }
    }
}

/// # Safety
/// `addr` must be valid for a volatile read of a `T`.
unsafe fn read_direct<T: Copy>(addr: usize) -> T {
    // SAFETY: an address valid for a read is not null; the pointer is used for this one read,
    // which the caller vouched for.
    unsafe { VolatilePtr::new_restricted(ReadOnly, NonNull::new_unchecked(addr as *mut T)).read() }
}

/// # Safety
/// `addr` must be valid for a volatile write of a `T`.
unsafe fn write_direct<T: Copy>(addr: usize, value: T) {
    // SAFETY: as in `read_direct`, for this one write.
    unsafe {
        VolatilePtr::new_restricted(WriteOnly, NonNull::new_unchecked(addr as *mut T)).write(value);
    }
}

/// The CPU's own loads and stores: MMIO it has mapped, memory it shares with devices, its
/// own tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct Direct;

// SAFETY: only the default methods, one volatile access each.
unsafe impl Bus for Direct {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// The width of a register: `u8`, `u16`, `u32` or `u64`.
pub trait Width: Copy + sealed::Sealed {
    #[doc(hidden)]
    /// # Safety
    /// As for [`Bus::read8`].
    unsafe fn read<M: Bus + ?Sized>(bus: &M, addr: usize) -> Self;
    #[doc(hidden)]
    /// # Safety
    /// As for [`Bus::read8`].
    unsafe fn write<M: Bus + ?Sized>(bus: &M, addr: usize, value: Self);
}

macro_rules! width {
    ($t:ty, $read:ident, $write:ident) => {
        impl Width for $t {
            unsafe fn read<M: Bus + ?Sized>(bus: &M, addr: usize) -> Self {
                // SAFETY: forwarded from the caller.
                unsafe { bus.$read(addr) }
            }
            unsafe fn write<M: Bus + ?Sized>(bus: &M, addr: usize, value: Self) {
                // SAFETY: forwarded from the caller.
                unsafe { bus.$write(addr, value) }
            }
        }
    };
}
width!(u8, read8, write8);
width!(u16, read16, write16);
width!(u32, read32, write32);
width!(u64, read64, write64);

/// A fixed register or memory layout: a device's register window, a virtio capability
/// structure, a DMA descriptor, a page table.
pub trait Block {
    /// Bytes an instance covers; every register of the block lies inside.
    const SIZE: usize;
    /// Alignment of an instance's base: a multiple of every register width used in it.
    const ALIGN: usize;
}

/// No header: a table that is entries only.
impl Block for () {
    const SIZE: usize = 0;
    const ALIGN: usize = 1;
}

/// Whether `count` registers of width `T` from `offset` lie inside `B`, each aligned.
const fn fits<B: Block, T>(offset: usize, count: usize) -> bool {
    let w = size_of::<T>();
    let end = match count.checked_mul(w) {
        Some(n) => offset.checked_add(n),
        None => None,
    };
    let inside = match end {
        Some(end) => end <= B::SIZE,
        None => false,
    };
    inside && offset.is_multiple_of(w) && B::ALIGN.is_multiple_of(w)
}

/// A register (or descriptor field) of width `T` at a fixed offset inside block `B`.
pub struct Reg<B, T> {
    offset: usize,
    _layout: PhantomData<fn() -> (B, T)>,
}

impl<B, T> Clone for Reg<B, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B, T> Copy for Reg<B, T> {}

impl<B, T> core::fmt::Debug for Reg<B, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Reg({:#x})", self.offset)
    }
}

impl<B: Block, T: Width> Reg<B, T> {
    /// The register at `OFFSET`. Does not compile unless it lies inside `B` and is aligned
    /// to its width.
    pub const fn at<const OFFSET: usize>() -> Self {
        const { assert!(fits::<B, T>(OFFSET, 1), "register outside its block or misaligned") };
        Self { offset: OFFSET, _layout: PhantomData }
    }

    /// Its byte offset in the block (for encodings derived from it, e.g. x2APIC MSR numbers).
    pub const fn offset(self) -> usize {
        self.offset
    }
}

/// `N` registers of width `T` back to back from a fixed offset inside block `B`.
pub struct RegArray<B, T, const N: usize> {
    start: usize,
    _layout: PhantomData<fn() -> (B, T)>,
}

impl<B, T, const N: usize> Clone for RegArray<B, T, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B, T, const N: usize> Copy for RegArray<B, T, N> {}

impl<B: Block, T: Width, const N: usize> RegArray<B, T, N> {
    /// The array at `OFFSET`. Does not compile unless all `N` registers lie inside `B`,
    /// aligned.
    pub const fn at<const OFFSET: usize>() -> Self {
        const { assert!(fits::<B, T>(OFFSET, N), "register array outside its block") };
        Self { start: OFFSET, _layout: PhantomData }
    }

    /// Register `i`, if `i < N`.
    pub const fn get(self, i: usize) -> Option<Reg<B, T>> {
        if i < N {
            Some(Reg { offset: self.start + i * size_of::<T>(), _layout: PhantomData })
        } else {
            None
        }
    }

    /// Every register, in order.
    pub fn iter(self) -> impl Iterator<Item = Reg<B, T>> {
        (0..N).map(move |i| Reg { offset: self.start + i * size_of::<T>(), _layout: PhantomData })
    }
}

/// One mapped instance of block `B`, reached through bus `M`.
pub struct Window<B, M = Direct> {
    base: usize,
    _layout: PhantomData<fn() -> (B, M)>,
}

impl<B, M> Clone for Window<B, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B, M> Copy for Window<B, M> {}

impl<B, M> core::fmt::Debug for Window<B, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Window({:#x})", self.base)
    }
}

impl<B: Block, M: Bus> Window<B, M> {
    /// The instance of `B` at `base`.
    ///
    /// # Safety
    /// Through `M`, the `B::SIZE` bytes at `base` (aligned to `B::ALIGN`) must be valid for
    /// volatile accesses of each register of `B`, at its width, for as long as this window or
    /// a copy of it is used; a device behind them must be driven by no one else.
    pub const unsafe fn new(base: usize) -> Self {
        Self { base, _layout: PhantomData }
    }

    /// The base address.
    pub fn base(self) -> usize {
        self.base
    }

    /// Reads `reg`.
    pub fn read<T: Width>(self, bus: &M, reg: Reg<B, T>) -> T {
        // SAFETY: `reg` lies inside `B`, aligned (`Reg::at`), and this window's constructor
        // vouched for all of `B` at `base`.
        unsafe { T::read(bus, self.base + reg.offset) }
    }

    /// Writes `reg`.
    pub fn write<T: Width>(self, bus: &M, reg: Reg<B, T>, value: T) {
        // SAFETY: as in `read`.
        unsafe { T::write(bus, self.base + reg.offset, value) }
    }
}

impl<B: Block> Window<B, Direct> {
    /// Reads `reg` with a CPU load.
    pub fn get<T: Width>(self, reg: Reg<B, T>) -> T {
        self.read(&Direct, reg)
    }

    /// Writes `reg` with a CPU store.
    pub fn set<T: Width>(self, reg: Reg<B, T>, value: T) {
        self.write(&Direct, reg, value);
    }
}

/// Platform services for drivers. Register accesses go through the [`Bus`] supertrait, whose
/// default methods are what real hardware needs.
///
/// # Safety
/// Implementors promise that every [`DmaRegion`] returned by `dma_alloc` is zeroed, valid for
/// reads and writes of `len` bytes at `virt` for the rest of the program, not used by anything
/// else, cache-coherent with device DMA (write-back memory on x86 is), and seen by devices at
/// `phys`.
pub unsafe trait Hal: Bus {
    /// Allocates `len` bytes of zeroed DMA memory aligned to `align` (a power of two, at most
    /// 4096). Drivers never free it: they live as long as the firmware.
    fn dma_alloc(&self, len: usize, align: usize) -> Option<DmaRegion>;

    /// The physical address of CPU address `virt` inside a region from `dma_alloc`.
    fn virt_to_phys(&self, virt: usize) -> u64;

    /// The CPU address of physical address `phys` inside a region from `dma_alloc`.
    fn phys_to_virt(&self, phys: u64) -> usize;
}

/// `n` entries of block `E` back to back after a header block `H` (`()` for none), in one
/// DMA region: a descriptor table or a ring the driver shares with its device.
#[derive(Debug)]
pub(crate) struct DmaTable<H, E> {
    region: DmaRegion,
    n: usize,
    _layout: PhantomData<fn() -> (H, E)>,
}

impl<H: Block, E: Block> DmaTable<H, E> {
    /// A zeroed table of `n > 0` entries followed by `tail` spare bytes, its base aligned to
    /// `align` (what the device needs) and to the blocks' own alignment.
    pub(crate) fn alloc(hal: &impl Hal, n: usize, tail: usize, align: usize) -> Option<Self> {
        let align = align.max(H::ALIGN).max(E::ALIGN);
        // Entries must stay aligned one after another and after the header.
        let layout_ok = n > 0 && E::SIZE % E::ALIGN == 0 && H::SIZE % E::ALIGN == 0;
        let len = n.checked_mul(E::SIZE)?.checked_add(H::SIZE)?.checked_add(tail)?;
        let region = hal.dma_alloc(len, align)?;
        (layout_ok && region.len >= len && (region.virt.as_ptr() as usize).is_multiple_of(align))
            .then_some(Self { region, n, _layout: PhantomData })
    }

    /// Where the device finds the table.
    pub(crate) fn phys(&self) -> u64 {
        self.region.phys
    }

    /// The header.
    pub(crate) fn header(&self) -> Window<H> {
        // SAFETY: the header is the region's first `H::SIZE` bytes, aligned (`alloc`); the
        // region is valid for the rest of the program (Hal contract) and shared only with the
        // device, hence volatile access.
        unsafe { Window::new(self.region.virt.as_ptr() as usize) }
    }

    /// Entry `i` modulo the table length: ring positions wrap, and table indices are below
    /// the length wherever they are computed.
    pub(crate) fn entry(&self, i: usize) -> Window<E> {
        let at = H::SIZE + (i % self.n) * E::SIZE;
        // SAFETY: entry `i % n` lies inside the region (`alloc` sized it for `n` entries after
        // the header) and is aligned (`alloc` checked the layout); validity as in `header`.
        unsafe { Window::new(self.region.virt.as_ptr() as usize + at) }
    }
}

/// Packet buffers in one DMA region: bounds-checked copies, so the rest of the driver has no
/// `unsafe`.
#[derive(Debug)]
pub(crate) struct Dma {
    region: DmaRegion,
}

impl Dma {
    pub(crate) fn alloc(hal: &impl Hal, len: usize, align: usize) -> Option<Self> {
        let region = hal.dma_alloc(len, align)?;
        (region.len >= len && (region.virt.as_ptr() as usize).is_multiple_of(align))
            .then_some(Self { region })
    }

    pub(crate) fn phys(&self, offset: usize) -> u64 {
        self.region.phys + offset as u64
    }

    /// Drivers size every copy from their own buffer layout before calling, so a range outside
    /// the region is a driver bug, not device input.
    fn ptr(&self, offset: usize, size: usize) -> *mut u8 {
        assert!(offset.checked_add(size).is_some_and(|end| end <= self.region.len), "DMA bounds");
        // SAFETY: in bounds of the region (checked above).
        unsafe { self.region.virt.as_ptr().add(offset) }
    }

    pub(crate) fn copy_in(&self, offset: usize, data: &[u8]) {
        let dst = self.ptr(offset, data.len());
        // SAFETY: bounds checked; the device does not own this buffer until the descriptor
        // pointing at it is handed over after a release fence.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) }
    }

    pub(crate) fn copy_out(&self, offset: usize, out: &mut [u8]) {
        let src = self.ptr(offset, out.len());
        // SAFETY: bounds checked; the device finished writing this buffer (its descriptor
        // reported done, followed by an acquire fence).
        unsafe { core::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::fake::FakeMemory;
    use std::cell::RefCell;
    use std::vec::Vec;

    struct Regs;
    impl Block for Regs {
        const SIZE: usize = 0x20;
        const ALIGN: usize = 8;
    }
    const A: Reg<Regs, u8> = Reg::at::<0x01>();
    const B: Reg<Regs, u16> = Reg::at::<0x02>();
    const C: Reg<Regs, u32> = Reg::at::<0x04>();
    const D: Reg<Regs, u64> = Reg::at::<0x18>();
    const ARRAY: RegArray<Regs, u32, 4> = RegArray::at::<0x08>();

    /// Records every access as (address, width in bytes, value written or `None`).
    #[derive(Default)]
    struct Recorder(RefCell<Vec<(usize, usize, Option<u64>)>>);

    // SAFETY: accesses are recorded, never performed.
    unsafe impl Bus for Recorder {
        unsafe fn read8(&self, addr: usize) -> u8 {
            self.0.borrow_mut().push((addr, 1, None));
            0
        }
        unsafe fn read16(&self, addr: usize) -> u16 {
            self.0.borrow_mut().push((addr, 2, None));
            0
        }
        unsafe fn read32(&self, addr: usize) -> u32 {
            self.0.borrow_mut().push((addr, 4, None));
            0
        }
        unsafe fn write64(&self, addr: usize, value: u64) {
            self.0.borrow_mut().push((addr, 8, Some(value)));
        }
    }

    #[test]
    fn a_window_reaches_each_register_at_base_plus_offset_with_its_width() {
        let bus = Recorder::default();
        // SAFETY: the recorder performs no access.
        let w = unsafe { Window::<Regs, Recorder>::new(0x1000) };
        let _ = (w.read(&bus, A), w.read(&bus, B), w.read(&bus, C));
        w.write(&bus, D, 7);
        let last = ARRAY.get(3).unwrap();
        let _ = w.read(&bus, last);
        assert_eq!(
            *bus.0.borrow(),
            [
                (0x1001, 1, None),
                (0x1002, 2, None),
                (0x1004, 4, None),
                (0x1018, 8, Some(7)),
                (0x1014, 4, None)
            ]
        );
    }

    #[test]
    fn a_register_array_has_no_element_past_its_length() {
        assert_eq!(ARRAY.get(0).map(Reg::offset), Some(0x08));
        assert_eq!(ARRAY.get(4).map(Reg::offset), None);
        assert_eq!(ARRAY.iter().map(Reg::offset).collect::<Vec<_>>(), [0x08, 0x0C, 0x10, 0x14]);
    }

    struct MemHal(FakeMemory);
    // SAFETY: regions come from `FakeMemory`, zeroed and live as long as it.
    unsafe impl Bus for MemHal {}
    // SAFETY: as above.
    unsafe impl Hal for MemHal {
        fn dma_alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
            self.0.alloc(len, align)
        }
        fn virt_to_phys(&self, virt: usize) -> u64 {
            self.0.virt_to_phys(virt)
        }
        fn phys_to_virt(&self, phys: u64) -> usize {
            self.0.phys_to_virt(phys)
        }
    }

    struct Header;
    impl Block for Header {
        const SIZE: usize = 4;
        const ALIGN: usize = 4;
    }
    const H: Reg<Header, u32> = Reg::at::<0>();
    struct Entry;
    impl Block for Entry {
        const SIZE: usize = 8;
        const ALIGN: usize = 4;
    }
    const E: Reg<Entry, u32> = Reg::at::<4>();

    #[test]
    fn table_entries_follow_the_header_and_wrap_at_the_table_length() {
        let hal = MemHal(FakeMemory::new());
        let t = DmaTable::<Header, Entry>::alloc(&hal, 3, 2, 16).unwrap();
        t.header().set(H, 0xAAAA_AAAA);
        for i in 0..3u32 {
            t.entry(i as usize).set(E, i + 1);
        }
        t.entry(5).set(E, 99);
        let mem = &hal.0;
        assert_eq!(mem.u32(t.phys()), 0xAAAA_AAAA);
        assert_eq!([4 + 4, 12 + 4, 20 + 4].map(|at| mem.u32(t.phys() + at)), [1, 2, 99]);
        assert_eq!(t.entry(2).get(E), 99, "entry 5 of 3 is entry 2");
    }

    #[test]
    fn a_table_whose_entries_would_fall_out_of_alignment_is_refused() {
        struct Odd;
        impl Block for Odd {
            const SIZE: usize = 2;
            const ALIGN: usize = 2;
        }
        let hal = MemHal(FakeMemory::new());
        assert!(DmaTable::<Odd, Entry>::alloc(&hal, 2, 0, 4).is_none());
        assert!(DmaTable::<(), Entry>::alloc(&hal, 0, 0, 4).is_none());
    }
}
