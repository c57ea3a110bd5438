//! Polled virtio-net driver over the modern (virtio 1.x) PCI transport with split
//! virtqueues: one receive and one transmit queue, no interrupts, no offloads.
//!
//! Source: "Virtual I/O Device (VIRTIO) Version 1.2" (OASIS). The firmware parses the PCI
//! capabilities (§4.1.4) and hands over the mapped regions in [`VirtioPciRegions`].

use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use crate::device::{DeviceStats, DriverError, NetDevice};
use crate::hal::{Dma, Hal};

/// The already-mapped regions of a virtio modern PCI device (virtio 1.2 §4.1.4), as CPU
/// addresses with the capability offsets applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioPciRegions {
    /// `VIRTIO_PCI_CAP_COMMON_CFG` structure (§4.1.4.3).
    pub common_cfg: usize,
    /// Start of the `VIRTIO_PCI_CAP_NOTIFY_CFG` region (§4.1.4.4).
    pub notify: usize,
    /// `notify_off_multiplier` from the notify capability.
    pub notify_off_multiplier: u32,
    /// `VIRTIO_PCI_CAP_ISR_CFG` byte (§4.1.4.5); unused while polling, kept for completeness.
    pub isr: usize,
    /// `VIRTIO_PCI_CAP_DEVICE_CFG`: the `virtio_net_config` structure (§5.1.4).
    pub device_cfg: usize,
}

/// Queue depth and frame size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioNetConfig {
    /// Entries per virtqueue (rounded down to a power of two, capped by the device).
    pub queue_size: u16,
    /// Use the device's MTU (VIRTIO_NET_F_MTU) up to 9000 if it offers more than 1500.
    pub jumbo: bool,
}

impl Default for VirtioNetConfig {
    fn default() -> Self {
        Self { queue_size: 128, jumbo: false }
    }
}

/// Common configuration layout (virtio 1.2 §4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0C;
    pub const CONFIG_MSIX_VECTOR: usize = 0x10;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const CONFIG_GENERATION: usize = 0x15;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_MSIX_VECTOR: usize = 0x1A;
    pub const QUEUE_ENABLE: usize = 0x1C;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1E;
    pub const QUEUE_DESC: usize = 0x20;
    pub const QUEUE_DRIVER: usize = 0x28;
    pub const QUEUE_DEVICE: usize = 0x30;
}

/// Device status bits (§2.1).
const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_FAILED: u8 = 128;

/// Feature bits (§5.1.3, §6).
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const F_VERSION_1: u64 = 1 << 32;

/// `virtio_net_config` (§5.1.4): mac @0, status @6 (bit 0 LINK_UP), mtu @10.
const CFG_MAC: usize = 0;
const CFG_STATUS: usize = 6;
const CFG_MTU: usize = 10;
const NET_S_LINK_UP: u16 = 1;

/// `struct virtio_net_hdr` with VIRTIO_F_VERSION_1: 12 bytes (§5.1.6).
pub const NET_HDR_LEN: usize = 12;
/// MSI-X "no vector" (§4.1.4.3): we poll.
const NO_VECTOR: u16 = 0xFFFF;
/// Split virtqueue flags (§2.7.5, §2.7.6, §2.7.8).
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

const RXQ: u16 = 0;
const TXQ: u16 = 1;
const SPIN_LIMIT: u32 = 1_000_000;

/// One split virtqueue (§2.7): descriptor table, available ring, used ring.
#[derive(Debug)]
struct Virtqueue {
    size: u16,
    desc: Dma,
    avail: Dma,
    used: Dma,
    notify_addr: usize,
    avail_idx: u16,
    last_used: u16,
}

impl Virtqueue {
    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16) {
        let d = usize::from(i) * 16;
        self.desc.write_u64(d, addr);
        self.desc.write_u32(d + 8, len);
        self.desc.write_u16(d + 12, flags);
        self.desc.write_u16(d + 14, 0);
    }

    /// Makes descriptor chain `id` available; the caller notifies.
    fn push_avail(&mut self, id: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        self.avail.write_u16(4 + 2 * slot, id);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry must be visible before the index that publishes it (§2.7.13).
        fence(Ordering::Release);
        self.avail.write_u16(2, self.avail_idx);
    }

    /// The next used element `(id, len)`, if the device returned one.
    fn pop_used(&mut self) -> Option<(u16, u32)> {
        if self.used.read_u16(2) == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        let e = 4 + 8 * usize::from(self.last_used % self.size);
        let id = self.used.read_u32(e);
        let len = self.used.read_u32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        // An id outside the table would be a device bug; map it to an impossible value.
        Some((u16::try_from(id).ok().filter(|&i| i < self.size).unwrap_or(u16::MAX), len))
    }

    fn needs_notify(&self) -> bool {
        fence(Ordering::SeqCst);
        self.used.read_u16(0) & USED_F_NO_NOTIFY == 0
    }
}

