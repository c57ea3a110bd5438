//! Guest RAM on this node: the range it is home of, in 2 MiB chunks of the guest pool, and a
//! bounded cache of 4 KiB frames for pages homed elsewhere (`cache`), all behind the nested
//! page tables (EPT or AMD format, `nested`).
//! Nothing is mapped at start: every page is mapped on its first fault with the rights the
//! coherence engine gives (`coherent`), so the tables never hold a right the engine does not
//! know of.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use gestalt_coherence::{Gfn, PageStore, Rights, VcpuId, PAGE_SIZE};
use spin::Mutex;

use super::cache::FrameCache;
use super::coherent::LocalNode;
use super::nested::{Access, Format, NestedError, NestedPaging, Tables};
use super::vcpus::VcpuSet;
use super::zeromap::ZeroMap;
use crate::mem::frames::FrameAllocator;
use crate::mem::regions::Region;
use crate::mem::tables::IdentityTables;
use crate::paging::{MapError, MapStats};

const MIB2: u64 = 2 << 20;
const PAGE: u64 = PAGE_SIZE as u64;

/// Bytes of guest RAM `pool` can give: its whole 2 MiB chunks.
pub fn capacity(pool: &[Region]) -> u64 {
    pool.iter()
        .map(|r| {
            let start = r.start.next_multiple_of(MIB2);
            r.end.saturating_sub(start) / MIB2 * MIB2
        })
        .sum()
}

/// Nested tables in frames from the reserve.
type Reserve = IdentityTables<&'static Mutex<FrameAllocator>>;

/// The guest's RAM as this node holds it, and its nested page tables.
pub struct GuestMemory {
    /// Bytes of guest RAM at guest-physical 0 (all nodes' shares).
    pub ram: u64,
    /// The range this node is home of: [base, base + len).
    home: (u64, u64),
    chunks: Vec<u64>,
    zeroed: ZeroMap,
    cache: Mutex<FrameCache>,
    tables: Mutex<(Tables, Reserve)>,
    pointer: u64,
    faults: AtomicU64,
    lost: AtomicU64,
}

impl GuestMemory {
    /// Guest RAM of `ram` bytes, of which this node is home of `home` (base, bytes: whole
    /// 2 MiB chunks), with `cache_frames` frames for pages homed elsewhere. Everything comes
    /// from `pool` (home pages read as zero until written); the nested tables are in the
    /// backend's `format`.
    pub fn new(
        frames: &'static Mutex<FrameAllocator>,
        pool: &[Region],
        ram: u64,
        home: (u64, u64),
        cache_frames: usize,
        format: &'static Format,
    ) -> Result<GuestMemory, NestedError> {
        let home_chunks = (home.1 / MIB2) as usize;
        let cache_chunks = cache_frames.div_ceil(512);
        let mut chunks = Vec::new();
        for r in pool {
            let mut a = r.start.next_multiple_of(MIB2);
            while a + MIB2 <= r.end && chunks.len() < home_chunks + cache_chunks {
                chunks.push(a);
                a += MIB2;
            }
        }
        if chunks.len() < home_chunks + cache_chunks || !home.1.is_multiple_of(MIB2) {
            return Err(NestedError::Map(MapError::OutOfMemory));
        }
        // Home pages are zeroed on first use (`home_frame`); a cache frame is always filled
        // whole by the page it receives (`install`).
        let cache: Vec<u64> = chunks[home_chunks..]
            .iter()
            .flat_map(|c| (0..512).map(move |i| c + i * PAGE))
            .take(cache_frames)
            .collect();
        chunks.truncate(home_chunks);
        let mut tm = IdentityTables(frames);
        let tables = Tables::new(&mut tm, format)?;
        Ok(GuestMemory {
            ram,
            home,
            chunks,
            zeroed: ZeroMap::new((home.1 / PAGE) as usize),
            cache: Mutex::new(FrameCache::new(cache)),
            pointer: tables.pointer(),
            tables: Mutex::new((tables, tm)),
            faults: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        })
    }

    /// The nested-table pointer (EPTP or nCR3) every vCPU of this node loads.
    pub fn nested_pointer(&self) -> u64 {
        self.pointer
    }

