//! One split virtqueue (virtio 1.2 §2.7): its descriptor table and rings in DMA memory, the
//! driver's view of which descriptors the device holds, and what it refuses to believe.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use super::Notify;
use crate::hal::{Block, Bus, DmaTable, Hal, Reg, Window};

/// Ring flags (§2.7.6, §2.7.8): we poll, so no interrupts; the device may ask for no
/// notifications.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// A split-virtqueue descriptor (§2.7.5): 16 bytes.
#[derive(Debug)]
struct Desc;

impl Block for Desc {
    const SIZE: usize = 16;
    const ALIGN: usize = 8;
}

mod desc {
    use super::Desc;
    use crate::hal::Reg;
    pub const ADDR: Reg<Desc, u64> = Reg::at::<0>();
    pub const LEN: Reg<Desc, u32> = Reg::at::<8>();
    pub const FLAGS: Reg<Desc, u16> = Reg::at::<12>();
    pub const NEXT: Reg<Desc, u16> = Reg::at::<14>();
}

/// The `flags`, `idx` head of the available and used rings (§2.7.6, §2.7.8).
#[derive(Debug)]
struct RingHeader;

impl Block for RingHeader {
    const SIZE: usize = 4;
    const ALIGN: usize = 2;
}

const RING_FLAGS: Reg<RingHeader, u16> = Reg::at::<0>();
const RING_IDX: Reg<RingHeader, u16> = Reg::at::<2>();

/// An available-ring entry: a chain's head descriptor (§2.7.6).
#[derive(Debug)]
struct AvailEntry;

impl Block for AvailEntry {
    const SIZE: usize = 2;
    const ALIGN: usize = 2;
}

const AVAIL_ID: Reg<AvailEntry, u16> = Reg::at::<0>();

/// A used-ring element (§2.7.8): `id` u32 @0, `len` u32 @4.
#[derive(Debug)]
struct UsedElem;

impl Block for UsedElem {
    const SIZE: usize = 8;
    const ALIGN: usize = 4;
}

const USED_ID: Reg<UsedElem, u32> = Reg::at::<0>();
const USED_LEN: Reg<UsedElem, u32> = Reg::at::<4>();

/// One split virtqueue (§2.7): descriptor table, available ring, used ring, notify register.
#[derive(Debug)]
pub(super) struct Virtqueue<M> {
    pub(super) size: u16,
    desc: DmaTable<(), Desc>,
    avail: DmaTable<RingHeader, AvailEntry>,
    used: DmaTable<RingHeader, UsedElem>,
    notify: Window<Notify, M>,
    avail_idx: u16,
    last_used: u16,
    /// Which descriptors the device holds: a completion for any other is not believed.
    in_flight: Vec<bool>,
    /// Completions refused, and index jumps (see `DeviceStats::device_faults`).
    pub(super) faults: u64,
    /// The device moved the used index further than it could: the ring can no longer be
    /// trusted, and the queue is not used again.
    pub(super) broken: bool,
}

impl<M: Bus> Virtqueue<M> {
    /// A queue of `size` entries (a power of two), its memory zeroed, notifying through
    /// `notify`; `None` without DMA memory.
    pub(super) fn new(hal: &impl Hal, size: u16, notify: Window<Notify, M>) -> Option<Self> {
        let n = usize::from(size);
        // Alignments from §2.7 (descriptor table 16, available ring 2, used ring 4); the
        // rings end in a u16 event field (`used_event`, `avail_event`).
        let desc = DmaTable::alloc(hal, n, 0, 16)?;
        let avail = DmaTable::alloc(hal, n, 2, 2)?;
        let used = DmaTable::alloc(hal, n, 2, 4)?;
        avail.header().set(RING_FLAGS, AVAIL_F_NO_INTERRUPT);
        Some(Self {
            size,
            desc,
            avail,
            used,
            notify,
            avail_idx: 0,
            last_used: 0,
            in_flight: vec![false; n],
            faults: 0,
            broken: false,
        })
    }

    /// Where the device finds the descriptor table, the available ring and the used ring.
    pub(super) fn phys(&self) -> (u64, u64, u64) {
        (self.desc.phys(), self.avail.phys(), self.used.phys())
    }

    pub(super) fn notify(&self) -> Window<Notify, M> {
        self.notify
    }

    pub(super) fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16) {
        let d = self.desc.entry(usize::from(i));
        d.set(desc::ADDR, addr);
        d.set(desc::LEN, len);
        d.set(desc::FLAGS, flags);
        d.set(desc::NEXT, 0);
    }

    /// Makes descriptor chain `id` available; the caller notifies.
    pub(super) fn push_avail(&mut self, id: u16) {
        self.avail.entry(usize::from(self.avail_idx)).set(AVAIL_ID, id);
        if let Some(f) = self.in_flight.get_mut(usize::from(id)) {
            *f = true;
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry must be visible before the index that publishes it (§2.7.13).
        fence(Ordering::Release);
        self.avail.header().set(RING_IDX, self.avail_idx);
    }

    /// The next used element `(id, len)` for a descriptor the device held, if it returned
    /// one. Elements for descriptors it did not hold (out of the table, or returned already)
    /// are counted and skipped: reusing such a descriptor would hand one buffer out twice.
    pub(super) fn pop_used(&mut self) -> Option<(u16, u32)> {
        loop {
            if self.broken {
                return None;
            }
            let used_idx = self.used.header().get(RING_IDX);
            if used_idx == self.last_used {
                return None;
            }
            // A device returns only chains it was given (§2.7.8), so its index runs at most
            // that far ahead; past it, every element would be stale, up to 65,535 of them.
            let given = self.avail_idx.wrapping_sub(self.last_used);
            if used_idx.wrapping_sub(self.last_used) > given {
                self.faults += 1;
                self.broken = true;
                return None;
            }
            fence(Ordering::Acquire);
            let e = self.used.entry(usize::from(self.last_used));
            let (id, len) = (e.get(USED_ID), e.get(USED_LEN));
            self.last_used = self.last_used.wrapping_add(1);
            let held = usize::try_from(id).ok().and_then(|i| self.in_flight.get_mut(i));
            match held {
                Some(f) if *f => {
                    *f = false;
                    // `in_flight` has `size` entries, so the id fits a u16.
                    return Some((id as u16, len));
                }
                _ => self.faults += 1,
            }
        }
    }

    pub(super) fn needs_notify(&self) -> bool {
        fence(Ordering::SeqCst);
        self.used.header().get(RING_FLAGS) & USED_F_NO_NOTIFY == 0
    }
}