/// The driver.
#[derive(Debug)]
pub struct VirtioNet<H: Hal> {
    hal: H,
    regs: VirtioPciRegions,
    features: u64,
    mac: [u8; 6],
    mtu: usize,
    buf_len: usize,
    rx: Virtqueue,
    rx_bufs: Dma,
    tx: Virtqueue,
    tx_bufs: Dma,
    tx_free: Vec<u16>,
    stats: DeviceStats,
}

impl<H: Hal> VirtioNet<H> {
    /// Initialises the device (§3.1.1) with default queue sizes.
    ///
    /// # Safety
    /// `regions` must be the mapped (uncacheable) capability regions of one virtio-net PCI
    /// function with memory decoding and bus mastering enabled, driven by no one else.
    pub unsafe fn new(hal: H, regions: VirtioPciRegions) -> Result<Self, DriverError> {
        // SAFETY: forwarded from the caller.
        unsafe { Self::with_config(hal, regions, VirtioNetConfig::default()) }
    }

    /// As [`VirtioNet::new`] with explicit queue size and jumbo frames.
    ///
    /// # Safety
    /// As for [`VirtioNet::new`].
    pub unsafe fn with_config(
        hal: H,
        regions: VirtioPciRegions,
        config: VirtioNetConfig,
    ) -> Result<Self, DriverError> {
        let mmio = Mmio { hal: &hal, regs: regions };
        // Reset and wait for it to complete (§4.1.4.3.2).
        mmio.c_w8(common::DEVICE_STATUS, 0);
        if !(0..SPIN_LIMIT).any(|_| mmio.c_r8(common::DEVICE_STATUS) == 0) {
            return Err(DriverError::ResetTimeout);
        }
        mmio.c_w8(common::DEVICE_STATUS, STATUS_ACKNOWLEDGE);
        mmio.c_w8(common::DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = mmio.device_features();
        let mut wanted = F_VERSION_1 | F_MAC | F_STATUS;
        if config.jumbo {
            wanted |= F_MTU;
        }
        let features = offered & wanted;
        if features & F_VERSION_1 == 0 {
            mmio.c_w8(common::DEVICE_STATUS, STATUS_FAILED);
            return Err(DriverError::FeaturesRefused);
        }
        mmio.set_driver_features(features);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        mmio.c_w8(common::DEVICE_STATUS, status);
        if mmio.c_r8(common::DEVICE_STATUS) & STATUS_FEATURES_OK == 0 {
            mmio.c_w8(common::DEVICE_STATUS, STATUS_FAILED);
            return Err(DriverError::FeaturesRefused);
        }
        mmio.c_w16(common::CONFIG_MSIX_VECTOR, NO_VECTOR);

        let (mac, dev_mtu) = mmio.read_net_config(features);
        if features & F_MAC == 0 || mac == [0; 6] || mac[0] & 1 != 0 {
            mmio.c_w8(common::DEVICE_STATUS, STATUS_FAILED);
            return Err(DriverError::NoMac);
        }
        let mtu = match dev_mtu {
            Some(m) if config.jumbo && m > 1500 => usize::from(m).min(9000),
            _ => 1500,
        };
        // Header + Ethernet header + VLAN tag + MTU (§5.1.6.3.1: at least 1526 bytes).
        let buf_len = (NET_HDR_LEN + 18 + mtu).next_multiple_of(64);

        let rx = mmio.setup_queue(RXQ, config.queue_size)?;
        let tx = mmio.setup_queue(TXQ, config.queue_size)?;
        let rx_bufs =
            Dma::alloc(&hal, usize::from(rx.size) * buf_len, 64).ok_or(DriverError::NoDmaMemory)?;
        let tx_bufs =
            Dma::alloc(&hal, usize::from(tx.size) * buf_len, 64).ok_or(DriverError::NoDmaMemory)?;
        let mut dev = Self {
            hal,
            regs: regions,
            features,
            mac,
            mtu,
            buf_len,
            tx_free: (0..tx.size).rev().collect(),
            rx,
            rx_bufs,
            tx,
            tx_bufs,
            stats: DeviceStats::default(),
        };
        for id in 0..dev.rx.size {
            let addr = dev.rx_bufs.phys(usize::from(id) * buf_len);
            dev.rx.set_desc(id, addr, buf_len as u32, DESC_F_WRITE);
            dev.rx.push_avail(id);
        }
        let mmio = Mmio { hal: &dev.hal, regs: regions };
        mmio.c_w8(common::DEVICE_STATUS, status | STATUS_DRIVER_OK);
        mmio.notify(&dev.rx, RXQ);
        Ok(dev)
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    fn mmio(&self) -> Mmio<'_, H> {
        Mmio { hal: &self.hal, regs: self.regs }
    }

    fn reclaim_tx(&mut self) {
        while let Some((id, _)) = self.tx.pop_used() {
            if id < self.tx.size {
                self.tx_free.push(id);
            }
        }
    }
}

/// Register access for the regions; the only place that touches MMIO.
struct Mmio<'a, H: Hal> {
    hal: &'a H,
    regs: VirtioPciRegions,
}