    fn is_home(&self, gpa: u64) -> bool {
        gpa.checked_sub(self.home.0).is_some_and(|off| off < self.home.1)
    }

    /// The host address of guest-physical `gpa` in this node's home range, its page zeroed
    /// if this is the page's first use.
    fn home_hpa(&self, gpa: u64) -> u64 {
        let off = gpa - self.home.0;
        let hpa = self.chunks[(off / MIB2) as usize] + off % MIB2;
        self.zeroed.ensure((off / PAGE) as usize, || {
            // SAFETY: the page's 4 KiB frame is pool memory owned by this guest, identity-
            // mapped, and unused so far: nothing maps it and nothing copies from it yet.
            unsafe { core::ptr::write_bytes((hpa & !(PAGE - 1)) as *mut u8, 0, PAGE as usize) };
        });
        hpa
    }

    /// The host frame holding `gfn` here: its home frame, or the cache frame of a remote copy.
    fn frame(&self, gfn: Gfn) -> Option<u64> {
        let gpa = gfn.0 * PAGE;
        if self.is_home(gpa) {
            Some(self.home_hpa(gpa))
        } else {
            self.cache.lock().frame(gfn.0)
        }
    }

    /// The cache of remote frames: (in use, capacity, pages that found none).
    pub fn cache_use(&self) -> (usize, usize, u64) {
        let c = self.cache.lock();
        (c.in_use(), c.capacity(), c.overflows())
    }

    /// Pages whose contents had no frame to go to or come from (a broken invariant; the
    /// guest is stopped when this is not zero).
    pub fn lost_pages(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Copies `bytes` into this node's home range at `gpa`; false (nothing written) when they
    /// do not fit there.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> bool {
        let end = gpa.checked_add(bytes.len() as u64);
        if !self.is_home(gpa) || end.is_none_or(|e| e > self.home.0 + self.home.1) {
            return false;
        }
        let mut done = 0;
        while done < bytes.len() {
            let g = gpa + done as u64;
            let n = ((PAGE - g % PAGE) as usize).min(bytes.len() - done);
            // SAFETY: home chunks are pool frames owned by this guest, identity-mapped; the
            // range stays inside one page and inside the home range (checked above).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    bytes[done..].as_ptr(),
                    self.home_hpa(g) as *mut u8,
                    n,
                );
            }
            done += n;
        }
        true
    }

    /// Copies guest RAM at `gpa` into `buf` from the pages this node maps now (its own
    /// nested tables say so: a home page another node holds is not read, it may be stale);
    /// false (`buf` partly filled) at the first page it does not map.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let Some(g) = gpa.checked_add(done as u64) else { return false };
            let n = ((PAGE - g % PAGE) as usize).min(buf.len() - done);
            // Under the tables' lock: a page taken away is unmapped (under this lock) before
            // its frame is freed, so the frame read here still holds the page.
            let g2 = self.tables.lock();
            let (t, tm) = &*g2;
            let Some((hpa, _)) = t.translate(tm, g) else { return false };
            // SAFETY: a frame this node's nested tables map for the guest (home or cache
            // frame of the pool, identity-mapped); the range stays inside its page.
            unsafe {
                core::ptr::copy_nonoverlapping(hpa as *const u8, buf[done..].as_mut_ptr(), n);
            }
            drop(g2);
            done += n;
        }
        true
    }

    /// Nested page faults served.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Counts one served fault.
    pub fn count_fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the nested rights of `gfn` (None: unmapped). Rights always map the frame that holds
    /// the page now (a remote page's cache frame changes between its visits).
    pub fn set_rights(&self, gfn: Gfn, rights: Option<Rights>) -> Result<(), NestedError> {
        let gpa = gfn.0 * PAGE;
        if gpa >= self.ram {
            return Err(NestedError::NotMapped(gpa));
        }
        let bits = match rights {
            None => return Paging(self).set_rights(gpa, Access::None),
            Some(Rights::ReadExec) => Access::ReadExec,
            Some(Rights::ReadWriteExec) => Access::All,
        };
        let hpa = self.frame(gfn).ok_or(NestedError::NotMapped(gpa))?;
        // Mapping needs no invalidation: the violation itself dropped the stale translation
        // (SDM Vol. 3C §29.4.3.1; the SVM backend flushes if the same access faults again);
        // a 4 KiB leaf is replaced in place.
        Paging(self).map(gpa, hpa, PAGE, bits).map(|_| ()).map_err(Into::into)
    }

    /// Test hook: sets the rights (PROTECT's R/W/X bits) of the guest page at `gpa` behind the
    /// engine's back (the engine re-maps on the next fault: a spurious fault to it). Addresses
    /// outside guest RAM are refused before any table is touched.
    pub fn protect(&self, gpa: u64, rights: u64) -> bool {
        gpa < self.ram
            && Paging(self).set_rights(gpa & !0xfff, Access::from_test_bits(rights)).is_ok()
    }
}

