//! Polled virtio-net driver over the modern (virtio 1.x) PCI transport with split
//! virtqueues: one receive and one transmit queue, no interrupts, no offloads.
//!
//! Source: "Virtual I/O Device (VIRTIO) Version 1.2" (OASIS). The firmware parses the PCI
//! capabilities (§4.1.4) and hands over the mapped regions in [`VirtioPciRegions`].

use alloc::vec::Vec;

use crate::device::{DeviceStats, DriverError, NetDevice};
use crate::hal::{Block, Bus, Dma, Hal, Reg, RegArray, Width, Window};

mod virtqueue;
use virtqueue::Virtqueue;

/// The already-mapped regions of a virtio modern PCI device (virtio 1.2 §4.1.4), as CPU
/// addresses with the capability offsets applied, and their lengths from the capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioPciRegions {
    /// `VIRTIO_PCI_CAP_COMMON_CFG` structure (§4.1.4.3).
    pub common_cfg: usize,
    /// Its length.
    pub common_cfg_len: usize,
    /// Start of the `VIRTIO_PCI_CAP_NOTIFY_CFG` region (§4.1.4.4).
    pub notify: usize,
    /// Its length: every queue's notify register must lie inside.
    pub notify_len: usize,
    /// `notify_off_multiplier` from the notify capability.
    pub notify_off_multiplier: u32,
    /// `VIRTIO_PCI_CAP_ISR_CFG` byte (§4.1.4.5); unused while polling, kept for completeness.
    pub isr: usize,
    /// `VIRTIO_PCI_CAP_DEVICE_CFG`: the `virtio_net_config` structure (§5.1.4).
    pub device_cfg: usize,
    /// Its length.
    pub device_cfg_len: usize,
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

/// `struct virtio_pci_common_cfg` (virtio 1.2 §4.1.4.3): 0x38 bytes.
#[derive(Debug)]
struct CommonCfg;

impl Block for CommonCfg {
    const SIZE: usize = 0x38;
    const ALIGN: usize = 4;
}

mod common {
    use super::CommonCfg;
    use crate::hal::Reg;
    type R<T> = Reg<CommonCfg, T>;
    pub const DEVICE_FEATURE_SELECT: R<u32> = Reg::at::<0x00>();
    pub const DEVICE_FEATURE: R<u32> = Reg::at::<0x04>();
    pub const DRIVER_FEATURE_SELECT: R<u32> = Reg::at::<0x08>();
    pub const DRIVER_FEATURE: R<u32> = Reg::at::<0x0C>();
    pub const CONFIG_MSIX_VECTOR: R<u16> = Reg::at::<0x10>();
    pub const DEVICE_STATUS: R<u8> = Reg::at::<0x14>();
    pub const CONFIG_GENERATION: R<u8> = Reg::at::<0x15>();
    pub const QUEUE_SELECT: R<u16> = Reg::at::<0x16>();
    pub const QUEUE_SIZE: R<u16> = Reg::at::<0x18>();
    pub const QUEUE_MSIX_VECTOR: R<u16> = Reg::at::<0x1A>();
    pub const QUEUE_ENABLE: R<u16> = Reg::at::<0x1C>();
    pub const QUEUE_NOTIFY_OFF: R<u16> = Reg::at::<0x1E>();
    /// 64-bit fields as two 32-bit halves, which §4.1.3.1 allows.
    pub const QUEUE_DESC: [R<u32>; 2] = [Reg::at::<0x20>(), Reg::at::<0x24>()];
    pub const QUEUE_DRIVER: [R<u32>; 2] = [Reg::at::<0x28>(), Reg::at::<0x2C>()];
    pub const QUEUE_DEVICE: [R<u32>; 2] = [Reg::at::<0x30>(), Reg::at::<0x34>()];
}

/// The head of `virtio_net_config` (§5.1.4) every device has: mac @0, status @6.
#[derive(Debug)]
struct NetConfig;

impl Block for NetConfig {
    const SIZE: usize = 8;
    const ALIGN: usize = 2;
}

/// `virtio_net_config` through `mtu` @10, present with VIRTIO_NET_F_MTU (§5.1.4).
#[derive(Debug)]
struct NetConfigMtu;

impl Block for NetConfigMtu {
    const SIZE: usize = 12;
    const ALIGN: usize = 2;
}

