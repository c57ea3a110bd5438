//! Configuration mechanism 1: address at 0xCF8, data at 0xCFC (PCI Local Bus spec 3.0
//! §3.2.2.3.2), and the enumeration of every function on every bus.

use alloc::vec::Vec;

use spin::Mutex;
use x86_64::instructions::port::Port;

use super::{decode_bar, Bdf, Device};

static CONFIG: Mutex<()> = Mutex::new(());

fn address(bdf: Bdf, off: u8) -> u32 {
    0x8000_0000
        | u32::from(bdf.bus) << 16
        | u32::from(bdf.dev) << 11
        | u32::from(bdf.func) << 8
        | u32::from(off & 0xFC)
}

/// Reads a config dword.
pub fn read32(bdf: Bdf, off: u8) -> u32 {
    let _g = CONFIG.lock();
    // SAFETY: 0xCF8/0xCFC are the PCI configuration ports; the lock keeps the
    // address/data pair atomic against other CPUs.
    unsafe {
        Port::<u32>::new(0xCF8).write(address(bdf, off));
        Port::<u32>::new(0xCFC).read()
    }
}

/// Writes a config dword.
pub fn write32(bdf: Bdf, off: u8, val: u32) {
    let _g = CONFIG.lock();
    // SAFETY: as in `read32`; callers write only registers whose effect they own.
    unsafe {
        Port::<u32>::new(0xCF8).write(address(bdf, off));
        Port::<u32>::new(0xCFC).write(val);
    }
}

fn sized_bars(bdf: Bdf, count: u8) -> [Option<super::Bar>; 6] {
    let mut bars = [None; 6];
    let cmd = read32(bdf, 0x04);
    // Decoding off while the BARs hold all ones (PCI spec §6.2.5.1).
    write32(bdf, 0x04, cmd & !0x3);
    let mut i = 0u8;
    while i < count {
        let off = 0x10 + 4 * i;
        let lo = read32(bdf, off);
        write32(bdf, off, 0xFFFF_FFFF);
        let lo_mask = read32(bdf, off);
        write32(bdf, off, lo);
        let wide = lo & 1 == 0 && (lo >> 1) & 3 == 2 && i + 1 < count;
        let (hi, hi_mask) = if wide {
            let hi = read32(bdf, off + 4);
            write32(bdf, off + 4, 0xFFFF_FFFF);
            let m = read32(bdf, off + 4);
            write32(bdf, off + 4, hi);
            (hi, m)
        } else {
            (0, 0)
        };
        bars[usize::from(i)] = decode_bar(lo, lo_mask, hi, hi_mask);
        i += if wide { 2 } else { 1 };
    }
    write32(bdf, 0x04, cmd);
    bars
}

/// Every function on buses 0–255.
pub fn enumerate() -> Vec<Device> {
    let mut out = Vec::new();
    for bus in 0..=255u8 {
        for dev in 0..32u8 {
            let first = Bdf { bus, dev, func: 0 };
            if read32(first, 0) & 0xFFFF == 0xFFFF {
                continue;
            }
            let multi = (read32(first, 0x0C) >> 16) & 0x80 != 0;
            for func in 0..if multi { 8 } else { 1 } {
                let bdf = Bdf { bus, dev, func };
                let id = read32(bdf, 0);
                if id & 0xFFFF == 0xFFFF {
                    continue;
                }
                let class = read32(bdf, 0x08);
                let header = (read32(bdf, 0x0C) >> 16) & 0x7F;
                let bar_count = match header {
                    0 => 6,
                    1 => 2,
                    _ => 0,
                };
                out.push(Device {
                    bdf,
                    vendor: id as u16,
                    device: (id >> 16) as u16,
                    class: [(class >> 24) as u8, (class >> 16) as u8, (class >> 8) as u8],
                    bars: sized_bars(bdf, bar_count),
                });
            }
        }
    }
    out
}
