//! What drivers need from the firmware: DMA memory, address translation and MMIO access.
//!
//! Drivers know nothing else about the machine. The firmware implements [`Hal`] once over
//! its page tables and physical allocator; host tests implement it over a fake device that
//! behaves like the hardware's registers and DMA engine.

use core::ptr::NonNull;

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

/// Platform services for drivers.
///
/// # Safety
/// Implementors promise that every [`DmaRegion`] returned by `dma_alloc` is zeroed, valid for
/// reads and writes of `len` bytes at `virt` for the rest of the program, not used by anything
/// else, cache-coherent with device DMA (write-back memory on x86 is), and seen by devices at
/// `phys`; and that the MMIO accessors perform exactly one access of the given width.
pub unsafe trait Hal {
    /// Allocates `len` bytes of zeroed DMA memory aligned to `align` (a power of two, at most
    /// 4096). Drivers never free it: they live as long as the firmware.
    fn dma_alloc(&self, len: usize, align: usize) -> Option<DmaRegion>;

    /// The physical address of CPU address `virt` inside a region from `dma_alloc`.
    fn virt_to_phys(&self, virt: usize) -> u64;

    /// The CPU address of physical address `phys` inside a region from `dma_alloc`.
    fn phys_to_virt(&self, phys: u64) -> usize;

    /// Reads a 32-bit device register.
    ///
    /// # Safety
    /// `addr` must be a mapped (uncacheable) MMIO address of a device this driver owns.
    unsafe fn mmio_read32(&self, addr: usize) -> u32 {
        // SAFETY: the caller guarantees `addr` is a mapped, aligned MMIO register.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }

    /// Writes a 32-bit device register.
    ///
    /// # Safety
    /// As for [`Hal::mmio_read32`].
    unsafe fn mmio_write32(&self, addr: usize, value: u32) {
        // SAFETY: the caller guarantees `addr` is a mapped, aligned MMIO register.
        unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
    }

    /// Reads a 16-bit device register.
    ///
    /// # Safety
    /// As for [`Hal::mmio_read32`].
    unsafe fn mmio_read16(&self, addr: usize) -> u16 {
        // SAFETY: the caller guarantees `addr` is a mapped, aligned MMIO register.
        unsafe { core::ptr::read_volatile(addr as *const u16) }
    }

    /// Writes a 16-bit device register.
    ///
    /// # Safety
    /// As for [`Hal::mmio_read32`].
    unsafe fn mmio_write16(&self, addr: usize, value: u16) {
        // SAFETY: the caller guarantees `addr` is a mapped, aligned MMIO register.
        unsafe { core::ptr::write_volatile(addr as *mut u16, value) }
    }

    /// Reads an 8-bit device register.
    ///
    /// # Safety
    /// As for [`Hal::mmio_read32`].
    unsafe fn mmio_read8(&self, addr: usize) -> u8 {
        // SAFETY: the caller guarantees `addr` is a mapped MMIO register.
        unsafe { core::ptr::read_volatile(addr as *const u8) }
    }

    /// Writes an 8-bit device register.
    ///
    /// # Safety
    /// As for [`Hal::mmio_read32`].
    unsafe fn mmio_write8(&self, addr: usize, value: u8) {
        // SAFETY: the caller guarantees `addr` is a mapped MMIO register.
        unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
    }
}

/// A driver's view of one DMA region: bounds-checked volatile accessors, so the rest of the
/// driver has no `unsafe`.
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

    fn ptr(&self, offset: usize, size: usize) -> *mut u8 {
        assert!(offset.checked_add(size).is_some_and(|end| end <= self.region.len), "DMA bounds");
        // SAFETY: in bounds of the region (checked above).
        unsafe { self.region.virt.as_ptr().add(offset) }
    }

    pub(crate) fn read_u8(&self, offset: usize) -> u8 {
        // SAFETY: `ptr` checked the bounds; the region is valid memory (Hal contract); the
        // device may write it concurrently, hence volatile.
        unsafe { core::ptr::read_volatile(self.ptr(offset, 1)) }
    }

    pub(crate) fn write_u8(&self, offset: usize, v: u8) {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::write_volatile(self.ptr(offset, 1), v) }
    }

    pub(crate) fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: as in `read_u8`.
        u16::from_le_bytes(unsafe {
            core::ptr::read_volatile(self.ptr(offset, 2).cast::<[u8; 2]>())
        })
    }

    pub(crate) fn write_u16(&self, offset: usize, v: u16) {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::write_volatile(self.ptr(offset, 2).cast::<[u8; 2]>(), v.to_le_bytes()) }
    }

    pub(crate) fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: as in `read_u8`.
        u32::from_le_bytes(unsafe {
            core::ptr::read_volatile(self.ptr(offset, 4).cast::<[u8; 4]>())
        })
    }

    pub(crate) fn write_u32(&self, offset: usize, v: u32) {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::write_volatile(self.ptr(offset, 4).cast::<[u8; 4]>(), v.to_le_bytes()) }
    }

    pub(crate) fn write_u64(&self, offset: usize, v: u64) {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::write_volatile(self.ptr(offset, 8).cast::<[u8; 8]>(), v.to_le_bytes()) }
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
