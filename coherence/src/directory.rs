//! Dense, compact per-page state: the home's directory entries (state, owner, sharers, busy
//! bit) and each node's own cache state (Invalid / Shared / Modified, two bits a page).
//! Transient states live out of line (see `engine`), since few pages are in flight at once.

use alloc::vec;
use alloc::vec::Vec;

use crate::types::{NodeId, NodeSet, MAX_NODES};

#[cfg(test)]
std::thread_local! {
    /// Test-only mutation: sharer sets lose every node above 63, as a word-indexing bug would,
    /// to show which simulations can catch such a bug. Per thread, so parallel tests are
    /// unaffected.
    pub(crate) static DROP_SHARERS_ABOVE_63: core::cell::Cell<bool> =
        const { core::cell::Cell::new(false) };
}

/// Directory state of a page at its home.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirState {
    /// No node maps the page; the home's frame is the data.
    Uncached,
    /// `sharers` map it read-only; the home's frame is current.
    Shared,
    /// `owner` maps it read-write; the home's frame may be stale.
    Modified,
}

/// A node's own stable cache state for a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheState {
    /// Not mapped.
    Invalid,
    /// Mapped read-only.
    Shared,
    /// Mapped read-write; the only copy that is current.
    Modified,
}

const OWNER_MASK: u16 = 0x00ff;
const STATE_SHIFT: u16 = 8;
const STATE_MASK: u16 = 0x3 << STATE_SHIFT;
const BUSY: u16 = 1 << 10;

/// The directory entries of the pages homed at one node: a 2-byte word (owner, state, busy)
/// plus `ceil(nodes / 64)` 64-bit sharer words per page, in two dense arrays.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Directory {
    meta: Vec<u16>,
    sharers: Vec<u64>,
    words: usize,
}

impl Directory {
    /// A directory of `pages` entries, all Uncached, for a cluster of `nodes` nodes.
    pub fn new(pages: usize, nodes: u16) -> Directory {
        let words = Self::sharer_words(nodes);
        Directory { meta: vec![0; pages], sharers: vec![0; pages * words], words }
    }

    /// Sharer words per page for a cluster of `nodes` nodes.
    pub fn sharer_words(nodes: u16) -> usize {
        usize::from(nodes).div_ceil(64).max(1)
    }

    /// Bytes of directory state per page for a cluster of `nodes` nodes.
    pub fn bytes_per_page(nodes: u16) -> usize {
        core::mem::size_of::<u16>() + 8 * Self::sharer_words(nodes)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Whether the directory holds no entry.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// State of entry `i`.
    pub fn state(&self, i: usize) -> DirState {
        match (self.meta[i] & STATE_MASK) >> STATE_SHIFT {
            0 => DirState::Uncached,
            1 => DirState::Shared,
            _ => DirState::Modified,
        }
    }

    /// Owner of entry `i` (meaningful in [`DirState::Modified`]).
    pub fn owner(&self, i: usize) -> NodeId {
        NodeId((self.meta[i] & OWNER_MASK) as u8)
    }

    /// Whether entry `i` has a transaction in flight.
    pub fn busy(&self, i: usize) -> bool {
        self.meta[i] & BUSY != 0
    }

    /// Marks entry `i` busy or idle.
    pub fn set_busy(&mut self, i: usize, busy: bool) {
        if busy {
            self.meta[i] |= BUSY;
        } else {
            self.meta[i] &= !BUSY;
        }
    }

    /// Entry `i` becomes Uncached with no sharers.
    pub fn set_uncached(&mut self, i: usize) {
        self.meta[i] &= BUSY;
        self.sharer_slice_mut(i).fill(0);
    }

    /// Entry `i` becomes Shared by `sharers`.
    pub fn set_shared(&mut self, i: usize, sharers: &NodeSet) {
        self.meta[i] = (self.meta[i] & BUSY) | (1 << STATE_SHIFT);
        let w = self.words;
        self.sharer_slice_mut(i).copy_from_slice(&sharers.words()[..w]);
    }

    /// Entry `i` becomes Modified at `owner` (no sharers).
    pub fn set_modified(&mut self, i: usize, owner: NodeId) {
        self.meta[i] = (self.meta[i] & BUSY) | (2 << STATE_SHIFT) | u16::from(owner.0);
        self.sharer_slice_mut(i).fill(0);
    }

    /// Sharers of entry `i`.
    pub fn sharers(&self, i: usize) -> NodeSet {
        let mut words = [0u64; MAX_NODES / 64];
        words[..self.words].copy_from_slice(&self.sharers[i * self.words..(i + 1) * self.words]);
        #[cfg(test)]
        if DROP_SHARERS_ABOVE_63.with(core::cell::Cell::get) {
            words[1..].fill(0);
        }
        NodeSet::from_words(words)
    }

    fn sharer_slice_mut(&mut self, i: usize) -> &mut [u64] {
        &mut self.sharers[i * self.words..(i + 1) * self.words]
    }
}

/// A node's stable cache state for every guest frame, two bits each.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheStates {
    bits: Vec<u8>,
}

