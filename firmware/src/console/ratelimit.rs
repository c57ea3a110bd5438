//! Which refusals get a console line. Refusals come from the network, so an attacker decides
//! how many there are: the memory of who was refused is bounded, and lines are rate-limited
//! overall; what is not shown is counted (and summed up now and then).

/// Remembers the last `N` (sender, reason) keys shown, and lets through at most `BURST` lines
/// at once and one more per `INTERVAL_US` after that.
pub struct RefusalLog<K, const N: usize> {
    seen: [Option<K>; N],
    next: usize,
    tokens: u32,
    refilled_at: u64,
    shown: u64,
    suppressed: u64,
    unreported: u64,
    reported_at: u64,
}

/// Lines let through at once.
pub const BURST: u32 = 8;
/// Then one line per this many µs.
pub const INTERVAL_US: u64 = 1_000_000;
/// A summary of what was not shown at most this often.
pub const SUMMARY_US: u64 = 10_000_000;

/// What to do with one refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Print its line.
    Show,
    /// Already shown for this sender and reason.
    Repeat,
    /// Over the rate: counted, not shown.
    Suppressed,
}

impl<K: Copy + PartialEq, const N: usize> RefusalLog<K, N> {
    /// Nothing seen yet.
    pub const fn new() -> Self {
        RefusalLog {
            seen: [None; N],
            next: 0,
            tokens: BURST,
            refilled_at: 0,
            shown: 0,
            suppressed: 0,
            unreported: 0,
            reported_at: 0,
        }
    }

    /// Decides for one refusal of `key` at `now` (µs).
    pub fn check(&mut self, key: K, now: u64) -> Verdict {
        if self.seen.contains(&Some(key)) {
            return Verdict::Repeat;
        }
        let earned = now.saturating_sub(self.refilled_at) / INTERVAL_US;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(BURST)) as u32;
            self.refilled_at = now;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            self.unreported += 1;
            return Verdict::Suppressed;
        }
        self.tokens -= 1;
        self.seen[self.next] = Some(key);
        self.next = (self.next + 1) % N;
        self.shown += 1;
        Verdict::Show
    }

    /// Refusals not shown since the last summary, when one is due at `now`.
    pub fn summary(&mut self, now: u64) -> Option<u64> {
        if self.unreported == 0 || now.saturating_sub(self.reported_at) < SUMMARY_US {
            return None;
        }
        self.reported_at = now;
        Some(core::mem::take(&mut self.unreported))
    }

    /// Lines shown since boot.
    pub fn shown(&self) -> u64 {
        self.shown
    }

    /// Refusals not shown (over the rate) since boot.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

impl<K: Copy + PartialEq, const N: usize> Default for RefusalLog<K, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Key = ([u8; 4], u8);

    #[test]
    fn ten_thousand_spoofed_sources_write_a_few_lines_in_bounded_memory() {
        let mut log = RefusalLog::<Key, 64>::new();
        let mut shown = 0u64;
        // One new source every millisecond for ten seconds.
        for i in 0..10_000u32 {
            let b = i.to_be_bytes();
            if log.check(([10, b[1], b[2], b[3]], 1), u64::from(i) * 1000) == Verdict::Show {
                shown += 1;
            }
        }
        assert!(shown <= u64::from(BURST) + 10, "{shown} lines for 10 s");
        assert_eq!(log.suppressed(), 10_000 - shown);
        // The memory is the type's: 64 keys, whatever the number of sources.
        assert!(core::mem::size_of::<RefusalLog<Key, 64>>() < 1024);
        let s = log.summary(10_000_000).expect("a summary is due");
        assert_eq!(s, 10_000 - shown);
        assert_eq!(log.summary(10_500_000), None, "at most one summary per interval");
    }

    #[test]
    fn a_sender_refused_again_is_not_shown_again_while_remembered() {
        let mut log = RefusalLog::<Key, 4>::new();
        assert_eq!(log.check(([1, 1, 1, 1], 7), 0), Verdict::Show);
        assert_eq!(log.check(([1, 1, 1, 1], 7), 1), Verdict::Repeat);
        assert_eq!(log.check(([1, 1, 1, 1], 8), 2), Verdict::Show, "another reason");
        // Forgotten once four other keys were shown: shown again (memory is bounded).
        for i in 2..6 {
            log.check(([1, 1, 1, i], 7), 3);
        }
        assert_eq!(log.check(([1, 1, 1, 1], 7), 3), Verdict::Show);
    }

    #[test]
    fn after_a_burst_one_line_per_interval_gets_through() {
        let mut log = RefusalLog::<u32, 64>::new();
        for k in 0..BURST {
            assert_eq!(log.check(k, 0), Verdict::Show);
        }
        assert_eq!(log.check(100, 1), Verdict::Suppressed);
        assert_eq!(log.check(101, INTERVAL_US), Verdict::Show);
        assert_eq!(log.check(102, INTERVAL_US + 1), Verdict::Suppressed);
    }
}
