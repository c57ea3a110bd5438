//! Which node is home to each guest frame, and where the home keeps the frame's directory
//! entry. The placement is pluggable; every node of a cluster must use the same one.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::types::{Gfn, NodeId};

/// One contiguous range of guest RAM and the node that contributes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HomeRange {
    /// First frame.
    pub start: u64,
    /// Frames in the range (at least 1).
    pub len: u64,
    /// The node whose memory it is.
    pub node: NodeId,
    /// Index of `start`'s directory entry at `node` (the frames of its earlier ranges).
    base: u64,
}

/// Why a list of home ranges is not a placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HomeMapError {
    /// A range is empty, overlaps the one before, or comes before it.
    Order {
        /// First frame of the offending range.
        start: u64,
    },
    /// A range names a node outside the cluster.
    Node {
        /// The node.
        node: NodeId,
    },
    /// No range at all.
    Empty,
}

impl fmt::Display for HomeMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HomeMapError::Order { start } => {
                write!(f, "home range at frame {start:#x} is empty or overlaps the one before")
            }
            HomeMapError::Node { node } => {
                write!(f, "home range names node {}, outside the cluster", node.0)
            }
            HomeMapError::Empty => write!(f, "no home range: the guest has no memory"),
        }
    }
}

/// How guest frames are spread over home nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HomeMap {
    /// Frame `g` lives on node `g % nodes` (fine-grained interleave).
    Interleaved,
    /// Contiguous ranges: frames `[i * pages_per_node, (i + 1) * pages_per_node)` live on
    /// node `i` (one NUMA node per server, as ACPI SRAT will describe it).
    Ranges {
        /// Frames per node; the last node also takes any remainder.
        pages_per_node: u64,
    },
    /// Ranges of any size, in frame order, each homed at the node that contributes it; the
    /// frames between them are holes (MMIO, firmware): not guest RAM, refused like frames
    /// outside memory. Built by [`Config::table`].
    Table(Arc<[HomeRange]>),
}