const CFG_MAC: RegArray<NetConfig, u8, 6> = RegArray::at::<0>();
const CFG_STATUS: Reg<NetConfig, u16> = Reg::at::<6>();
const CFG_MTU: Reg<NetConfigMtu, u16> = Reg::at::<10>();
const NET_S_LINK_UP: u16 = 1;

/// One queue's notify register (§4.1.4.4), 16 bits without VIRTIO_F_NOTIFICATION_DATA.
#[derive(Debug)]
struct Notify;

impl Block for Notify {
    const SIZE: usize = 2;
    const ALIGN: usize = 2;
}

const NOTIFY_QUEUE: Reg<Notify, u16> = Reg::at::<0>();

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

/// `struct virtio_net_hdr` with VIRTIO_F_VERSION_1: 12 bytes (§5.1.6).
pub const NET_HDR_LEN: usize = 12;
/// MSI-X "no vector" (§4.1.4.3): we poll.
const NO_VECTOR: u16 = 0xFFFF;
/// Descriptor flag: the device writes the buffer (§2.7.5).
const DESC_F_WRITE: u16 = 2;

const RXQ: u16 = 0;
const TXQ: u16 = 1;
const SPIN_LIMIT: u32 = 1_000_000;

/// The driver.
#[derive(Debug)]
pub struct VirtioNet<H: Hal> {
    hal: H,
    regs: Regs<H>,
    features: u64,
    mac: [u8; 6],
    mtu: usize,
    buf_len: usize,
    rx: Virtqueue<H>,
    rx_bufs: Dma,
    tx: Virtqueue<H>,
    tx_bufs: Dma,
    tx_free: Vec<u16>,
    stats: DeviceStats,
}

impl<H: Hal> VirtioNet<H> {
    /// Initialises the device (§3.1.1) with default queue sizes.
    ///
    /// # Safety
    /// `regions` must be the mapped (uncacheable) capability regions of one virtio-net PCI
    /// function with memory decoding and bus mastering enabled, driven by no one else; each
    /// region mapped for the length given with it.
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
        // SAFETY: forwarded from the caller.
        let regs = unsafe { Regs::new(regions) }?;
        let mmio = Mmio { hal: &hal, regs };
        // Reset and wait for it to complete (§4.1.4.3.2).
        mmio.c_w(common::DEVICE_STATUS, 0);
        if !(0..SPIN_LIMIT).any(|_| mmio.c_r(common::DEVICE_STATUS) == 0) {
            return Err(DriverError::ResetTimeout);
        }
        mmio.c_w(common::DEVICE_STATUS, STATUS_ACKNOWLEDGE);
        mmio.c_w(common::DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = mmio.device_features();
        let mut wanted = F_VERSION_1 | F_MAC | F_STATUS;
        if config.jumbo && regs.mtu.is_some() {
            wanted |= F_MTU;
        }
        let features = offered & wanted;
        if features & F_VERSION_1 == 0 {
            mmio.c_w(common::DEVICE_STATUS, STATUS_FAILED);
            return Err(DriverError::FeaturesRefused);
        }
        mmio.set_driver_features(features);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        mmio.c_w(common::DEVICE_STATUS, status);
        if mmio.c_r(common::DEVICE_STATUS) & STATUS_FEATURES_OK == 0 {
            mmio.c_w(common::DEVICE_STATUS, STATUS_FAILED);
            return Err(DriverError::FeaturesRefused);
        }
        mmio.c_w(common::CONFIG_MSIX_VECTOR, NO_VECTOR);

        let (mac, dev_mtu) = mmio.read_net_config(features);
        if features & F_MAC == 0 || mac == [0; 6] || mac[0] & 1 != 0 {
            mmio.c_w(common::DEVICE_STATUS, STATUS_FAILED);
            return Err(DriverError::NoMac);
        }
        let mtu = match dev_mtu {
            Some(m) if config.jumbo && m > 1500 => usize::from(m).min(9000),
            _ => 1500,
        };
        // Header + Ethernet header + VLAN tag + MTU (§5.1.6.3.1: at least 1526 bytes).
        let buf_len = (NET_HDR_LEN + 18 + mtu).next_multiple_of(64);

        let queues = mmio
            .setup_queue(RXQ, config.queue_size)
            .and_then(|rx| Ok((rx, mmio.setup_queue(TXQ, config.queue_size)?)));
        let (rx, tx) = match queues {
            Ok(q) => q,
            Err(e) => {
                mmio.c_w(common::DEVICE_STATUS, STATUS_FAILED);
                return Err(e);
            }
        };
        let rx_bufs =
            Dma::alloc(&hal, usize::from(rx.size) * buf_len, 64).ok_or(DriverError::NoDmaMemory)?;
        let tx_bufs =
            Dma::alloc(&hal, usize::from(tx.size) * buf_len, 64).ok_or(DriverError::NoDmaMemory)?;
        let mut dev = Self {
            hal,
            regs,
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
        let mmio = dev.mmio();
        mmio.c_w(common::DEVICE_STATUS, status | STATUS_DRIVER_OK);
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
            self.tx_free.push(id);
        }
        self.give_up_if_broken();
    }

