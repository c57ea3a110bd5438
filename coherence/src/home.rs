//! Which node is home to each guest frame, and where the home keeps the frame's directory
//! entry. The placement is pluggable; every node of a cluster must use the same one.

use crate::types::{Gfn, NodeId};

/// How guest frames are spread over home nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HomeMap {
    /// Frame `g` lives on node `g % nodes` (fine-grained interleave).
    Interleaved,
    /// Contiguous ranges: frames `[i * pages_per_node, (i + 1) * pages_per_node)` live on
    /// node `i` (one NUMA node per server, as ACPI SRAT will describe it).
    Ranges {
        /// Frames per node; the last node also takes any remainder.
        pages_per_node: u64,
    },
}

/// Static facts every engine of a cluster agrees on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Number of nodes, 1..=256.
    pub nodes: u16,
    /// Guest frames, numbered `0..pages`.
    pub pages: u64,
    /// Home placement.
    pub home: HomeMap,
}

impl Config {
    /// A cluster of `nodes` nodes with `pages` guest frames interleaved over them.
    pub fn interleaved(nodes: u16, pages: u64) -> Config {
        Config { nodes, pages, home: HomeMap::Interleaved }
    }

    /// A cluster of `nodes` nodes with `pages` guest frames split into one contiguous range
    /// per node.
    pub fn ranges(nodes: u16, pages: u64) -> Config {
        let per = pages.div_ceil(u64::from(nodes.max(1))).max(1);
        Config { nodes, pages, home: HomeMap::Ranges { pages_per_node: per } }
    }

    /// Whether `gfn` is a guest frame of this cluster.
    pub fn contains(&self, gfn: Gfn) -> bool {
        gfn.0 < self.pages
    }

    /// Whether `node` is a member of this cluster.
    pub fn has_node(&self, node: NodeId) -> bool {
        u16::from(node.0) < self.nodes
    }

    /// The home node of `gfn` (which must be a guest frame).
    pub fn home(&self, gfn: Gfn) -> NodeId {
        let n = u64::from(self.nodes);
        let i = match self.home {
            HomeMap::Interleaved => gfn.0 % n,
            HomeMap::Ranges { pages_per_node } => (gfn.0 / pages_per_node).min(n - 1),
        };
        // i < nodes <= 256.
        NodeId(i as u8)
    }

    /// Index of `gfn`'s directory entry inside its home's directory.
    pub fn home_index(&self, gfn: Gfn) -> usize {
        let i = match self.home {
            HomeMap::Interleaved => gfn.0 / u64::from(self.nodes),
            HomeMap::Ranges { pages_per_node } => {
                gfn.0 - u64::from(self.home(gfn).0) * pages_per_node
            }
        };
        i as usize
    }

    /// Number of frames whose home is `node`.
    pub fn pages_homed_at(&self, node: NodeId) -> u64 {
        let n = u64::from(self.nodes);
        let k = u64::from(node.0);
        match self.home {
            HomeMap::Interleaved => self.pages / n + u64::from(k < self.pages % n),
            HomeMap::Ranges { pages_per_node } => {
                let start = (k * pages_per_node).min(self.pages);
                let end = if k + 1 == n {
                    self.pages
                } else {
                    ((k + 1) * pages_per_node).min(self.pages)
                };
                end - start
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_placement(cfg: Config) {
        let mut seen = std::vec::Vec::new();
        for node in 0..cfg.nodes {
            seen.push(std::vec![false; cfg.pages_homed_at(NodeId(node as u8)) as usize]);
        }
        for g in 0..cfg.pages {
            let h = cfg.home(Gfn(g));
            let i = cfg.home_index(Gfn(g));
            assert!(!seen[h.index()][i], "two frames share a directory slot");
            seen[h.index()][i] = true;
        }
        assert!(seen.iter().flatten().all(|&b| b), "a directory slot is unused");
    }

    #[test]
    fn every_frame_has_exactly_one_directory_slot_under_both_placements() {
        for nodes in [1u16, 2, 3, 7, 64] {
            for pages in [1u64, 5, 64, 1000] {
                check_placement(Config::interleaved(nodes, pages));
                check_placement(Config::ranges(nodes, pages));
            }
        }
    }
}
