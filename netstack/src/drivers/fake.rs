//! Fake devices for host tests: DMA memory at made-up physical addresses and register files
//! that behave like the hardware (descriptor processing, self-clearing bits, clear-on-read
//! counters), so the drivers run unmodified against them.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::rc::Rc;
use std::vec::Vec;

use super::e1000::Model;
use crate::hal::{Bus, DmaRegion, Hal};

struct Region {
    phys: u64,
    ptr: *mut u8,
    layout: Layout,
}

/// DMA memory handed to a driver; the fake device reads and writes it by physical address.
pub(crate) struct FakeMemory {
    regions: RefCell<Vec<Region>>,
    next_phys: Cell<u64>,
}

impl Drop for FakeMemory {
    fn drop(&mut self) {
        for r in self.regions.borrow().iter() {
            // SAFETY: allocated in `alloc` with this layout, freed once.
            unsafe { dealloc(r.ptr, r.layout) };
        }
    }
}

impl FakeMemory {
    pub(crate) fn new() -> Self {
        // Physical addresses far from any host pointer, above 4 GiB to exercise the high
        // halves of base registers.
        Self { regions: RefCell::new(Vec::new()), next_phys: Cell::new(0x1_2340_0000) }
    }

    pub(crate) fn alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).ok()?;
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let virt = NonNull::new(ptr)?;
        let phys = self.next_phys.get().next_multiple_of(align.max(4096) as u64);
        self.next_phys.set(phys + len as u64 + 4096);
        self.regions.borrow_mut().push(Region { phys, ptr, layout });
        Some(DmaRegion { phys, virt, len })
    }

    /// Pointer for `len` bytes at `phys`; panics (a test failure) if the device was pointed
    /// outside DMA memory.
    fn at(&self, phys: u64, len: usize) -> *mut u8 {
        for r in self.regions.borrow().iter() {
            if phys >= r.phys && phys + len as u64 <= r.phys + r.layout.size() as u64 {
                // SAFETY: inside the region (checked).
                return unsafe { r.ptr.add((phys - r.phys) as usize) };
            }
        }
        panic!("device DMA to {phys:#x}+{len} outside any DMA region");
    }

    pub(crate) fn read(&self, phys: u64, out: &mut [u8]) {
        // SAFETY: `at` checked the range; the driver is not running (single thread).
        unsafe {
            std::ptr::copy_nonoverlapping(self.at(phys, out.len()), out.as_mut_ptr(), out.len());
        }
    }

    pub(crate) fn write(&self, phys: u64, data: &[u8]) {
        // SAFETY: as in `read`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.at(phys, data.len()), data.len());
        }
    }

    pub(crate) fn u8(&self, phys: u64) -> u8 {
        let mut b = [0u8; 1];
        self.read(phys, &mut b);
        b[0]
    }

    pub(crate) fn u16(&self, phys: u64) -> u16 {
        let mut b = [0u8; 2];
        self.read(phys, &mut b);
        u16::from_le_bytes(b)
    }

    pub(crate) fn u32(&self, phys: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(phys, &mut b);
        u32::from_le_bytes(b)
    }

    pub(crate) fn u64(&self, phys: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(phys, &mut b);
        u64::from_le_bytes(b)
    }

    pub(crate) fn virt_to_phys(&self, virt: usize) -> u64 {
        for r in self.regions.borrow().iter() {
            let base = r.ptr as usize;
            if virt >= base && virt < base + r.layout.size() {
                return r.phys + (virt - base) as u64;
            }
        }
        panic!("virt {virt:#x} not in DMA memory")
    }

    pub(crate) fn phys_to_virt(&self, phys: u64) -> usize {
        self.at(phys, 1) as usize
    }
}

/// Where the fake maps BAR0.
pub(crate) const E1000_BAR: usize = 0xFEB0_0000;

