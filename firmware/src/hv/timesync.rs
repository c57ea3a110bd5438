//! Guest time across the nodes (docs/design.md §6). A node's guest TSC is its host TSC plus one
//! offset for all of its vCPUs, and that offset only ever moves forward, so no vCPU sees its
//! TSC go back. Two things move it:
//! - Probes (this file): a node other than the primary asks the primary for its guest TSC,
//!   NTP-style. The sample with the shortest round trip of a first burst sets the offset
//!   (half that round trip is its uncertainty); later probes measure the residual skew and
//!   step the clock forward when it is behind by more than their uncertainty.
//! - Stamps (`Vm::observe_time`): every guest message carries its sender's guest TSC, and a
//!   receiver behind a stamp steps forward to it before it acts on the message. A TSC value
//!   that travels through guest memory rides on a message sent after it was read, so a reader
//!   on another node never finds it in its own future, whatever the clocks' drift.
//!
//! Pure logic over TSC values; the firmware supplies the clock and the transport.

/// Probes in the first burst: the best of them sets the offset.
pub const BURST: u32 = 8;

/// One probe's outcome: how far this node's guest clock is from the primary's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skew {
    /// Primary's guest TSC minus ours at the probe's midpoint, in ticks (positive: we are
    /// behind).
    pub behind: i64,
    /// Half the probe's round trip: the measurement cannot tell apart skews this close.
    pub uncertainty: u64,
}

/// The probing side of a node that is not the primary.
#[derive(Clone, Debug)]
pub struct TimeSync {
    interval: u64,
    timeout: u64,
    outstanding: Option<u64>,
    last_sent: Option<u64>,
    taken: u32,
    /// Offset target of the burst's shortest round trip, with that round trip.
    best: Option<(u64, u64)>,
    last: Option<Skew>,
    worst: u64,
    probes: u64,
    lost: u64,
}

impl TimeSync {
    /// Probing with `hz` TSC ticks per second: the burst back to back, then two probes a
    /// second; a probe unanswered after 100 ms is given up.
    pub fn new(hz: u64) -> TimeSync {
        TimeSync {
            interval: (hz / 2).max(1),
            timeout: (hz / 10).max(1),
            outstanding: None,
            last_sent: None,
            taken: 0,
            best: None,
            last: None,
            worst: 0,
            probes: 0,
            lost: 0,
        }
    }

    /// A probe to send now (its send time, host TSC `now`), if one is due.
    pub fn probe(&mut self, now: u64) -> Option<u64> {
        if let Some(t0) = self.outstanding {
            if now.wrapping_sub(t0) < self.timeout {
                return None;
            }
            self.outstanding = None;
            self.lost += 1;
        }
        let due = self.taken < BURST
            || self.last_sent.is_none_or(|t| now.wrapping_sub(t) >= self.interval);
        if !due {
            return None;
        }
        self.outstanding = Some(now);
        self.last_sent = Some(now);
        self.probes += 1;
        Some(now)
    }

    /// The primary answered the probe sent at `t0` with its guest TSC `primary`; it arrived at
    /// host TSC `now`, when this node's offset was `offset`. Returns an offset to step forward
    /// to, if this sample asks for one. Answers to no probe outstanding (late, repeated) are
    /// ignored.
    pub fn reply(&mut self, t0: u64, primary: u64, now: u64, offset: u64) -> Option<u64> {
        if self.outstanding != Some(t0) {
            return None;
        }
        self.outstanding = None;
        let rtt = now.wrapping_sub(t0);
        if rtt >= self.timeout {
            self.lost += 1;
            return None;
        }
        // The offset that makes our guest TSC read the primary's at the round trip's midpoint.
        let target = primary.wrapping_add(rtt / 2).wrapping_sub(now);
        let skew = Skew { behind: target.wrapping_sub(offset) as i64, uncertainty: rtt / 2 };
        self.last = Some(skew);
        self.taken += 1;
        if self.taken <= BURST {
            if self.best.is_none_or(|(_, r)| rtt < r) {
                self.best = Some((target, rtt));
            }
            return (self.taken == BURST).then(|| self.best.map(|(t, _)| t)).flatten();
        }
        self.worst = self.worst.max(skew.behind.unsigned_abs());
        // Only a skew the measurement is sure of moves the clock, and never past the primary.
        (skew.behind > skew.uncertainty as i64)
            .then(|| offset.wrapping_add(skew.behind as u64 - skew.uncertainty))
    }

    /// The burst is over: the offset was set from the primary's clock.
    pub fn synced(&self) -> bool {
        self.taken >= BURST
    }

    /// The latest probe's skew.
    pub fn last(&self) -> Option<Skew> {
        self.last
    }

    /// The largest skew a probe after the burst measured, in ticks.
    pub fn worst(&self) -> u64 {
        self.worst
    }

    /// Shortest round trip of the burst, in ticks.
    pub fn best_rtt(&self) -> Option<u64> {
        self.best.map(|(_, r)| r)
    }

