//! Page-table memory for the firmware: 4 KiB frames from the reserve, reached through the
//! identity map. One `TableMem` serves the hypervisor's own tables and every guest's EPT.

use spin::Mutex;

use super::frames::FrameAllocator;
use crate::paging::TableMem;

/// `pages` zeroed frames from the reserve, aligned to `align` bytes: page tables, EPT, VMX
/// regions and DMA rings all start from this.
pub fn alloc_zeroed(frames: &mut FrameAllocator, pages: u64, align: u64) -> Option<u64> {
    let f = frames.alloc(pages, align)?;
    // SAFETY: fresh frames from the reserve, handed out once, identity-mapped (the reserve
    // lies below 4 GiB, mapped by the boot tables and ours), used by nothing else.
    unsafe { core::ptr::write_bytes(f as *mut u8, 0, (pages * 4096) as usize) };
    Some(f)
}

/// Where table frames come from.
pub trait FrameSource {
    /// One zeroed 4 KiB frame.
    fn frame(&mut self) -> Option<u64>;
}

impl FrameSource for &mut FrameAllocator {
    fn frame(&mut self) -> Option<u64> {
        alloc_zeroed(self, 1, 4096)
    }
}

impl FrameSource for &'static Mutex<FrameAllocator> {
    fn frame(&mut self) -> Option<u64> {
        alloc_zeroed(&mut self.lock(), 1, 4096)
    }
}

/// Tables in identity-mapped frames from `S`.
pub struct IdentityTables<S: FrameSource>(pub S);

impl<S: FrameSource> TableMem for IdentityTables<S> {
    fn alloc_table(&mut self) -> Option<u64> {
        self.0.frame()
    }

    fn read(&self, table: u64, idx: usize) -> u64 {
        // SAFETY: `table` is a frame from `alloc_table`, identity-mapped; idx < 512 by
        // construction in `crate::paging` and the EPT builder.
        unsafe { core::ptr::read_volatile((table as *const u64).add(idx)) }
    }

    fn write(&mut self, table: u64, idx: usize, val: u64) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile((table as *mut u64).add(idx), val) }
    }
}
