//! Nested page tables, vendor-neutral: a 4-level table walker with 2 MiB and 4 KiB leaves and
//! per-page rights expressed as [`Access`] (none / read-exec / read-write-exec), over a
//! [`Format`] that names the entry bits of one vendor (`ept`: Intel EPT, `npt`: AMD nested
//! paging). Table memory sits behind [`TableMem`] exactly like the hypervisor's own tables in
//! [`crate::paging`], so the same code fills frames from the reserve in the firmware and a fake
//! memory in host tests. TLB invalidation is the backend's job ([`NestedPaging::invalidate`]).

use crate::paging::{MapError, MapStats, TableMem};

/// What a guest may do with a page: the only rights generic code and the coherence glue use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Not mapped: every access faults.
    None,
    /// Reads and instruction fetches.
    ReadExec,
    /// Reads, writes and instruction fetches.
    All,
}

impl Access {
    /// The rights of the test hypercall PROTECT (bit 0 read, 1 write, 2 execute): nothing
    /// readable maps nothing, a write right maps everything, else read-exec.
    pub fn from_test_bits(bits: u64) -> Access {
        if bits & 1 == 0 {
            Access::None
        } else if bits & 2 != 0 {
            Access::All
        } else {
            Access::ReadExec
        }
    }
}

/// The entry bits of one vendor's nested tables.
#[derive(Debug, PartialEq, Eq)]
pub struct Format {
    /// Any of these bits set: the entry is present.
    pub present: u64,
    /// Bits of an entry that points to the next table (all rights: leaves decide).
    pub table: u64,
    /// Leaf bits for [`Access::ReadExec`].
    pub read_exec: u64,
    /// Leaf bits for [`Access::All`].
    pub all: u64,
    /// The bit that grants writes.
    pub write: u64,
    /// Further bits of every leaf (EPT: the memory type).
    pub leaf: u64,
    /// Bits the table pointer carries beside the root's address (EPTP: walk length, type).
    pub pointer: u64,
}

impl Format {
    fn bits(&self, a: Access) -> u64 {
        match a {
            Access::None => 0,
            Access::ReadExec => self.read_exec,
            Access::All => self.all,
        }
    }

    fn access(&self, e: u64) -> Access {
        if e & self.present == 0 {
            Access::None
        } else if e & self.write != 0 {
            Access::All
        } else {
            Access::ReadExec
        }
    }

    /// Rights bits of a leaf (cleared when rights change; the address stays).
    fn rights_mask(&self) -> u64 {
        self.present | self.all
    }
}

/// Leaf is a large page (in a PDE: 2 MiB); bit 7 in both EPT and AMD long-mode tables.
const LARGE: u64 = 1 << 7;
/// Address bits of an entry.
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

const KIB4: u64 = 1 << 12;
const MIB2: u64 = 1 << 21;

/// The map/unmap/set-rights interface the fault handler and the coherence engine use
/// (docs/design.md §6).
pub trait NestedPaging {
    /// Maps `[gpa, gpa+len)` to `[hpa, hpa+len)` with `rights` (page sizes by alignment).
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, rights: Access) -> Result<MapStats, MapError>;
    /// Changes the rights of the 4 KiB page at `gpa` (None = unmapped); splits a 2 MiB page.
    fn set_rights(&mut self, gpa: u64, rights: Access) -> Result<(), NestedError>;
    /// Drops cached translations on every CPU that may hold them.
    fn invalidate(&mut self);
}

/// Why a nested-table change could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedError {
    /// Table memory or alignment (as for the hypervisor's own tables).
    Map(MapError),
    /// Rights were granted on a page that has no frame behind it.
    NotMapped(u64),
}

impl From<MapError> for NestedError {
    fn from(e: MapError) -> Self {
        NestedError::Map(e)
    }
}

impl core::fmt::Display for NestedError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NestedError::Map(e) => write!(f, "{e}"),
            NestedError::NotMapped(g) => write!(f, "gpa {g:#x} has no frame to grant rights on"),
        }
    }
}

fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * level)) & 0x1ff) as usize
}

/// A set of nested tables in format `fmt`, by the physical address of its top table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tables {
    root: u64,
    fmt: &'static Format,
}

impl Tables {
    /// Empty tables: nothing mapped.
    pub fn new(mem: &mut dyn TableMem, fmt: &'static Format) -> Result<Tables, MapError> {
        Ok(Tables { root: mem.alloc_table().ok_or(MapError::OutOfMemory)?, fmt })
    }

    /// Tables that exist at `root` (a backend reading them, e.g. to fetch guest bytes).
    pub fn at(root: u64, fmt: &'static Format) -> Tables {
        Tables { root, fmt }
    }

    /// What the backend loads: the EPT pointer (SDM Vol. 3C §25.6.11) or nCR3 (AMD APM
    /// Vol. 2 §15.25.3).
    pub fn pointer(&self) -> u64 {
        self.root | self.fmt.pointer
    }

    fn next(
        &self,
        mem: &mut dyn TableMem,
        table: u64,
        idx: usize,
        at: u64,
    ) -> Result<u64, MapError> {
        let e = mem.read(table, idx);
        if e & self.fmt.present == 0 {
            let t = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            mem.write(table, idx, t | self.fmt.table);
            return Ok(t);
        }
        if e & LARGE != 0 {
            return Err(MapError::Overlap(at));
        }
        Ok(e & ADDR)
    }

    /// The page directory covering `gpa`.
    fn pd(&self, mem: &mut dyn TableMem, gpa: u64) -> Result<u64, MapError> {
        let pdpt = self.next(mem, self.root, index(gpa, 3), gpa)?;
        self.next(mem, pdpt, index(gpa, 2), gpa)
    }

