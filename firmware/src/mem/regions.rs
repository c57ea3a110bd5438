//! Physical address ranges and the arithmetic on them: usable RAM minus what is in use,
//! page-aligned, then split into the hypervisor reserve and the guest pool.

use heapless::Vec;

use super::PAGE;
use crate::boot::multiboot::{MemEntry, MEM_AVAILABLE};

/// Most regions any list holds.
pub const MAX_REGIONS: usize = 128;

/// A list of regions.
pub type Regions = Vec<Region, MAX_REGIONS>;

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Region {
    /// `[start, end)`.
    pub const fn new(start: u64, end: u64) -> Region {
        Region { start, end }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// No bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shrunk inwards to whole pages.
    pub fn page_inner(&self) -> Region {
        let start = self.start.div_ceil(PAGE).saturating_mul(PAGE);
        let end = self.end / PAGE * PAGE;
        Region::new(start, end.max(start))
    }
}

/// Total bytes in a list.
pub fn total(list: &[Region]) -> u64 {
    list.iter().map(Region::len).sum()
}

/// The available entries of a memory map, sorted, merged and page-aligned inwards.
pub fn usable(map: &[MemEntry]) -> Regions {
    let mut out = Regions::new();
    for e in map.iter().filter(|e| e.kind == MEM_AVAILABLE && e.len > 0) {
        let r = Region::new(e.base, e.base.saturating_add(e.len)).page_inner();
        if !r.is_empty() && out.push(r).is_err() {
            break;
        }
    }
    out.sort_unstable_by_key(|r| r.start);
    let mut merged = Regions::new();
    for r in out {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => {
                let _ = merged.push(r);
            }
        }
    }
    merged
}

/// `from` without any byte of `holes` (holes are widened outwards to whole pages).
pub fn subtract(from: &[Region], holes: &[Region]) -> Regions {
    let mut out: Regions = from.iter().copied().collect();
    for h in holes.iter().filter(|h| !h.is_empty()) {
        let h = Region::new(h.start / PAGE * PAGE, h.end.div_ceil(PAGE) * PAGE);
        let mut next = Regions::new();
        for r in out {
            if h.end <= r.start || h.start >= r.end {
                let _ = next.push(r);
                continue;
            }
            if r.start < h.start {
                let _ = next.push(Region::new(r.start, h.start));
            }
            if h.end < r.end {
                let _ = next.push(Region::new(h.end, r.end));
            }
        }
        out = next;
    }
    out
}

/// How much of `free` the hypervisor keeps for itself: a sixteenth of memory, at least
/// 24 MiB and at most 1 GiB (heap, page tables, per-CPU stacks, EPT, NIC rings), but never
/// more than half of what there is.
pub fn reserve_size(free: u64) -> u64 {
    let mib = super::MIB;
    let want = (free / 16).clamp(24 * mib, 1024 * mib);
    want.min(free / 2) / PAGE * PAGE
}

/// Splits `free` into the hypervisor reserve (the lowest `reserve` bytes: NIC DMA and the AP
/// trampoline like low memory) and the guest pool (the rest).
pub fn split(free: &[Region], reserve: u64) -> (Regions, Regions) {
    let (mut res, mut pool) = (Regions::new(), Regions::new());
    let mut left = reserve;
    for r in free {
        let take = left.min(r.len());
        if take > 0 {
            let _ = res.push(Region::new(r.start, r.start + take));
            left -= take;
        }
        if take < r.len() {
            let _ = pool.push(Region::new(r.start + take, r.end));
        }
    }
    (res, pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MIB;

    fn e(base: u64, len: u64, kind: u32) -> MemEntry {
        MemEntry { base, len, kind }
    }

    #[test]
    fn usable_keeps_available_ram_aligned_sorted_and_merged() {
        let map = [
            e(0x10_0000, 0x100_0000, 1),
            e(0, 0x9fc00, 1),
            e(0xf_0000, 0x1_0000, 2),
            e(0x110_0000, 0x1001, 1),
        ];
        let u = usable(&map);
        assert_eq!(&u[..], &[Region::new(0, 0x9f000), Region::new(0x10_0000, 0x110_1000)]);
    }

    #[test]
    fn subtract_cuts_holes_widened_to_pages() {
        let free = [Region::new(0, 0x100_0000)];
        let out = subtract(&free, &[Region::new(0x10_0800, 0x20_0001), Region::new(0, 0x1000)]);
        assert_eq!(&out[..], &[Region::new(0x1000, 0x10_0000), Region::new(0x20_1000, 0x100_0000)]);
        assert_eq!(total(&out), 0x100_0000 - 0x1000 - 0x10_1000);
    }

    #[test]
    fn split_takes_the_reserve_from_the_bottom_and_loses_nothing() {
        let free = [Region::new(0x1000, 0x9f000), Region::new(0x20_0000, 0x1000_0000)];
        let (res, pool) = split(&free, 16 * MIB);
        assert_eq!(total(&res), 16 * MIB);
        assert_eq!(total(&res) + total(&pool), total(&free));
        assert_eq!(res[0], free[0]);
        assert!(pool.iter().all(|p| res.iter().all(|r| p.start >= r.end)));
    }

    #[test]
    fn reserve_is_bounded_below_above_and_by_half_of_memory() {
        assert_eq!(reserve_size(256 * MIB), 24 * MIB);
        assert_eq!(reserve_size(32 * MIB), 16 * MIB);
        assert_eq!(reserve_size(64 * 1024 * MIB), 1024 * MIB);
    }
}
