//! The guest's CMOS clock (an MC146818-style RTC at ports 0x70/0x71): the wall-clock time the
//! host's own RTC showed when the guest started, advanced by the TSC, in BCD and 24-hour mode
//! (status B = 0x02), never in an update (status A's UIP clear), and 128 bytes of CMOS RAM
//! around it. Without it Linux polls the absent chip's all-ones update flag for 10 ms at boot
//! (40,000 exits) and says "Unable to read current time from RTC". Setting the clock is
//! ignored (the host's clock stays the reference); alarms and periodic interrupts are not
//! emulated (status B keeps their enable bits clear). Pure logic: host-tested.

/// The index port (bit 7 is the NMI mask, ignored here).
pub const INDEX: u16 = 0x70;
/// The data port.
pub const DATA: u16 = 0x71;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0A;
const STATUS_B: u8 = 0x0B;
const STATUS_C: u8 = 0x0C;
const STATUS_D: u8 = 0x0D;
/// Where PC firmware keeps the century (the FADT's CENTURY field names it).
pub const CENTURY: u8 = 0x32;

/// The clock and its RAM.
#[derive(Clone, Debug)]
pub struct Rtc {
    index: u8,
    /// Seconds since 1970-01-01 00:00 UTC at TSC `base_ticks`.
    base_secs: u64,
    base_ticks: u64,
    ram: [u8; 128],
}

impl Default for Rtc {
    fn default() -> Rtc {
        Rtc::new(0, 0)
    }
}

impl Rtc {
    /// A clock showing `unix_secs` at TSC `ticks`.
    pub fn new(unix_secs: u64, ticks: u64) -> Rtc {
        Rtc { index: 0, base_secs: unix_secs, base_ticks: ticks, ram: [0; 128] }
    }

    /// A write to port `port` (index or data).
    pub fn write(&mut self, port: u16, v: u8) {
        match port {
            INDEX => self.index = v & 0x7f,
            // The clock and status registers keep their values; the rest is RAM.
            _ if self.index > STATUS_D && self.index != CENTURY => {
                self.ram[usize::from(self.index)] = v;
            }
            _ => {}
        }
    }

