//! Polled driver for the Intel e1000 family with legacy descriptors: 82540EM (QEMU `e1000`,
//! Bochs) and relatives, and the 82574L (QEMU `e1000e`).
//!
//! Sources: "PCI/PCI-X Family of Gigabit Ethernet Controllers Software Developer's Manual"
//! (8254x SDM, rev. 4.0) and the "Intel 82574 GbE Controller Family Datasheet" (82574L DS).
//! Both models share the register map and legacy descriptors used here; they differ in the
//! EERD register layout and a few init bits.

use crate::device::{DeviceStats, DriverError, NetDevice};
use crate::hal::{Block, Dma, DmaTable, Hal, Reg, Window};
use core::sync::atomic::{fence, Ordering};

/// BAR0: the 128 KiB register window (its registers in 8254x SDM Table 13-2, 82574L DS
/// §10.2).
#[derive(Debug)]
struct Bar0;

impl Block for Bar0 {
    const SIZE: usize = 128 << 10;
    const ALIGN: usize = 4;
}

/// Registers (8254x SDM Table 13-2; 82574L DS §10.2 has the same offsets).
mod reg {
    use super::Bar0;
    use crate::hal::{Reg, RegArray};
    type R = Reg<Bar0, u32>;
    pub const CTRL: R = Reg::at::<0x0000>();
    pub const STATUS: R = Reg::at::<0x0008>();
    pub const EERD: R = Reg::at::<0x0014>();
    pub const ICR: R = Reg::at::<0x00C0>();
    pub const IMC: R = Reg::at::<0x00D8>();
    pub const RCTL: R = Reg::at::<0x0100>();
    pub const TCTL: R = Reg::at::<0x0400>();
    pub const TIPG: R = Reg::at::<0x0410>();
    pub const RDBAL: R = Reg::at::<0x2800>();
    pub const RDBAH: R = Reg::at::<0x2804>();
    pub const RDLEN: R = Reg::at::<0x2808>();
    pub const RDH: R = Reg::at::<0x2810>();
    pub const RDT: R = Reg::at::<0x2818>();
    pub const TDBAL: R = Reg::at::<0x3800>();
    pub const TDBAH: R = Reg::at::<0x3804>();
    pub const TDLEN: R = Reg::at::<0x3808>();
    pub const TDH: R = Reg::at::<0x3810>();
    pub const TDT: R = Reg::at::<0x3818>();
    pub const CRCERRS: R = Reg::at::<0x4000>();
    pub const MPC: R = Reg::at::<0x4010>();
    pub const GCR: R = Reg::at::<0x5B00>();
    /// The multicast table array, MTA[0..128] (8254x SDM Table 13-2).
    pub const MTA: RegArray<Bar0, u32, 128> = RegArray::at::<0x5200>();
    pub const RAL0: R = Reg::at::<0x5400>();
    pub const RAH0: R = Reg::at::<0x5404>();
}

/// CTRL bits (8254x SDM §13.4.1).
const CTRL_LRST: u32 = 1 << 3;
const CTRL_ASDE: u32 = 1 << 5;
const CTRL_SLU: u32 = 1 << 6;
const CTRL_ILOS: u32 = 1 << 7;
const CTRL_RST: u32 = 1 << 26;
const CTRL_VME: u32 = 1 << 30;
const CTRL_PHY_RST: u32 = 1 << 31;
/// STATUS.LU, link up (8254x SDM §13.4.2).
const STATUS_LU: u32 = 1 << 1;
/// RCTL bits (8254x SDM §13.4, RCTL): enable, long packets, broadcast accept, buffer size
/// 2048 (BSIZE=00, BSEX=0) or 16384 (BSIZE=01, BSEX=1), strip CRC.
const RCTL_EN: u32 = 1 << 1;
const RCTL_LPE: u32 = 1 << 5;
const RCTL_BAM: u32 = 1 << 15;
const RCTL_BSIZE_16K: u32 = (1 << 16) | (1 << 25);
const RCTL_SECRC: u32 = 1 << 26;
/// TCTL bits (8254x SDM §13.4, TCTL): enable, pad short packets, collision threshold 0x10,
/// collision distance 0x40 (full duplex).
const TCTL_EN: u32 = 1 << 1;
const TCTL_PSP: u32 = 1 << 3;
const TCTL_CT: u32 = 0x10 << 4;
const TCTL_COLD: u32 = 0x40 << 12;
/// TIPG for copper: IPGT 10, IPGR1 8, IPGR2 6 (8254x SDM §13.4, TIPG).
const TIPG_COPPER: u32 = 10 | (8 << 10) | (6 << 20);
/// GCR bit 22 "must be set" at init on the 82574L (82574L DS §10.2, GCR; Linux e1000e does
/// the same).
const GCR_82574_BIT22: u32 = 1 << 22;

