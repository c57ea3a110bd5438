//! The 8254 PIT's counter 2 and its gate and output on port 0x61 (Intel 8254 datasheet;
//! port 0x61 as on every PC: bit 0 the gate, bit 1 the speaker enable, bit 5 OUT2), computed
//! from guest TSC ticks. Counter 2 drives no interrupt (only the speaker), so it needs no
//! interrupt controller; counters 0 and 1 (ports 0x40, 0x41) are not there.
//!
//! Why it is there: before ACPI retires the legacy PIC, Linux 6.1 on AMD tries
//! `quick_pit_calibrate` (arch/x86/kernel/tsc.c). With no PIT it reads port 0x42 as all-ones
//! and so sees the counter's MSB stay 0xff for 50,000 double reads (100,000 trapped exits,
//! ~4 s of a QEMU TCG boot) before it gives up; with this counter it sees the MSB move and
//! either calibrates (fast exits) or gives up after a few reads (slow ones).
//!
//! Modelled: modes 0 (interrupt on terminal count), 2 (rate generator) and 3 (square wave),
//! binary counting, the LSB/MSB access orders and the counter latch command. Not modelled:
//! BCD, the read-back command, the gate-triggered modes 1 and 5 and the strobe mode 4 (they
//! count as mode 0), and the datasheet's one CLK between a count's write and its load.

/// The PIT's input clock (Intel 8254: 1.193182 MHz on a PC).
pub const HZ: u64 = 1_193_182;
/// Counter 2's data port.
pub const COUNTER2: u16 = 0x42;
/// The control word port.
pub const CONTROL: u16 = 0x43;
/// System control port B: bit 0 gate 2, bit 1 speaker data, bit 4 refresh toggle, bit 5 OUT2.
pub const PORT_B: u16 = 0x61;

/// Which bytes of the counter an access moves (control word bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    /// LSB then MSB, a flip-flop for each direction.
    Both,
}

/// Counter 2 and port B.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pit {
    mode: u8,
    access: Access,
    /// The count written (0 means 0x10000).
    reload: u32,
    /// The TSC when counting started (the count written with the gate high).
    start: Option<u64>,
    /// PIT ticks counted before the gate last went low.
    held: u64,
    gate: bool,
    /// Port B's speaker data bit and the two NMI-enable bits the guest may set (bits 1..3).
    port_b: u8,
    /// A latched count still to be read (and whether its MSB is next).
    latch: Option<(u16, bool)>,
    /// The next read / write of an LSB-then-MSB counter is its MSB.
    read_msb: bool,
    write_msb: bool,
    /// The LSB written, waiting for its MSB.
    lsb: u8,
}

impl Default for Pit {
    fn default() -> Pit {
        Pit {
            mode: 0,
            access: Access::Both,
            reload: 0x1_0000,
            start: None,
            held: 0,
            gate: false,
            port_b: 0,
            latch: None,
            read_msb: false,
            write_msb: false,
            lsb: 0,
        }
    }
}

/// PIT ticks in `tsc` TSC ticks at `tsc_hz` (0 while the rate is unknown).
fn pit_ticks(tsc: u64, tsc_hz: u64) -> u64 {
    if tsc_hz == 0 {
        return 0;
    }
    (u128::from(tsc) * u128::from(HZ) / u128::from(tsc_hz)) as u64
}

impl Pit {
    /// PIT ticks counted since the count was written (none before: the counter waits).
    fn elapsed(&self, now: u64, hz: u64) -> Option<u64> {
        let running = match (self.gate, self.start) {
            (true, Some(s)) => pit_ticks(now.wrapping_sub(s), hz),
            _ => 0,
        };
        (self.start.is_some() || self.held > 0).then_some(self.held + running)
    }

    /// The counter's value and OUT now.
    fn state(&self, now: u64, hz: u64) -> (u16, bool) {
        let n = u64::from(self.reload);
        let Some(t) = self.elapsed(now, hz) else {
            // Mode 0's OUT is low from the control word to the terminal count; the others'
            // is high until they count.
            return (self.reload as u16, self.mode != 0);
        };
        match self.mode {
            2 => {
                // N, N-1, … 1, N …: OUT low while the count is 1.
                let v = n - t % n;
                (v as u16, v != 1)
            }
            3 => {
                // Down by 2 twice per period; OUT high for the first half.
                let half = n.div_ceil(2);
                let v = n - 2 * (t % half);
                (v as u16, t % n < half)
            }
            _ => ((n.wrapping_sub(t) & 0xffff) as u16, t >= n),
        }
    }

