//! The ACPI power-management timer (ACPI 6.5 §4.8.3.3): a free-running 24-bit counter at
//! 3.579545 MHz, read as one DWORD port, here computed from guest TSC ticks and the TSC rate
//! the firmware measured, so it keeps the TSC's time exactly.
//!
//! Why it is there: on an AMD CPU Linux 6.1 takes the TSC rate from no CPUID leaf
//! (`native_calibrate_tsc` and `cpu_khz_from_cpuid` are Intel-only), and with hardware-reduced
//! ACPI it has no legacy PIC, so both PIT calibrations are skipped (`quick_pit_calibrate` and
//! `pit_calibrate_tsc` need `has_legacy_pic()`). What is left is
//! `pit_hpet_ptimer_calibrate_cpu` against the HPET or this timer, whose port the FADT's
//! `X_PM_TMR_BLK` names (arch/x86/kernel/tsc.c; Linux reads that field whatever the FADT's
//! hardware-reduced flag says, arch/x86/kernel/acpi/boot.c `acpi_parse_fadt`). Without a
//! reference it marks the TSC unstable and cannot boot on TSC-deadline timers. Where the
//! host has a PM timer of its own the guest gets that one instead (`acpi::pm_timer`).

/// The timer's rate (ACPI 6.5 §4.8.3.3).
pub const HZ: u64 = 3_579_545;
/// Its width: 24 bits (the FADT's TMR_VAL_EXT flag is clear).
pub const BITS: u32 = 24;
/// Its port block: one DWORD.
pub const LEN: u16 = 4;

/// The counter after `ticks` TSC ticks at `tsc_hz` (0 while the rate is unknown).
pub fn count(ticks: u64, tsc_hz: u64) -> u32 {
    if tsc_hz == 0 {
        return 0;
    }
    let n = u128::from(ticks) * u128::from(HZ) / u128::from(tsc_hz);
    (n as u32) & ((1 << BITS) - 1)
}

/// An `size`-byte read at byte `offset` of the block (the DWORD's bytes from there; an OS
/// reads the whole DWORD, a byte read sees its part). Beyond the block: `None`.
pub fn read(offset: u16, size: u8, ticks: u64, tsc_hz: u64) -> Option<u32> {
    if offset >= LEN {
        return None;
    }
    let v = count(ticks, tsc_hz) >> (8 * u32::from(offset));
    Some(match size {
        1 => v & 0xff,
        2 => v & 0xffff,
        _ => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GHZ: u64 = 1_000_000_000;

    #[test]
    fn one_second_of_tsc_is_one_second_of_timer_ticks_whatever_the_tsc_rate() {
        for hz in [20_000_000, 2 * GHZ, 3_700_000_000] {
            let a = count(5 * hz, hz);
            let b = count(6 * hz, hz);
            assert_eq!(b.wrapping_sub(a) & 0xff_ffff, HZ as u32, "at {hz} Hz");
        }
    }

    #[test]
    fn it_counts_up_in_24_bits_and_wraps() {
        let hz = 2 * GHZ;
        assert_eq!(count(0, hz), 0);
        assert!(count(hz / 1000, hz) > count(hz / 2000, hz));
        // 2^24 ticks of 3.58 MHz are 4.687 s: after that it starts again.
        let wrap = (1u64 << 24) * hz / HZ;
        assert!(count(wrap - hz / 1000, hz) > 0xff_0000);
        assert!(count(wrap + hz / 1000, hz) < 0x1_0000);
        for t in [0, wrap, 10 * wrap + 7, u64::MAX] {
            assert!(count(t, hz) < 1 << 24);
        }
    }

    #[test]
    fn it_never_goes_back_between_wraps_and_has_no_overflow_after_years() {
        let hz = 3 * GHZ;
        let year = 365 * 24 * 3600 * hz;
        let mut prev = count(year, hz);
        for i in 1..10_000u64 {
            let now = count(year + i * 997, hz);
            assert!(now >= prev || prev - now > 0xf0_0000, "{prev:#x} -> {now:#x}");
            prev = now;
        }
    }

    #[test]
    fn an_unknown_tsc_rate_reads_zero_instead_of_dividing_by_it() {
        assert_eq!(count(123_456, 0), 0);
    }

    #[test]
    fn reads_see_the_dword_or_its_bytes_and_nothing_beyond_the_block() {
        let hz = HZ; // one timer tick per TSC tick
        let t = 0x12_3456;
        assert_eq!(read(0, 4, t, hz), Some(0x12_3456));
        assert_eq!(read(0, 1, t, hz), Some(0x56));
        assert_eq!(read(1, 2, t, hz), Some(0x1234));
        assert_eq!(read(3, 1, t, hz), Some(0));
        assert_eq!(read(4, 4, t, hz), None);
    }
}
