//! Guest RAM on this node: 2 MiB chunks of the guest pool behind the EPT. The low part is
//! mapped at start; the top [`LAZY`] bytes start unmapped and are mapped page by page on first
//! touch (the path remote pages will take). Rights change only through [`NestedPaging`].

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::dispatch::Fault;
use super::ept::{self, Ept, EptError, NestedPaging};
use crate::mem::frames::FrameAllocator;
use crate::mem::regions::Region;
use crate::mem::tables::IdentityTables;
use crate::paging::{MapError, MapStats};

/// The top of guest RAM mapped on demand.
pub const LAZY: u64 = 4 << 20;
const MIB2: u64 = 2 << 20;

/// EPT tables in frames from the reserve.
type Reserve = IdentityTables<&'static Mutex<FrameAllocator>>;

/// The guest's RAM and its nested page tables.
pub struct GuestMemory {
    /// Bytes of guest RAM at guest-physical 0.
    pub ram: u64,
    chunks: Vec<u64>,
    ept: Mutex<(Ept, Reserve)>,
    eptp: u64,
    generation: AtomicU64,
    faults: AtomicU64,
}

impl GuestMemory {
    /// Takes up to `limit` bytes of 2 MiB chunks from `pool`, zeroes them and maps all but the
    /// lazy top. Fails when fewer than `min` bytes are there.
    pub fn new(
        frames: &'static Mutex<FrameAllocator>,
        pool: &[Region],
        limit: u64,
        min: u64,
    ) -> Result<GuestMemory, EptError> {
        let mut chunks = Vec::new();
        for r in pool {
            let mut a = r.start.next_multiple_of(MIB2);
            while a + MIB2 <= r.end && (chunks.len() as u64) * MIB2 < limit {
                chunks.push(a);
                a += MIB2;
            }
        }
        let ram = chunks.len() as u64 * MIB2;
        if ram < min.max(LAZY + MIB2) {
            return Err(EptError::Map(MapError::OutOfMemory));
        }
        let mut tm = IdentityTables(frames);
        let ept = Ept::new(&mut tm)?;
        for (i, c) in chunks.iter().enumerate() {
            let gpa = i as u64 * MIB2;
            if gpa + MIB2 <= ram - LAZY {
                ept.map(&mut tm, gpa, *c, MIB2, ept::RWX)?;
            }
        }
        for c in &chunks {
            // SAFETY: guest RAM chunks are pool frames now owned by the guest, identity-mapped.
            unsafe { core::ptr::write_bytes(*c as *mut u8, 0, MIB2 as usize) };
        }
        Ok(GuestMemory {
            ram,
            chunks,
            eptp: ept.eptp(),
            ept: Mutex::new((ept, tm)),
            generation: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        })
    }

    /// The EPT pointer every vCPU of this node loads.
    pub fn eptp(&self) -> u64 {
        self.eptp
    }

    fn hpa(&self, gpa: u64) -> u64 {
        self.chunks[(gpa / MIB2) as usize] + gpa % MIB2
    }

    /// Copies `bytes` into guest RAM at `gpa`; false (nothing written) when they do not fit.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> bool {
        if gpa.checked_add(bytes.len() as u64).is_none_or(|end| end > self.ram) {
            return false;
        }
        let mut done = 0;
        while done < bytes.len() {
            let g = gpa + done as u64;
            let n = ((MIB2 - g % MIB2) as usize).min(bytes.len() - done);
            // SAFETY: guest RAM chunks are pool frames owned by this guest, identity-mapped; the
            // range stays inside one chunk, and `g + n <= ram` was checked above.
            unsafe {
                core::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), self.hpa(g) as *mut u8, n);
            }
            done += n;
        }
        true
    }

    /// Bumped when rights went down; each vCPU flushes before its next entry when behind.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Nested page faults served.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Answers a nested page fault: RAM is all local on one node, so a missing page is mapped
    /// and a missing right granted; anything outside RAM is denied.
    pub fn fault(&self, gpa: u64, _write: bool, _exec: bool) -> Fault {
        if gpa >= self.ram {
            return Fault::Deny("EPT violation outside guest memory (denied)");
        }
        let page = gpa & !0xfff;
        let current = {
            let g = self.ept.lock();
            g.0.translate(&g.1, page)
        };
        // Mapping or widening rights needs no invalidation: the violation itself dropped the
        // stale translation (SDM Vol. 3C §29.4.3.1).
        let mut n = Paging(self);
        let done = match current {
            Some(_) => n.set_rights(page, ept::RWX),
            None => n.map(page, self.hpa(page), 0x1000, ept::RWX).map(|_| ()).map_err(Into::into),
        };
        if let Err(e) = done {
            crate::error!("hv: cannot map gpa {gpa:#x}: {e}");
            return Fault::Deny("EPT update failed");
        }
        self.faults.fetch_add(1, Ordering::Relaxed);
        Fault::Mapped
    }

    /// Test hook: sets the rights of the guest page at `gpa`, then has every vCPU flush.
    /// Addresses outside guest RAM are refused before any table is touched.
    pub fn protect(&self, gpa: u64, rights: u64) -> bool {
        if gpa >= self.ram {
            return false;
        }
        let mut n = Paging(self);
        let ok = n.set_rights(gpa & !0xfff, rights & ept::RWX).is_ok();
        if ok {
            n.invalidate();
        }
        ok
    }
}

/// The guest's EPT behind the [`NestedPaging`] seam.
struct Paging<'a>(&'a GuestMemory);

impl NestedPaging for Paging<'_> {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, rights: u64) -> Result<MapStats, MapError> {
        let mut g = self.0.ept.lock();
        let (ept, tm) = &mut *g;
        ept.map(tm, gpa, hpa, len, rights)
    }

    fn set_rights(&mut self, gpa: u64, rights: u64) -> Result<(), EptError> {
        let mut g = self.0.ept.lock();
        let (ept, tm) = &mut *g;
        ept.set_rights(tm, gpa, rights)
    }

    fn invalidate(&mut self) {
        // Each vCPU compares generations before entering and flushes when behind; the caller
        // kicks running ones so they exit now.
        self.0.generation.fetch_add(1, Ordering::SeqCst);
    }
}
