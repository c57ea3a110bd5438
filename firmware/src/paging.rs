//! 4-level x86-64 page tables built in Rust (SDM Vol. 3A §5.5): maps a range with the largest
//! pages its alignment allows (1 GiB, 2 MiB, 4 KiB). The table memory is behind [`TableMem`],
//! so the same code fills real frames in the firmware and a fake memory in host tests.

use core::fmt;

/// Present.
pub const P: u64 = 1 << 0;
/// Writable.
pub const W: u64 = 1 << 1;
/// Page-level write-through.
pub const PWT: u64 = 1 << 3;
/// Page-level cache disable.
pub const PCD: u64 = 1 << 4;
/// Page size (in a PDPTE or PDE: a 1 GiB or 2 MiB page).
pub const PS: u64 = 1 << 7;
/// Global.
pub const G: u64 = 1 << 8;
/// Execute-disable (needs EFER.NXE).
pub const NX: u64 = 1 << 63;
/// Address bits of an entry.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

const KIB4: u64 = 1 << 12;
const MIB2: u64 = 1 << 21;
const GIB1: u64 = 1 << 30;

/// Storage for page tables.
pub trait TableMem {
    /// A zeroed, 4 KiB-aligned table; its physical address.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Entry `idx` of the table at `table`.
    fn read(&self, table: u64, idx: usize) -> u64;
    /// Sets entry `idx` of the table at `table`.
    fn write(&mut self, table: u64, idx: usize, val: u64);
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No frame for a table.
    OutOfMemory,
    /// An address or length not 4 KiB aligned.
    Unaligned(u64),
    /// A huge page is already where a smaller one is asked for.
    Overlap(u64),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::OutOfMemory => write!(f, "no memory left for page tables"),
            MapError::Unaligned(a) => write!(f, "address {a:#x} is not 4 KiB aligned"),
            MapError::Overlap(a) => write!(f, "{a:#x} is already mapped by a larger page"),
        }
    }
}

/// Counts of pages mapped by size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    /// 4 KiB pages.
    pub small: u64,
    /// 2 MiB pages.
    pub large: u64,
    /// 1 GiB pages.
    pub huge: u64,
}

fn index(virt: u64, level: u32) -> usize {
    ((virt >> (12 + 9 * level)) & 0x1ff) as usize
}

fn next_table(mem: &mut dyn TableMem, table: u64, idx: usize, at: u64) -> Result<u64, MapError> {
    let e = mem.read(table, idx);
    if e & P == 0 {
        let t = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        // Intermediate entries grant everything; the leaf decides (SDM Vol. 3A §5.6).
        mem.write(table, idx, t | P | W);
        return Ok(t);
    }
    if e & PS != 0 {
        return Err(MapError::Overlap(at));
    }
    Ok(e & ADDR_MASK)
}

/// Identity-maps `[start, end)` with leaf `flags` (P is added), choosing page sizes by
/// alignment; `huge` allows 1 GiB pages (CPUID 80000001h EDX bit 26).
pub fn identity_map(
    mem: &mut dyn TableMem,
    root: u64,
    start: u64,
    end: u64,
    flags: u64,
    huge: bool,
) -> Result<MapStats, MapError> {
    for a in [start, end] {
        if a % KIB4 != 0 {
            return Err(MapError::Unaligned(a));
        }
    }
    let mut stats = MapStats::default();
    let mut va = start;
    while va < end {
        let left = end - va;
        let pdpt = next_table(mem, root, index(va, 3), va)?;
        if huge && va.is_multiple_of(GIB1) && left >= GIB1 {
            mem.write(pdpt, index(va, 2), va | flags | P | PS);
            stats.huge += 1;
            va += GIB1;
            continue;
        }
        let pd = next_table(mem, pdpt, index(va, 2), va)?;
        if va.is_multiple_of(MIB2) && left >= MIB2 {
            mem.write(pd, index(va, 1), va | flags | P | PS);
            stats.large += 1;
            va += MIB2;
            continue;
        }
        let pt = next_table(mem, pd, index(va, 1), va)?;
        mem.write(pt, index(va, 0), va | flags | P);
        stats.small += 1;
        va += KIB4;
    }
    Ok(stats)
}

