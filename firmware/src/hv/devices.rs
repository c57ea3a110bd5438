//! The guest's port-I/O devices: COM1 (the [`Uart`] model, its interrupt line wired to the
//! [`IoApic`]'s pin 4), the debug-exit port, the ACPI hardware-reduced sleep registers (power
//! off through `_S5`), the ACPI PM timer ([`pmtimer`], the reference Linux calibrates the TSC
//! against on AMD), the PIT's counter 2 with port 0x61 ([`pit`]), the CMOS clock ([`rtc`]) and the reset controls (the FADT's reset register at 0xCF9, the keyboard
//! controller's 0xFE command). Every other port reads all-ones and ignores writes, as an
//! empty ISA bus does, and is counted per port so an operator sees in `vcpu` what a guest
//! pokes at.

pub mod pit;
pub mod pmtimer;
pub mod rtc;

use heapless::Vec;

use super::acpi::{self, RESET_PORT, S5_TYPE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};
use super::ioapic::{IoApic, Irq};
use super::uart::{Uart, LINE};
use super::IoDir;
use pit::Pit;
use rtc::Rtc;

/// Guest debug-exit port: a write ends the guest with that exit code (0 = success).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// COM1's base port.
pub const COM1: u16 = 0x3f8;
/// COM1's I/O APIC pin (ISA IRQ 4, no override).
pub const COM1_PIN: usize = 4;
/// The keyboard controller's command port (0xFE there pulses the reset line).
pub const KBC_COMMAND: u16 = 0x64;
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
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset.
    Reset,
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

/// The time the devices see: TSC ticks now and the TSC's rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time {
    /// TSC ticks.
    pub ticks: u64,
    /// TSC ticks per second (0: not measured).
    pub hz: u64,
}

impl Time {
    /// This core's TSC and the rate the guest is told (the firmware's measure times the
    /// dilation). On the primary, which runs the devices, that is the guest's TSC less the
    /// primary's offset (0 on one node; it only steps forward in a cluster);
    /// [`Devices::access_at`] takes another clock.
    #[cfg(target_os = "none")]
    pub fn now() -> Time {
        Time { ticks: crate::arch::cpu::rdtsc(), hz: super::vm::guest_tsc_hz() }
    }

    /// Host builds have no guest clock: time stands still at 0.
    #[cfg(not(target_os = "none"))]
    pub fn now() -> Time {
        Time { ticks: 0, hz: 0 }
    }
}

/// The port devices of the guest.
pub struct Devices {
    /// COM1.
    pub uart: Uart,
    /// The I/O APIC.
    pub ioapic: IoApic,
    /// The PM timer's port (the FADT's, [`acpi::pm_timer`]).
    pub pm_timer: u16,
    /// The PIT's counter 2 and port 0x61.
    pub pit: Pit,
    /// The CMOS clock and RAM.
    pub rtc: Rtc,
    /// Ports nothing answers.
    pub unclaimed: Unclaimed,
}

impl Default for Devices {
    fn default() -> Devices {
        Devices {
            uart: Uart::default(),
            ioapic: IoApic::default(),
            pm_timer: acpi::pm_timer().port,
            pit: Pit::default(),
            rtc: Rtc::default(),
            unclaimed: Unclaimed::default(),
        }
    }
}

impl Devices {
    /// One access of `size` bytes now ([`Time::now`]); returns the value read (for `In`) and
    /// the effect (for `Out`).
    pub fn access(&mut self, port: u16, size: u8, dir: IoDir, val: u32) -> (u32, PortEffect) {
        self.access_at(port, size, dir, val, Time::now())
    }