/// The guest's nested tables behind the [`NestedPaging`] seam (invalidation is the vCPUs' barrier).
struct Paging<'a>(&'a GuestMemory);

impl NestedPaging for Paging<'_> {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, rights: Access) -> Result<MapStats, MapError> {
        let mut g = self.0.tables.lock();
        let (t, tm) = &mut *g;
        t.map(tm, gpa, hpa, len, rights)
    }

    fn set_rights(&mut self, gpa: u64, rights: Access) -> Result<(), NestedError> {
        let mut g = self.0.tables.lock();
        let (t, tm) = &mut *g;
        t.set_rights(tm, gpa, rights)
    }

    fn invalidate(&mut self) {}
}

/// This node as the coherence glue sees it: guest frames, nested tables and vCPUs.
pub struct Here<'a> {
    /// Guest RAM.
    pub mem: &'a GuestMemory,
    /// The vCPUs.
    pub vcpus: &'a VcpuSet,
    /// Global id of the first of them (the engine names vCPUs by global id).
    pub base: usize,
}

impl PageStore for Here<'_> {
    fn copy_out(&mut self, gfn: Gfn, out: &mut Vec<u8>) {
        let Some(f) = self.mem.frame(gfn) else {
            // The engine sends only pages this node holds: a page with no frame is a bug.
            self.mem.lost.fetch_add(1, Ordering::Relaxed);
            out.resize(out.len() + PAGE_SIZE, 0);
            return;
        };
        // SAFETY: a home frame or a cache frame, 4 KiB of pool memory owned by this guest and
        // identity-mapped. It is copied out only after the actions before it stopped local
        // writers (the engine's ordering).
        let page = unsafe { core::slice::from_raw_parts(f as *const u8, PAGE_SIZE) };
        out.extend_from_slice(page);
    }

    fn install(&mut self, gfn: Gfn, data: &[u8]) {
        let gpa = gfn.0 * PAGE;
        let f = if self.mem.is_home(gpa) {
            Some(self.mem.home_hpa(gpa))
        } else {
            self.mem.cache.lock().take(gfn.0)
        };
        let Some(f) = f else {
            self.mem.lost.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let n = data.len().min(PAGE_SIZE);
        // SAFETY: as in `copy_out`; the engine installs only while this node does not map the
        // page, so no vCPU reads or writes the frame meanwhile. The whole frame is written
        // (a cache frame is not zeroed beforehand).
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), f as *mut u8, n);
            core::ptr::write_bytes((f + n as u64) as *mut u8, 0, PAGE_SIZE - n);
        }
    }
}

impl LocalNode for Here<'_> {
    fn set_rights(&mut self, gfn: Gfn, rights: Option<Rights>) -> Result<(), &'static str> {
        self.mem.set_rights(gfn, rights).map_err(|e| match e {
            NestedError::NotMapped(_) => "page outside guest memory",
            NestedError::Map(_) => "nested page table update failed",
        })
    }

    fn flush_barrier(&mut self) {
        self.vcpus.flush_barrier();
    }

    fn release(&mut self, gfn: Gfn) {
        if !self.mem.is_home(gfn.0 * PAGE) {
            self.mem.cache.lock().release(gfn.0);
        }
    }

    fn resume(&mut self, vcpu: VcpuId) {
        if let Some(local) = usize::from(vcpu.0).checked_sub(self.base) {
            self.vcpus.resume(local);
        }
    }
}