    /// Tells the device the driver gave up (FAILED, §2.1) once a queue broke; the link then
    /// reads down.
    fn give_up_if_broken(&mut self) {
        let broken = self.rx.broken || self.tx.broken;
        if broken && self.mmio().c_r(common::DEVICE_STATUS) & STATUS_FAILED == 0 {
            self.mmio().c_w(common::DEVICE_STATUS, STATUS_FAILED);
        }
    }
}

/// The windows onto the device's capability structures, checked against the lengths the
/// device gave for them.
#[derive(Debug)]
struct Regs<M> {
    common: Window<CommonCfg, M>,
    net: Window<NetConfig, M>,
    /// Present when the device configuration is long enough to hold `mtu`.
    mtu: Option<Window<NetConfigMtu, M>>,
    notify: usize,
    notify_len: usize,
    notify_off_multiplier: u32,
}

impl<M> Clone for Regs<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Regs<M> {}

impl<M: Bus> Regs<M> {
    /// # Safety
    /// As for [`VirtioNet::new`].
    unsafe fn new(r: VirtioPciRegions) -> Result<Self, DriverError> {
        if r.common_cfg_len < CommonCfg::SIZE || !r.common_cfg.is_multiple_of(CommonCfg::ALIGN) {
            return Err(DriverError::OutOfRegion("common configuration"));
        }
        if r.device_cfg_len < NetConfig::SIZE || !r.device_cfg.is_multiple_of(NetConfig::ALIGN) {
            return Err(DriverError::OutOfRegion("device configuration"));
        }
        // SAFETY: each structure lies inside its region, aligned (checked above); the regions
        // are mapped for their lengths and the device is ours (caller).
        unsafe {
            Ok(Self {
                common: Window::new(r.common_cfg),
                net: Window::new(r.device_cfg),
                mtu: (r.device_cfg_len >= NetConfigMtu::SIZE).then(|| Window::new(r.device_cfg)),
                notify: r.notify,
                notify_len: r.notify_len,
                notify_off_multiplier: r.notify_off_multiplier,
            })
        }
    }

    /// The notify register of a queue whose `queue_notify_off` is `off`: at
    /// `off * notify_off_multiplier` in the notify region, which must hold all of it
    /// (§4.1.4.4: `cap.length >= queue_notify_off * notify_off_multiplier + 2`).
    fn notify_window(&self, off: u16) -> Result<Window<Notify, M>, DriverError> {
        let at = usize::from(off)
            .checked_mul(self.notify_off_multiplier as usize)
            .filter(|at| at.checked_add(Notify::SIZE).is_some_and(|end| end <= self.notify_len))
            .filter(|&at| self.notify.wrapping_add(at).is_multiple_of(Notify::ALIGN))
            .ok_or(DriverError::OutOfRegion("queue notify register"))?;
        // SAFETY: the register lies inside the notify region (checked above), which is mapped
        // for `notify_len` bytes and ours (`VirtioNet::new` contract).
        Ok(unsafe { Window::new(self.notify + at) })
    }
}

/// Register access for the regions; the only place that touches MMIO.
struct Mmio<'a, H: Hal> {
    hal: &'a H,
    regs: Regs<H>,
}

