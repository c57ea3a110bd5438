//! Extended page tables (SDM Vol. 3C §29.3): 4-level, write-back, 2 MiB and 4 KiB leaves with
//! per-page read/write/execute rights. Table memory sits behind [`TableMem`] exactly like the
//! hypervisor's own tables in [`crate::paging`], so the same code fills frames from the reserve
//! in the firmware and a fake memory in host tests. INVEPT is the backend's job
//! ([`NestedPaging::invalidate`]).

use crate::paging::{MapError, MapStats, TableMem};

/// Read allowed.
pub const R: u64 = 1 << 0;
/// Write allowed.
pub const W: u64 = 1 << 1;
/// Instruction fetch allowed.
pub const X: u64 = 1 << 2;
/// All rights.
pub const RWX: u64 = R | W | X;
/// Memory type write-back in a leaf (bits 5:3 = 6, SDM Vol. 3C §29.3.7).
const MT_WB: u64 = 6 << 3;
/// Leaf is a large page (in a PDE: 2 MiB).
const LARGE: u64 = 1 << 7;
/// Address bits of an entry.
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

const KIB4: u64 = 1 << 12;
const MIB2: u64 = 1 << 21;

/// The map/unmap/set-rights interface the fault handler and later the coherence engine use
/// (docs/design.md §2 `NestedPaging`).
pub trait NestedPaging {
    /// Maps `[gpa, gpa+len)` to `[hpa, hpa+len)` with `rights` (page sizes by alignment).
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, rights: u64) -> Result<MapStats, MapError>;
    /// Changes the rights of the 4 KiB page at `gpa` (0 = unmapped); splits a 2 MiB page.
    fn set_rights(&mut self, gpa: u64, rights: u64) -> Result<(), EptError>;
    /// Drops cached translations on every CPU that may hold them.
    fn invalidate(&mut self);
}

/// Why an EPT change could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    /// Table memory or alignment (as for the hypervisor's own tables).
    Map(MapError),
    /// Rights were granted on a page that has no frame behind it.
    NotMapped(u64),
}

impl From<MapError> for EptError {
    fn from(e: MapError) -> Self {
        EptError::Map(e)
    }
}

impl core::fmt::Display for EptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EptError::Map(e) => write!(f, "{e}"),
            EptError::NotMapped(g) => write!(f, "gpa {g:#x} has no frame to grant rights on"),
        }
    }
}

fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * level)) & 0x1ff) as usize
}

/// A set of EPT tables, by the physical address of its PML4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ept {
    root: u64,
}

impl Ept {
    /// Empty tables: nothing mapped.
    pub fn new(mem: &mut dyn TableMem) -> Result<Ept, MapError> {
        Ok(Ept { root: mem.alloc_table().ok_or(MapError::OutOfMemory)? })
    }

    /// The EPT pointer: WB structures, 4-level walk (SDM Vol. 3C §25.6.11).
    pub fn eptp(&self) -> u64 {
        self.root | (3 << 3) | 6
    }

    fn next(mem: &mut dyn TableMem, table: u64, idx: usize, at: u64) -> Result<u64, MapError> {
        let e = mem.read(table, idx);
        if e & RWX == 0 {
            let t = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            mem.write(table, idx, t | RWX);
            return Ok(t);
        }
        if e & LARGE != 0 {
            return Err(MapError::Overlap(at));
        }
        Ok(e & ADDR)
    }

    /// The page directory covering `gpa`.
    fn pd(&self, mem: &mut dyn TableMem, gpa: u64) -> Result<u64, MapError> {
        let pdpt = Self::next(mem, self.root, index(gpa, 3), gpa)?;
        Self::next(mem, pdpt, index(gpa, 2), gpa)
    }

    /// The page directory covering `gpa` if the tables down to it exist.
    fn existing_pd(&self, mem: &dyn TableMem, gpa: u64) -> Result<Option<u64>, MapError> {
        let mut table = self.root;
        for level in [3, 2] {
            let e = mem.read(table, index(gpa, level));
            if e & RWX == 0 {
                return Ok(None);
            }
            if e & LARGE != 0 {
                return Err(MapError::Overlap(gpa));
            }
            table = e & ADDR;
        }
        Ok(Some(table))
    }