/// An e1000/82574L model: the registers the driver touches, the legacy descriptor engine,
/// EERD with a 64-word EEPROM, and a wire on which transmitted frames land.
pub(crate) struct FakeE1000 {
    pub(crate) mem: FakeMemory,
    model: Model,
    regs: RefCell<BTreeMap<usize, u32>>,
    eeprom: [u16; 64],
    /// Bochs behaviour: RAL0/RAH0 read zero until the driver writes them.
    pub(crate) ral_reads_zero: bool,
    /// Reads of CTRL before RST self-clears (`u32::MAX`: never).
    pub(crate) reset_reads: Cell<u32>,
    pub(crate) link: Cell<bool>,
    /// When false the transmit engine stalls (descriptors stay pending).
    pub(crate) tx_running: Cell<bool>,
    pub(crate) wire: RefCell<Vec<Vec<u8>>>,
    pub(crate) eerd_reads: Cell<u32>,
    /// Hostile: every RDT write sets DD (without EOP) on every receive descriptor again.
    pub(crate) dd_stuck: Cell<bool>,
    /// RDT writes while `dd_stuck`; past a bound the fake fails the test instead of letting
    /// a driver that never stops polling hang it.
    stuck_polls: Cell<u32>,
}

pub(crate) const EEPROM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

impl FakeE1000 {
    pub(crate) fn new(model: Model) -> Rc<Self> {
        let mut eeprom = [0u16; 64];
        for i in 0..3 {
            eeprom[i] = u16::from_le_bytes([EEPROM_MAC[2 * i], EEPROM_MAC[2 * i + 1]]);
        }
        Rc::new(Self {
            mem: FakeMemory::new(),
            model,
            regs: RefCell::new(BTreeMap::new()),
            eeprom,
            ral_reads_zero: true,
            reset_reads: Cell::new(3),
            link: Cell::new(true),
            tx_running: Cell::new(true),
            wire: RefCell::new(Vec::new()),
            eerd_reads: Cell::new(0),
            dd_stuck: Cell::new(false),
            stuck_polls: Cell::new(0),
        })
    }