    /// Probes sent, and how many were never answered in time.
    pub fn probes(&self) -> (u64, u64) {
        (self.probes, self.lost)
    }
}

/// The offset that brings a clock reading `host` (host TSC, offset `offset`) up to guest TSC
/// `stamp`, when it is behind it.
pub fn catch_up(stamp: u64, host: u64, offset: u64) -> Option<u64> {
    let behind = stamp.wrapping_sub(host.wrapping_add(offset)) as i64;
    (behind > 0).then(|| offset.wrapping_add(behind as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000_000;

    /// A primary whose guest clock reads ours plus `skew`, with one-way delays `up`, `down`.
    fn exchange(
        s: &mut TimeSync,
        now: &mut u64,
        skew: u64,
        up: u64,
        down: u64,
        off: u64,
    ) -> Option<u64> {
        let t0 = s.probe(*now).expect("a probe is due");
        *now += up;
        let primary = now.wrapping_add(skew);
        *now += down;
        s.reply(t0, primary, *now, off)
    }

    #[test]
    fn the_burst_sets_the_offset_from_its_shortest_round_trip() {
        let mut s = TimeSync::new(HZ);
        let mut now = 1_000_000u64;
        let skew = 5_000_000_000u64;
        let mut got = None;
        for i in 0..BURST {
            // Asymmetric delays except the fastest probe, which is symmetric.
            let (up, down) = if i == 3 { (1000, 1000) } else { (50_000 + u64::from(i), 1000) };
            got = exchange(&mut s, &mut now, skew, up, down, 0);
            assert_eq!(got.is_some(), i + 1 == BURST);
        }
        assert_eq!(got, Some(skew));
        assert!(s.synced());
        assert_eq!(s.best_rtt(), Some(2000));
    }

    #[test]
    fn a_probe_measures_skew_after_the_burst_and_steps_only_when_surely_behind() {
        let mut s = TimeSync::new(HZ);
        let mut now = 0u64;
        for _ in 0..BURST {
            exchange(&mut s, &mut now, 7_000, 1000, 1000, 0);
        }
        now += HZ;
        // In step (our offset equals the skew): no step, skew measured as zero.
        assert_eq!(exchange(&mut s, &mut now, 7_000, 1000, 1000, 7_000), None);
        assert_eq!(s.last(), Some(Skew { behind: 0, uncertainty: 1000 }));
        now += HZ;
        // 500 behind within ±1000: unsure, no step.
        assert_eq!(exchange(&mut s, &mut now, 7_500, 1000, 1000, 7_000), None);
        now += HZ;
        // 10_000 behind: step forward by what is sure, never past the primary.
        assert_eq!(exchange(&mut s, &mut now, 17_000, 1000, 1000, 7_000), Some(16_000));
        assert_eq!(s.worst(), 10_000);
        now += HZ;
        // Ahead of the primary: measured, never stepped back.
        assert_eq!(exchange(&mut s, &mut now, 0, 1000, 1000, 7_000), None);
        assert_eq!(s.last().unwrap().behind, -7_000);
    }

    #[test]
    fn a_late_repeated_or_unasked_reply_is_ignored() {
        let mut s = TimeSync::new(HZ);
        assert_eq!(s.reply(5, 1, 10, 0), None);
        let t0 = s.probe(100).unwrap();
        assert_eq!(s.probe(200), None, "one probe at a time");
        // Given up after 100 ms, then a new probe goes.
        let t1 = s.probe(100 + HZ / 10).unwrap();
        assert_eq!(s.probes(), (2, 1));
        assert_eq!(s.reply(t0, 1, 300, 0), None, "answer to the abandoned probe");
        assert_eq!(s.last(), None);
        s.reply(t1, 1, t1 + 10, 0);
        assert_eq!(s.reply(t1, 1, t1 + 10, 0), None, "the same answer twice");
        assert_eq!(s.probes(), (2, 1));
    }

    #[test]
    fn after_the_burst_probes_go_twice_a_second() {
        let mut s = TimeSync::new(HZ);
        let mut now = 0;
        for _ in 0..BURST {
            exchange(&mut s, &mut now, 0, 10, 10, 0);
        }
        assert_eq!(s.probe(now), None);
        assert!(s.probe(now + HZ / 2).is_some());
    }

    #[test]
    fn a_clock_catches_up_with_a_stamp_ahead_of_it_and_never_goes_back() {
        assert_eq!(catch_up(1_000, 900, 50), Some(100));
        assert_eq!(catch_up(1_000, 900, 100), None);
        assert_eq!(catch_up(1_000, 900, 200), None);
        // Offsets are modular: a clock far behind (offset "negative") catches up too.
        assert_eq!(
            catch_up(1_000, 2_000, 0u64.wrapping_sub(5_000)),
            Some(0u64.wrapping_sub(1_000))
        );
    }
}
