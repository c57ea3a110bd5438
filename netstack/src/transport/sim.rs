//! A deterministic lossy datagram network for tests and the simulator: seeded drop,
//! duplication and reordering (random per-datagram delay), directed cuts (partitions, one-way
//! failures), and a tap that records every datagram for replay attacks. No clocks: time is an
//! input.

use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Reverse;

use super::NodeId;

/// A small seeded PRNG (SplitMix64): deterministic, portable, no floats.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; slightly biased, fine for tests).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// Fault knobs of a [`SimNetwork`].
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Datagrams dropped, per mille.
    pub drop_per_mille: u32,
    /// Datagrams delivered twice, per mille.
    pub duplicate_per_mille: u32,
    /// Smallest one-way delay, µs.
    pub min_delay_us: u64,
    /// Largest one-way delay, µs; a spread between min and max reorders datagrams.
    pub max_delay_us: u64,
}

impl Faults {
    /// The acceptance setting: 10% drop, 5% duplication, 50–500 µs delay (reorders).
    pub const LOSSY: Faults = Faults {
        drop_per_mille: 100,
        duplicate_per_mille: 50,
        min_delay_us: 50,
        max_delay_us: 500,
    };
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: u64,
    order: u64,
    from: NodeId,
    to: NodeId,
    bytes: Vec<u8>,
}

/// Counters of a [`SimNetwork`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Datagrams dropped.
    pub dropped: u64,
    /// Extra copies injected.
    pub duplicated: u64,
    /// Datagrams delivered (copies included).
    pub delivered: u64,
    /// Datagrams lost to a cut.
    pub cut: u64,
}

/// The network: datagrams go in with `send`, come out of `deliver` once their time came.
#[derive(Debug)]
pub struct SimNetwork {
    rng: Rng,
    faults: Faults,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    stats: SimStats,
    /// Directions that lose everything: (from, to).
    cuts: Vec<(NodeId, NodeId)>,
    /// Every datagram handed to the network, when recording.
    tap: Option<Vec<(NodeId, NodeId, Vec<u8>)>>,
}

impl SimNetwork {
    /// A network with `faults`, deterministic for a given `seed`.
    pub fn new(seed: u64, faults: Faults) -> Self {
        Self {
            rng: Rng::new(seed),
            faults,
            queue: BinaryHeap::new(),
            order: 0,
            stats: SimStats::default(),
            cuts: Vec::new(),
            tap: None,
        }
    }

    /// From now on, everything `from` sends to `to` is lost (one direction only).
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        if !self.cuts.contains(&(from, to)) {
            self.cuts.push((from, to));
        }
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&mut self, a: NodeId, b: NodeId) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.cuts.clear();
    }

    /// Starts recording every datagram sent (what an eavesdropper on the wire captures).
    pub fn record(&mut self) {
        self.tap.get_or_insert_with(Vec::new);
    }

    /// The datagrams recorded so far, as `(from, to, bytes)`.
    pub fn recorded(&self) -> &[(NodeId, NodeId, Vec<u8>)] {
        self.tap.as_deref().unwrap_or(&[])
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Datagrams still in the network.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Sends `bytes` from `from` to `to` at time `now`.
    pub fn send(&mut self, now: u64, from: NodeId, to: NodeId, bytes: &[u8]) {
        self.stats.sent += 1;
        if let Some(tap) = &mut self.tap {
            tap.push((from, to, bytes.to_vec()));
        }
        if self.cuts.contains(&(from, to)) {
            self.stats.cut += 1;
            return;
        }
        if self.rng.chance(self.faults.drop_per_mille) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(self.faults.duplicate_per_mille) { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let spread = self.faults.max_delay_us.saturating_sub(self.faults.min_delay_us);
            let at = now + self.faults.min_delay_us + self.rng.below(spread + 1);
            self.order += 1;
            self.queue.push(Reverse(InFlight {
                at,
                order: self.order,
                from,
                to,
                bytes: bytes.to_vec(),
            }));
        }
    }

    /// The next datagram due at or before `now`, as `(from, to, bytes)`.
    pub fn deliver(&mut self, now: u64) -> Option<(NodeId, NodeId, Vec<u8>)> {
        if self.queue.peek()?.0.at > now {
            return None;
        }
        let Reverse(d) = self.queue.pop()?;
        self.stats.delivered += 1;
        Some((d.from, d.to, d.bytes))
    }

    /// When the next datagram is due.
    pub fn next_delivery(&self) -> Option<u64> {
        self.queue.peek().map(|d| d.0.at)
    }
}