    /// A device whose RAL0/RAH0 already hold `mac` (QEMU behaviour).
    pub(crate) fn with_ral(model: Model, mac: [u8; 6]) -> Rc<Self> {
        let mut dev = Self::new(model);
        let d = Rc::get_mut(&mut dev).expect("fresh");
        d.ral_reads_zero = false;
        d.reg_set(0x5400, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        d.reg_set(0x5404, u32::from(u16::from_le_bytes([mac[4], mac[5]])) | 1 << 31);
        dev
    }

    pub(crate) fn reg(&self, off: usize) -> u32 {
        self.regs.borrow().get(&off).copied().unwrap_or(0)
    }

    fn reg_set(&self, off: usize, v: u32) {
        self.regs.borrow_mut().insert(off, v);
    }

    fn read_reg(&self, off: usize) -> u32 {
        match off {
            0x0000 => {
                let ctrl = self.reg(0);
                if ctrl & (1 << 26) != 0 && self.reset_reads.get() != u32::MAX {
                    let left = self.reset_reads.get().saturating_sub(1);
                    self.reset_reads.set(left);
                    if left == 0 {
                        self.reg_set(0, ctrl & !(1 << 26));
                    }
                }
                self.reg(0)
            }
            0x0008 => u32::from(self.link.get()) << 1,
            0x0014 => {
                self.eerd_reads.set(self.eerd_reads.get() + 1);
                self.reg(0x14)
            }
            0x5400 | 0x5404 if self.ral_reads_zero => 0,
            // Clear-on-read statistics.
            0x4000 | 0x4010 | 0x00C0 => self.regs.borrow_mut().remove(&off).unwrap_or(0),
            _ => self.reg(off),
        }
    }

    fn write_reg(&self, off: usize, v: u32) {
        match off {
            0x0000 if v & (1 << 26) != 0 => {
                // Global reset: registers back to defaults, RST stays set for a few reads.
                let keep: Vec<(usize, u32)> = if self.ral_reads_zero {
                    Vec::new()
                } else {
                    vec![(0x5400, self.reg(0x5400)), (0x5404, self.reg(0x5404))]
                };
                self.regs.borrow_mut().clear();
                for (k, x) in keep {
                    self.reg_set(k, x);
                }
                self.reg_set(0, v);
            }
            0x0014 if v & 1 != 0 => {
                let (done, shift, mask) = match self.model {
                    Model::I8254x => (1 << 4, 8, 0xFF),
                    Model::I82574 => (1 << 1, 2, 0x3FFF),
                };
                let addr = ((v >> shift) & mask) as usize;
                let data = self.eeprom.get(addr).copied().unwrap_or(0xFFFF);
                self.reg_set(0x14, (u32::from(data) << 16) | done | (v & !1 & 0xFFFF));
            }
            0x5400 | 0x5404 => {
                self.reg_set(off, v);
                if off == 0x5404 {
                    // Once the driver wrote the address, the registers read back.
                    // (Bochs keeps reading zero; the driver must not depend on either.)
                }
            }
            0x3818 => {
                self.reg_set(off, v);
                self.run_tx();
            }
            0x2818 => {
                self.reg_set(off, v);
                if self.dd_stuck.get() {
                    self.set_dd_everywhere();
                }
            }
            _ => self.reg_set(off, v),
        }
    }

    fn ring_len(&self, len_reg: usize) -> u32 {
        self.reg(len_reg) / 16
    }

    /// Processes transmit descriptors from TDH up to TDT (8254x SDM §3.3).
    pub(crate) fn run_tx(&self) {
        if !self.tx_running.get() || self.reg(0x0400) & 2 == 0 {
            return;
        }
        let base = u64::from(self.reg(0x3800)) | u64::from(self.reg(0x3804)) << 32;
        let n = self.ring_len(0x3808);
        let mut frame = Vec::new();
        while self.reg(0x3810) != self.reg(0x3818) {
            let head = self.reg(0x3810);
            let d = base + u64::from(head) * 16;
            let (addr, len, cmd) = (self.mem.u64(d), self.mem.u16(d + 8), self.mem.u8(d + 11));
            let mut bytes = vec![0u8; usize::from(len)];
            self.mem.read(addr, &mut bytes);
            frame.extend_from_slice(&bytes);
            if cmd & 1 != 0 {
                self.wire.borrow_mut().push(std::mem::take(&mut frame));
            }
            if cmd & (1 << 3) != 0 {
                self.mem.write(d + 12, &[1]);
            }
            self.reg_set(0x3810, (head + 1) % n);
        }
    }

    fn rx_buffer_size(&self) -> usize {
        let rctl = self.reg(0x0100);
        let bsize = (rctl >> 16) & 3;
        match (rctl & (1 << 25) != 0, bsize) {
            (false, 0) => 2048,
            (false, 1) => 1024,
            (false, 2) => 512,
            (false, _) => 256,
            (true, 1) => 16384,
            (true, 2) => 8192,
            (true, _) => 4096,
        }
    }

    /// Receives `frame` from the wire into the ring as the hardware would (8254x SDM §3.2),
    /// spreading it over several descriptors if it exceeds one buffer; `errors` is written
    /// into the last descriptor. Returns false if it was dropped for lack of descriptors
    /// (counted in MPC).
    pub(crate) fn inject_with_errors(&self, frame: &[u8], errors: u8) -> bool {
        if self.reg(0x0100) & 2 == 0 {
            return false;
        }
        let base = u64::from(self.reg(0x2800)) | u64::from(self.reg(0x2804)) << 32;
        let n = self.ring_len(0x2808);
        let size = self.rx_buffer_size();
        let parts: Vec<&[u8]> = frame.chunks(size).collect();
        let free = (self.reg(0x2818) + n - self.reg(0x2810)) % n;
        if (free as usize) < parts.len() {
            let mpc = self.reg(0x4010);
            self.reg_set(0x4010, mpc + 1);
            return false;
        }
        for (i, part) in parts.iter().enumerate() {
            let head = self.reg(0x2810);
            let d = base + u64::from(head) * 16;
            self.mem.write(self.mem.u64(d), part);
            self.mem.write(d + 8, &(part.len() as u16).to_le_bytes());
            let last = i + 1 == parts.len();
            self.mem.write(d + 12, &[1 | if last { 2 } else { 0 }, if last { errors } else { 0 }]);
            self.reg_set(0x2810, (head + 1) % n);
        }
        true
    }

    pub(crate) fn inject(&self, frame: &[u8]) -> bool {
        self.inject_with_errors(frame, 0)
    }

    /// Marks every receive descriptor done (DD without EOP, a frame's first part), whoever
    /// owns it.
    pub(crate) fn set_dd_everywhere(&self) {
        let polls = self.stuck_polls.get() + 1;
        self.stuck_polls.set(polls);
        assert!(polls < 10_000, "the driver kept polling a device stuck on DD");
        let base = u64::from(self.reg(0x2800)) | u64::from(self.reg(0x2804)) << 32;
        for i in 0..u64::from(self.ring_len(0x2808)) {
            self.mem.write(base + i * 16 + 8, &64u16.to_le_bytes());
            self.mem.write(base + i * 16 + 12, &[1, 0]);
        }
    }
}

// SAFETY: regions from `FakeMemory::alloc` are zeroed, live until the fake is dropped (which
// the `Rc` keeps after the driver), and the fake device reaches them only by physical address.
unsafe impl Hal for Rc<FakeE1000> {
    fn dma_alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.mem.alloc(len, align)
    }