    /// One access at time `now`.
    pub fn access_at(
        &mut self,
        port: u16,
        size: u8,
        dir: IoDir,
        val: u32,
        now: Time,
    ) -> (u32, PortEffect) {
        let ones = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => u32::MAX,
        };
        if let Some(off) = self.pm_offset(port) {
            // A read-only register: writes are ignored (ACPI 6.5 §4.8.3.3).
            let v = match dir {
                IoDir::In => pmtimer::read(off, size, now.ticks, now.hz).unwrap_or(ones),
                IoDir::Out => 0,
            };
            return (v, PortEffect::None);
        }
        match (port, dir) {
            (COM1..=0x3ff, IoDir::In) => (u32::from(self.uart.read(port - COM1)), PortEffect::None),
            (COM1..=0x3ff, IoDir::Out) => match self.uart.write(port - COM1, val as u8) {
                Some(line) => (0, PortEffect::Line(line)),
                None => (0, PortEffect::None),
            },
            (DEBUG_EXIT_PORT, IoDir::Out) => (0, PortEffect::Exit(val)),
            // ACPI 6.5 §4.8.3.7: SLP_TYP in bits 4:2, SLP_EN bit 5.
            (SLEEP_CONTROL_PORT, IoDir::Out) => {
                let s5 = val & 0x20 != 0 && (val >> 2) & 7 == u32::from(S5_TYPE);
                (0, if s5 { PortEffect::PowerOff } else { PortEffect::None })
            }
            (SLEEP_CONTROL_PORT | SLEEP_STATUS_PORT | RESET_PORT, IoDir::In) => {
                (0, PortEffect::None)
            }
            (SLEEP_STATUS_PORT, IoDir::Out) => (0, PortEffect::None),
            // Reset control register: bit 2 starts the reset (bit 1 picks hard over soft).
            (RESET_PORT, IoDir::Out) => {
                (0, if val & 4 != 0 { PortEffect::Reset } else { PortEffect::None })
            }
            (KBC_COMMAND, IoDir::Out) if val & 0xff == 0xfe => (0, PortEffect::Reset),
            (pit::COUNTER2 | pit::CONTROL | pit::PORT_B, IoDir::In) => {
                (u32::from(self.pit.read(port, now.ticks, now.hz)), PortEffect::None)
            }
            (pit::COUNTER2 | pit::CONTROL | pit::PORT_B, IoDir::Out) => {
                self.pit.write(port, val as u8, now.ticks, now.hz);
                (0, PortEffect::None)
            }
            (rtc::INDEX | rtc::DATA, IoDir::In) => {
                (u32::from(self.rtc.read(port, now.ticks, now.hz)), PortEffect::None)
            }
            (rtc::INDEX | rtc::DATA, IoDir::Out) => {
                self.rtc.write(port, val as u8);
                (0, PortEffect::None)
            }
            (_, dir) => {
                self.unclaimed.count(port);
                (if dir == IoDir::In { ones } else { 0 }, PortEffect::None)
            }
        }
    }
}

impl Devices {
    /// `port`'s byte offset in the PM timer's block, if it is in it.
    fn pm_offset(&self, port: u16) -> Option<u16> {
        port.checked_sub(self.pm_timer).filter(|o| *o < pmtimer::LEN)
    }

    /// Brings the I/O APIC's COM1 pin to the UART's interrupt line (call after every UART
    /// access or input): the interrupt to deliver, if the pin fired.
    pub fn sync_irq(&mut self) -> Option<Irq> {
        self.ioapic.set_line(COM1_PIN, self.uart.irq())
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
        assert_eq!(d.access(0x40, 1, IoDir::In, 0).0, 0xff);
        assert_eq!(d.access(0x40, 2, IoDir::In, 0).0, 0xffff);
        assert_eq!(d.access(0x80, 1, IoDir::Out, 5), (0, PortEffect::None));
        assert_eq!(&d.unclaimed.ports[..], &[(0x40, 2), (0x80, 1)]);
    }

    #[test]
    fn the_cmos_clock_answers_at_0x70_and_0x71() {
        let start = rtc::unix_seconds(2026, 12, 2, 7, 30, 0).unwrap();
        let mut d = Devices { rtc: Rtc::new(start, 0), ..Devices::default() };
        let at = |s: u64| Time { ticks: s * 100, hz: 100 };
        d.access_at(rtc::INDEX, 1, IoDir::Out, 0x02, at(0));
        assert_eq!(d.access_at(rtc::DATA, 1, IoDir::In, 0, at(61)).0, 0x31, "minutes, BCD");
        assert!(d.unclaimed.ports.is_empty());
    }

    #[test]
    fn a_guest_probing_every_port_costs_bounded_memory() {
        let mut d = Devices::default();
        for p in 0..0x100u16 {
            d.access(p, 1, IoDir::In, 0);
        }
        assert_eq!(d.unclaimed.ports.len(), COUNTED_PORTS);
        let counted: u64 = d.unclaimed.ports.iter().map(|e| e.1).sum();
        assert_eq!(
            counted + d.unclaimed.other,
            0x100 - 5,
            "all but the PIT's 0x42, 0x43, 0x61 and the RTC's 0x70, 0x71"
        );
    }

    #[test]
    fn s5_through_the_sleep_register_powers_off_and_other_sleep_states_do_not() {
        let mut d = Devices::default();
        let s5 = (u32::from(S5_TYPE) << 2) | 0x20;
        assert_eq!(d.access(SLEEP_CONTROL_PORT, 1, IoDir::Out, s5).1, PortEffect::PowerOff);
        assert_eq!(
            d.access(SLEEP_CONTROL_PORT, 1, IoDir::Out, (3 << 2) | 0x20).1,
            PortEffect::None
        );
        assert_eq!(d.access(SLEEP_CONTROL_PORT, 1, IoDir::Out, s5 & !0x20).1, PortEffect::None);
        assert_eq!(d.access(SLEEP_STATUS_PORT, 1, IoDir::In, 0).0, 0);
        assert!(d.unclaimed.ports.is_empty());
    }