    /// A read of `port` (0x42, 0x43 or 0x61) at TSC `now`.
    pub fn read(&mut self, port: u16, now: u64, hz: u64) -> u8 {
        match port {
            COUNTER2 => {
                let (v, msb) = match self.latch {
                    Some((v, msb)) => {
                        let next = (self.access == Access::Both && !msb).then_some((v, true));
                        self.latch = next;
                        (v, msb)
                    }
                    None => {
                        let msb = match self.access {
                            Access::Lsb => false,
                            Access::Msb => true,
                            Access::Both => {
                                self.read_msb = !self.read_msb;
                                !self.read_msb
                            }
                        };
                        (self.state(now, hz).0, msb)
                    }
                };
                if msb {
                    (v >> 8) as u8
                } else {
                    v as u8
                }
            }
            PORT_B => {
                // Bit 4 toggles with every DRAM refresh request, every 15 µs on a PC.
                let refresh = (pit_ticks(now, hz) / 18) & 1 != 0;
                let out = self.state(now, hz).1;
                u8::from(self.gate)
                    | (self.port_b & 0x0e)
                    | (u8::from(refresh) << 4)
                    | (u8::from(out) << 5)
            }
            // The control word register cannot be read (Intel 8254).
            _ => 0xff,
        }
    }

    /// A write of `val` to `port` (0x42, 0x43 or 0x61) at TSC `now`.
    pub fn write(&mut self, port: u16, val: u8, now: u64, hz: u64) {
        match port {
            CONTROL => {
                // Counter 2 only (select 10); counters 0, 1 and the read-back are not here.
                if val >> 6 != 2 {
                    return;
                }
                let access = match (val >> 4) & 3 {
                    0 => {
                        // Counter latch: the count as it is now, until read.
                        if self.latch.is_none() {
                            self.latch = Some((self.state(now, hz).0, self.access == Access::Msb));
                        }
                        return;
                    }
                    1 => Access::Lsb,
                    2 => Access::Msb,
                    _ => Access::Both,
                };
                let mode = (val >> 1) & 7;
                *self = Pit {
                    mode: if mode >= 6 { mode - 4 } else { mode },
                    access,
                    gate: self.gate,
                    port_b: self.port_b,
                    ..Pit::default()
                };
            }
            COUNTER2 => {
                let count = match self.access {
                    Access::Lsb => u32::from(val),
                    Access::Msb => u32::from(val) << 8,
                    Access::Both => {
                        self.write_msb = !self.write_msb;
                        if self.write_msb {
                            self.lsb = val;
                            return;
                        }
                        u32::from(self.lsb) | u32::from(val) << 8
                    }
                };
                self.reload = if count == 0 { 0x1_0000 } else { count };
                self.held = 0;
                self.start = Some(now);
            }
            PORT_B => {
                let gate = val & 1 != 0;
                if gate != self.gate {
                    // Counting stops while the gate is low and goes on when it is high again.
                    if let (false, Some(s)) = (gate, self.start) {
                        self.held += pit_ticks(now.wrapping_sub(s), hz);
                    }
                    if self.start.is_some() {
                        self.start = Some(now);
                    }
                    self.gate = gate;
                }
                self.port_b = val & 0x0e;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1.193182 GHz TSC: 1000 TSC ticks per PIT tick.
    const TSC_HZ: u64 = HZ * 1000;
    const TICK: u64 = 1000;

    /// What Linux's `quick_pit_calibrate` and `pit_calibrate_tsc` do first: gate high, speaker
    /// off, counter 2 in mode 0 with LSB then MSB, then the count.
    fn programmed(count: u16, at: u64) -> Pit {
        let mut p = Pit::default();
        let b = p.read(PORT_B, at, TSC_HZ);
        p.write(PORT_B, (b & !2) | 1, at, TSC_HZ);
        p.write(CONTROL, 0xb0, at, TSC_HZ);
        p.write(COUNTER2, count as u8, at, TSC_HZ);
        p.write(COUNTER2, (count >> 8) as u8, at, TSC_HZ);
        p
    }

    fn read16(p: &mut Pit, at: u64) -> u16 {
        let lsb = p.read(COUNTER2, at, TSC_HZ);
        u16::from(lsb) | u16::from(p.read(COUNTER2, at, TSC_HZ)) << 8
    }

    #[test]
    fn mode_0_counts_down_from_the_count_and_raises_out2_at_zero() {
        let t0 = 5_000_000;
        let mut p = programmed(1000, t0);
        assert_eq!(read16(&mut p, t0), 1000);
        assert_eq!(read16(&mut p, t0 + 300 * TICK), 700);
        assert_eq!(p.read(PORT_B, t0 + 999 * TICK, TSC_HZ) & 0x21, 0x01, "gate on, OUT2 low");
        assert_eq!(p.read(PORT_B, t0 + 1000 * TICK, TSC_HZ) & 0x20, 0x20, "terminal count");
        assert_eq!(p.read(PORT_B, t0 + 5000 * TICK, TSC_HZ) & 0x20, 0x20, "and it stays high");
        // After the terminal count the counter wraps on down from 0xffff.
        assert_eq!(read16(&mut p, t0 + 1001 * TICK), 0xffff);
    }

    #[test]
    fn quick_pit_calibrate_sees_the_msb_step_down_every_256_ticks() {
        let t0 = 123_456_789;
        let mut p = programmed(0xffff, t0);
        let msb = |p: &mut Pit, t: u64| {
            p.read(COUNTER2, t, TSC_HZ);
            p.read(COUNTER2, t, TSC_HZ)
        };
        assert_eq!(msb(&mut p, t0), 0xff);
        assert_eq!(msb(&mut p, t0 + 255 * TICK), 0xff);
        assert_eq!(msb(&mut p, t0 + 256 * TICK), 0xfe);
        assert_eq!(msb(&mut p, t0 + 10 * 256 * TICK), 0xf5);
    }

    #[test]
    fn one_second_of_tsc_is_one_second_of_pit_ticks_at_any_rate() {
        for hz in [20_000_000, 2_596_122_000, 3_700_000_000] {
            let mut p = Pit::default();
            p.write(PORT_B, 1, 0, hz);
            p.write(CONTROL, 0xb4, 0, hz); // mode 2, the rate generator
            p.write(COUNTER2, 0, 0, hz);
            p.write(COUNTER2, 0, 0, hz);
            // 1 s = 1,193,182 ticks = 18 periods of 65,536 and 13,534 ticks.
            let lsb = p.read(COUNTER2, hz, hz);
            let v = u16::from(lsb) | u16::from(p.read(COUNTER2, hz, hz)) << 8;
            assert_eq!(u32::from(v), 65_536 - 13_534, "at {hz} Hz");
        }
    }

    #[test]
    fn a_low_gate_holds_the_count_and_counting_goes_on_when_it_rises() {
        let mut p = programmed(1000, 0);
        p.write(PORT_B, 0, 100 * TICK, TSC_HZ);
        assert_eq!(read16(&mut p, 900 * TICK), 900, "held while the gate is low");
        assert_eq!(p.read(PORT_B, 900 * TICK, TSC_HZ) & 0x21, 0);
        p.write(PORT_B, 1, 900 * TICK, TSC_HZ);
        assert_eq!(read16(&mut p, 1000 * TICK), 800);
        assert_eq!(p.read(PORT_B, 1800 * TICK, TSC_HZ) & 0x20, 0x20);
    }

    #[test]
    fn a_latched_count_is_read_as_latched_and_the_flip_flop_pairs_bytes() {
        let mut p = programmed(0x1234, 0);
        p.write(CONTROL, 0x80, 0x34 * TICK, TSC_HZ); // latch counter 2
        assert_eq!(read16(&mut p, 0x1000 * TICK), 0x1200, "the latched value");
        assert_eq!(read16(&mut p, 0x1000 * TICK), 0x0234, "then the live one");
        // LSB-only and MSB-only counters.
        p.write(CONTROL, 0x90, 0, TSC_HZ);
        p.write(COUNTER2, 0x40, 0, TSC_HZ);
        assert_eq!(p.read(COUNTER2, 0x10 * TICK, TSC_HZ), 0x30);
        p.write(CONTROL, 0xa0, 0, TSC_HZ);
        p.write(COUNTER2, 0x02, 0, TSC_HZ);
        assert_eq!(p.read(COUNTER2, 0x100 * TICK, TSC_HZ), 0x01);
    }

    #[test]
    fn port_b_keeps_the_guests_bits_and_shows_the_refresh_toggle_and_out2() {
        let mut p = Pit::default();
        p.write(PORT_B, 0xff, 0, TSC_HZ);
        let b = p.read(PORT_B, 0, TSC_HZ);
        assert_eq!(b & 0xcf, 0x0f, "gate, speaker and NMI enables; no NMI status");
        assert_ne!(p.read(PORT_B, 0, TSC_HZ) & 0x10, p.read(PORT_B, 18 * TICK, TSC_HZ) & 0x10);
        // Mode 0 before a count: OUT low; the control word of another counter changes nothing.
        p.write(CONTROL, 0xb0, 0, TSC_HZ);
        p.write(CONTROL, 0x30, 0, TSC_HZ);
        assert_eq!(p.read(PORT_B, 10 * TICK, TSC_HZ) & 0x20, 0);
        assert_eq!(p.read(CONTROL, 0, TSC_HZ), 0xff, "the control word is write-only");
    }

    #[test]
    fn square_wave_out_is_high_for_the_first_half_of_each_period() {
        let mut p = Pit::default();
        p.write(PORT_B, 1, 0, TSC_HZ);
        p.write(CONTROL, 0xb6, 0, TSC_HZ);
        p.write(COUNTER2, 100, 0, TSC_HZ);
        p.write(COUNTER2, 0, 0, TSC_HZ);
        let out = |p: &mut Pit, t: u64| p.read(PORT_B, t * TICK, TSC_HZ) & 0x20 != 0;
        assert!(out(&mut p, 10) && out(&mut p, 49) && !out(&mut p, 50) && !out(&mut p, 99));
        assert!(out(&mut p, 100) && !out(&mut p, 175));
    }

    #[test]
    fn an_unknown_tsc_rate_leaves_the_count_where_it_was_written() {
        let mut p = Pit::default();
        p.write(PORT_B, 1, 0, 0);
        p.write(CONTROL, 0xb0, 0, 0);
        p.write(COUNTER2, 0x34, 0, 0);
        p.write(COUNTER2, 0x12, 0, 0);
        let lsb = p.read(COUNTER2, u64::MAX, 0);
        assert_eq!((lsb, p.read(COUNTER2, u64::MAX, 0)), (0x34, 0x12));
    }
}