    fn virt_to_phys(&self, virt: usize) -> u64 {
        self.mem.virt_to_phys(virt)
    }

    fn phys_to_virt(&self, phys: u64) -> usize {
        self.mem.phys_to_virt(phys)
    }
}

// SAFETY: register accesses are emulated, never performed; the driver uses only 32-bit ones.
unsafe impl Bus for Rc<FakeE1000> {
    unsafe fn read32(&self, addr: usize) -> u32 {
        self.read_reg(addr - E1000_BAR)
    }

    unsafe fn write32(&self, addr: usize, value: u32) {
        self.write_reg(addr - E1000_BAR, value);
    }
}

/// Where the fake maps the virtio capability regions.
pub(crate) const VIRTIO_COMMON: usize = 0xFE00_0000;
pub(crate) const VIRTIO_NOTIFY: usize = 0xFE00_1000;
pub(crate) const VIRTIO_NOTIFY_LEN: usize = 0x100;
pub(crate) const VIRTIO_ISR: usize = 0xFE00_2000;
pub(crate) const VIRTIO_DEVICE: usize = 0xFE00_3000;
pub(crate) const VIRTIO_NOTIFY_MULTIPLIER: u32 = 4;

#[derive(Clone, Copy, Default)]
struct FakeQueue {
    max: u16,
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    enabled: bool,
    last_avail: u16,
    used_idx: u16,
}

/// A virtio-net device on the modern PCI transport: common config with queue select,
/// feature negotiation, device config (MAC, status, MTU) and split virtqueues processed on
/// notify (TX) or on injection (RX).
pub(crate) struct FakeVirtioNet {
    pub(crate) mem: FakeMemory,
    pub(crate) offered: u64,
    pub(crate) mac: [u8; 6],
    pub(crate) mtu: u16,
    pub(crate) link: Cell<bool>,
    /// Refuse FEATURES_OK whatever the driver asks.
    pub(crate) refuse_features: bool,
    status: Cell<u8>,
    dev_select: Cell<u32>,
    drv_select: Cell<u32>,
    pub(crate) driver_features: Cell<u64>,
    queue_select: Cell<u16>,
    queues: RefCell<[FakeQueue; 2]>,
    pub(crate) notifies: Cell<u32>,
    pub(crate) wire: RefCell<Vec<Vec<u8>>>,
    pub(crate) rx_dropped: Cell<u32>,
    pub(crate) generation: Cell<u8>,
    /// When false, TX chains stay pending after a notify.
    pub(crate) tx_running: Cell<bool>,
    /// Sets VIRTQ_USED_F_NO_NOTIFY in both used rings (on the next `run_tx`/injection).
    pub(crate) suppress_notify: Cell<bool>,
    /// Hostile: the `queue_notify_off` every queue reports instead of its index.
    pub(crate) notify_off: Cell<Option<u16>>,
    /// Hostile: each RX notify gets the next available buffer back at once, too short to
    /// hold a frame.
    pub(crate) rx_garbage: Cell<bool>,
    /// Buffers returned so; past a bound the fake fails the test instead of letting a driver
    /// that never stops receiving hang it.
    garbage_sent: Cell<u32>,
}

pub(crate) const VIRTIO_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF];