/// Legacy receive descriptor (8254x SDM §3.2.3): 16 bytes.
#[derive(Debug)]
struct RxDesc;

impl Block for RxDesc {
    const SIZE: usize = 16;
    const ALIGN: usize = 8;
}

mod rxd {
    use super::RxDesc;
    use crate::hal::Reg;
    pub const ADDR: Reg<RxDesc, u64> = Reg::at::<0>();
    /// Length, checksum, status, errors and special as one word, for clearing.
    pub const META: Reg<RxDesc, u64> = Reg::at::<8>();
    pub const LENGTH: Reg<RxDesc, u16> = Reg::at::<8>();
    pub const STATUS: Reg<RxDesc, u8> = Reg::at::<12>();
    pub const ERRORS: Reg<RxDesc, u8> = Reg::at::<13>();
}

/// Legacy transmit descriptor (8254x SDM §3.3.3): 16 bytes.
#[derive(Debug)]
struct TxDesc;

impl Block for TxDesc {
    const SIZE: usize = 16;
    const ALIGN: usize = 8;
}

mod txd {
    use super::TxDesc;
    use crate::hal::Reg;
    pub const ADDR: Reg<TxDesc, u64> = Reg::at::<0>();
    pub const LENGTH: Reg<TxDesc, u16> = Reg::at::<8>();
    pub const CSO: Reg<TxDesc, u8> = Reg::at::<10>();
    pub const CMD: Reg<TxDesc, u8> = Reg::at::<11>();
    pub const STATUS: Reg<TxDesc, u8> = Reg::at::<12>();
    pub const CSS: Reg<TxDesc, u8> = Reg::at::<13>();
    pub const SPECIAL: Reg<TxDesc, u16> = Reg::at::<14>();
}

const RX_STATUS_DD: u8 = 1 << 0;
const RX_STATUS_EOP: u8 = 1 << 1;
const TX_CMD_EOP: u8 = 1 << 0;
const TX_CMD_IFCS: u8 = 1 << 1;
const TX_CMD_RS: u8 = 1 << 3;
const TX_STATUS_DD: u8 = 1 << 0;

/// Bounded polls of self-clearing bits (reset, EEPROM reads); real hardware finishes in
/// microseconds, emulators at once.
const SPIN_LIMIT: u32 = 1_000_000;

/// Which member of the family (decides EERD layout and init quirks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// 82540EM and the other 8254x parts: EERD DONE is bit 4, address at bits 15:8.
    I8254x,
    /// 82574L: EERD DONE is bit 1, address at bits 15:2 (82574L DS §10.2, EERD).
    I82574,
}

impl Model {
    /// The model for a PCI device id (vendor 0x8086), if supported.
    pub fn from_device_id(device_id: u16) -> Option<Self> {
        match device_id {
            // 82540EM desktop/mobile, 82544GC copper, 82545EM copper (QEMU's e1000 variants).
            0x100E | 0x1015 | 0x100C | 0x100F => Some(Self::I8254x),
            0x10D3 => Some(Self::I82574),
            _ => None,
        }
    }
}

/// Ring sizes and frame size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E1000Config {
    /// Receive descriptors: a multiple of 8 (ring length a multiple of 128 bytes).
    pub rx_descriptors: usize,
    /// Transmit descriptors: a multiple of 8.
    pub tx_descriptors: usize,
    /// Enable long packets (RCTL.LPE) with 16 KiB buffers: MTU 9000.
    pub jumbo: bool,
}

impl Default for E1000Config {
    fn default() -> Self {
        Self { rx_descriptors: 64, tx_descriptors: 64, jumbo: false }
    }
}

