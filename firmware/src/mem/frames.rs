//! The hypervisor's physical frame allocator: hands out page-aligned frames from the reserve.
//! Boot-time structures (page tables, stacks, heap) live for the node's lifetime, so it never
//! frees; the heap serves everything dynamic.

use super::regions::{Region, Regions};
use super::PAGE;

/// Bump allocator over a list of regions.
pub struct FrameAllocator {
    regions: Regions,
    index: usize,
    next: u64,
    handed_out: u64,
}

impl FrameAllocator {
    /// Allocates from `regions` in order.
    pub fn new(regions: &[Region]) -> Self {
        let regions: Regions = regions.iter().copied().filter(|r| !r.is_empty()).collect();
        let next = regions.first().map_or(0, |r| r.start);
        FrameAllocator { regions, index: 0, next, handed_out: 0 }
    }

    /// `count` contiguous frames aligned to `align` bytes (a power of two ≥ 4 KiB).
    pub fn alloc(&mut self, count: u64, align: u64) -> Option<u64> {
        let align = align.max(PAGE);
        debug_assert!(align.is_power_of_two());
        let bytes = count.checked_mul(PAGE)?;
        while let Some(r) = self.regions.get(self.index) {
            let start = self.next.max(r.start).checked_next_multiple_of(align)?;
            if start.checked_add(bytes)? <= r.end {
                self.next = start + bytes;
                self.handed_out += bytes;
                return Some(start);
            }
            self.index += 1;
            self.next = self.regions.get(self.index).map_or(0, |r| r.start);
        }
        None
    }

    /// Bytes handed out so far (alignment gaps not counted).
    pub fn used(&self) -> u64 {
        self.handed_out
    }

    /// Bytes still available (upper bound: alignment may waste some).
    pub fn remaining(&self) -> u64 {
        self.regions
            .iter()
            .enumerate()
            .skip(self.index)
            .map(|(i, r)| if i == self.index { r.end.saturating_sub(self.next) } else { r.len() })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_aligned_disjoint_and_span_regions() {
        let mut fa =
            FrameAllocator::new(&[Region::new(0x1000, 0x4000), Region::new(0x20_0000, 0x60_0000)]);
        assert_eq!(fa.alloc(1, PAGE), Some(0x1000));
        assert_eq!(fa.alloc(1, 0x2000), Some(0x2000));
        // Does not fit in what is left of the first region: moves on.
        assert_eq!(fa.alloc(2, PAGE), Some(0x20_0000));
        assert_eq!(fa.alloc(1, 0x20_0000), Some(0x40_0000));
        assert_eq!(fa.used(), 5 * PAGE);
        assert_eq!(fa.remaining(), 0x60_0000 - 0x40_1000);
    }

    #[test]
    fn exhaustion_returns_none_instead_of_overlapping() {
        let mut fa = FrameAllocator::new(&[Region::new(0x1000, 0x3000)]);
        assert!(fa.alloc(2, PAGE).is_some());
        assert_eq!(fa.alloc(1, PAGE), None);
        assert_eq!(fa.alloc(u64::MAX, PAGE), None);
    }
}