impl FakeVirtioNet {
    /// QEMU-like defaults: VERSION_1, MAC, STATUS, MTU 1500, plus features the driver must
    /// leave alone (MRG_RXBUF, CTRL_VQ, GUEST_CSUM), queues of 256.
    pub(crate) fn new() -> Self {
        Self {
            mem: FakeMemory::new(),
            offered: (1 << 32) | (1 << 5) | (1 << 16) | (1 << 3) | (1 << 15) | (1 << 17) | (1 << 1),
            mac: VIRTIO_MAC,
            mtu: 1500,
            link: Cell::new(true),
            refuse_features: false,
            status: Cell::new(0),
            dev_select: Cell::new(0),
            drv_select: Cell::new(0),
            driver_features: Cell::new(0),
            queue_select: Cell::new(0),
            queues: RefCell::new([FakeQueue { max: 256, ..FakeQueue::default() }; 2]),
            notifies: Cell::new(0),
            wire: RefCell::new(Vec::new()),
            rx_dropped: Cell::new(0),
            generation: Cell::new(0),
            tx_running: Cell::new(true),
            suppress_notify: Cell::new(false),
            notify_off: Cell::new(None),
            rx_garbage: Cell::new(false),
            garbage_sent: Cell::new(0),
        }
    }

    pub(crate) fn rc(self) -> Rc<Self> {
        Rc::new(self)
    }

    pub(crate) fn queue_size(&self, q: usize) -> u16 {
        self.queues.borrow()[q].size
    }

    pub(crate) fn status(&self) -> u8 {
        self.status.get()
    }

    fn q(&self) -> usize {
        usize::from(self.queue_select.get().min(1))
    }

    fn read_common(&self, off: usize) -> u32 {
        let qs = self.queues.borrow();
        let q = &qs[self.q()];
        match off {
            0x04 => (self.offered >> (32 * self.dev_select.get().min(1))) as u32,
            0x12 => 2,
            0x14 => u32::from(self.status.get()),
            0x15 => u32::from(self.generation.get()),
            0x16 => u32::from(self.queue_select.get()),
            0x18 => u32::from(if q.size == 0 { q.max } else { q.size }),
            0x1C => u32::from(q.enabled),
            // Queue i notifies at offset i * multiplier.
            0x1E => u32::from(self.notify_off.get().unwrap_or(self.queue_select.get())),
            _ => 0,
        }
    }

    fn write_common(&self, off: usize, v: u32) {
        let q = self.q();
        let mut qs = self.queues.borrow_mut();
        let set_half = |old: u64, high: bool| {
            if high {
                (old & 0xFFFF_FFFF) | (u64::from(v) << 32)
            } else {
                (old & !0xFFFF_FFFF) | u64::from(v)
            }
        };
        match off {
            0x00 => self.dev_select.set(v),
            0x08 => self.drv_select.set(v),
            0x0C => {
                let shift = 32 * self.drv_select.get().min(1);
                let f = self.driver_features.get() & !(0xFFFF_FFFFu64 << shift);
                self.driver_features.set(f | (u64::from(v) << shift));
            }
            0x14 => {
                let v = v as u8;
                if v == 0 {
                    // Reset (§2.4).
                    *qs = [FakeQueue { max: 256, ..FakeQueue::default() }; 2];
                    self.driver_features.set(0);
                    self.status.set(0);
                } else if v & 8 != 0 && self.status.get() & 8 == 0 {
                    let f = self.driver_features.get();
                    let ok = !self.refuse_features && f & !self.offered == 0 && f & (1 << 32) != 0;
                    self.status.set(if ok { v } else { v & !8 });
                } else {
                    self.status.set(v);
                }
            }
            0x16 => self.queue_select.set(v as u16),
            0x18 => qs[q].size = (v as u16).min(qs[q].max),
            0x1C => qs[q].enabled = v & 1 != 0,
            0x20 | 0x24 => qs[q].desc = set_half(qs[q].desc, off == 0x24),
            0x28 | 0x2C => qs[q].driver = set_half(qs[q].driver, off == 0x2C),
            0x30 | 0x34 => qs[q].device = set_half(qs[q].device, off == 0x34),
            _ => {}
        }
    }

