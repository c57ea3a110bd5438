//! What an operator reads to judge whether a workload suits aggregation (`stats`): remote
//! faults by kind, messages and pages each way, invalidations, a latency histogram of remote
//! faults and the hottest guest pages. Pure counting, fed by the coherence glue with the time.

use alloc::vec::Vec;

use gestalt_coherence::{Gfn, VcpuId};

/// Latency buckets: bucket `i` holds faults served in [2^i, 2^(i+1)) µs (bucket 0 below 2 µs).
pub const BUCKETS: usize = 24;
/// Pages tracked for the hottest-pages list (space-saving: a page that stays hot is kept).
pub const TRACKED: usize = 64;

/// What kind of remote fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A read of a page this node had no copy of.
    ReadMiss,
    /// A write to a page this node had no copy of.
    WriteMiss,
    /// A write to a page this node had a shared copy of.
    Upgrade,
}

/// How a served fault is reported: its kind, or 3-hop when the data came from an owner other
/// than the page's home (whatever the kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// [`Kind::ReadMiss`] served by the home.
    ReadMiss = 0,
    /// [`Kind::WriteMiss`] served by the home.
    WriteMiss = 1,
    /// [`Kind::Upgrade`].
    Upgrade = 2,
    /// Data from the owner, past the home.
    ThreeHop = 3,
}

/// The classes in display order with their names.
pub const CLASSES: [(Class, &str); 4] = [
    (Class::ReadMiss, "read miss"),
    (Class::WriteMiss, "write miss"),
    (Class::Upgrade, "upgrade"),
    (Class::ThreeHop, "3-hop"),
];

/// A remote fault not served yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiting {
    vcpu: u16,
    since: u64,
    kind: Kind,
    gfn: u64,
    /// The data came from an owner past the home (3-hop).
    from_owner: bool,
}

/// The counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Remote read misses.
    pub read_miss: u64,
    /// Remote write misses.
    pub write_miss: u64,
    /// Upgrades.
    pub upgrade: u64,
    /// Data that came from a node other than the page's home (served by its owner).
    pub three_hop: u64,
    /// Coherence messages sent / received.
    pub messages_out: u64,
    /// See `messages_out`.
    pub messages_in: u64,
    /// Pages sent / received.
    pub pages_out: u64,
    /// See `pages_out`.
    pub pages_in: u64,
    /// Invalidations this node received (its copy taken away).
    pub invalidations_in: u64,
    /// Remote-fault latency histogram (µs, powers of two).
    pub latency: [u64; BUCKETS],
    /// Served faults and their summed latency (µs) by [`Class`].
    pub served_by: [(u64, u64); 4],
    /// One per waiting vCPU at most: a short list that keeps its capacity (no allocation per
    /// fault).
    waiting: Vec<Waiting>,
    hot: Vec<(u64, u64)>,
}

impl FaultStats {
    /// A remote fault of `vcpu` on `gfn` began at `now` (µs).
    pub fn began(&mut self, vcpu: VcpuId, gfn: Gfn, kind: Kind, now: u64) {
        match kind {
            Kind::ReadMiss => self.read_miss += 1,
            Kind::WriteMiss => self.write_miss += 1,
            Kind::Upgrade => self.upgrade += 1,
        }
        if !self.waiting.iter().any(|w| w.vcpu == vcpu.0) {
            self.waiting.push(Waiting {
                vcpu: vcpu.0,
                since: now,
                kind,
                gfn: gfn.0,
                from_owner: false,
            });
        }
        self.touch(gfn.0);
    }

    /// Data for `gfn` came from a node other than its home: the faults waiting for it are
    /// 3-hop.
    pub fn three_hop_data(&mut self, gfn: Gfn) {
        self.three_hop += 1;
        for w in self.waiting.iter_mut().filter(|w| w.gfn == gfn.0) {
            w.from_owner = true;
        }
    }

    /// `vcpu`'s fault was served at `now`.
    pub fn served(&mut self, vcpu: VcpuId, now: u64) {
        let at = self.waiting.iter().position(|w| w.vcpu == vcpu.0);
        if let Some(w) = at.map(|i| self.waiting.swap_remove(i)) {
            let us = now.saturating_sub(w.since).max(1);
            let b = (63 - us.leading_zeros() as usize).min(BUCKETS - 1);
            self.latency[b] += 1;
            let class = match (w.from_owner, w.kind) {
                (true, _) => Class::ThreeHop,
                (false, Kind::ReadMiss) => Class::ReadMiss,
                (false, Kind::WriteMiss) => Class::WriteMiss,
                (false, Kind::Upgrade) => Class::Upgrade,
            };
            let e = &mut self.served_by[class as usize];
            *e = (e.0 + 1, e.1 + us);
        }
    }