/// The driver. Owns the device registers and its rings; polled, no interrupts.
#[derive(Debug)]
pub struct E1000<H: Hal> {
    hal: H,
    regs: Window<Bar0, H>,
    model: Model,
    mac: [u8; 6],
    mtu: usize,
    buf_len: usize,
    rx_ring: DmaTable<(), RxDesc>,
    rx_bufs: Dma,
    rx_count: usize,
    rx_next: usize,
    /// Inside a frame that spilled over several descriptors: discard up to its EOP.
    rx_discarding: bool,
    tx_ring: DmaTable<(), TxDesc>,
    tx_bufs: Dma,
    tx_count: usize,
    tx_tail: usize,
    tx_clean: usize,
    stats: DeviceStats,
}

impl<H: Hal> E1000<H> {
    /// Resets and brings up the NIC whose BAR0 is mapped at `mmio_base`, with default rings.
    ///
    /// # Safety
    /// `mmio_base` must be the CPU address of the device's BAR0 (128 KiB), mapped
    /// uncacheable, PCI bus mastering and memory decoding enabled, and no one else may drive
    /// this device.
    pub unsafe fn new(hal: H, mmio_base: usize, device_id: u16) -> Result<Self, DriverError> {
        // SAFETY: forwarded from the caller.
        unsafe { Self::with_config(hal, mmio_base, device_id, E1000Config::default()) }
    }

    /// As [`E1000::new`] with explicit ring sizes and jumbo frames.
    ///
    /// # Safety
    /// As for [`E1000::new`].
    pub unsafe fn with_config(
        hal: H,
        mmio_base: usize,
        device_id: u16,
        config: E1000Config,
    ) -> Result<Self, DriverError> {
        let model =
            Model::from_device_id(device_id).ok_or(DriverError::UnsupportedDevice(device_id))?;
        let rx_count = config.rx_descriptors.max(8).next_multiple_of(8);
        let tx_count = config.tx_descriptors.max(8).next_multiple_of(8);
        let (buf_len, mtu) = if config.jumbo { (16_384, 9000) } else { (2048, 1500) };
        // Rings 128-byte aligned (8254x SDM §3.2.6, §3.3.5: RDLEN/TDLEN multiples of 128).
        let no_mem = DriverError::NoDmaMemory;
        let bufs = |len| Dma::alloc(&hal, len, 128).ok_or(no_mem);
        let rx_ring = DmaTable::alloc(&hal, rx_count, 0, 128).ok_or(no_mem)?;
        let rx_bufs = bufs(rx_count * buf_len)?;
        let tx_ring = DmaTable::alloc(&hal, tx_count, 0, 128).ok_or(no_mem)?;
        let tx_bufs = bufs(tx_count * buf_len)?;
        // SAFETY: `mmio_base` is the device's 128 KiB BAR0, mapped and ours (constructor
        // contract), which is all of `Bar0`.
        let regs = unsafe { Window::new(mmio_base) };
        let mut dev = Self {
            hal,
            regs,
            model,
            mac: [0; 6],
            mtu,
            buf_len,
            rx_ring,
            rx_bufs,
            rx_count,
            rx_next: 0,
            rx_discarding: false,
            tx_ring,
            tx_bufs,
            tx_count,
            tx_tail: 0,
            tx_clean: 0,
            stats: DeviceStats::default(),
        };
        dev.reset()?;
        dev.mac = dev.read_mac()?;
        dev.init_rx(config.jumbo);
        dev.init_tx();
        Ok(dev)
    }

    /// Which family member this is.
    pub fn model(&self) -> Model {
        self.model
    }

    fn read(&self, reg: Reg<Bar0, u32>) -> u32 {
        self.regs.read(&self.hal, reg)
    }

    fn write(&self, reg: Reg<Bar0, u32>, value: u32) {
        self.regs.write(&self.hal, reg, value);
    }

