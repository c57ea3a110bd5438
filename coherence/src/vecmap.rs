//! A small ordered map over a sorted vector, for the engine's in-flight state (requests,
//! busy directory entries, held and evicting frames). These maps hold a few entries each and
//! empty out between transactions; unlike a `BTreeMap`, which frees its last node when it
//! empties and allocates one again on the next insert, this keeps its capacity, so a node in
//! steady state serves faults without touching the heap.

use alloc::vec::Vec;

/// Keys in ascending order, each once. Equality and hashing see the entries, not the capacity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { entries: Vec::new() }
    }
}

impl<K: Ord + Copy, V> VecMap<K, V> {
    fn find(&self, k: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(e, _)| e.cmp(k))
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.find(k).ok().map(|i| &self.entries[i].1)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.find(k).ok().map(|i| &mut self.entries[i].1)
    }

    pub(crate) fn contains_key(&self, k: &K) -> bool {
        self.find(k).is_ok()
    }

    /// Inserts or replaces; returns the value replaced.
    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => Some(core::mem::replace(&mut self.entries[i].1, v)),
            Err(i) => {
                self.entries.insert(i, (k, v));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        self.find(k).ok().map(|i| self.entries.remove(i).1)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Entries in key order, values writable.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn it_behaves_as_an_ordered_map_and_keeps_its_capacity_when_emptied() {
        let mut m = VecMap::default();
        let mut b = BTreeMap::new();
        let mut x = 7u64;
        for i in 0..2000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let k = (x >> 40) % 64;
            if i % 3 == 0 {
                assert_eq!(m.remove(&k), b.remove(&k));
            } else {
                assert_eq!(m.insert(k, i), b.insert(k, i));
            }
            assert_eq!(m.get(&k), b.get(&k));
            assert_eq!(m.len(), b.len());
        }
        assert!(m.iter().map(|(k, v)| (*k, *v)).eq(b.iter().map(|(k, v)| (*k, *v))));
        let cap = m.entries.capacity();
        let keys: Vec<u64> = b.keys().copied().collect();
        for k in keys {
            m.remove(&k);
        }
        assert_eq!(m.len(), 0);
        assert_eq!(m.entries.capacity(), cap, "emptied, not freed");
    }
}
