//! Sequence-space helpers: the anti-replay window over packet numbers and serial-number
//! comparison for fragment sequence numbers.

/// `a < b` in sequence space (RFC 1982 serial arithmetic).
pub(super) fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// RFC 4303 §3.4.3-style anti-replay window over packet numbers, one per session. It holds
/// the highest number accepted rather than "highest plus one", so every `u64` — `u64::MAX`
/// included — is a valid packet number and nothing wraps.
#[derive(Clone, Debug, Default)]
pub(super) struct ReplayWindow {
    /// Highest packet number accepted, if any.
    highest: Option<u64>,
    /// Bit i set: packet `highest - i` accepted.
    bits: u64,
}

impl ReplayWindow {
    /// Whether `pn` is new and not too old to tell.
    pub(super) fn check(&self, pn: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if pn > h => true,
            Some(h) => {
                let back = h - pn;
                back < 64 && self.bits & (1 << back) == 0
            }
        }
    }

    /// Records `pn` (which [`ReplayWindow::check`] passed).
    pub(super) fn accept(&mut self, pn: u64) {
        match self.highest {
            Some(h) if pn <= h => {
                let back = h - pn;
                if back < 64 {
                    self.bits |= 1 << back;
                }
            }
            Some(h) => {
                let shift = pn - h;
                self.bits = if shift >= 64 { 0 } else { self.bits << shift };
                self.bits |= 1;
                self.highest = Some(pn);
            }
            None => {
                self.bits = 1;
                self.highest = Some(pn);
            }
        }
    }

    /// What goes into `pn_echo`: the highest accepted plus one, 0 for none. Saturates at
    /// `u64::MAX`, which our own senders never reach (they stop one short).
    pub(super) fn echo(&self) -> u64 {
        self.highest.map_or(0, |h| h.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_accepts_each_packet_number_once_within_64() {
        let mut w = ReplayWindow::default();
        for pn in [5u64, 3, 4, 70, 10, 69] {
            assert!(w.check(pn), "{pn} is fresh");
            w.accept(pn);
            assert!(!w.check(pn), "{pn} is now a replay");
        }
        assert!(!w.check(6), "more than 63 behind the top is refused");
        assert!(w.check(68));
        assert_eq!(w.echo(), 71);
    }

    #[test]
    fn the_largest_packet_numbers_neither_wrap_nor_panic() {
        let mut w = ReplayWindow::default();
        for pn in [u64::MAX - 1, u64::MAX] {
            assert!(w.check(pn));
            w.accept(pn);
        }
        // Before the fix, u64::MAX made "highest + 1" wrap to 0 and every number look fresh.
        assert!(!w.check(u64::MAX) && !w.check(u64::MAX - 1), "no replay after the top");
        assert!(!w.check(0) && !w.check(5), "small numbers are far behind, not fresh");
        assert!(w.check(u64::MAX - 2));
        assert_eq!(w.echo(), u64::MAX);
        let mut first = ReplayWindow::default();
        first.accept(u64::MAX);
        assert!(!first.check(u64::MAX));
    }
}