impl<H: Hal> Mmio<'_, H> {
    // SAFETY (all accessors): `regs` are the device's mapped capability regions (constructor
    // contract) and every offset used is inside the structure the spec defines for it.
    fn c_r8(&self, off: usize) -> u8 {
        // SAFETY: see above.
        unsafe { self.hal.mmio_read8(self.regs.common_cfg + off) }
    }
    fn c_w8(&self, off: usize, v: u8) {
        // SAFETY: see above.
        unsafe { self.hal.mmio_write8(self.regs.common_cfg + off, v) }
    }
    fn c_r16(&self, off: usize) -> u16 {
        // SAFETY: see above.
        unsafe { self.hal.mmio_read16(self.regs.common_cfg + off) }
    }
    fn c_w16(&self, off: usize, v: u16) {
        // SAFETY: see above.
        unsafe { self.hal.mmio_write16(self.regs.common_cfg + off, v) }
    }
    fn c_r32(&self, off: usize) -> u32 {
        // SAFETY: see above.
        unsafe { self.hal.mmio_read32(self.regs.common_cfg + off) }
    }
    fn c_w32(&self, off: usize, v: u32) {
        // SAFETY: see above.
        unsafe { self.hal.mmio_write32(self.regs.common_cfg + off, v) }
    }
    /// 64-bit fields as two 32-bit halves, which §4.1.3.1 allows.
    fn c_w64(&self, off: usize, v: u64) {
        self.c_w32(off, v as u32);
        self.c_w32(off + 4, (v >> 32) as u32);
    }
    fn d_r8(&self, off: usize) -> u8 {
        // SAFETY: see above.
        unsafe { self.hal.mmio_read8(self.regs.device_cfg + off) }
    }
    fn d_r16(&self, off: usize) -> u16 {
        // SAFETY: see above.
        unsafe { self.hal.mmio_read16(self.regs.device_cfg + off) }
    }

    fn device_features(&self) -> u64 {
        self.c_w32(common::DEVICE_FEATURE_SELECT, 0);
        let lo = self.c_r32(common::DEVICE_FEATURE);
        self.c_w32(common::DEVICE_FEATURE_SELECT, 1);
        let hi = self.c_r32(common::DEVICE_FEATURE);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn set_driver_features(&self, f: u64) {
        self.c_w32(common::DRIVER_FEATURE_SELECT, 0);
        self.c_w32(common::DRIVER_FEATURE, f as u32);
        self.c_w32(common::DRIVER_FEATURE_SELECT, 1);
        self.c_w32(common::DRIVER_FEATURE, (f >> 32) as u32);
    }

    /// MAC and MTU, read consistently under `config_generation` (§2.5.1).
    fn read_net_config(&self, features: u64) -> ([u8; 6], Option<u16>) {
        let mut mac = [0u8; 6];
        let mut mtu = None;
        for _ in 0..16 {
            let before = self.c_r8(common::CONFIG_GENERATION);
            for (i, b) in mac.iter_mut().enumerate() {
                *b = self.d_r8(CFG_MAC + i);
            }
            mtu = (features & F_MTU != 0).then(|| self.d_r16(CFG_MTU));
            if self.c_r8(common::CONFIG_GENERATION) == before {
                break;
            }
        }
        (mac, mtu)
    }

    /// Sets up queue `q` (§4.1.5.1.3) and returns it enabled.
    fn setup_queue(&self, q: u16, want: u16) -> Result<Virtqueue, DriverError> {
        self.c_w16(common::QUEUE_SELECT, q);
        let max = self.c_r16(common::QUEUE_SIZE);
        let size = max.min(want.max(2));
        if size < 2 {
            return Err(DriverError::QueueUnavailable);
        }
        // Split queues need a power of two (§2.7).
        let size = 1u16 << (15 - size.leading_zeros());
        let n = usize::from(size);
        let alloc = |len, align| Dma::alloc(self.hal, len, align).ok_or(DriverError::NoDmaMemory);
        // Alignments from §2.7 (descriptor table 16, available ring 2, used ring 4).
        let desc = alloc(16 * n, 16)?;
        let avail = alloc(6 + 2 * n, 2)?;
        let used = alloc(6 + 8 * n, 4)?;
        avail.write_u16(0, AVAIL_F_NO_INTERRUPT);
        self.c_w16(common::QUEUE_SIZE, size);
        self.c_w16(common::QUEUE_MSIX_VECTOR, NO_VECTOR);
        self.c_w64(common::QUEUE_DESC, desc.phys(0));
        self.c_w64(common::QUEUE_DRIVER, avail.phys(0));
        self.c_w64(common::QUEUE_DEVICE, used.phys(0));
        let off = usize::from(self.c_r16(common::QUEUE_NOTIFY_OFF));
        let notify_addr = self.regs.notify + off * self.regs.notify_off_multiplier as usize;
        self.c_w16(common::QUEUE_ENABLE, 1);
        Ok(Virtqueue { size, desc, avail, used, notify_addr, avail_idx: 0, last_used: 0 })
    }

    /// Tells the device queue `q` has new buffers (§4.1.5.2), unless it asked not to be told.
    fn notify(&self, vq: &Virtqueue, q: u16) {
        if vq.needs_notify() {
            // SAFETY: `notify_addr` is inside the notify region, computed as §4.1.4.4 says.
            unsafe { self.hal.mmio_write16(vq.notify_addr, q) }
        }
    }
}

