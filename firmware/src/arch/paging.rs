//! Builds the hypervisor's own page tables with `crate::paging` in frames from the reserve
//! and switches CR3: page 0 unmapped (null pointers fault), image text read-only executable,
//! rodata read-only, everything else non-executable, MMIO hole uncached.

use core::sync::atomic::Ordering;

use crate::mem::frames::FrameAllocator;
use crate::mem::regions::Region;
use crate::mem::tables::IdentityTables;
use crate::paging::{identity_map, MapError, MapStats, TableMem, NX, PCD, PWT, W};

unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __bss_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Where the firmware lies in physical memory: load image and bss.
pub fn image_range() -> Region {
    // SAFETY: linker-script symbols; only their addresses are taken.
    unsafe { Region::new(sym(&__image_start), sym(&__bss_end)) }
}

/// Builds the tables mapping `[0, top)` (top ≥ 4 GiB) and loads them; returns the page counts.
pub fn install(frames: &mut FrameAllocator, top: u64) -> Result<MapStats, MapError> {
    let nx = if super::cpu::has_nx() { NX } else { 0 };
    let huge = super::cpu::has_1g_pages();
    // SAFETY: linker-script symbols; only their addresses are taken.
    let (img, text_end, ro_end, bss_end) =
        unsafe { (sym(&__image_start), sym(&__text_end), sym(&__rodata_end), sym(&__bss_end)) };
    let bss_end = bss_end.next_multiple_of(4096);
    let mut fa = IdentityTables(frames);
    let root = fa.alloc_table().ok_or(MapError::OutOfMemory)?;
    let mut total = MapStats::default();
    let plan: [(u64, u64, u64); 8] = [
        (0x1000, 0x8000, W | nx),
        (0x8000, 0x9000, W), // AP trampoline: written, then executed
        (0x9000, img, W | nx),
        (img, text_end, 0),
        (text_end, ro_end, nx),
        (ro_end, bss_end, W | nx),
        (bss_end, 0xC000_0000.max(bss_end), W | nx),
        (0xC000_0000.max(bss_end), 1 << 32, W | nx | PCD | PWT),
    ];
    for (start, end, flags) in plan.into_iter().chain([(1u64 << 32, top, W | nx)]) {
        if end > start {
            let s = identity_map(&mut fa, root, start, end, flags, huge)?;
            total.small += s.small;
            total.large += s.large;
            total.huge += s.huge;
        }
    }
    // SAFETY: the new tables map this code, its stack and data exactly as the boot tables did
    // (identity), only with finer rights.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) root, options(nostack)) };
    super::idt::MAPPED_LIMIT.store(top, Ordering::Relaxed);
    Ok(total)
}

/// The current CR3 (for application processors).
pub fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)) };
    v
}
