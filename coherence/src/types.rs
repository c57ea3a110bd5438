//! Vocabulary shared by the engine, the directory and the wire format: guest frame numbers,
//! node and vCPU ids, access kinds, mapping rights and node sets.

use core::fmt;

/// Size of a guest frame, the unit of coherence.
pub const PAGE_SIZE: usize = 4096;

/// Largest cluster the protocol addresses (node ids are one byte).
pub const MAX_NODES: usize = 256;

/// Guest frame number: guest-physical address >> 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gfn(pub u64);

/// A node of the cluster, 0..nodes (node 0 is the primary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u8);

impl NodeId {
    /// The id as an index.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A guest vCPU (global numbering across the cluster).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(pub u16);

/// What the faulting guest access wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch: coherent like a read.
    Exec,
}

impl Access {
    /// Whether this access needs exclusive (writable) ownership.
    pub fn is_write(self) -> bool {
        matches!(self, Access::Write)
    }
}

/// Rights a node may give its EPT mapping of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rights {
    /// Read and execute (state Shared).
    ReadExec,
    /// Read, write and execute (state Modified).
    ReadWriteExec,
}

impl Rights {
    /// Whether `access` may proceed under these rights.
    pub fn allows(self, access: Access) -> bool {
        !access.is_write() || self == Rights::ReadWriteExec
    }
}

/// A set of nodes (up to [`MAX_NODES`]), as a bitmap.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NodeSet {
    words: [u64; MAX_NODES / 64],
}

impl NodeSet {
    /// The empty set.
    pub const EMPTY: NodeSet = NodeSet { words: [0; MAX_NODES / 64] };

    /// Adds `node`.
    pub fn insert(&mut self, node: NodeId) {
        self.words[node.index() / 64] |= 1 << (node.index() % 64);
    }

    /// Removes `node`.
    pub fn remove(&mut self, node: NodeId) {
        self.words[node.index() / 64] &= !(1 << (node.index() % 64));
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.words[node.index() / 64] & (1 << (node.index() % 64)) != 0
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set has no member.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            core::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                // i < 4 and bit < 64, so the id fits in a byte.
                Some(NodeId((i * 64 + bit) as u8))
            })
        })
    }

    /// The raw 64-bit words, lowest node first.
    pub fn words(&self) -> &[u64; MAX_NODES / 64] {
        &self.words
    }

    /// Builds a set from its words (the inverse of [`NodeSet::words`]).
    pub fn from_words(words: [u64; MAX_NODES / 64]) -> NodeSet {
        NodeSet { words }
    }
}

impl FromIterator<NodeId> for NodeSet {
    fn from_iter<I: IntoIterator<Item = NodeId>>(iter: I) -> Self {
        let mut set = NodeSet::EMPTY;
        for n in iter {
            set.insert(n);
        }
        set
    }
}

impl fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|n| n.0)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_set_holds_all_256_ids_and_iterates_in_order() {
        let mut s = NodeSet::EMPTY;
        for i in (0..=255u8).rev() {
            s.insert(NodeId(i));
        }
        assert_eq!(s.len(), 256);
        assert!(s.iter().map(|n| n.0).eq(0..=255u8));
        s.remove(NodeId(64));
        assert!(!s.contains(NodeId(64)));
        assert!(s.contains(NodeId(63)) && s.contains(NodeId(255)));
        assert_eq!(s.len(), 255);
    }

    #[test]
    fn exec_is_allowed_by_shared_rights_but_write_is_not() {
        assert!(Rights::ReadExec.allows(Access::Exec));
        assert!(Rights::ReadExec.allows(Access::Read));
        assert!(!Rights::ReadExec.allows(Access::Write));
        assert!(Rights::ReadWriteExec.allows(Access::Write));
    }
}
