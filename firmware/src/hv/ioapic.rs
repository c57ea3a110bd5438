//! The guest's I/O APIC (Intel 82093AA datasheet §3): the index/data register pair at
//! IOREGSEL (offset 0x00) and IOWIN (0x10) of its MMIO page, the ID, version and arbitration
//! registers, and 24 redirection entries. Device lines (COM1's IRQ 4) come in through
//! [`IoApic::set_line`]; an unmasked entry turns an edge (or a level while its remote IRR is
//! clear) into an [`Irq`] for the local APICs. Version 0x11: level-triggered entries are
//! completed by the local APIC's EOI broadcast, [`IoApic::eoi`].

use heapless::Vec;

/// Redirection entries (pins).
pub const PINS: usize = 24;
/// IOREGSEL's offset in the page.
pub const IOREGSEL: u64 = 0x00;
/// IOWIN's offset.
pub const IOWIN: u64 = 0x10;
/// The version register: 24 entries (max index 23 in bits 23:16), version 0x11.
pub const VERSION: u32 = ((PINS as u32 - 1) << 16) | 0x11;

const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
const DELIVERY_STATUS: u64 = 1 << 12;
const LOGICAL: u64 = 1 << 11;
/// Bits software may write in an entry: vector, delivery mode, destination mode, polarity,
/// trigger, mask (low word) and the destination (bits 63:56); the rest are read-only.
const WRITABLE: u64 = 0xff00_0000_0000_0000 | 0x1_afff;

/// Where an interrupt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The local APIC with this id (physical mode; 0xFF is every APIC).
    Physical(u8),
    /// Flat logical mode: the APICs whose bit is set (vCPU i is bit i, i < 8).
    Logical(u8),
}

/// One interrupt message for the local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irq {
    /// Destination.
    pub target: Target,
    /// Vector (fixed and lowest-priority delivery).
    pub vector: u8,
    /// NMI delivery (the vector is ignored).
    pub nmi: bool,
}

/// The I/O APIC's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoApic {
    sel: u32,
    id: u32,
    redir: [u64; PINS],
    line: [bool; PINS],
}

impl Default for IoApic {
    fn default() -> Self {
        IoApic { sel: 0, id: 0, redir: [MASKED; PINS], line: [false; PINS] }
    }
}

impl IoApic {
    /// A 32-bit read at `off` in the page (other widths read the containing dword).
    pub fn read(&self, off: u64) -> u32 {
        match off & !3 {
            IOREGSEL => self.sel,
            IOWIN => self.register(),
            _ => 0,
        }
    }