    fn read_device(&self, off: usize, width: usize) -> u32 {
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[6..8].copy_from_slice(&u16::from(self.link.get()).to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        let mut v = [0u8; 4];
        for (i, b) in v.iter_mut().enumerate().take(width) {
            *b = cfg.get(off + i).copied().unwrap_or(0);
        }
        u32::from_le_bytes(v)
    }

    fn notified(&self, q: u16) {
        self.notifies.set(self.notifies.get() + 1);
        if q == 1 {
            self.run_tx();
        }
        if q == 0 && self.rx_garbage.get() {
            self.return_rx_garbage();
        }
    }

    /// Returns the next available RX buffer with length 0.
    pub(crate) fn return_rx_garbage(&self) {
        let sent = self.garbage_sent.get() + 1;
        self.garbage_sent.set(sent);
        assert!(sent < 10_000, "the driver kept receiving from a device returning garbage");
        let mut qs = self.queues.borrow_mut();
        let q = &mut qs[0];
        if q.last_avail == self.mem.u16(q.driver + 2) {
            return;
        }
        let id = self.mem.u16(q.driver + 4 + 2 * u64::from(q.last_avail % q.size));
        q.last_avail = q.last_avail.wrapping_add(1);
        let e = q.device + 4 + 8 * u64::from(q.used_idx % q.size);
        self.mem.write(e, &u32::from(id).to_le_bytes());
        self.mem.write(e + 4, &0u32.to_le_bytes());
        q.used_idx = q.used_idx.wrapping_add(1);
        self.mem.write(q.device + 2, &q.used_idx.to_le_bytes());
    }

    /// Completes every available TX chain: the frame (after the 12-byte header) goes on the
    /// wire, the chain goes to the used ring.
    pub(crate) fn run_tx(&self) {
        if self.status.get() & 4 == 0 || !self.tx_running.get() {
            return;
        }
        let mut qs = self.queues.borrow_mut();
        let flags = u16::from(self.suppress_notify.get());
        for q in qs.iter() {
            self.mem.write(q.device, &flags.to_le_bytes());
        }
        let q = &mut qs[1];
        let n = q.size;
        while q.last_avail != self.mem.u16(q.driver + 2) {
            let id = self.mem.u16(q.driver + 4 + 2 * u64::from(q.last_avail % n));
            let d = q.desc + 16 * u64::from(id);
            let (addr, len, flags) = (self.mem.u64(d), self.mem.u32(d + 8), self.mem.u16(d + 12));
            assert_eq!(flags & 1, 0, "the driver uses single-descriptor chains");
            let mut bytes = vec![0u8; len as usize];
            self.mem.read(addr, &mut bytes);
            assert!(bytes[..12].iter().all(|&b| b == 0), "TX header is all zero");
            self.wire.borrow_mut().push(bytes[12..].to_vec());
            let e = q.device + 4 + 8 * u64::from(q.used_idx % n);
            self.mem.write(e, &u32::from(id).to_le_bytes());
            self.mem.write(e + 4, &0u32.to_le_bytes());
            q.used_idx = q.used_idx.wrapping_add(1);
            self.mem.write(q.device + 2, &q.used_idx.to_le_bytes());
            q.last_avail = q.last_avail.wrapping_add(1);
        }
    }

    /// Delivers `frame` into the next available RX buffer; false (and counted) if none.
    pub(crate) fn inject(&self, frame: &[u8]) -> bool {
        let mut qs = self.queues.borrow_mut();
        let q = &mut qs[0];
        if self.status.get() & 4 == 0 || q.last_avail == self.mem.u16(q.driver + 2) {
            self.rx_dropped.set(self.rx_dropped.get() + 1);
            return false;
        }
        let n = q.size;
        let id = self.mem.u16(q.driver + 4 + 2 * u64::from(q.last_avail % n));
        q.last_avail = q.last_avail.wrapping_add(1);
        let d = q.desc + 16 * u64::from(id);
        let (addr, cap, flags) = (self.mem.u64(d), self.mem.u32(d + 8), self.mem.u16(d + 12));
        assert_ne!(flags & 2, 0, "RX descriptors are device-writable");
        let total = 12 + frame.len();
        if total > cap as usize {
            self.rx_dropped.set(self.rx_dropped.get() + 1);
            return false;
        }
        let mut hdr = [0u8; 12];
        hdr[10] = 1; // num_buffers
        self.mem.write(addr, &hdr);
        self.mem.write(addr + 12, frame);
        let e = q.device + 4 + 8 * u64::from(q.used_idx % n);
        self.mem.write(e, &u32::from(id).to_le_bytes());
        self.mem.write(e + 4, &(total as u32).to_le_bytes());
        q.used_idx = q.used_idx.wrapping_add(1);
        self.mem.write(q.device + 2, &q.used_idx.to_le_bytes());
        true
    }

    /// Hostile: puts a used element `(id, len)` on queue `q` whether or not the driver gave
    /// the device that descriptor.
    pub(crate) fn push_used(&self, q: usize, id: u32, len: u32) {
        let mut qs = self.queues.borrow_mut();
        let q = &mut qs[q];
        let e = q.device + 4 + 8 * u64::from(q.used_idx % q.size);
        self.mem.write(e, &id.to_le_bytes());
        self.mem.write(e + 4, &len.to_le_bytes());
        q.used_idx = q.used_idx.wrapping_add(1);
        self.mem.write(q.device + 2, &q.used_idx.to_le_bytes());
    }

    /// Hostile: moves queue `q`'s used index `by` entries on without writing any.
    pub(crate) fn jump_used(&self, q: usize, by: u16) {
        let mut qs = self.queues.borrow_mut();
        let q = &mut qs[q];
        q.used_idx = q.used_idx.wrapping_add(by);
        self.mem.write(q.device + 2, &q.used_idx.to_le_bytes());
    }

    fn mmio_read(&self, addr: usize, width: usize) -> u32 {
        match addr {
            a if (VIRTIO_COMMON..VIRTIO_COMMON + 0x40).contains(&a) => {
                let v = self.read_common(a - VIRTIO_COMMON);
                let mask = if width == 4 { u32::MAX } else { (1 << (8 * width)) - 1 };
                v & mask
            }
            a if (VIRTIO_DEVICE..VIRTIO_DEVICE + 0x100).contains(&a) => {
                self.read_device(a - VIRTIO_DEVICE, width)
            }
            a if a == VIRTIO_ISR => 0,
            _ => panic!("read of unmapped virtio address {addr:#x}"),
        }
    }

    fn mmio_write(&self, addr: usize, v: u32) {
        match addr {
            a if (VIRTIO_COMMON..VIRTIO_COMMON + 0x40).contains(&a) => {
                self.write_common(a - VIRTIO_COMMON, v);
            }
            a if (VIRTIO_NOTIFY..VIRTIO_NOTIFY + VIRTIO_NOTIFY_LEN).contains(&a) => {
                let q = (a - VIRTIO_NOTIFY) / VIRTIO_NOTIFY_MULTIPLIER as usize;
                assert_eq!(q as u32, v, "notify value is the queue index");
                self.notified(v as u16);
            }
            _ => panic!("write to unmapped virtio address {addr:#x}"),
        }
    }
}

// SAFETY: as for `FakeE1000`.
unsafe impl Hal for Rc<FakeVirtioNet> {
    fn dma_alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.mem.alloc(len, align)
    }

    fn virt_to_phys(&self, virt: usize) -> u64 {
        self.mem.virt_to_phys(virt)
    }

    fn phys_to_virt(&self, phys: u64) -> usize {
        self.mem.phys_to_virt(phys)
    }
}

// SAFETY: register accesses are emulated, never performed; the driver uses no 64-bit ones.
unsafe impl Bus for Rc<FakeVirtioNet> {
    unsafe fn read32(&self, addr: usize) -> u32 {
        self.mmio_read(addr, 4)
    }

    unsafe fn write32(&self, addr: usize, value: u32) {
        self.mmio_write(addr, value);
    }

    unsafe fn read16(&self, addr: usize) -> u16 {
        self.mmio_read(addr, 2) as u16
    }

    unsafe fn write16(&self, addr: usize, value: u16) {
        self.mmio_write(addr, u32::from(value));
    }

    unsafe fn read8(&self, addr: usize) -> u8 {
        self.mmio_read(addr, 1) as u8
    }

    unsafe fn write8(&self, addr: usize, value: u8) {
        self.mmio_write(addr, u32::from(value));
    }
}
