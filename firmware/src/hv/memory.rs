//! Guest RAM on this node: 2 MiB chunks of the guest pool, and the EPT over them. Nothing is
//! mapped at start: every page is mapped on its first fault with the rights the coherence
//! engine gives (`coherent`), so the tables never hold a right the engine does not know of.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use gestalt_coherence::{Gfn, PageStore, Rights, VcpuId, PAGE_SIZE};
use spin::Mutex;

use super::coherent::LocalNode;
use super::ept::{self, Ept, EptError, NestedPaging};
use super::vcpus::VcpuSet;
use crate::mem::frames::FrameAllocator;
use crate::mem::regions::Region;
use crate::mem::tables::IdentityTables;
use crate::paging::{MapError, MapStats};

const MIB2: u64 = 2 << 20;

/// Bytes of guest RAM `pool` can give: its whole 2 MiB chunks.
pub fn capacity(pool: &[Region]) -> u64 {
    pool.iter()
        .map(|r| {
            let start = r.start.next_multiple_of(MIB2);
            r.end.saturating_sub(start) / MIB2 * MIB2
        })
        .sum()
}

/// EPT tables in frames from the reserve.
type Reserve = IdentityTables<&'static Mutex<FrameAllocator>>;

/// The guest's RAM and its nested page tables.
pub struct GuestMemory {
    /// Bytes of guest RAM at guest-physical 0.
    pub ram: u64,
    chunks: Vec<u64>,
    ept: Mutex<(Ept, Reserve)>,
    eptp: u64,
    faults: AtomicU64,
}

impl GuestMemory {
    /// Takes up to `limit` bytes of 2 MiB chunks from `pool` and zeroes them. Fails when
    /// fewer than `min` bytes are there.
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
        if ram < min.max(MIB2) {
            return Err(EptError::Map(MapError::OutOfMemory));
        }
        let mut tm = IdentityTables(frames);
        let ept = Ept::new(&mut tm)?;
        for c in &chunks {
            // SAFETY: guest RAM chunks are pool frames now owned by the guest, identity-mapped.
            unsafe { core::ptr::write_bytes(*c as *mut u8, 0, MIB2 as usize) };
        }
        Ok(GuestMemory {
            ram,
            chunks,
            eptp: ept.eptp(),
            ept: Mutex::new((ept, tm)),
            faults: AtomicU64::new(0),
        })
    }

    /// The EPT pointer every vCPU of this node loads.
    pub fn eptp(&self) -> u64 {
        self.eptp
    }

    /// Guest frames.
    pub fn pages(&self) -> u64 {
        self.ram / PAGE_SIZE as u64
    }

    fn hpa(&self, gpa: u64) -> u64 {
        self.chunks[(gpa / MIB2) as usize] + gpa % MIB2
    }

    /// The host address of the frame of `gfn`, which must be inside RAM.
    fn frame(&self, gfn: Gfn) -> *mut u8 {
        self.hpa(gfn.0 * PAGE_SIZE as u64) as *mut u8
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

    /// Nested page faults served.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Counts one served fault.
    pub fn count_fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the EPT rights of `gfn` (None: unmapped), mapping its frame when it has none.
    pub fn set_rights(&self, gfn: Gfn, rights: Option<Rights>) -> Result<(), EptError> {
        let gpa = gfn.0 * 4096;
        if gpa >= self.ram {
            return Err(EptError::NotMapped(gpa));
        }
        let bits = match rights {
            None => 0,
            Some(Rights::ReadExec) => ept::R | ept::X,
            Some(Rights::ReadWriteExec) => ept::RWX,
        };
        let mut n = Paging(self);
        match n.set_rights(gpa, bits) {
            Err(EptError::NotMapped(_)) if bits != 0 => {
                // Mapping needs no invalidation: the violation itself dropped the stale
                // translation (SDM Vol. 3C §29.4.3.1).
                n.map(gpa, self.hpa(gpa), 0x1000, bits).map(|_| ()).map_err(Into::into)
            }
            other => other,
        }
    }

    /// Test hook: sets the raw EPT rights of the guest page at `gpa` behind the engine's
    /// back (the engine re-maps on the next fault: a spurious fault to it). Addresses outside
    /// guest RAM are refused before any table is touched.
    pub fn protect(&self, gpa: u64, rights: u64) -> bool {
        gpa < self.ram && Paging(self).set_rights(gpa & !0xfff, rights & ept::RWX).is_ok()
    }
}

/// The guest's EPT behind the [`NestedPaging`] seam (invalidation is the vCPUs' barrier).
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

    fn invalidate(&mut self) {}
}

/// This node as the coherence glue sees it: guest frames, EPT and vCPUs.
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
        // SAFETY: the engine names only frames inside guest RAM; a frame's 4 KiB lie in one
        // chunk, a pool frame owned by this guest and identity-mapped. It is copied out only
        // after the actions before it stopped local writers (the engine's ordering).
        let page = unsafe { core::slice::from_raw_parts(self.mem.frame(gfn), PAGE_SIZE) };
        out.extend_from_slice(page);
    }

    fn install(&mut self, gfn: Gfn, data: &[u8]) {
        let n = data.len().min(PAGE_SIZE);
        // SAFETY: as in `copy_out`; the engine installs only while this node does not map the
        // frame, so no vCPU reads or writes it meanwhile.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.mem.frame(gfn), n) };
    }
}

impl LocalNode for Here<'_> {
    fn set_rights(&mut self, gfn: Gfn, rights: Option<Rights>) -> Result<(), &'static str> {
        self.mem.set_rights(gfn, rights).map_err(|e| match e {
            EptError::NotMapped(_) => "page outside guest memory",
            EptError::Map(_) => "EPT update failed",
        })
    }

    fn flush_barrier(&mut self) {
        self.vcpus.flush_barrier();
    }

    fn resume(&mut self, vcpu: VcpuId) {
        if let Some(local) = usize::from(vcpu.0).checked_sub(self.base) {
            self.vcpus.resume(local);
        }
    }
}