/// Walks the tables: the physical address and leaf flags for `virt`, if mapped.
pub fn translate(mem: &dyn TableMem, root: u64, virt: u64) -> Option<(u64, u64)> {
    let mut table = root;
    for level in (0..4).rev() {
        let e = mem.read(table, index(virt, level));
        if e & P == 0 {
            return None;
        }
        let leaf = level == 0 || e & PS != 0;
        if leaf {
            let size = 1u64 << (12 + 9 * level);
            let base = e & ADDR_MASK & !(size - 1);
            return Some((base | (virt & (size - 1)), e & !ADDR_MASK));
        }
        table = e & ADDR_MASK;
    }
    None
}

/// A page-table memory for host tests: sparse tables, optionally a limit on how many.
#[cfg(test)]
pub(crate) mod testing {
    use super::TableMem;
    use std::collections::HashMap;

    #[derive(Default)]
    pub(crate) struct Fake {
        tables: HashMap<u64, Box<[u64; 512]>>,
        next: u64,
        pub(crate) limit: usize,
    }

    impl TableMem for Fake {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.limit != 0 && self.tables.len() >= self.limit {
                return None;
            }
            self.next += 0x1000;
            self.tables.insert(self.next, Box::new([0; 512]));
            Some(self.next)
        }
        fn read(&self, t: u64, i: usize) -> u64 {
            self.tables[&t][i]
        }
        fn write(&mut self, t: u64, i: usize, v: u64) {
            self.tables.get_mut(&t).unwrap()[i] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Fake;
    use super::*;

    #[test]
    fn range_uses_the_largest_pages_alignment_allows() {
        let mut m = Fake::default();
        let root = m.alloc_table().unwrap();
        let s = identity_map(&mut m, root, 0x1000, 0x8000_0000 + 0x40_1000, W | NX, true).unwrap();
        // 0x1000..2M: 511 small; 2M..1G: 511 large; 1G..2G: 1 huge; 2G..2G+4M: 2 large; +1 small.
        assert_eq!(s, MapStats { small: 512, large: 513, huge: 1 });
        assert_eq!(translate(&m, root, 0x1234), Some((0x1234, W | NX | P)));
        assert_eq!(translate(&m, root, 0x4000_0123).map(|t| t.0), Some(0x4000_0123));
        assert_eq!(translate(&m, root, 0x8040_0fff).map(|t| t.0), Some(0x8040_0fff));
        assert_eq!(translate(&m, root, 0x0), None);
        assert_eq!(translate(&m, root, 0x8040_1000), None);
    }

    #[test]
    fn without_huge_pages_gigabytes_become_2mib_pages() {
        let mut m = Fake::default();
        let root = m.alloc_table().unwrap();
        let s = identity_map(&mut m, root, 0, 1 << 31, W, false).unwrap();
        assert_eq!(s, MapStats { small: 0, large: 1024, huge: 0 });
    }

    #[test]
    fn neighbouring_ranges_with_different_rights_keep_their_own_flags() {
        let mut m = Fake::default();
        let root = m.alloc_table().unwrap();
        identity_map(&mut m, root, 0x10_0000, 0x10_3000, 0, false).unwrap();
        identity_map(&mut m, root, 0x10_3000, 0x20_0000, W | NX, false).unwrap();
        assert_eq!(translate(&m, root, 0x10_2000).unwrap().1, P);
        assert_eq!(translate(&m, root, 0x10_3000).unwrap().1, P | W | NX);
    }

    #[test]
    fn errors_are_values() {
        let mut m = Fake::default();
        m.limit = 2;
        let root = m.alloc_table().unwrap();
        assert_eq!(
            identity_map(&mut m, root, 0x10, 0x1000, 0, false),
            Err(MapError::Unaligned(0x10))
        );
        assert_eq!(identity_map(&mut m, root, 0, 0x1000, 0, false), Err(MapError::OutOfMemory));
        let mut m = Fake::default();
        let root = m.alloc_table().unwrap();
        identity_map(&mut m, root, 0, 1 << 30, 0, true).unwrap();
        assert_eq!(
            identity_map(&mut m, root, 0x1000, 0x2000, 0, true),
            Err(MapError::Overlap(0x1000))
        );
    }
}
