//! PCI: configuration mechanism 1 enumeration (PCI Local Bus spec 3.0 §3.2.2.3.2), BAR
//! decoding and device naming. Decoding is pure; `config` does the port I/O.

use core::fmt;

#[cfg(target_os = "none")]
pub mod config;

/// Bus/device/function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus 0..=255.
    pub bus: u8,
    /// Device 0..=31.
    pub dev: u8,
    /// Function 0..=7.
    pub func: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// I/O ports.
    Io {
        /// First port.
        port: u32,
        /// Number of ports.
        size: u32,
    },
    /// Memory.
    Mem {
        /// Physical base.
        addr: u64,
        /// Bytes.
        size: u64,
        /// A 64-bit BAR (uses the next slot too).
        wide: bool,
        /// Prefetchable.
        prefetch: bool,
    },
}

/// Decodes a BAR from its original value and the value read back after writing all ones
/// (`hi`/`hi_mask` are the next slot for 64-bit BARs). `None` for an unimplemented BAR.
pub fn decode_bar(lo: u32, lo_mask: u32, hi: u32, hi_mask: u32) -> Option<Bar> {
    if lo & 1 != 0 {
        let mask = lo_mask & 0xFFFF_FFFC;
        if mask == 0 {
            return None;
        }
        // I/O BARs decode at most 16 bits on x86 when the upper half reads 0.
        let mask = if mask & 0xFFFF_0000 == 0 { mask | 0xFFFF_0000 } else { mask };
        return Some(Bar::Io { port: lo & 0xFFFF_FFFC, size: (!mask).wrapping_add(1) });
    }
    let wide = (lo >> 1) & 3 == 2;
    let prefetch = lo & 8 != 0;
    let (addr, mask) = if wide {
        (
            u64::from(hi) << 32 | u64::from(lo & !0xF),
            u64::from(hi_mask) << 32 | u64::from(lo_mask & !0xF),
        )
    } else {
        (u64::from(lo & !0xF), 0xFFFF_FFFF_0000_0000 | u64::from(lo_mask & !0xF))
    };
    if mask & 0xFFFF_FFFF == 0 && (!wide || mask == 0) {
        return None;
    }
    Some(Bar::Mem { addr, size: (!mask).wrapping_add(1), wide, prefetch })
}

/// A PCI function found by enumeration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Where.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class, subclass, programming interface.
    pub class: [u8; 3],
    /// Decoded BARs by slot.
    pub bars: [Option<Bar>; 6],
}

impl Device {
    /// A short human name from vendor/device or class.
    pub fn name(&self) -> &'static str {
        match (self.vendor, self.device) {
            (0x8086, 0x100e) => "Intel 82540EM Gigabit Ethernet (e1000)",
            (0x8086, 0x10d3) => "Intel 82574L Gigabit Ethernet (e1000e)",
            (0x1af4, 0x1000) => "virtio-net (transitional)",
            (0x1af4, 0x1041) => "virtio-net (modern)",
            (0x8086, 0x1237) => "Intel 440FX host bridge",
            (0x8086, 0x7000) => "Intel PIIX3 ISA bridge",
            (0x8086, 0x7010) => "Intel PIIX3 IDE",
            (0x8086, 0x7113) => "Intel PIIX4 ACPI",
            (0x8086, 0x29c0) => "Intel Q35 host bridge",
            (0x1234, 0x1111) => "QEMU/Bochs VGA",
            _ => class_name(self.class[0], self.class[1]),
        }
    }
}

impl fmt::Display for Device {
    /// `bb:dd.f vvvv:dddd class cc.ss.pp <name>`, as the console shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.class;
        write!(
            f,
            "{} {:04x}:{:04x} class {:02x}.{:02x}.{:02x} {}",
            self.bdf,
            self.vendor,
            self.device,
            c[0],
            c[1],
            c[2],
            self.name()
        )
    }
}

