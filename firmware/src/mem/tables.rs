//! Page-table memory for the firmware: 4 KiB frames from the reserve, reached through the
//! identity map. One `TableMem` serves the hypervisor's own tables and every guest's EPT.

use gestalt_netstack::hal::{Block, RegArray, Window};
use spin::Mutex;

use super::frames::FrameAllocator;
use crate::paging::TableMem;

/// One 4 KiB paging-structure frame of 512 entries (SDM Vol. 3A §4.5; EPT §29.3.2 alike).
struct TableFrame;

impl Block for TableFrame {
    const SIZE: usize = 4096;
    const ALIGN: usize = 4096;
}

const ENTRIES: RegArray<TableFrame, u64, 512> = RegArray::at::<0>();

fn frame(table: u64) -> Window<TableFrame> {
    // SAFETY: `table` is a frame from `alloc_table` (4 KiB, aligned, from the reserve, handed
    // out once), identity-mapped and owned by these tables; the CPU's page walker reads it
    // too, hence volatile access.
    unsafe { Window::new(table as usize) }
}

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

    // `crate::paging` and the EPT builder take `idx` from 9 address bits, so it is below 512.
    fn read(&self, table: u64, idx: usize) -> u64 {
        frame(table).get(ENTRIES.get(idx).expect("page-table index below 512"))
    }

    fn write(&mut self, table: u64, idx: usize, val: u64) {
        frame(table).set(ENTRIES.get(idx).expect("page-table index below 512"), val);
    }
}
