//! Finds the first supported NIC on PCI, enables it and starts its driver.

use alloc::boxed::Box;

use gestalt_netstack::device::NetDevice;
use gestalt_netstack::drivers::e1000::{E1000Config, E1000};
use gestalt_netstack::drivers::virtio_net::{VirtioNet, VirtioNetConfig, VirtioPciRegions};

use super::hal::FwHal;
use crate::pci::config::{read32, write32};
use crate::pci::{virtio_caps, Bar, Device, VirtioCap};

/// A started NIC.
pub struct Nic {
    /// The driver.
    pub dev: Box<dyn NetDevice>,
    /// Which PCI function and model.
    pub name: &'static str,
    /// Where.
    pub bdf: crate::pci::Bdf,
}

/// Why no NIC could be started.
#[derive(Debug)]
pub enum NicError {
    /// No supported NIC on PCI.
    None,
    /// A NIC was found but its driver failed.
    Driver(&'static str, gestalt_netstack::device::DriverError),
    /// Its BAR is not where the driver needs it.
    BadBar(&'static str),
}

impl core::fmt::Display for NicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NicError::None => {
                write!(f, "no supported NIC (e1000 82540EM, e1000e 82574L, virtio-net)")
            }
            NicError::Driver(n, e) => write!(f, "{n}: driver failed: {e:?}"),
            NicError::BadBar(n) => {
                write!(f, "{n}: BAR0 is not a memory BAR below the mapped range")
            }
        }
    }
}

fn enable(d: &Device) {
    // Memory decoding and bus mastering (PCI spec §6.2.2 command register bits 1 and 2).
    let cmd = read32(d.bdf, 0x04);
    write32(d.bdf, 0x04, (cmd & 0xFFFF) | 0x6);
}

fn mapped(addr: u64, len: u64) -> bool {
    addr != 0
        && addr.saturating_add(len)
            <= crate::arch::idt::MAPPED_LIMIT.load(core::sync::atomic::Ordering::Relaxed)
}

/// The CPU address of a virtio structure, if its BAR is a mapped memory BAR that holds it.
fn region(d: &Device, cap: VirtioCap) -> Option<usize> {
    let Some(Bar::Mem { addr, size, .. }) = d.bars.get(usize::from(cap.bar)).copied().flatten()
    else {
        return None;
    };
    let end = u64::from(cap.offset) + u64::from(cap.len);
    (end <= size && mapped(addr, size)).then_some((addr + u64::from(cap.offset)) as usize)
}

fn probe_virtio(d: &Device, hal: FwHal, jumbo: bool) -> Result<Nic, NicError> {
    const NAME: &str = "virtio-net";
    let caps = virtio_caps(|off| read32(d.bdf, off)).ok_or(NicError::BadBar(NAME))?;
    let regions = VirtioPciRegions {
        common_cfg: region(d, caps.common).ok_or(NicError::BadBar(NAME))?,
        common_cfg_len: caps.common.len as usize,
        notify: region(d, caps.notify).ok_or(NicError::BadBar(NAME))?,
        notify_len: caps.notify.len as usize,
        notify_off_multiplier: caps.notify_multiplier,
        isr: region(d, caps.isr).ok_or(NicError::BadBar(NAME))?,
        device_cfg: region(d, caps.device).ok_or(NicError::BadBar(NAME))?,
        device_cfg_len: caps.device.len as usize,
    };
    enable(d);
    let cfg = VirtioNetConfig { jumbo, ..VirtioNetConfig::default() };
    // SAFETY: each region, for its capability's length, is inside this function's memory BAR
    // (checked against the BAR size), identity-mapped; decoding and bus mastering are on; we
    // own the device.
    let dev = unsafe { VirtioNet::with_config(hal, regions, cfg) }
        .map_err(|e| NicError::Driver(NAME, e))?;
    Ok(Nic { dev: Box::new(dev), name: NAME, bdf: d.bdf })
}

/// Starts the first supported NIC in `devices`, with jumbo frames if asked and possible.
pub fn probe(devices: &[Device], hal: FwHal, jumbo: bool) -> Result<Nic, NicError> {
    for d in devices {
        let name = match (d.vendor, d.device) {
            (0x8086, 0x100e) | (0x8086, 0x100f) | (0x8086, 0x1015) | (0x8086, 0x100c) => "e1000",
            (0x8086, 0x10d3) => "e1000e",
            (0x1af4, 0x1000) | (0x1af4, 0x1041) => return probe_virtio(d, hal, jumbo),
            _ => continue,
        };
        let Some(Bar::Mem { addr, .. }) = d.bars[0] else { return Err(NicError::BadBar(name)) };
        if !mapped(addr, 128 << 10) {
            return Err(NicError::BadBar(name));
        }
        enable(d);
        let cfg = E1000Config { jumbo, ..E1000Config::default() };
        // SAFETY: BAR0 is the device's register window, identity-mapped uncached (the MMIO
        // hole below 4 GiB) or write-back above (QEMU/Bochs do not care); decoding and bus
        // mastering are on; nothing else drives this function.
        let dev = unsafe { E1000::with_config(hal, addr as usize, d.device, cfg) }
            .map_err(|e| NicError::Driver(name, e))?;
        return Ok(Nic { dev: Box::new(dev), name, bdf: d.bdf });
    }
    Err(NicError::None)
}