    #[test]
    fn the_reset_register_and_the_keyboard_controller_reset() {
        let mut d = Devices::default();
        assert_eq!(d.access(RESET_PORT, 1, IoDir::Out, 6).1, PortEffect::Reset);
        assert_eq!(d.access(RESET_PORT, 1, IoDir::Out, 2).1, PortEffect::None);
        assert_eq!(d.access(KBC_COMMAND, 1, IoDir::Out, 0xfe).1, PortEffect::Reset);
        assert_eq!(d.access(KBC_COMMAND, 1, IoDir::Out, 0xd1).1, PortEffect::None);
    }

    #[test]
    fn the_pm_timer_counts_guest_time_in_its_dword_and_ignores_writes() {
        let mut d = Devices::default();
        let (pm, end) = (d.pm_timer, d.pm_timer + pmtimer::LEN);
        let hz = 1_000_000_000;
        let mut read = |size, port, ms: u64| {
            let now = Time { ticks: ms * hz / 1000, hz };
            d.access_at(port, size, IoDir::In, 0, now).0
        };
        let (a, b) = (read(4, pm, 1000), read(4, pm, 1010));
        // 10 ms at 3.579545 MHz.
        assert_eq!(b - a, 35_795);
        assert_eq!(read(1, pm + 1, 1010), (b >> 8) & 0xff);
        assert!(read(4, pm, 1020) > b);
        let now = Time { ticks: 0, hz };
        assert_eq!(d.access_at(pm, 4, IoDir::Out, 7, now), (0, PortEffect::None));
        assert!(d.unclaimed.ports.is_empty(), "the block is claimed");
        d.access_at(end, 1, IoDir::In, 0, now);
        d.access_at(pm - 1, 1, IoDir::In, 0, now);
        assert_eq!(&d.unclaimed.ports[..], &[(end, 1), (pm - 1, 1)], "and only the block");
        // Where the host lends its timer, the devices answer at its port.
        let mut d = Devices { pm_timer: 0xb008, ..Devices::default() };
        assert_ne!(d.access_at(0xb008, 4, IoDir::In, 0, Time { ticks: hz, hz }).0, u32::MAX);
        assert!(d.unclaimed.ports.is_empty());
    }

    #[test]
    fn pit_counter_2_and_port_0x61_answer_from_guest_time_and_counters_0_1_do_not() {
        let mut d = Devices::default();
        let hz = pit::HZ * 1000;
        let at = |ticks: u64| Time { ticks: ticks * 1000, hz };
        d.access_at(pit::PORT_B, 1, IoDir::Out, 1, at(0));
        d.access_at(pit::CONTROL, 1, IoDir::Out, 0xb0, at(0));
        d.access_at(pit::COUNTER2, 1, IoDir::Out, 0x00, at(0));
        d.access_at(pit::COUNTER2, 1, IoDir::Out, 0x01, at(0));
        let b = |d: &mut Devices, t| d.access_at(pit::PORT_B, 1, IoDir::In, 0, at(t)).0;
        assert_eq!(b(&mut d, 255) & 0x21, 0x01, "gate on, OUT2 low");
        assert_eq!(b(&mut d, 256) & 0x20, 0x20, "256 ticks later: terminal count");
        assert!(d.unclaimed.ports.is_empty());
        d.access_at(0x40, 1, IoDir::In, 0, at(0));
        d.access_at(0x41, 1, IoDir::In, 0, at(0));
        assert_eq!(&d.unclaimed.ports[..], &[(0x40, 1), (0x41, 1)]);
    }

    #[test]
    fn com1_interrupts_reach_the_ioapic_pin_it_was_programmed_for() {
        let mut d = Devices::default();
        // Pin 4 -> vector 0x24 on APIC 0, edge, unmasked.
        d.ioapic.write(0, 0x18);
        d.ioapic.write(0x10, 0x24);
        d.access(COM1 + 4, 1, IoDir::Out, 0x08); // OUT2
        d.access(COM1 + 1, 1, IoDir::Out, 0x01); // receive interrupts
        assert_eq!(d.sync_irq(), None, "nothing received");
        d.uart.push_input(b'k');
        let irq = d.sync_irq().expect("data arrived: an edge on pin 4");
        assert_eq!(irq.vector, 0x24);
        assert_eq!(d.sync_irq(), None, "still high: no second edge");
        assert_eq!(d.access(COM1, 1, IoDir::In, 0).0, u32::from(b'k'));
        assert_eq!(d.sync_irq(), None, "line fell");
        d.uart.push_input(b'l');
        assert!(d.sync_irq().is_some(), "next byte: next edge");
    }
}
