//! A virtual 16550A UART (National Semiconductor PC16550D datasheet, register map in Table 2):
//! enough for polled guest consoles. Output is collected into lines the node prints marked as
//! guest output; input comes from the node console.

use heapless::{Deque, Vec};

/// Longest guest line kept; longer lines are split.
pub const LINE: usize = 160;

/// The UART's state.
#[derive(Default)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    rx: Deque<u8, 64>,
    line: Vec<u8, LINE>,
}

/// LSR: data ready.
const LSR_DR: u8 = 1 << 0;
/// LSR: transmit holding register empty, transmitter empty.
const LSR_THRE_TEMT: u8 = (1 << 5) | (1 << 6);

impl Uart {
    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }

    /// A guest read of register `off` (0..8).
    pub fn read(&mut self, off: u16) -> u8 {
        match off {
            0 if self.dlab() => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            // IIR: FIFOs enabled, no interrupt pending.
            2 => 0xC1,
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THRE_TEMT | if self.rx.is_empty() { 0 } else { LSR_DR },
            // MSR: CTS, DSR, DCD asserted.
            6 => 0xB0,
            7 => self.scr,
            _ => 0xFF,
        }
    }

    /// A guest write of `val` to register `off`; returns a finished output line.
    pub fn write(&mut self, off: u16, val: u8) -> Option<Vec<u8, LINE>> {
        match off {
            0 if self.dlab() => self.dll = val,
            0 => return self.out(val),
            1 if self.dlab() => self.dlm = val,
            1 => self.ier = val & 0x0f,
            3 => self.lcr = val,
            4 => self.mcr = val & 0x1f,
            7 => self.scr = val,
            _ => {}
        }
        None
    }

    fn out(&mut self, b: u8) -> Option<Vec<u8, LINE>> {
        match b {
            b'\n' => Some(core::mem::take(&mut self.line)),
            b'\r' => None,
            _ => {
                if self.line.push(b).is_err() {
                    let full = core::mem::take(&mut self.line);
                    let _ = self.line.push(b);
                    return Some(full);
                }
                None
            }
        }
    }

    /// Queues console input for the guest; false when the FIFO is full.
    pub fn push_input(&mut self, b: u8) -> bool {
        self.rx.push_back(b).is_ok()
    }

    /// Output not yet ended by a newline (printed when the guest stops).
    pub fn take_partial(&mut self) -> Option<Vec<u8, LINE>> {
        (!self.line.is_empty()).then(|| core::mem::take(&mut self.line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_become_lines_without_carriage_returns() {
        let mut u = Uart::default();
        for b in b"hi\r" {
            assert_eq!(u.write(0, *b), None);
        }
        assert_eq!(u.write(0, b'\n').unwrap().as_slice(), b"hi");
        assert_eq!(u.read(5) & 0x20, 0x20);
    }

    #[test]
    fn divisor_latch_hides_the_data_register() {
        let mut u = Uart::default();
        u.write(3, 0x80);
        u.write(0, 1);
        assert_eq!(u.read(0), 1);
        assert!(u.take_partial().is_none());
        u.write(3, 0x03);
        u.write(0, b'x');
        assert_eq!(u.take_partial().unwrap().as_slice(), b"x");
    }

    #[test]
    fn input_sets_data_ready_until_read() {
        let mut u = Uart::default();
        assert_eq!(u.read(5) & 1, 0);
        u.push_input(b'q');
        assert_eq!(u.read(5) & 1, 1);
        assert_eq!(u.read(0), b'q');
        assert_eq!(u.read(5) & 1, 0);
    }

    #[test]
    fn overlong_lines_are_split_not_lost() {
        let mut u = Uart::default();
        let mut lines = 0;
        for _ in 0..LINE + 5 {
            lines += usize::from(u.write(0, b'a').is_some());
        }
        assert_eq!(lines, 1);
        assert_eq!(u.take_partial().unwrap().len(), 5);
    }
}