impl<H: Hal> NetDevice for VirtioNet<H> {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&mut self) -> bool {
        if self.features & F_STATUS == 0 {
            return true;
        }
        self.mmio().d_r16(CFG_STATUS) & NET_S_LINK_UP != 0
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn can_transmit(&mut self) -> bool {
        self.reclaim_tx();
        !self.tx_free.is_empty()
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), DriverError> {
        if frame.len() < 14 || NET_HDR_LEN + frame.len() > self.buf_len {
            return Err(DriverError::BadFrameLength(frame.len()));
        }
        self.reclaim_tx();
        let Some(id) = self.tx_free.pop() else {
            self.stats.tx_ring_full += 1;
            return Err(DriverError::TxRingFull);
        };
        let off = usize::from(id) * self.buf_len;
        // An all-zero header: no checksum offload, no GSO (§5.1.6.2).
        self.tx_bufs.copy_in(off, &[0; NET_HDR_LEN]);
        self.tx_bufs.copy_in(off + NET_HDR_LEN, frame);
        let len = (NET_HDR_LEN + frame.len()) as u32;
        self.tx.set_desc(id, self.tx_bufs.phys(off), len, 0);
        self.tx.push_avail(id);
        self.mmio().notify(&self.tx, TXQ);
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let (id, len) = self.rx.pop_used()?;
            if id >= self.rx.size {
                self.stats.rx_errors += 1;
                continue;
            }
            let len = len as usize;
            let frame_len = len.wrapping_sub(NET_HDR_LEN);
            let ok = len >= NET_HDR_LEN + 14 && len <= self.buf_len && frame_len <= buf.len();
            if ok {
                let off = usize::from(id) * self.buf_len + NET_HDR_LEN;
                self.rx_bufs.copy_out(off, &mut buf[..frame_len]);
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += frame_len as u64;
            } else {
                self.stats.rx_errors += 1;
            }
            // Recycle the buffer: its descriptor still points at it, writable.
            self.rx.push_avail(id);
            self.mmio().notify(&self.rx, RXQ);
            if ok {
                return Some(frame_len);
            }
        }
    }

    fn stats(&mut self) -> DeviceStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