/// Static facts every engine of a cluster agrees on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

    /// A cluster of `nodes` nodes whose guest RAM is `ranges` of `(start, len, node)`, in
    /// frame order and not overlapping (uneven contributions; holes between them). Frames are
    /// numbered up to the end of the last range.
    pub fn table(nodes: u16, ranges: &[(u64, u64, NodeId)]) -> Result<Config, HomeMapError> {
        let mut next = 0;
        let mut homed = alloc::vec![0u64; usize::from(nodes)];
        let mut table = Vec::with_capacity(ranges.len());
        for &(start, len, node) in ranges {
            if len == 0 || start < next || start.checked_add(len).is_none() {
                return Err(HomeMapError::Order { start });
            }
            let Some(count) = homed.get_mut(node.index()) else {
                return Err(HomeMapError::Node { node });
            };
            table.push(HomeRange { start, len, node, base: *count });
            *count += len;
            next = start + len;
        }
        if table.is_empty() {
            return Err(HomeMapError::Empty);
        }
        Ok(Config { nodes, pages: next, home: HomeMap::Table(table.into()) })
    }

    /// The range of a table placement holding `gfn`.
    fn range(table: &[HomeRange], gfn: Gfn) -> Option<&HomeRange> {
        let i = table.partition_point(|r| r.start <= gfn.0).checked_sub(1)?;
        table.get(i).filter(|r| gfn.0 - r.start < r.len)
    }

    /// Whether `gfn` is a guest frame of this cluster (inside memory and not in a hole).
    pub fn contains(&self, gfn: Gfn) -> bool {
        match &self.home {
            HomeMap::Table(t) => Self::range(t, gfn).is_some(),
            _ => gfn.0 < self.pages,
        }
    }

    /// Whether `node` is a member of this cluster.
    pub fn has_node(&self, node: NodeId) -> bool {
        u16::from(node.0) < self.nodes
    }

    /// The home node of `gfn` (which must be a guest frame; a hole answers node 0).
    pub fn home(&self, gfn: Gfn) -> NodeId {
        let n = u64::from(self.nodes);
        let i = match &self.home {
            HomeMap::Interleaved => gfn.0 % n,
            HomeMap::Ranges { pages_per_node } => (gfn.0 / pages_per_node).min(n - 1),
            HomeMap::Table(t) => return Self::range(t, gfn).map_or(NodeId(0), |r| r.node),
        };
        // i < nodes <= 256.
        NodeId(i as u8)
    }

    /// Index of `gfn`'s directory entry inside its home's directory.
    pub fn home_index(&self, gfn: Gfn) -> usize {
        let i = match &self.home {
            HomeMap::Interleaved => gfn.0 / u64::from(self.nodes),
            HomeMap::Ranges { pages_per_node } => {
                gfn.0 - u64::from(self.home(gfn).0) * pages_per_node
            }
            HomeMap::Table(t) => Self::range(t, gfn).map_or(0, |r| r.base + (gfn.0 - r.start)),
        };
        i as usize
    }

    /// Number of frames whose home is `node`.
    pub fn pages_homed_at(&self, node: NodeId) -> u64 {
        let n = u64::from(self.nodes);
        let k = u64::from(node.0);
        match &self.home {
            HomeMap::Interleaved => self.pages / n + u64::from(k < self.pages % n),
            HomeMap::Table(t) => t.iter().filter(|r| r.node == node).map(|r| r.len).sum(),
            &HomeMap::Ranges { pages_per_node } => {
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

    fn check_placement(cfg: &Config) {
        let mut seen = std::vec::Vec::new();
        for node in 0..cfg.nodes {
            seen.push(std::vec![false; cfg.pages_homed_at(NodeId(node as u8)) as usize]);
        }
        for g in (0..cfg.pages).filter(|&g| cfg.contains(Gfn(g))) {
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
                check_placement(&Config::interleaved(nodes, pages));
                check_placement(&Config::ranges(nodes, pages));
            }
        }
    }

    /// Node 0 gives 3 GiB below the MMIO hole and 1 GiB above 4 GiB, node 1 gives 6 GiB, node
    /// 2 gives 16 MiB: uneven, with a hole.
    fn uneven() -> Config {
        const GIB: u64 = 1 << 18; // frames per GiB
        Config::table(
            3,
            &[
                (0, 3 * GIB, NodeId(0)),
                (4 * GIB, GIB, NodeId(0)),
                (5 * GIB, 6 * GIB, NodeId(1)),
                (11 * GIB, 4096, NodeId(2)),
            ],
        )
        .expect("a valid table")
    }

    #[test]
    fn uneven_ranges_with_a_hole_give_every_frame_one_slot_at_its_contributor() {
        let cfg = uneven();
        assert_eq!(cfg.pages_homed_at(NodeId(0)), 4 << 18);
        assert_eq!(cfg.pages_homed_at(NodeId(1)), 6 << 18);
        assert_eq!(cfg.pages_homed_at(NodeId(2)), 4096);
        assert!(!cfg.contains(Gfn(3 << 18)) && !cfg.contains(Gfn((4 << 18) - 1)), "the hole");
        assert!(!cfg.contains(Gfn(cfg.pages)));
        assert_eq!(cfg.home(Gfn(4 << 18)), NodeId(0));
        assert_eq!(cfg.home_index(Gfn(4 << 18)), 3 << 18, "after node 0's first range");
        assert_eq!(cfg.home(Gfn(11 << 18)), NodeId(2));
        check_placement(&cfg);
    }

    #[test]
    fn home_tables_that_overlap_name_unknown_nodes_or_are_empty_are_refused() {
        let n = NodeId(0);
        assert_eq!(Config::table(2, &[]), Err(HomeMapError::Empty));
        assert_eq!(
            Config::table(2, &[(0, 8, n), (4, 8, n)]),
            Err(HomeMapError::Order { start: 4 })
        );
        assert_eq!(Config::table(2, &[(0, 0, n)]), Err(HomeMapError::Order { start: 0 }));
        let far = NodeId(2);
        assert_eq!(Config::table(2, &[(0, 8, far)]), Err(HomeMapError::Node { node: far }));
    }
}