    fn register(&self) -> u32 {
        match self.sel {
            0 => self.id,
            1 => VERSION,
            2 => self.id,
            r @ 0x10..=0x3f => {
                let e = self.redir[(r as usize - 0x10) / 2];
                if r % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// A 32-bit write at `off`; an entry unmasked while its level line is high fires.
    pub fn write(&mut self, off: u64, v: u32) -> Option<Irq> {
        match off & !3 {
            IOREGSEL => self.sel = v & 0xff,
            IOWIN => match self.sel {
                0 => self.id = v & 0x0f00_0000,
                r @ 0x10..=0x3f => {
                    let pin = (r as usize - 0x10) / 2;
                    let e = self.redir[pin];
                    let new = if r % 2 == 0 {
                        (e & !0xffff_ffff) | u64::from(v)
                    } else {
                        (e & 0xffff_ffff) | (u64::from(v) << 32)
                    };
                    self.redir[pin] = (e & !WRITABLE) | (new & WRITABLE);
                    if self.redir[pin] & LEVEL == 0 {
                        self.redir[pin] &= !REMOTE_IRR;
                    }
                    return self.level_check(pin);
                }
                _ => {}
            },
            _ => {}
        }
        None
    }

    /// Device line `pin` is now `high`: an edge-triggered entry fires on the rising edge, a
    /// level-triggered one while high and not already in service. Pins beyond [`PINS`] are
    /// ignored.
    pub fn set_line(&mut self, pin: usize, high: bool) -> Option<Irq> {
        let was = core::mem::replace(self.line.get_mut(pin)?, high);
        let e = self.redir[pin];
        if e & LEVEL != 0 {
            return self.level_check(pin);
        }
        (high && !was && e & MASKED == 0).then(|| message(e))
    }

    fn level_check(&mut self, pin: usize) -> Option<Irq> {
        let e = self.redir[pin];
        if e & LEVEL == 0 || e & (MASKED | REMOTE_IRR) != 0 || !self.line[pin] {
            return None;
        }
        self.redir[pin] |= REMOTE_IRR;
        Some(message(e))
    }

    /// A local APIC's EOI for `vector`: level entries with that vector leave service and fire
    /// again if their line is still high.
    pub fn eoi(&mut self, vector: u8) -> Vec<Irq, PINS> {
        let mut out = Vec::new();
        for pin in 0..PINS {
            if self.redir[pin] & REMOTE_IRR != 0 && self.redir[pin] as u8 == vector {
                self.redir[pin] &= !REMOTE_IRR;
                if let Some(i) = self.level_check(pin) {
                    let _ = out.push(i);
                }
            }
        }
        out
    }

    /// Entry `pin` (for `vcpu`-style dumps and tests).
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.redir.get(pin).map(|e| e & !DELIVERY_STATUS)
    }
}

fn message(e: u64) -> Irq {
    let dest = (e >> 56) as u8;
    let target = if e & LOGICAL != 0 { Target::Logical(dest) } else { Target::Physical(dest) };
    // Delivery mode (bits 10:8): 0 fixed, 1 lowest priority (delivered as fixed), 4 NMI.
    Irq { target, vector: e as u8, nmi: (e >> 8) & 7 == 4 }
}

/// The vCPUs (x2APIC id = index) among `n` that `t` reaches.
pub fn targets(t: Target, n: usize) -> impl Iterator<Item = usize> {
    (0..n).filter(move |&i| match t {
        Target::Physical(0xff) => true,
        Target::Physical(id) => i == usize::from(id),
        Target::Logical(mask) => i < 8 && mask & (1 << i) != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(io: &mut IoApic, pin: u32, lo: u32, hi: u32) -> Option<Irq> {
        io.write(IOREGSEL, 0x10 + 2 * pin + 1);
        io.write(IOWIN, hi);
        io.write(IOREGSEL, 0x10 + 2 * pin);
        io.write(IOWIN, lo)
    }

    #[test]
    fn version_and_id_registers_read_back() {
        let mut io = IoApic::default();
        io.write(IOREGSEL, 1);
        assert_eq!(io.read(IOWIN), 0x0017_0011);
        io.write(IOREGSEL, 0);
        io.write(IOWIN, 0x0300_00ff);
        assert_eq!(io.read(IOWIN), 0x0300_0000, "only bits 27:24");
        assert_eq!(io.read(IOREGSEL), 0);
        assert_eq!(io.read(0x20), 0, "nothing else in the page");
    }

    #[test]
    fn entries_start_masked_and_read_back_what_was_written() {
        let mut io = IoApic::default();
        for pin in 0..PINS {
            assert_eq!(io.entry(pin), Some(MASKED));
        }
        program(&mut io, 4, 0x0000_0024, 0x0100_0000);
        io.write(IOREGSEL, 0x18);
        assert_eq!(io.read(IOWIN), 0x24);
        io.write(IOREGSEL, 0x19);
        assert_eq!(io.read(IOWIN), 0x0100_0000);
        // Remote IRR and delivery status are read-only.
        program(&mut io, 5, 0x0000_5030, 0);
        assert_eq!(io.entry(5), Some(0x30));
        assert_eq!(io.entry(PINS), None);
    }

    #[test]
    fn an_unmasked_edge_entry_fires_once_per_rising_edge() {
        let mut io = IoApic::default();
        assert_eq!(io.set_line(4, true), None, "masked");
        io.set_line(4, false);
        program(&mut io, 4, 0x31, 0x0200_0000);
        let irq = Irq { target: Target::Physical(2), vector: 0x31, nmi: false };
        assert_eq!(io.set_line(4, true), Some(irq));
        assert_eq!(io.set_line(4, true), None, "still high: no new edge");
        assert_eq!(io.set_line(4, false), None);
        assert_eq!(io.set_line(4, true), Some(irq));
        assert_eq!(io.set_line(99, true), None);
    }

    #[test]
    fn a_level_entry_waits_for_the_eoi_and_fires_again_while_high() {
        let mut io = IoApic::default();
        let irq = Irq { target: Target::Physical(0), vector: 0x40, nmi: false };
        program(&mut io, 9, 0x0000_8040 | (1 << 16), 0);
        assert_eq!(io.set_line(9, true), None, "masked");
        // Unmasking with the line high delivers.
        assert_eq!(program(&mut io, 9, 0x0000_8040, 0), Some(irq));
        assert_eq!(io.set_line(9, true), None, "in service");
        assert_eq!(io.eoi(0x41).len(), 0, "other vector");
        assert_eq!(&io.eoi(0x40)[..], &[irq], "still high: again");
        io.set_line(9, false);
        assert_eq!(io.eoi(0x40).len(), 0);
        assert_eq!(io.set_line(9, true), Some(irq));
    }

    #[test]
    fn logical_nmi_and_broadcast_targets() {
        let mut io = IoApic::default();
        program(&mut io, 1, 0x0000_0c00, 0x0600_0000);
        let irq = io.set_line(1, true).unwrap();
        assert_eq!(irq, Irq { target: Target::Logical(6), vector: 0, nmi: true });
        assert_eq!(targets(irq.target, 4).collect::<std::vec::Vec<_>>(), [1, 2]);
        assert_eq!(targets(Target::Physical(0xff), 3).count(), 3);
        assert_eq!(targets(Target::Physical(7), 3).count(), 0);
    }
}