    /// Global reset (8254x SDM §14, general initialization): mask interrupts, set CTRL.RST, wait
    /// for it to self-clear, mask again, then force the link up.
    fn reset(&mut self) -> Result<(), DriverError> {
        self.write(reg::IMC, u32::MAX);
        self.write(reg::RCTL, 0);
        self.write(reg::TCTL, 0);
        let ctrl = self.read(reg::CTRL);
        self.write(reg::CTRL, ctrl | CTRL_RST);
        if !(0..SPIN_LIMIT).any(|_| self.read(reg::CTRL) & CTRL_RST == 0) {
            return Err(DriverError::ResetTimeout);
        }
        self.write(reg::IMC, u32::MAX);
        let _ = self.read(reg::ICR);
        let ctrl = self.read(reg::CTRL);
        let ctrl =
            (ctrl | CTRL_SLU | CTRL_ASDE) & !(CTRL_LRST | CTRL_PHY_RST | CTRL_ILOS | CTRL_VME);
        self.write(reg::CTRL, ctrl);
        if self.model == Model::I82574 {
            let gcr = self.read(reg::GCR);
            self.write(reg::GCR, gcr | GCR_82574_BIT22);
        }
        Ok(())
    }

    /// One 16-bit EEPROM word through EERD (8254x SDM §13.4.4; 82574L DS §10.2, EERD).
    fn eeprom_read(&self, word: u8) -> Result<u16, DriverError> {
        let (done, shift) = match self.model {
            Model::I8254x => (1 << 4, 8),
            Model::I82574 => (1 << 1, 2),
        };
        self.write(reg::EERD, (u32::from(word) << shift) | 1);
        for _ in 0..SPIN_LIMIT {
            let v = self.read(reg::EERD);
            if v & done != 0 {
                return Ok((v >> 16) as u16);
            }
        }
        Err(DriverError::EepromTimeout)
    }

