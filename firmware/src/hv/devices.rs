//! The guest's port-I/O devices: COM1 (the [`Uart`] model) and the debug-exit port. Every other
//! port reads all-ones and ignores writes, as an empty ISA bus does, and is counted per port so
//! an operator sees in `vcpu` what a guest pokes at.

use heapless::Vec;

use super::uart::{Uart, LINE};
use super::IoDir;

/// Guest debug-exit port: a write ends the guest with that exit code (0 = success).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// COM1's base port.
pub const COM1: u16 = 0x3f8;
/// Distinct unimplemented ports counted one by one; the rest are summed in `other`.
pub const COUNTED_PORTS: usize = 16;

/// What a port write asks of the machine beyond the register change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortEffect {
    /// Nothing.
    None,
    /// The guest finished a line on COM1.
    Line(Vec<u8, LINE>),
    /// The guest asked to exit with this code.
    Exit(u32),
}

/// Accesses to ports no device answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unclaimed {
    /// (port, accesses), in the order first seen.
    pub ports: Vec<(u16, u64), COUNTED_PORTS>,
    /// Accesses to ports beyond the first [`COUNTED_PORTS`].
    pub other: u64,
}

impl Unclaimed {
    fn count(&mut self, port: u16) {
        if let Some(e) = self.ports.iter_mut().find(|e| e.0 == port) {
            e.1 += 1;
        } else if self.ports.push((port, 1)).is_err() {
            self.other += 1;
        }
    }
}

/// The port devices of the guest.
#[derive(Default)]
pub struct Devices {
    /// COM1.
    pub uart: Uart,
    /// Ports nothing answers.
    pub unclaimed: Unclaimed,
}

impl Devices {
    /// One access of `size` bytes; returns the value read (for `In`) and the effect (for `Out`).
    pub fn access(&mut self, port: u16, size: u8, dir: IoDir, val: u32) -> (u32, PortEffect) {
        let ones = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => u32::MAX,
        };
        match (port, dir) {
            (COM1..=0x3ff, IoDir::In) => (u32::from(self.uart.read(port - COM1)), PortEffect::None),
            (COM1..=0x3ff, IoDir::Out) => match self.uart.write(port - COM1, val as u8) {
                Some(line) => (0, PortEffect::Line(line)),
                None => (0, PortEffect::None),
            },
            (DEBUG_EXIT_PORT, IoDir::Out) => (0, PortEffect::Exit(val)),
            (_, dir) => {
                self.unclaimed.count(port);
                (if dir == IoDir::In { ones } else { 0 }, PortEffect::None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_written_to_com1_comes_out_whole() {
        let mut d = Devices::default();
        let mut out = None;
        for b in b"hi\n" {
            if let (_, PortEffect::Line(l)) = d.access(COM1, 1, IoDir::Out, u32::from(*b)) {
                out = Some(l);
            }
        }
        assert_eq!(out.as_deref(), Some(&b"hi"[..]));
    }

    #[test]
    fn the_debug_port_ends_the_guest_with_the_value_written() {
        let mut d = Devices::default();
        assert_eq!(d.access(DEBUG_EXIT_PORT, 4, IoDir::Out, 3).1, PortEffect::Exit(3));
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_are_counted_per_port() {
        let mut d = Devices::default();
        assert_eq!(d.access(0x61, 1, IoDir::In, 0).0, 0xff);
        assert_eq!(d.access(0x61, 2, IoDir::In, 0).0, 0xffff);
        assert_eq!(d.access(0x70, 1, IoDir::Out, 5), (0, PortEffect::None));
        assert_eq!(&d.unclaimed.ports[..], &[(0x61, 2), (0x70, 1)]);
    }

    #[test]
    fn a_guest_probing_every_port_costs_bounded_memory() {
        let mut d = Devices::default();
        for p in 0..0x100u16 {
            d.access(p, 1, IoDir::In, 0);
        }
        assert_eq!(d.unclaimed.ports.len(), COUNTED_PORTS);
        let counted: u64 = d.unclaimed.ports.iter().map(|e| e.1).sum();
        assert_eq!(counted + d.unclaimed.other, 0x100);
    }
}
