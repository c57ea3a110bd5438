//! Time: the TSC, calibrated against PIT channel 2 (8254 datasheet; port 0x61 gate/OUT2).
//! CPUID leaves 15h/16h are not trusted: Bochs reports the host's (docs/design.md §9).

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

use super::cpu::rdtsc;

static TSC0: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
/// 20 ms of PIT ticks.
const PIT_TICKS: u16 = 23_864;

/// Marks time zero (call first thing at boot).
pub fn start() {
    TSC0.store(rdtsc(), Ordering::Relaxed);
}

/// TSC ticks per second (0 before calibration).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Microseconds since boot (0 before calibration).
pub fn uptime_us() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let ticks = rdtsc().wrapping_sub(TSC0.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    let hz = tsc_hz().max(1_000_000);
    let end = rdtsc().wrapping_add(us.saturating_mul(hz) / 1_000_000);
    while (rdtsc().wrapping_sub(end) as i64) < 0 {
        core::hint::spin_loop();
    }
}

/// Measures the TSC rate over 20 ms of PIT channel 2 in mode 0. `Err` when OUT2 never rises.
pub fn calibrate() -> Result<u64, &'static str> {
    let mut ctl = Port::<u8>::new(0x61);
    let mut cmd = Port::<u8>::new(0x43);
    let mut ch2 = Port::<u8>::new(0x42);
    // SAFETY: 0x61/0x42/0x43 are the PC's PIT and system control ports; only channel 2
    // (speaker, gated off) is reprogrammed.
    let ticks = unsafe {
        let v = ctl.read() & !0x03;
        ctl.write(v);
        cmd.write(0b1011_0000); // channel 2, lo/hi byte, mode 0, binary
        ch2.write(PIT_TICKS as u8);
        ch2.write((PIT_TICKS >> 8) as u8);
        ctl.write(v | 0x01); // gate high: counting starts
        let t0 = rdtsc();
        let mut spins = 0u64;
        while ctl.read() & 0x20 == 0 {
            spins += 1;
            if spins > 200_000_000 {
                return Err("PIT channel 2 never reached terminal count");
            }
        }
        rdtsc() - t0
    };
    let hz = ticks * PIT_HZ / u64::from(PIT_TICKS);
    if hz < 1_000_000 {
        return Err("TSC runs slower than 1 MHz");
    }
    TSC_HZ.store(hz, Ordering::Relaxed);
    Ok(hz)
}

/// The host's CMOS clock (MC146818 registers at ports 0x70/0x71) as seconds since 1970-01-01
/// 00:00, waiting out an update in progress; None when it does not read as a clock (no chip:
/// all-ones). PC firmware keeps it in UTC or local time; it is passed on as it is.
pub fn host_rtc_seconds() -> Option<u64> {
    use crate::hv::devices::rtc::{from_bcd, unix_seconds, CENTURY};
    let mut index = Port::<u8>::new(0x70);
    let mut data = Port::<u8>::new(0x71);
    let mut reg = |r: u8| {
        // SAFETY: 0x70/0x71 are the PC's CMOS index/data ports; selecting a register with
        // bit 7 clear leaves NMIs enabled, and reading it changes nothing.
        unsafe {
            index.write(r);
            data.read()
        }
    };
    // Status A's UIP bit: the registers change within 244 µs of it being seen clear
    // (MC146818 datasheet, "Update cycle"); an update lasts under 2 ms.
    let mut waited = 0;
    while reg(0x0A) & 0x80 != 0 {
        if waited > 10_000 {
            return None;
        }
        delay_us(10);
        waited += 10;
    }
    let b = reg(0x0B);
    let raw = [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, CENTURY].map(&mut reg);
    let binary = b & 0x04 != 0;
    let value = |v: u8| if binary { Some(u64::from(v)) } else { from_bcd(v) };
    // In 12-hour mode bit 7 of the hour says PM.
    let pm = b & 0x02 == 0 && raw[2] & 0x80 != 0;
    let mut hour = value(raw[2] & 0x7f)?;
    if b & 0x02 == 0 {
        hour = hour % 12 + if pm { 12 } else { 0 };
    }
    let century = value(raw[6]).filter(|c| (19..=99).contains(c)).unwrap_or(20);
    let year = century * 100 + value(raw[5])?;
    unix_seconds(year, value(raw[4])?, value(raw[3])?, hour, value(raw[1])?, value(raw[0])?)
}
