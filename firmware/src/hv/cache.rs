//! The frames this node lends to guest pages homed elsewhere: a fixed set of 4 KiB host frames,
//! each holding at most one remote page at a time. The coherence engine keeps the number of
//! remote copies under its cache limit by evicting them; the glue hands a frame back when the
//! engine no longer holds the page. Pure bookkeeping: host-tested.
//!
//! Which frame holds which page is an open-addressing table sized once, at twice the frames
//! (linear probing, deletion by backward shift): taking and releasing frames, once per remote
//! fault and eviction, never touches the heap.

use alloc::vec;
use alloc::vec::Vec;

/// The key of an empty slot: no guest frame number is this large (a gfn has at most 52 bits).
const EMPTY: u64 = u64::MAX;

/// Host frames for remote pages, by guest frame number.
#[derive(Debug)]
pub struct FrameCache {
    free: Vec<u64>,
    /// (gfn, host frame); a power of two long, at most half full.
    slots: Vec<(u64, u64)>,
    used: usize,
    capacity: usize,
    overflows: u64,
}

impl Default for FrameCache {
    fn default() -> FrameCache {
        FrameCache::new(Vec::new())
    }
}

impl FrameCache {
    /// A cache over the host frames `frames` (4 KiB each, owned by the guest).
    pub fn new(frames: Vec<u64>) -> FrameCache {
        let capacity = frames.len();
        let slots = vec![(EMPTY, 0); (2 * capacity).max(1).next_power_of_two()];
        FrameCache { free: frames, slots, used: 0, capacity, overflows: 0 }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Where the probe for `gfn` starts (Fibonacci hashing: neighbouring gfns spread out).
    fn ideal(&self, gfn: u64) -> usize {
        (gfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask()
    }

    /// The slot holding `gfn`, or the empty slot where it would go. The table always has an
    /// empty slot (at most half full), so the probe ends.
    fn probe(&self, gfn: u64) -> (usize, bool) {
        let mut i = self.ideal(gfn);
        loop {
            match self.slots[i].0 {
                k if k == gfn => return (i, true),
                EMPTY => return (i, false),
                _ => i = (i + 1) & self.mask(),
            }
        }
    }

    /// The host frame that holds `gfn`, if any.
    pub fn frame(&self, gfn: u64) -> Option<u64> {
        match self.probe(gfn) {
            (i, true) if gfn != EMPTY => Some(self.slots[i].1),
            _ => None,
        }
    }

    /// The host frame for `gfn`, taking a free one when it has none; None (counted) when every
    /// frame is in use.
    pub fn take(&mut self, gfn: u64) -> Option<u64> {
        if gfn == EMPTY {
            return None;
        }
        let (i, found) = self.probe(gfn);
        if found {
            return Some(self.slots[i].1);
        }
        let Some(f) = self.free.pop() else {
            self.overflows += 1;
            return None;
        };
        self.slots[i] = (gfn, f);
        self.used += 1;
        Some(f)
    }

    /// `gfn` no longer needs its frame.
    pub fn release(&mut self, gfn: u64) {
        if gfn == EMPTY {
            return;
        }
        let (i, found) = self.probe(gfn);
        if !found {
            return;
        }
        self.free.push(self.slots[i].1);
        self.used -= 1;
        // Backward shift: pull later entries of the probe run into the hole when their
        // probe passes it, so that no lookup stops early at it.
        let mask = self.mask();
        let (mut hole, mut j) = (i, i);
        loop {
            j = (j + 1) & mask;
            let k = self.slots[j].0;
            if k == EMPTY {
                break;
            }
            let home = self.ideal(k);
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = (EMPTY, 0);
    }

    /// Frames holding a page now.
    pub fn in_use(&self) -> usize {
        self.used
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
    fn it_agrees_with_a_map_over_a_long_run_of_takes_and_releases() {
        use std::collections::BTreeMap;
        let frames: Vec<u64> = (1..=40).map(|f| f * 0x1000).collect();
        let mut c = FrameCache::new(frames);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut x = 1u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Clustered gfns, so probe runs collide and wrap.
            let gfn = (x >> 33) % 97 * 64;
            if x & 1 == 0 {
                let got = c.take(gfn);
                match model.get(&gfn) {
                    Some(&f) => assert_eq!(got, Some(f)),
                    None if model.len() < 40 => {
                        let f = got.expect("a free frame");
                        assert!(!model.values().any(|&g| g == f), "frame given twice");
                        model.insert(gfn, f);
                    }
                    None => assert_eq!(got, None),
                }
            } else {
                c.release(gfn);
                model.remove(&gfn);
            }
            assert_eq!(c.in_use(), model.len());
            for (&g, &f) in &model {
                assert_eq!(c.frame(g), Some(f), "gfn {g} lost its frame");
            }
            assert_eq!(c.frame(gfn), model.get(&gfn).copied());
        }
    }

    #[test]
    fn a_large_cache_cycled_through_many_pages_keeps_every_page_on_its_own_frame() {
        use std::collections::BTreeMap;
        let frames: Vec<u64> = (0..2048).map(|f| 0x10_0000 + f * 0x1000).collect();
        let mut c = FrameCache::new(frames);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut x = 5u64;
        for round in 0..60_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let gfn = 0x1800 + (x >> 30) % 0x3000;
            if model.len() < 2048 && (x >> 7) & 3 != 0 {
                let f = c.take(gfn).expect("a frame");
                assert_eq!(*model.entry(gfn).or_insert(f), f);
            } else if let Some((&g, _)) = model.iter().nth((round as usize) % model.len().max(1)) {
                c.release(g);
                model.remove(&g);
                assert_eq!(c.frame(g), None);
            }
            assert_eq!(c.frame(gfn), model.get(&gfn).copied());
        }
        let mut seen: Vec<u64> = model.keys().map(|&g| c.frame(g).expect("held")).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), model.len(), "two pages share a frame");
        assert_eq!(c.in_use(), model.len());
    }

    #[test]
    fn a_cache_of_no_frames_refuses_every_page() {
        let mut c = FrameCache::default();
        assert_eq!(c.take(3), None);
        assert_eq!(c.frame(3), None);
        c.release(3);
        assert_eq!(c.in_use(), 0);
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