impl<H: Hal> Mmio<'_, H> {
    fn c_r<T: Width>(&self, r: Reg<CommonCfg, T>) -> T {
        self.regs.common.read(self.hal, r)
    }
    fn c_w<T: Width>(&self, r: Reg<CommonCfg, T>, v: T) {
        self.regs.common.write(self.hal, r, v);
    }
    fn c_w64(&self, halves: [Reg<CommonCfg, u32>; 2], v: u64) {
        self.c_w(halves[0], v as u32);
        self.c_w(halves[1], (v >> 32) as u32);
    }

    fn device_features(&self) -> u64 {
        self.c_w(common::DEVICE_FEATURE_SELECT, 0);
        let lo = self.c_r(common::DEVICE_FEATURE);
        self.c_w(common::DEVICE_FEATURE_SELECT, 1);
        let hi = self.c_r(common::DEVICE_FEATURE);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn set_driver_features(&self, f: u64) {
        self.c_w(common::DRIVER_FEATURE_SELECT, 0);
        self.c_w(common::DRIVER_FEATURE, f as u32);
        self.c_w(common::DRIVER_FEATURE_SELECT, 1);
        self.c_w(common::DRIVER_FEATURE, (f >> 32) as u32);
    }

    fn link_up(&self) -> bool {
        self.regs.net.read(self.hal, CFG_STATUS) & NET_S_LINK_UP != 0
    }

    /// MAC and MTU, read consistently under `config_generation` (§2.5.1).
    fn read_net_config(&self, features: u64) -> ([u8; 6], Option<u16>) {
        let mut mac = [0u8; 6];
        let mut mtu = None;
        for _ in 0..16 {
            let before = self.c_r(common::CONFIG_GENERATION);
            for (b, r) in mac.iter_mut().zip(CFG_MAC.iter()) {
                *b = self.regs.net.read(self.hal, r);
            }
            mtu =
                self.regs.mtu.filter(|_| features & F_MTU != 0).map(|w| w.read(self.hal, CFG_MTU));
            if self.c_r(common::CONFIG_GENERATION) == before {
                break;
            }
        }
        (mac, mtu)
    }

    /// Sets up queue `q` (§4.1.5.1.3) and returns it enabled.
    fn setup_queue(&self, q: u16, want: u16) -> Result<Virtqueue<H>, DriverError> {
        self.c_w(common::QUEUE_SELECT, q);
        let max = self.c_r(common::QUEUE_SIZE);
        let size = max.min(want.max(2));
        if size < 2 {
            return Err(DriverError::QueueUnavailable);
        }
        // Split queues need a power of two (§2.7).
        let size = 1u16 << (15 - size.leading_zeros());
        let notify = self.regs.notify_window(self.c_r(common::QUEUE_NOTIFY_OFF))?;
        let vq = Virtqueue::new(self.hal, size, notify).ok_or(DriverError::NoDmaMemory)?;
        self.c_w(common::QUEUE_SIZE, size);
        self.c_w(common::QUEUE_MSIX_VECTOR, NO_VECTOR);
        let (desc, driver, device) = vq.phys();
        self.c_w64(common::QUEUE_DESC, desc);
        self.c_w64(common::QUEUE_DRIVER, driver);
        self.c_w64(common::QUEUE_DEVICE, device);
        self.c_w(common::QUEUE_ENABLE, 1);
        Ok(vq)
    }

    /// Tells the device queue `q` has new buffers (§4.1.5.2), unless it asked not to be told.
    fn notify(&self, vq: &Virtqueue<H>, q: u16) {
        if vq.needs_notify() {
            vq.notify().write(self.hal, NOTIFY_QUEUE, q);
        }
    }
}

impl<H: Hal> NetDevice for VirtioNet<H> {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&mut self) -> bool {
        if self.rx.broken || self.tx.broken {
            return false;
        }
        if self.features & F_STATUS == 0 {
            return true;
        }
        self.mmio().link_up()
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
        // At most one ring's worth per call: a device that completes bad buffers as fast as
        // they are recycled must not hold the caller here.
        for _ in 0..self.rx.size {
            let Some((id, len)) = self.rx.pop_used() else {
                self.give_up_if_broken();
                return None;
            };
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
        // As in the e1000 driver: a ring's worth of completions without one good frame.
        self.stats.device_faults += 1;
        None
    }

    fn stats(&mut self) -> DeviceStats {
        let device_faults = self.stats.device_faults + self.rx.faults + self.tx.faults;
        DeviceStats { device_faults, ..self.stats }
    }
}

#[cfg(test)]
mod tests;
