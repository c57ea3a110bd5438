//! The frames this node lends to guest pages homed elsewhere: a fixed set of 4 KiB host frames,
//! each holding at most one remote page at a time. The coherence engine keeps the number of
//! remote copies under its cache limit by evicting them; the glue hands a frame back when the
//! engine no longer holds the page. Pure bookkeeping: host-tested.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Host frames for remote pages, by guest frame number.
#[derive(Debug, Default)]
pub struct FrameCache {
    free: Vec<u64>,
    used: BTreeMap<u64, u64>,
    capacity: usize,
    overflows: u64,
}

impl FrameCache {
    /// A cache over the host frames `frames` (4 KiB each, owned by the guest).
    pub fn new(frames: Vec<u64>) -> FrameCache {
        let capacity = frames.len();
        FrameCache { free: frames, used: BTreeMap::new(), capacity, overflows: 0 }
    }

    /// The host frame that holds `gfn`, if any.
    pub fn frame(&self, gfn: u64) -> Option<u64> {
        self.used.get(&gfn).copied()
    }

    /// The host frame for `gfn`, taking a free one when it has none; None (counted) when every
    /// frame is in use.
    pub fn take(&mut self, gfn: u64) -> Option<u64> {
        if let Some(f) = self.used.get(&gfn) {
            return Some(*f);
        }
        let Some(f) = self.free.pop() else {
            self.overflows += 1;
            return None;
        };
        self.used.insert(gfn, f);
        Some(f)
    }

    /// `gfn` no longer needs its frame.
    pub fn release(&mut self, gfn: u64) {
        if let Some(f) = self.used.remove(&gfn) {
            self.free.push(f);
        }
    }

    /// Frames holding a page now.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// Frames in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pages that found no free frame.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_its_frame_until_released_and_the_frame_is_reused() {
        let mut c = FrameCache::new(vec![0x1000, 0x2000]);
        let a = c.take(7).unwrap();
        assert_eq!(c.take(7), Some(a), "the same page, the same frame");
        let b = c.take(8).unwrap();
        assert_ne!(a, b);
        assert_eq!(c.in_use(), 2);
        c.release(7);
        assert_eq!(c.frame(7), None);
        assert_eq!(c.take(9), Some(a), "the released frame serves the next page");
        c.release(12345); // not held: nothing happens
        assert_eq!(c.in_use(), 2);
    }

    #[test]
    fn a_full_cache_refuses_and_counts_instead_of_sharing_a_frame() {
        let mut c = FrameCache::new(vec![0x1000]);
        assert!(c.take(1).is_some());
        assert_eq!(c.take(2), None);
        assert_eq!(c.overflows(), 1);
        assert_eq!(c.capacity(), 1);
    }
}
