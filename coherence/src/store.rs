//! Plain-memory [`PageStore`]: frames in a sorted map, zero until written. For tests, the
//! simulator and host tools; the firmware's store is guest memory itself.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::engine::PageStore;
use crate::types::{Gfn, PAGE_SIZE};

/// Guest frames held in heap memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemStore {
    frames: BTreeMap<Gfn, Box<[u8; PAGE_SIZE]>>,
}

impl MemStore {
    /// An empty store (every frame reads as zeros).
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// The frame's contents (zeros if never written).
    pub fn frame(&self, gfn: Gfn) -> &[u8; PAGE_SIZE] {
        static ZERO: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
        self.frames.get(&gfn).map_or(&ZERO, |f| f)
    }

    /// The frame, writable (as a guest write through a mapping would change it).
    pub fn frame_mut(&mut self, gfn: Gfn) -> &mut [u8; PAGE_SIZE] {
        self.frames.entry(gfn).or_insert_with(|| Box::new([0; PAGE_SIZE]))
    }
}

impl PageStore for MemStore {
    fn copy_out(&mut self, gfn: Gfn, out: &mut Vec<u8>) {
        out.extend_from_slice(self.frame(gfn));
    }

    fn install(&mut self, gfn: Gfn, data: &[u8]) {
        let f = self.frame_mut(gfn);
        let n = data.len().min(PAGE_SIZE);
        f[..n].copy_from_slice(&data[..n]);
    }
}