/// The PCI class code's name (PCI Code and ID Assignment spec).
pub fn class_name(class: u8, sub: u8) -> &'static str {
    match (class, sub) {
        (0x01, 0x01) => "IDE controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, _) => "storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "network controller",
        (0x03, _) => "display controller",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI-to-PCI bridge",
        (0x06, _) => "bridge",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus controller",
        _ => "device",
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bar::Io { port, size } => write!(f, "io {port:#x} size {size:#x}"),
            Bar::Mem { addr, size, wide, prefetch } => write!(
                f,
                "mem{} {addr:#x} size {}{}",
                if wide { 64 } else { 32 },
                Size(size),
                if prefetch { " prefetchable" } else { "" }
            ),
        }
    }
}

/// Bytes shown with a binary unit.
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole units where exact, else one decimal of the largest unit that fits.
        let b = self.0;
        for (shift, unit) in [(30u32, "GiB"), (20, "MiB"), (10, "KiB")] {
            if b >= 1 << shift {
                let whole = b >> shift;
                let tenth = ((b - (whole << shift)) * 10) >> shift;
                return if tenth == 0 && b.is_multiple_of(1 << shift) {
                    write!(f, "{whole} {unit}")
                } else {
                    write!(f, "{whole}.{tenth} {unit}")
                };
            }
        }
        write!(f, "{b} B")
    }
}

/// Where a virtio modern PCI structure lives (virtio 1.2 §4.1.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioCap {
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
    /// Length.
    pub len: u32,
}

/// The virtio structures a driver needs: common, notify (+ multiplier), ISR, device config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioCaps {
    /// `VIRTIO_PCI_CAP_COMMON_CFG`.
    pub common: VirtioCap,
    /// `VIRTIO_PCI_CAP_NOTIFY_CFG`.
    pub notify: VirtioCap,
    /// Its `notify_off_multiplier`.
    pub notify_multiplier: u32,
    /// `VIRTIO_PCI_CAP_ISR_CFG`.
    pub isr: VirtioCap,
    /// `VIRTIO_PCI_CAP_DEVICE_CFG`.
    pub device: VirtioCap,
}