    /// The page directory covering `gpa` if the tables down to it exist.
    fn existing_pd(&self, mem: &dyn TableMem, gpa: u64) -> Result<Option<u64>, MapError> {
        let mut table = self.root;
        for level in [3, 2] {
            let e = mem.read(table, index(gpa, level));
            if e & self.fmt.present == 0 {
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
        rights: Access,
    ) -> Result<MapStats, MapError> {
        for a in [gpa, hpa, len] {
            if !a.is_multiple_of(KIB4) {
                return Err(MapError::Unaligned(a));
            }
        }
        let f = self.fmt;
        let bits = f.bits(rights) | if rights == Access::None { 0 } else { f.leaf };
        let mut s = MapStats::default();
        let mut off = 0;
        while off < len {
            let (g, h) = (gpa + off, hpa + off);
            let pd = self.pd(mem, g)?;
            let pde = mem.read(pd, index(g, 1));
            let can_large = g.is_multiple_of(MIB2) && h.is_multiple_of(MIB2) && len - off >= MIB2;
            if can_large && (pde & f.present == 0 || pde & LARGE != 0) {
                mem.write(pd, index(g, 1), h | bits | LARGE);
                s.large += 1;
                off += MIB2;
                continue;
            }
            let pt = self.next(mem, pd, index(g, 1), g)?;
            mem.write(pt, index(g, 0), h | bits);
            s.small += 1;
            off += KIB4;
        }
        Ok(s)
    }

    /// Sets the rights of the 4 KiB page at `gpa` ([`Access::None`] makes it not present). A
    /// 2 MiB leaf around it is split into 512 small ones first, keeping the others' rights.
    pub fn set_rights(
        &self,
        mem: &mut dyn TableMem,
        gpa: u64,
        rights: Access,
    ) -> Result<(), NestedError> {
        if !gpa.is_multiple_of(KIB4) {
            return Err(MapError::Unaligned(gpa).into());
        }
        let f = self.fmt;
        let none = rights == Access::None;
        // Walk without building: rights on an address nothing maps must cost no tables (a
        // guest could otherwise spend the hypervisor's reserve one request at a time).
        let Some(pd) = self.existing_pd(mem, gpa)? else {
            return if none { Ok(()) } else { Err(NestedError::NotMapped(gpa)) };
        };
        let pde = mem.read(pd, index(gpa, 1));
        if pde & f.present == 0 {
            // Nothing there: removing rights is done; granting needs a frame (use `map`).
            return if none { Ok(()) } else { Err(NestedError::NotMapped(gpa)) };
        }
        let pt = if pde & LARGE != 0 {
            let pt = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            let base = pde & ADDR;
            let keep = pde & !(ADDR | LARGE);
            for i in 0..512 {
                mem.write(pt, i, (base + i as u64 * KIB4) | keep);
            }
            mem.write(pd, index(gpa, 1), pt | f.table);
            pt
        } else {
            pde & ADDR
        };
        let e = mem.read(pt, index(gpa, 0));
        if e & ADDR == 0 && e & f.present == 0 && !none {
            return Err(NestedError::NotMapped(gpa));
        }
        let leaf = if none { 0 } else { f.bits(rights) | f.leaf };
        mem.write(pt, index(gpa, 0), (e & !(f.rights_mask() | f.leaf)) | leaf);
        Ok(())
    }

    /// The host-physical address and rights for `gpa`, if any right is granted.
    pub fn translate(&self, mem: &dyn TableMem, gpa: u64) -> Option<(u64, Access)> {
        let mut table = self.root;
        for level in (0..4).rev() {
            let e = mem.read(table, index(gpa, level));
            if e & self.fmt.present == 0 {
                return None;
            }
            if level == 0 || e & LARGE != 0 {
                let size = 1u64 << (12 + 9 * level);
                return Some(((e & ADDR & !(size - 1)) | (gpa & (size - 1)), self.fmt.access(e)));
            }
            table = e & ADDR;
        }
        None
    }

    /// The raw entry of the 4 KiB or 2 MiB leaf mapping `gpa` (host tests check encodings).
    #[cfg(test)]
    pub fn leaf(&self, mem: &dyn TableMem, gpa: u64) -> Option<u64> {
        let mut table = self.root;
        for level in (0..4).rev() {
            let e = mem.read(table, index(gpa, level));
            if level == 0 || e & LARGE != 0 {
                return Some(e);
            }
            if e & self.fmt.present == 0 {
                return None;
            }
            table = e & ADDR;
        }
        None
    }

    /// The raw entry `idx` of the top table (host tests check the table bits).
    #[cfg(test)]
    pub fn top(&self, mem: &dyn TableMem, idx: usize) -> u64 {
        mem.read(self.root, idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::{ept::EPT, npt::NPT};
    use crate::paging::testing::Fake;

    const FORMATS: [&Format; 2] = [&EPT, &NPT];

    #[test]
    fn aligned_ranges_get_2mib_leaves_and_the_rest_4kib_in_both_formats() {
        for fmt in FORMATS {
            let mut m = Fake::default();
            let t = Tables::new(&mut m, fmt).unwrap();
            let s = t.map(&mut m, 0, 0x4000_0000, 4 << 20, Access::All).unwrap();
            assert_eq!(s, MapStats { small: 0, large: 2, huge: 0 });
            let s = t.map(&mut m, 4 << 20, 0x5000_1000, 2 << 20, Access::ReadExec).unwrap();
            assert_eq!(s, MapStats { small: 512, large: 0, huge: 0 });
            assert_eq!(t.translate(&m, 0x1234), Some((0x4000_1234, Access::All)));
            assert_eq!(t.translate(&m, (4 << 20) + 5), Some((0x5000_1005, Access::ReadExec)));
            assert_eq!(t.translate(&m, 6 << 20), None);
        }
    }

    #[test]
    fn rights_on_one_page_split_the_large_page_and_keep_the_neighbours_in_both_formats() {
        for fmt in FORMATS {
            let mut m = Fake::default();
            let t = Tables::new(&mut m, fmt).unwrap();
            t.map(&mut m, 0, 0x80_0000, 2 << 20, Access::All).unwrap();
            t.set_rights(&mut m, 0x3000, Access::ReadExec).unwrap();
            assert_eq!(t.translate(&m, 0x3010), Some((0x80_3010, Access::ReadExec)));
            assert_eq!(t.translate(&m, 0x2000), Some((0x80_2000, Access::All)));
            assert_eq!(t.translate(&m, 0x1f_f000), Some((0x9f_f000, Access::All)));
            assert_eq!(t.leaf(&m, 0x2000), Some(0x80_2000 | fmt.all | fmt.leaf));
            t.set_rights(&mut m, 0x3000, Access::None).unwrap();
            assert_eq!(t.translate(&m, 0x3000), None);
            assert_eq!(t.leaf(&m, 0x3000).map(|e| e & fmt.present), Some(0));
            t.set_rights(&mut m, 0x3000, Access::All).unwrap();
            assert_eq!(t.translate(&m, 0x3000), Some((0x80_3000, Access::All)));
        }
    }

    #[test]
    fn single_pages_can_be_mapped_on_demand_next_to_others() {
        for fmt in FORMATS {
            let mut m = Fake::default();
            let t = Tables::new(&mut m, fmt).unwrap();
            t.map(&mut m, 0x10_0000, 0x90_0000, 0x1000, Access::All).unwrap();
            t.map(&mut m, 0x10_2000, 0x70_0000, 0x1000, Access::ReadExec).unwrap();
            assert_eq!(t.translate(&m, 0x10_1000), None);
            assert_eq!(t.translate(&m, 0x10_2000), Some((0x70_0000, Access::ReadExec)));
            // Mapping again with fewer rights replaces the leaf.
            t.map(&mut m, 0x10_0000, 0x90_0000, 0x1000, Access::ReadExec).unwrap();
            assert_eq!(t.translate(&m, 0x10_0000), Some((0x90_0000, Access::ReadExec)));
        }
    }

    #[test]
    fn errors_are_values() {
        for fmt in FORMATS {
            let mut m = Fake::default();
            let t = Tables::new(&mut m, fmt).unwrap();
            let r = Access::ReadExec;
            assert_eq!(t.map(&mut m, 0x10, 0, 0x1000, r), Err(MapError::Unaligned(0x10)));
            let e = Err(NestedError::Map(MapError::Unaligned(0x10)));
            assert_eq!(t.set_rights(&mut m, 0x10, Access::None), e);
            assert_eq!(t.set_rights(&mut m, 0x5000, r), Err(NestedError::NotMapped(0x5000)));
            assert_eq!(t.set_rights(&mut m, 0x5000, Access::None), Ok(()));
        }
    }

    #[test]
    fn rights_on_unmapped_addresses_allocate_no_tables() {
        for fmt in FORMATS {
            let mut m = Fake::default();
            let t = Tables::new(&mut m, fmt).unwrap();
            t.map(&mut m, 0, 0x80_0000, 2 << 20, Access::All).unwrap();
            m.limit = 3; // root, PDPT, PD: not one table more
            for i in 1..3000u64 {
                let gpa = i << 30;
                let r = t.set_rights(&mut m, gpa, Access::ReadExec);
                assert_eq!(r, Err(NestedError::NotMapped(gpa)));
                assert_eq!(t.set_rights(&mut m, gpa, Access::None), Ok(()));
            }
            // With no table to spare, splitting the 2 MiB leaf fails as a value.
            let r = t.set_rights(&mut m, 0x3000, Access::ReadExec);
            assert_eq!(r, Err(NestedError::Map(MapError::OutOfMemory)));
        }
    }

    #[test]
    fn the_test_hypercall_bits_become_neutral_rights() {
        assert_eq!(Access::from_test_bits(0), Access::None);
        assert_eq!(Access::from_test_bits(0b100), Access::None);
        assert_eq!(Access::from_test_bits(0b101), Access::ReadExec);
        assert_eq!(Access::from_test_bits(0b001), Access::ReadExec);
        assert_eq!(Access::from_test_bits(0b111), Access::All);
    }
}
