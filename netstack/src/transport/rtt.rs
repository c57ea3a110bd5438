//! The RFC 6298 round-trip estimator in integer microseconds. Which acknowledgements may
//! feed it (Karn's rule) is decided by the engine, which knows what was retransmitted.

use super::Config;

#[derive(Clone, Debug)]
pub(super) struct Rtt {
    pub(super) srtt: u64,
    rttvar: u64,
    pub(super) rto: u64,
    sampled: bool,
}

impl Rtt {
    pub(super) fn new(cfg: &Config) -> Self {
        Self { srtt: 0, rttvar: 0, rto: cfg.initial_rto_us, sampled: false }
    }

    pub(super) fn sample(&mut self, r: u64, cfg: &Config) {
        if self.sampled {
            let diff = self.srtt.abs_diff(r);
            self.rttvar = (3 * self.rttvar + diff) / 4;
            self.srtt = (7 * self.srtt + r) / 8;
        } else {
            self.srtt = r;
            self.rttvar = r / 2;
            self.sampled = true;
        }
        // RFC 6298 §2.3 with a clock granularity of 100 µs.
        self.rto = (self.srtt + (4 * self.rttvar).max(100)).clamp(cfg.min_rto_us, cfg.max_rto_us);
    }
}
