//! A virtual 16550A UART (National Semiconductor PC16550D datasheet, register map in Table 2,
//! interrupt priorities in Table 4): receive-data and transmitter-empty interrupts with the
//! IIR's priority order, the FIFO control register, the modem control and status registers
//! with loopback (Linux's 8250 driver probes with it). Transmission is instant: the holding
//! register is empty again as soon as it is written. Output is collected into lines the node
//! prints marked as guest output; input comes from the node console. The interrupt line
//! ([`Uart::irq`]) is gated by MCR.OUT2, as on a PC.

use heapless::{Deque, Vec};

/// Longest guest line kept; longer lines are split.
pub const LINE: usize = 160;
/// Receive FIFO depth: deeper than a 16550A's 16 bytes, so typed input waits for a guest that
/// polls slowly instead of being dropped.
pub const FIFO: usize = 64;

/// The UART's state.
#[derive(Default)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_on: bool,
    /// A THR-empty interrupt is pending (set when the THR empties or the interrupt is
    /// enabled while it is empty; cleared by reading IIR with it as the source or a THR write).
    thre: bool,
    /// Delta bits of MSR (3:0), cleared by reading MSR.
    msr_delta: u8,
    rx: Deque<u8, FIFO>,
    /// A byte arrived while the receive FIFO was full (LSR.OE, cleared by reading LSR).
    overrun: bool,
    /// Input bytes lost that way since the UART was made.
    lost: u64,
    line: Vec<u8, LINE>,
    /// Bytes the guest has sent: a console that shows a prompt (output without a newline)
    /// once the guest has been quiet a moment watches it move.
    sent: u64,
}

/// LSR: data ready.
const LSR_DR: u8 = 1 << 0;
/// LSR: overrun error, a received byte lost to a full FIFO (datasheet §8.4).
const LSR_OE: u8 = 1 << 1;
/// LSR: transmit holding register empty, transmitter empty.
const LSR_THRE_TEMT: u8 = (1 << 5) | (1 << 6);
const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_MSI: u8 = 1 << 3;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
/// IIR: no interrupt pending.
const IIR_NONE: u8 = 1;