/// Walks the capability list (PCI spec §6.7) of a function whose config dwords `read` returns,
/// collecting the virtio vendor capabilities (id 0x09). `None` when one of the four is missing
/// (a legacy-only device) or the list is malformed.
pub fn virtio_caps(read: impl Fn(u8) -> u32) -> Option<VirtioCaps> {
    // Status register bit 4: capabilities list present.
    if (read(0x04) >> 16) & 0x10 == 0 {
        return None;
    }
    let mut caps = VirtioCaps::default();
    let mut found = 0u8;
    let mut ptr = (read(0x34) & 0xFC) as u8;
    // A list longer than config space can hold is a loop.
    for _ in 0..48 {
        if ptr < 0x40 {
            break;
        }
        let head = read(ptr);
        let (id, next, cfg_type) = (head as u8, (head >> 8) as u8 & 0xFC, (head >> 24) as u8);
        if id == 0x09 {
            let cap = VirtioCap {
                bar: read(ptr + 4) as u8,
                offset: read(ptr.wrapping_add(8)),
                len: read(ptr.wrapping_add(12)),
            };
            match cfg_type {
                1 => (caps.common, found) = (cap, found | 1),
                2 => {
                    (caps.notify, found) = (cap, found | 2);
                    caps.notify_multiplier = read(ptr.wrapping_add(16));
                }
                3 => (caps.isr, found) = (cap, found | 4),
                4 => (caps.device, found) = (cap, found | 8),
                _ => {}
            }
        }
        ptr = next;
    }
    (found == 15).then_some(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_capabilities_are_collected_from_the_list() {
        let mut cfg = [0u32; 64];
        cfg[0x04 / 4] = 0x10 << 16;
        cfg[0x34 / 4] = 0x40;
        // (at, next, type, bar, offset, len)
        let caps = [
            (0x40u8, 0x54u8, 1u8, 4u8, 0x0u32, 0x1000u32),
            (0x54, 0x68, 3, 4, 0x1000, 0x1000),
            (0x68, 0x7c, 4, 4, 0x2000, 0x1000),
            (0x7c, 0x94, 2, 4, 0x3000, 0x1000),
        ];
        for (at, next, ty, bar, off, len) in caps {
            let i = usize::from(at) / 4;
            cfg[i] = 0x09 | u32::from(next) << 8 | 16 << 16 | u32::from(ty) << 24;
            cfg[i + 1] = u32::from(bar);
            cfg[i + 2] = off;
            cfg[i + 3] = len;
            cfg[i + 4] = 4; // notify_off_multiplier (only read for type 2)
        }
        cfg[0x94 / 4] = 0x05; // an MSI capability ends the list
        let got = virtio_caps(|off| cfg[usize::from(off) / 4]).unwrap();
        assert_eq!(got.common, VirtioCap { bar: 4, offset: 0, len: 0x1000 });
        assert_eq!(got.notify, VirtioCap { bar: 4, offset: 0x3000, len: 0x1000 });
        assert_eq!(got.notify_multiplier, 4);
        assert_eq!(got.device.offset, 0x2000);
    }

    #[test]
    fn legacy_devices_and_looping_lists_give_none() {
        let mut cfg = [0u32; 64];
        assert_eq!(virtio_caps(|off| cfg[usize::from(off) / 4]), None);
        cfg[0x04 / 4] = 0x10 << 16;
        cfg[0x34 / 4] = 0x40;
        cfg[0x40 / 4] = 0x09 | 0x40 << 8 | 1 << 24; // points at itself
        assert_eq!(virtio_caps(|off| cfg[usize::from(off) / 4]), None);
    }

    #[test]
    fn memory_bar_sizes_decode_from_the_all_ones_readback() {
        // e1000 BAR0: 128 KiB non-prefetchable 32-bit memory.
        let bar = decode_bar(0xfebc_0000, 0xfffe_0000, 0, 0).unwrap();
        assert_eq!(
            bar,
            Bar::Mem { addr: 0xfebc_0000, size: 128 << 10, wide: false, prefetch: false }
        );
        assert_eq!(bar.to_string(), "mem32 0xfebc0000 size 128 KiB");
    }

    #[test]
    fn wide_and_io_bars_decode() {
        let bar = decode_bar(0xfe00_000c, 0xffff_c00c, 0x1, 0xffff_ffff).unwrap();
        assert_eq!(
            bar,
            Bar::Mem { addr: 0x1_fe00_0000, size: 16 << 10, wide: true, prefetch: true }
        );
        assert_eq!(decode_bar(0xc001, 0xffc1, 0, 0), Some(Bar::Io { port: 0xc000, size: 0x40 }));
        assert_eq!(decode_bar(0, 0, 0, 0), None);
    }

    #[test]
    fn devices_are_named_by_id_then_by_class() {
        let mut d = Device {
            bdf: Bdf { bus: 0, dev: 3, func: 0 },
            vendor: 0x8086,
            device: 0x100e,
            class: [2, 0, 0],
            bars: [None; 6],
        };
        assert!(d.name().contains("e1000"));
        d.vendor = 0xabcd;
        assert_eq!(d.name(), "Ethernet controller");
        assert_eq!(d.bdf.to_string(), "00:03.0");
        assert_eq!(d.to_string(), "00:03.0 abcd:100e class 02.00.00 Ethernet controller");
    }

    #[test]
    fn sizes_show_whole_units_or_one_decimal() {
        assert_eq!(Size(261_628 << 10).to_string(), "255.4 MiB");
        assert_eq!(Size(24 << 20).to_string(), "24 MiB");
        assert_eq!(Size(3 << 30).to_string(), "3 GiB");
        assert_eq!(Size(1023).to_string(), "1023 B");
        assert_eq!(Size((1 << 20) + 1).to_string(), "1.0 MiB");
    }
}