    /// The MAC from RAL0/RAH0 (8254x SDM §13.4, RAL/RAH), or from EEPROM words 0–2 when those read
    /// zero (Bochs) — then written back so the receive filter matches it.
    fn read_mac(&self) -> Result<[u8; 6], DriverError> {
        let (ral, rah) = (self.read(reg::RAL0), self.read(reg::RAH0));
        let mut mac = [0u8; 6];
        if ral != 0 || rah & 0xFFFF != 0 {
            mac[..4].copy_from_slice(&ral.to_le_bytes());
            mac[4..].copy_from_slice(&(rah as u16).to_le_bytes());
        } else {
            for i in 0..3u8 {
                let w = self.eeprom_read(i)?.to_le_bytes();
                mac[usize::from(i) * 2..usize::from(i) * 2 + 2].copy_from_slice(&w);
            }
        }
        if mac == [0; 6] || mac == [0xFF; 6] || mac[0] & 1 != 0 {
            return Err(DriverError::NoMac);
        }
        self.write(reg::RAL0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        // RAH.AV (bit 31): the address is valid for filtering.
        self.write(reg::RAH0, u32::from(u16::from_le_bytes([mac[4], mac[5]])) | (1 << 31));
        Ok(mac)
    }

    /// Receive setup (8254x SDM §14.4): clear the multicast table, give every descriptor a
    /// buffer, hand all but one to the device, enable.
    fn init_rx(&mut self, jumbo: bool) {
        for r in reg::MTA.iter() {
            self.write(r, 0);
        }
        for i in 0..self.rx_count {
            let d = self.rx_ring.entry(i);
            d.set(rxd::ADDR, self.rx_bufs.phys(i * self.buf_len));
            d.set(rxd::META, 0);
        }
        let base = self.rx_ring.phys();
        self.write(reg::RDBAL, base as u32);
        self.write(reg::RDBAH, (base >> 32) as u32);
        self.write(reg::RDLEN, (self.rx_count * RxDesc::SIZE) as u32);
        self.write(reg::RDH, 0);
        fence(Ordering::Release);
        self.write(reg::RDT, (self.rx_count - 1) as u32);
        let size = if jumbo { RCTL_BSIZE_16K | RCTL_LPE } else { 0 };
        self.write(reg::RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC | size);
    }

    /// Transmit setup (8254x SDM §14.5).
    fn init_tx(&mut self) {
        let base = self.tx_ring.phys();
        self.write(reg::TDBAL, base as u32);
        self.write(reg::TDBAH, (base >> 32) as u32);
        self.write(reg::TDLEN, (self.tx_count * TxDesc::SIZE) as u32);
        self.write(reg::TDH, 0);
        self.write(reg::TDT, 0);
        self.write(reg::TIPG, TIPG_COPPER);
        self.write(reg::TCTL, TCTL_EN | TCTL_PSP | TCTL_CT | TCTL_COLD);
    }

    /// Reclaims transmit descriptors the device reported done.
    fn reclaim_tx(&mut self) {
        while self.tx_clean != self.tx_tail {
            if self.tx_ring.entry(self.tx_clean).get(txd::STATUS) & TX_STATUS_DD == 0 {
                break;
            }
            self.tx_clean = (self.tx_clean + 1) % self.tx_count;
        }
    }

    fn tx_full(&self) -> bool {
        (self.tx_tail + 1) % self.tx_count == self.tx_clean
    }

    /// Largest frame accepted by `transmit` (Ethernet header + MTU + a VLAN tag).
    pub fn max_frame(&self) -> usize {
        (self.mtu + 18).min(self.buf_len)
    }
}

impl<H: Hal> NetDevice for E1000<H> {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&mut self) -> bool {
        self.read(reg::STATUS) & STATUS_LU != 0
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn can_transmit(&mut self) -> bool {
        self.reclaim_tx();
        !self.tx_full()
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), DriverError> {
        if frame.len() < 14 || frame.len() > self.max_frame() {
            return Err(DriverError::BadFrameLength(frame.len()));
        }
        self.reclaim_tx();
        if self.tx_full() {
            self.stats.tx_ring_full += 1;
            return Err(DriverError::TxRingFull);
        }
        let i = self.tx_tail;
        self.tx_bufs.copy_in(i * self.buf_len, frame);
        let d = self.tx_ring.entry(i);
        d.set(txd::ADDR, self.tx_bufs.phys(i * self.buf_len));
        d.set(txd::LENGTH, frame.len() as u16);
        d.set(txd::CSO, 0);
        d.set(txd::CMD, TX_CMD_EOP | TX_CMD_IFCS | TX_CMD_RS);
        d.set(txd::STATUS, 0);
        d.set(txd::CSS, 0);
        d.set(txd::SPECIAL, 0);
        self.tx_tail = (i + 1) % self.tx_count;
        // Descriptor and buffer must be visible before the device sees the new tail.
        fence(Ordering::Release);
        self.write(reg::TDT, self.tx_tail as u32);
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        // At most one pass over the ring per call: a device that keeps setting DD (stuck, or
        // hostile) must not hold the caller here; whatever is left waits for the next poll.
        for _ in 0..self.rx_count {
            let d = self.rx_ring.entry(self.rx_next);
            let status = d.get(rxd::STATUS);
            if status & RX_STATUS_DD == 0 {
                return None;
            }
            fence(Ordering::Acquire);
            let len = usize::from(d.get(rxd::LENGTH));
            let errors = d.get(rxd::ERRORS);
            // Buffers are sized for a whole frame, so a frame spread over several descriptors
            // (no EOP) is bad as a whole, up to and including the descriptor with EOP.
            let eop = status & RX_STATUS_EOP != 0;
            let continuation = core::mem::replace(&mut self.rx_discarding, !eop);
            let good = eop && !continuation && errors == 0 && len <= self.buf_len;
            let fits = len <= buf.len();
            if good && fits {
                self.rx_bufs.copy_out(self.rx_next * self.buf_len, &mut buf[..len]);
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += len as u64;
            } else if eop {
                // One count per bad frame, however many descriptors it used.
                self.stats.rx_errors += 1;
            }
            // Give the descriptor back: clear status, then move the tail onto it.
            d.set(rxd::STATUS, 0);
            let done = self.rx_next;
            self.rx_next = (self.rx_next + 1) % self.rx_count;
            fence(Ordering::Release);
            self.write(reg::RDT, done as u32);
            if good && fits {
                return Some(len);
            }
        }
        // A whole ring of completions without one good frame: a burst of bad frames at
        // best, a device stuck on DD at worst.
        self.stats.device_faults += 1;
        None
    }

    fn stats(&mut self) -> DeviceStats {
        // Clear-on-read statistics (8254x SDM §13.7).
        self.stats.rx_missed += u64::from(self.read(reg::MPC));
        self.stats.rx_errors += u64::from(self.read(reg::CRCERRS));
        self.stats
    }
}

#[cfg(test)]
mod tests;