    /// Maps `[gpa, gpa+len)` → `[hpa, …)` with 2 MiB leaves where both addresses and the rest
    /// of the length allow, 4 KiB leaves elsewhere. Existing 4 KiB leaves are replaced.
    pub fn map(
        &self,
        mem: &mut dyn TableMem,
        gpa: u64,
        hpa: u64,
        len: u64,
        rights: u64,
    ) -> Result<MapStats, MapError> {
        for a in [gpa, hpa, len] {
            if !a.is_multiple_of(KIB4) {
                return Err(MapError::Unaligned(a));
            }
        }
        let mut s = MapStats::default();
        let mut off = 0;
        while off < len {
            let (g, h) = (gpa + off, hpa + off);
            let pd = self.pd(mem, g)?;
            let pde = mem.read(pd, index(g, 1));
            let can_large = g.is_multiple_of(MIB2) && h.is_multiple_of(MIB2) && len - off >= MIB2;
            if can_large && (pde & RWX == 0 || pde & LARGE != 0) {
                mem.write(pd, index(g, 1), h | rights | MT_WB | LARGE);
                s.large += 1;
                off += MIB2;
                continue;
            }
            let pt = Self::next(mem, pd, index(g, 1), g)?;
            mem.write(pt, index(g, 0), h | rights | MT_WB);
            s.small += 1;
            off += KIB4;
        }
        Ok(s)
    }

    /// Sets the rights of the 4 KiB page at `gpa` (0 makes it not present). A 2 MiB leaf
    /// around it is split into 512 small ones first, keeping the others' rights.
    pub fn set_rights(
        &self,
        mem: &mut dyn TableMem,
        gpa: u64,
        rights: u64,
    ) -> Result<(), EptError> {
        if !gpa.is_multiple_of(KIB4) {
            return Err(MapError::Unaligned(gpa).into());
        }
        // Walk without building: rights on an address nothing maps must cost no tables (a
        // guest could otherwise spend the hypervisor's reserve one request at a time).
        let Some(pd) = self.existing_pd(mem, gpa)? else {
            return if rights == 0 { Ok(()) } else { Err(EptError::NotMapped(gpa)) };
        };
        let pde = mem.read(pd, index(gpa, 1));
        if pde & RWX == 0 {
            // Nothing there: removing rights is done; granting needs a frame (use `map`).
            return if rights == 0 { Ok(()) } else { Err(EptError::NotMapped(gpa)) };
        }
        let pt = if pde & LARGE != 0 {
            let pt = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            let base = pde & ADDR;
            let keep = pde & (RWX | MT_WB);
            for i in 0..512 {
                mem.write(pt, i, (base + i as u64 * KIB4) | keep);
            }
            mem.write(pd, index(gpa, 1), pt | RWX);
            pt
        } else {
            pde & ADDR
        };
        let e = mem.read(pt, index(gpa, 0));
        if e & ADDR == 0 && e & RWX == 0 && rights != 0 {
            return Err(EptError::NotMapped(gpa));
        }
        mem.write(pt, index(gpa, 0), (e & !RWX) | rights);
        Ok(())
    }

