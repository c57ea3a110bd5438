//! `netstack::hal::Hal` for the firmware: DMA memory from the hypervisor reserve, identity
//! mapped (physical = virtual), write-back and so coherent with device DMA on x86.

use core::ptr::NonNull;

use gestalt_netstack::hal::{Bus, DmaRegion, Hal};
use spin::Mutex;

use crate::mem::frames::FrameAllocator;
use crate::mem::tables::alloc_zeroed;

/// The firmware's driver services.
#[derive(Clone, Copy)]
pub struct FwHal {
    frames: &'static Mutex<FrameAllocator>,
}

impl FwHal {
    /// Drivers get DMA memory from `frames`.
    pub fn new(frames: &'static Mutex<FrameAllocator>) -> Self {
        FwHal { frames }
    }
}

// SAFETY: the default methods: one volatile access of the register's width, which is what
// identity-mapped MMIO needs.
unsafe impl Bus for FwHal {}

// SAFETY: regions come from the reserve, are handed out once and never freed, zeroed here,
// identity-mapped write-back RAM (coherent with DMA on x86), so `phys == virt`.
unsafe impl Hal for FwHal {
    fn dma_alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        let pages = (len as u64).div_ceil(4096).max(1);
        let phys = alloc_zeroed(&mut self.frames.lock(), pages, (align as u64).max(4096))?;
        Some(DmaRegion { phys, virt: NonNull::new(phys as *mut u8)?, len: (pages * 4096) as usize })
    }

    fn virt_to_phys(&self, virt: usize) -> u64 {
        virt as u64
    }

    fn phys_to_virt(&self, phys: u64) -> usize {
        phys as usize
    }
}