    /// Mean latency (µs) of the served faults of `class`, with their count.
    pub fn mean_us(&self, class: Class) -> Option<(u64, u64)> {
        let (n, sum) = self.served_by[class as usize];
        (n > 0).then(|| (sum / n, n))
    }

    /// Remote faults of every kind.
    pub fn remote_faults(&self) -> u64 {
        self.read_miss + self.write_miss + self.upgrade
    }

    /// The median remote-fault latency's bucket floor in µs, if any fault was served.
    pub fn median_us(&self) -> Option<u64> {
        let total: u64 = self.latency.iter().sum();
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if total > 0 && seen * 2 >= total {
                return Some(1 << i);
            }
        }
        None
    }

    /// Space-saving top-k: a tracked page counts up; an untracked one replaces the coldest
    /// (inheriting its count, so a page that keeps faulting stays, and memory stays bounded).
    fn touch(&mut self, gfn: u64) {
        if let Some(e) = self.hot.iter_mut().find(|e| e.0 == gfn) {
            e.1 += 1;
        } else if self.hot.len() < TRACKED {
            self.hot.push((gfn, 1));
        } else if let Some(e) = self.hot.iter_mut().min_by_key(|e| e.1) {
            *e = (gfn, e.1 + 1);
        }
    }

    /// The `n` hottest pages (gfn, faults), hottest first.
    pub fn hottest(&self, n: usize) -> Vec<(u64, u64)> {
        let mut h = self.hot.clone();
        h.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        h.truncate(n);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_count_by_kind_and_their_latency_lands_in_its_power_of_two_bucket() {
        let mut s = FaultStats::default();
        s.began(VcpuId(1), Gfn(5), Kind::ReadMiss, 1000);
        s.began(VcpuId(2), Gfn(6), Kind::Upgrade, 1000);
        s.served(VcpuId(1), 1300); // 300 µs: [256, 512)
        s.served(VcpuId(2), 1001); // 1 µs: bucket 0
        s.served(VcpuId(3), 5000); // never began: ignored
        assert_eq!((s.read_miss, s.write_miss, s.upgrade), (1, 0, 1));
        assert_eq!(s.latency[8], 1);
        assert_eq!(s.latency[0], 1);
        assert_eq!(s.latency.iter().sum::<u64>(), 2);
        assert_eq!(s.median_us(), Some(1));
        assert_eq!(s.mean_us(Class::ReadMiss), Some((300, 1)));
        assert_eq!(s.mean_us(Class::Upgrade), Some((1, 1)));
        assert_eq!(s.mean_us(Class::WriteMiss), None);
    }

    #[test]
    fn a_fault_served_by_an_owner_past_the_home_counts_as_three_hop_whatever_its_kind() {
        let mut s = FaultStats::default();
        s.began(VcpuId(1), Gfn(5), Kind::ReadMiss, 0);
        s.began(VcpuId(2), Gfn(6), Kind::WriteMiss, 0);
        s.three_hop_data(Gfn(5));
        s.served(VcpuId(1), 900);
        s.served(VcpuId(2), 100);
        assert_eq!(s.three_hop, 1);
        assert_eq!(s.mean_us(Class::ThreeHop), Some((900, 1)));
        assert_eq!(s.mean_us(Class::ReadMiss), None);
        assert_eq!(s.mean_us(Class::WriteMiss), Some((100, 1)));
    }

    #[test]
    fn the_hottest_pages_come_first_and_memory_stays_bounded() {
        let mut s = FaultStats::default();
        for i in 0..10_000u64 {
            s.began(VcpuId(0), Gfn(i), Kind::WriteMiss, 0);
            s.began(VcpuId(0), Gfn(7), Kind::WriteMiss, 0);
            if i % 2 == 0 {
                s.began(VcpuId(0), Gfn(3), Kind::WriteMiss, 0);
            }
        }
        let top = s.hottest(10);
        assert_eq!(top[0].0, 7);
        assert_eq!(top[1].0, 3);
        assert!(top[0].1 >= 10_000);
        assert!(s.hot.len() <= TRACKED);
        assert_eq!(s.hottest(10).len(), 10);
    }
}