impl Uart {
    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }

    /// The modem status lines (MSR 7:4): CTS, DSR, RI, DCD. In loopback they follow RTS,
    /// DTR, OUT1 and OUT2; otherwise a terminal is attached (CTS, DSR, DCD).
    fn status_lines(&self) -> u8 {
        if self.mcr & MCR_LOOP != 0 {
            let m = self.mcr;
            ((m & 2) << 3) | ((m & 1) << 5) | ((m & 4) << 4) | ((m & 8) << 4)
        } else {
            0xB0
        }
    }

    /// The highest-priority pending interrupt's IIR code (Table 4), `IIR_NONE` if none.
    fn pending(&self) -> u8 {
        if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            0x4
        } else if self.ier & IER_THRE != 0 && self.thre {
            0x2
        } else if self.ier & IER_MSI != 0 && self.msr_delta != 0 {
            0x0
        } else {
            IIR_NONE
        }
    }

    /// The interrupt line to the I/O APIC (pin 4): an interrupt pending and OUT2 set.
    pub fn irq(&self) -> bool {
        self.pending() != IIR_NONE && self.mcr & MCR_OUT2 != 0 && self.mcr & MCR_LOOP == 0
    }

    /// A guest read of register `off` (0..8).
    pub fn read(&mut self, off: u16) -> u8 {
        match off {
            0 if self.dlab() => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            2 => {
                let id = self.pending();
                if id == 0x2 {
                    self.thre = false;
                }
                id | if self.fifo_on { 0xC0 } else { 0 }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let oe = if core::mem::take(&mut self.overrun) { LSR_OE } else { 0 };
                LSR_THRE_TEMT | oe | if self.rx.is_empty() { 0 } else { LSR_DR }
            }
            6 => self.status_lines() | core::mem::take(&mut self.msr_delta),
            7 => self.scr,
            _ => 0xFF,
        }
    }

    /// A guest write of `val` to register `off`; returns a finished output line.
    pub fn write(&mut self, off: u16, val: u8) -> Option<Vec<u8, LINE>> {
        match off {
            0 if self.dlab() => self.dll = val,
            0 => {
                // Written and at once sent: the THR is empty again.
                self.thre = true;
                if self.mcr & MCR_LOOP != 0 {
                    self.receive(val);
                    return None;
                }
                return self.out(val);
            }
            1 if self.dlab() => self.dlm = val,
            1 => {
                // Enabling the THRE interrupt with the THR empty raises it (datasheet §8.6).
                if val & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thre = true;
                }
                self.ier = val & 0x0f;
            }
            2 => {
                self.fifo_on = val & 1 != 0;
                if val & 2 != 0 || !self.fifo_on {
                    self.rx.clear();
                }
            }
            3 => self.lcr = val,
            4 => {
                let before = self.status_lines();
                self.mcr = val & 0x1f;
                let after = self.status_lines();
                // Delta CTS, delta DSR, trailing-edge RI, delta DCD.
                let changed = before ^ after;
                self.msr_delta |= ((changed >> 4) & 0b1011) | (((before & !after) >> 4) & 0b0100);
            }
            7 => self.scr = val,
            _ => {}
        }
        None
    }

    fn out(&mut self, b: u8) -> Option<Vec<u8, LINE>> {
        self.sent = self.sent.wrapping_add(1);
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

    /// Queues console input for the guest; false when the FIFO was full and the byte is lost
    /// (counted, and LSR.OE tells the guest).
    pub fn push_input(&mut self, b: u8) -> bool {
        self.receive(b)
    }

    fn receive(&mut self, b: u8) -> bool {
        let ok = self.rx.push_back(b).is_ok();
        if !ok {
            self.overrun = true;
            self.lost += 1;
        }
        ok
    }

    /// Input bytes lost to a full receive FIFO.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Output not yet ended by a newline (printed when the guest stops, or as a prompt).
    pub fn take_partial(&mut self) -> Option<Vec<u8, LINE>> {
        (!self.line.is_empty()).then(|| core::mem::take(&mut self.line))
    }

    /// Bytes sent so far (wrapping).
    pub fn sent(&self) -> u64 {
        self.sent
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
    fn sent_counts_every_byte_sent_and_a_prompt_stays_partial_until_taken() {
        let mut u = Uart::default();
        for b in b"ok\n# " {
            u.write(0, *b);
        }
        assert_eq!(u.sent(), 5);
        u.write(3, 0x80);
        u.write(0, 9);
        assert_eq!(u.sent(), 5, "a divisor write sends nothing");
        assert_eq!(u.take_partial().unwrap().as_slice(), b"# ");
        assert!(u.take_partial().is_none());
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
    fn input_into_a_full_fifo_is_lost_counted_and_flagged_once_as_an_overrun() {
        let mut u = Uart::default();
        for i in 0..FIFO {
            assert!(u.push_input(i as u8));
        }
        assert!(!u.push_input(0xAA), "the FIFO is full");
        assert_eq!(u.lost(), 1);
        assert_eq!(u.read(5) & 0b11, 0b11, "data ready and overrun");
        assert_eq!(u.read(5) & 0b11, 0b01, "reading LSR cleared the overrun");
        for i in 0..FIFO {
            assert_eq!(u.read(0), i as u8, "what fitted comes out in order");
        }
        assert_eq!(u.read(5) & 0b11, 0, "empty, no error");
        assert!(u.push_input(b'x'), "room again");
        assert_eq!(u.lost(), 1);
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

    #[test]
    fn received_data_raises_the_line_only_with_rda_enabled_and_out2_set() {
        let mut u = Uart::default();
        u.push_input(b'a');
        assert!(!u.irq(), "IER clear");
        u.write(1, IER_RDA);
        assert!(!u.irq(), "OUT2 clear gates the line");
        u.write(4, MCR_OUT2);
        assert!(u.irq());
        assert_eq!(u.read(2) & 0x0f, 0x4, "receive data available");
        assert_eq!(u.read(0), b'a');
        assert!(!u.irq(), "the FIFO drained");
        assert_eq!(u.read(2) & 0x0f, IIR_NONE);
    }

    #[test]
    fn thre_is_raised_by_enabling_it_and_by_writes_and_cleared_by_reading_iir() {
        let mut u = Uart::default();
        u.write(4, MCR_OUT2);
        u.write(1, IER_THRE);
        assert!(u.irq(), "enabled with the THR empty");
        assert_eq!(u.read(2) & 0x0f, 0x2);
        assert!(!u.irq(), "IIR read with THRE as source clears it");
        assert_eq!(u.read(2) & 0x0f, IIR_NONE);
        u.write(0, b'x');
        assert!(u.irq(), "the byte left at once: empty again");
        // Received data outranks THRE.
        u.write(1, IER_THRE | IER_RDA);
        u.push_input(b'y');
        assert_eq!(u.read(2) & 0x0f, 0x4);
        u.read(0);
        assert_eq!(u.read(2) & 0x0f, 0x2);
        // Off and on again re-arms it (Linux's THRE test at startup).
        u.write(1, 0);
        assert!(!u.irq());
        u.write(1, IER_THRE);
        assert_eq!(u.read(2) & 0x0f, 0x2);
    }

    #[test]
    fn the_fifo_control_register_shows_in_iir_and_clears_the_receiver() {
        let mut u = Uart::default();
        assert_eq!(u.read(2) & 0xC0, 0);
        u.write(2, 1);
        assert_eq!(u.read(2), 0xC1, "16550A: FIFOs enabled, no interrupt");
        u.push_input(b'a');
        u.write(2, 1 | 2);
        assert_eq!(u.read(5) & LSR_DR, 0);
        for i in 0..FIFO as u8 + 4 {
            let fits = u.push_input(i);
            assert_eq!(fits, usize::from(i) < FIFO);
        }
    }

    #[test]
    fn loopback_reflects_mcr_in_msr_and_returns_written_bytes() {
        let mut u = Uart::default();
        // Linux's probe: LOOP | OUT2 | RTS must read back as DCD | CTS.
        u.write(4, MCR_LOOP | MCR_OUT2 | 2);
        assert_eq!(u.read(6) & 0xF0, 0x90);
        u.write(4, MCR_LOOP | 1 | 4);
        assert_eq!(u.read(6) & 0xF0, 0x60, "DSR from DTR, RI from OUT1");
        u.write(0, b'z');
        assert!(u.take_partial().is_none(), "nothing leaves in loopback");
        assert_eq!(u.read(0), b'z');
        u.write(4, 0);
        assert_eq!(u.read(6) & 0xF0, 0xB0, "a terminal: CTS, DSR, DCD");
    }

    #[test]
    fn modem_status_changes_set_deltas_until_read() {
        let mut u = Uart::default();
        u.write(4, MCR_LOOP);
        u.read(6);
        u.write(4, MCR_LOOP | 2 | 4);
        assert_eq!(u.read(6) & 0x0F, 0x1, "delta CTS");
        u.write(4, MCR_LOOP);
        assert_eq!(u.read(6) & 0x0F, 0x1 | 0x4, "delta CTS, trailing-edge RI");
        assert_eq!(u.read(6) & 0x0F, 0);
    }
}