    /// A read of port `port` at TSC `ticks` (`hz` ticks per second; 0: the clock stands).
    pub fn read(&self, port: u16, ticks: u64, hz: u64) -> u8 {
        if port == INDEX {
            return self.index;
        }
        let secs =
            self.base_secs + ticks.wrapping_sub(self.base_ticks).checked_div(hz).unwrap_or(0);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil(days);
        let bcd = |v: u64| (((v / 10 % 10) << 4) | (v % 10)) as u8;
        match self.index {
            SECONDS => bcd(rem % 60),
            MINUTES => bcd(rem / 60 % 60),
            HOURS => bcd(rem / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            WEEKDAY => bcd((days + 4) % 7 + 1),
            DAY => bcd(d),
            MONTH => bcd(m),
            YEAR => bcd(y % 100),
            CENTURY => bcd(y / 100),
            // 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) clear.
            STATUS_A => 0x26,
            // 24-hour mode, BCD, no interrupts enabled.
            STATUS_B => 0x02,
            STATUS_C => 0,
            // The battery is good (VRT).
            STATUS_D => 0x80,
            i => self.ram[usize::from(i)],
        }
    }
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) `days` after 1970-01-01.
fn civil(days: u64) -> (u64, u64, u64) {
    // Counted in 400-year eras from 0000-03-01, so that the leap day ends each year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Seconds since 1970-01-01 00:00 UTC for a date and time (year ≥ 1970), the inverse of the
/// clock's registers: for reading the host's RTC.
pub fn unix_seconds(y: u64, m: u64, d: u64, hh: u64, mm: u64, ss: u64) -> Option<u64> {
    if y < 1970 || !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 {
        return None;
    }
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2 / 400;
    let yoe = y2 % 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss.min(59))
}

/// A BCD byte's value, or None if a nibble is not a decimal digit.
pub fn from_bcd(b: u8) -> Option<u64> {
    let (hi, lo) = (b >> 4, b & 0xf);
    (hi < 10 && lo < 10).then(|| u64::from(hi * 10 + lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(r: &mut Rtc, i: u8, ticks: u64) -> u8 {
        r.write(INDEX, i);
        r.read(DATA, ticks, 1000)
    }

    #[test]
    fn the_clock_shows_its_start_in_bcd_and_runs_with_the_tsc() {
        // 2026-12-02 05:39:24 UTC, a Wednesday.
        let start = unix_seconds(2026, 12, 2, 5, 39, 24).unwrap();
        let mut r = Rtc::new(start, 5000);
        assert_eq!(reg(&mut r, SECONDS, 5000), 0x24);
        assert_eq!(reg(&mut r, MINUTES, 5000), 0x39);
        assert_eq!(reg(&mut r, HOURS, 5000), 0x05);
        assert_eq!(reg(&mut r, WEEKDAY, 5000), 4, "Wednesday (Sunday = 1)");
        assert_eq!(reg(&mut r, DAY, 5000), 0x02);
        assert_eq!(reg(&mut r, MONTH, 5000), 0x12);
        assert_eq!(reg(&mut r, YEAR, 5000), 0x26);
        assert_eq!(reg(&mut r, CENTURY, 5000), 0x20);
        // 36 s of ticks later (1000 per second): 05:40:00.
        assert_eq!(reg(&mut r, SECONDS, 5000 + 36_000), 0x00);
        assert_eq!(reg(&mut r, MINUTES, 5000 + 36_000), 0x40);
        // Never in an update, 24-hour BCD, battery good.
        assert_eq!(reg(&mut r, STATUS_A, 0) & 0x80, 0);
        assert_eq!(reg(&mut r, STATUS_B, 0), 0x02);
        assert_eq!(reg(&mut r, STATUS_D, 0), 0x80);
    }

    #[test]
    fn dates_cross_month_year_and_leap_day_boundaries() {
        let days = [
            ((1970, 1, 1), (1970, 1, 2)),
            ((2000, 2, 29), (2000, 3, 1)),
            ((2024, 2, 29), (2024, 3, 1)),
            ((2024, 3, 1), (2024, 3, 2)),
            ((2099, 12, 31), (2100, 1, 1)),
            ((2100, 2, 28), (2100, 3, 1)),
        ];
        for ((y, m, d), next) in days {
            let s = unix_seconds(y, m, d, 23, 59, 59).unwrap();
            assert_eq!(civil(s / 86_400), (y, m, d));
            assert_eq!(civil(s / 86_400 + 1), next, "the day after {y}-{m}-{d}");
        }
        assert_eq!(civil(unix_seconds(2023, 2, 28, 0, 0, 0).unwrap() / 86_400 + 1), (2023, 3, 1));
        assert_eq!(unix_seconds(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(unix_seconds(1969, 12, 31, 0, 0, 0), None);
        assert_eq!(unix_seconds(2026, 13, 1, 0, 0, 0), None);
    }

    #[test]
    fn ram_keeps_writes_and_the_clock_ignores_them() {
        let mut r = Rtc::new(0, 0);
        r.write(INDEX, 0x80 | 0x40); // NMI mask bit set: register 0x40
        r.write(DATA, 0x5a);
        assert_eq!(r.read(INDEX, 0, 0), 0x40);
        assert_eq!(r.read(DATA, 0, 0), 0x5a);
        r.write(INDEX, HOURS);
        r.write(DATA, 0x13);
        assert_eq!(r.read(DATA, 0, 0), 0x00, "the clock is the host's, not the guest's");
        // No rate measured: the clock stands at its start.
        let mut r = Rtc::new(59, 0);
        r.write(INDEX, SECONDS);
        assert_eq!(r.read(DATA, u64::MAX, 0), 0x59);
    }

    #[test]
    fn bcd_bytes_decode_and_garbage_is_refused() {
        assert_eq!(from_bcd(0x59), Some(59));
        assert_eq!(from_bcd(0x00), Some(0));
        assert_eq!(from_bcd(0x5a), None);
        assert_eq!(from_bcd(0xff), None);
    }
}