impl CacheStates {
    /// `pages` frames, all Invalid.
    pub fn new(pages: usize) -> CacheStates {
        CacheStates { bits: vec![0; pages.div_ceil(4)] }
    }

    /// State of frame `i`.
    pub fn get(&self, i: usize) -> CacheState {
        match (self.bits[i / 4] >> ((i % 4) * 2)) & 3 {
            0 => CacheState::Invalid,
            1 => CacheState::Shared,
            _ => CacheState::Modified,
        }
    }

    /// Sets the state of frame `i`.
    pub fn set(&mut self, i: usize, s: CacheState) {
        let v = match s {
            CacheState::Invalid => 0,
            CacheState::Shared => 1,
            CacheState::Modified => 2,
        };
        let shift = (i % 4) * 2;
        self.bits[i / 4] = (self.bits[i / 4] & !(3 << shift)) | (v << shift);
    }

    /// Bytes used.
    pub fn bytes(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_entry_costs_ten_bytes_per_page_at_64_nodes() {
        assert_eq!(Directory::bytes_per_page(64), 10);
        assert_eq!(Directory::bytes_per_page(2), 10);
        assert_eq!(Directory::bytes_per_page(65), 18);
        assert_eq!(Directory::bytes_per_page(256), 34);
        let d = Directory::new(1000, 64);
        let bytes = d.meta.len() * 2 + d.sharers.len() * 8;
        assert_eq!(bytes, 1000 * 10);
    }

    #[test]
    fn one_tib_of_guest_memory_needs_two_and_a_half_gib_of_directory_at_64_nodes() {
        let pages: u64 = (1 << 40) / 4096;
        assert_eq!(pages, 256 << 20);
        let bytes = pages * Directory::bytes_per_page(64) as u64;
        assert_eq!(bytes, 2560 << 20);
    }

    #[test]
    fn cache_state_bitmaps_cost_sixteen_bytes_per_page_across_64_nodes() {
        // Every node keeps 2 bits for every guest page, whether it caches it or not.
        let pages: usize = (1 << 40) / 4096;
        let per_node = CacheStates::new(pages).bytes();
        assert_eq!(per_node, 64 << 20, "64 MiB per node for a 1 TiB guest");
        assert_eq!(per_node * 64 / pages, 16, "bytes per guest page across 64 nodes");
        // Beside the 10 B of directory: 26 B per page, 6.5 GiB for 1 TiB at 64 nodes.
        let total = per_node * 64 + pages * Directory::bytes_per_page(64);
        assert_eq!(total, (6 << 30) + (512 << 20));
    }

    #[test]
    fn directory_fields_do_not_disturb_each_other() {
        let mut d = Directory::new(3, 200);
        let set: NodeSet = [NodeId(0), NodeId(70), NodeId(199)].into_iter().collect();
        d.set_busy(1, true);
        d.set_shared(1, &set);
        assert!(d.busy(1) && d.state(1) == DirState::Shared && d.sharers(1) == set);
        assert_eq!(d.state(0), DirState::Uncached);
        assert!(d.sharers(2).is_empty());
        d.set_modified(1, NodeId(199));
        assert!(d.busy(1));
        assert_eq!((d.state(1), d.owner(1)), (DirState::Modified, NodeId(199)));
        assert!(d.sharers(1).is_empty());
        d.set_busy(1, false);
        d.set_uncached(1);
        assert!(!d.busy(1) && d.state(1) == DirState::Uncached);
    }

    #[test]
    fn cache_states_pack_four_frames_per_byte() {
        let mut c = CacheStates::new(9);
        assert_eq!(c.bytes(), 3);
        c.set(5, CacheState::Modified);
        c.set(4, CacheState::Shared);
        c.set(6, CacheState::Shared);
        assert_eq!(c.get(5), CacheState::Modified);
        assert_eq!(c.get(4), CacheState::Shared);
        c.set(5, CacheState::Invalid);
        assert_eq!(
            [c.get(4), c.get(5), c.get(6)],
            [CacheState::Shared, CacheState::Invalid, CacheState::Shared]
        );
    }
}