    /// The host-physical address and rights for `gpa`, if any right is granted.
    pub fn translate(&self, mem: &dyn TableMem, gpa: u64) -> Option<(u64, u64)> {
        let mut table = self.root;
        for level in (0..4).rev() {
            let e = mem.read(table, index(gpa, level));
            if e & RWX == 0 {
                return None;
            }
            if level == 0 || e & LARGE != 0 {
                let size = 1u64 << (12 + 9 * level);
                return Some(((e & ADDR & !(size - 1)) | (gpa & (size - 1)), e & RWX));
            }
            table = e & ADDR;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::testing::Fake;

    #[test]
    fn aligned_ranges_get_2mib_leaves_and_the_rest_4kib() {
        let mut m = Fake::default();
        let ept = Ept::new(&mut m).unwrap();
        let s = ept.map(&mut m, 0, 0x4000_0000, 4 << 20, RWX).unwrap();
        assert_eq!(s, MapStats { small: 0, large: 2, huge: 0 });
        let s = ept.map(&mut m, 4 << 20, 0x5000_1000, 2 << 20, RW_()).unwrap();
        assert_eq!(s, MapStats { small: 512, large: 0, huge: 0 });
        assert_eq!(ept.translate(&m, 0x1234), Some((0x4000_1234, RWX)));
        assert_eq!(ept.translate(&m, (4 << 20) + 5), Some((0x5000_1005, R | W)));
        assert_eq!(ept.translate(&m, 6 << 20), None);
    }

    #[allow(non_snake_case)]
    fn RW_() -> u64 {
        R | W
    }

    #[test]
    fn leaves_are_write_back_and_eptp_says_4_level_wb() {
        let mut m = Fake::default();
        let ept = Ept::new(&mut m).unwrap();
        ept.map(&mut m, 0x20_0000, 0x20_0000, 0x20_0000, RWX).unwrap();
        assert_eq!(ept.eptp() & 0xfff, 0x1e);
        let pdpt = m.read(ept.root, 0) & ADDR;
        let pd = m.read(pdpt, 0) & ADDR;
        assert_eq!(m.read(pd, 1), 0x20_0000 | RWX | MT_WB | LARGE);
    }

    #[test]
    fn rights_on_one_page_split_the_large_page_and_keep_the_neighbours() {
        let mut m = Fake::default();
        let ept = Ept::new(&mut m).unwrap();
        ept.map(&mut m, 0, 0x80_0000, 2 << 20, RWX).unwrap();
        ept.set_rights(&mut m, 0x3000, R).unwrap();
        assert_eq!(ept.translate(&m, 0x3010), Some((0x80_3010, R)));
        assert_eq!(ept.translate(&m, 0x2000), Some((0x80_2000, RWX)));
        assert_eq!(ept.translate(&m, 0x1f_f000), Some((0x9f_f000, RWX)));
        ept.set_rights(&mut m, 0x3000, 0).unwrap();
        assert_eq!(ept.translate(&m, 0x3000), None);
        ept.set_rights(&mut m, 0x3000, R | W).unwrap();
        assert_eq!(ept.translate(&m, 0x3000), Some((0x80_3000, R | W)));
    }

    #[test]
    fn single_pages_can_be_mapped_on_demand_next_to_others() {
        let mut m = Fake::default();
        let ept = Ept::new(&mut m).unwrap();
        ept.map(&mut m, 0x10_0000, 0x90_0000, 0x1000, RWX).unwrap();
        ept.map(&mut m, 0x10_2000, 0x70_0000, 0x1000, R).unwrap();
        assert_eq!(ept.translate(&m, 0x10_1000), None);
        assert_eq!(ept.translate(&m, 0x10_2000), Some((0x70_0000, R)));
    }

    #[test]
    fn errors_are_values() {
        let mut m = Fake::default();
        let ept = Ept::new(&mut m).unwrap();
        assert_eq!(ept.map(&mut m, 0x10, 0, 0x1000, R), Err(MapError::Unaligned(0x10)));
        assert_eq!(ept.set_rights(&mut m, 0x10, 0), Err(EptError::Map(MapError::Unaligned(0x10))));
        assert_eq!(ept.set_rights(&mut m, 0x5000, R), Err(EptError::NotMapped(0x5000)));
        assert_eq!(ept.set_rights(&mut m, 0x5000, 0), Ok(()));
    }

    #[test]
    fn rights_on_unmapped_addresses_allocate_no_tables() {
        let mut m = Fake::default();
        let ept = Ept::new(&mut m).unwrap();
        ept.map(&mut m, 0, 0x80_0000, 2 << 20, RWX).unwrap();
        m.limit = 3; // root, PDPT, PD: not one table more
        for i in 1..3000u64 {
            let gpa = i << 30;
            assert_eq!(ept.set_rights(&mut m, gpa, R), Err(EptError::NotMapped(gpa)));
            assert_eq!(ept.set_rights(&mut m, gpa, 0), Ok(()));
        }
        // With no table to spare, splitting the 2 MiB leaf fails as a value.
        assert_eq!(ept.set_rights(&mut m, 0x3000, R), Err(EptError::Map(MapError::OutOfMemory)));
    }
}
