//! The per-peer session handshake (README "Freshness"): the nonce we use towards a peer, the
//! peer's nonce once it is proven fresh, and the nonces we only heard of.
//!
//! A nonce is proven fresh by an authentic datagram that carries *our* current nonce as its
//! `dst_nonce`: only a key holder who heard us in this session can have made it, so it cannot
//! come from a recording of an earlier boot, view or session. Anything else authentic (a
//! hello, a datagram for an earlier nonce of ours) only teaches us a candidate to probe.

use super::auth::Seed;
use super::NodeId;

/// Candidate nonces probed at once; more (e.g. replayed hellos) push the oldest out, so a
/// replay cannot crowd out the real peer's nonce for longer than it takes the peer to speak.
const PROBES: usize = 4;

/// How an authentic datagram relates to our session with its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    /// Not addressed to our current nonce (hello, earlier session, recording): not trusted.
    NotOurs,
    /// The first datagram proving the peer's nonce fresh: the session starts now.
    Confirmed,
    /// Part of the confirmed session.
    Current,
    /// Proves a *different* peer nonce fresh while a session runs: a new instance of the
    /// peer (it rebooted or reset us) heard us. The old session is over.
    Restarted,
}

#[derive(Clone, Debug)]
pub(super) struct Session {
    /// Bumped by every reset, so every session of ours towards this peer has its own nonce.
    pub(super) generation: u32,
    /// Our nonce in this session (never 0).
    pub(super) local: u64,
    /// The peer's nonce, once proven fresh.
    pub(super) peer: Option<u64>,
    /// The most recent candidate, probed at every heartbeat until the peer is confirmed.
    latest: Option<u64>,
    /// Candidates not probed yet (oldest first).
    probes: [u64; PROBES],
    pending: usize,
}

impl Session {
    pub(super) fn new(seed: &Seed, local: NodeId, peer: NodeId, generation: u32) -> Self {
        Self {
            generation,
            local: seed.nonce(local, peer, generation),
            peer: None,
            latest: None,
            probes: [0; PROBES],
            pending: 0,
        }
    }

    /// Classifies an authentic datagram by its nonces, learning what it teaches.
    pub(super) fn classify(&mut self, src_nonce: u64, dst_nonce: u64) -> Incoming {
        if dst_nonce != self.local {
            if self.peer.is_none() {
                self.learn(src_nonce);
            }
            return Incoming::NotOurs;
        }
        match self.peer {
            None => {
                self.peer = Some(src_nonce);
                self.latest = None;
                self.pending = 0;
                Incoming::Confirmed
            }
            Some(p) if p == src_nonce => Incoming::Current,
            Some(_) => Incoming::Restarted,
        }
    }

    fn learn(&mut self, nonce: u64) {
        self.latest = Some(nonce);
        if self.probes[..self.pending].contains(&nonce) {
            return;
        }
        if self.pending == PROBES {
            self.probes.copy_within(1.., 0);
            self.pending -= 1;
        }
        self.probes[self.pending] = nonce;
        self.pending += 1;
    }

    /// A candidate to probe now, if one is waiting.
    pub(super) fn take_probe(&mut self) -> Option<u64> {
        if self.pending == 0 {
            return None;
        }
        let n = self.probes[0];
        self.probes.copy_within(1.., 0);
        self.pending -= 1;
        Some(n)
    }

    pub(super) fn has_probe(&self) -> bool {
        self.pending > 0
    }

    /// The candidate to probe on a heartbeat, if any (else a hello goes out).
    pub(super) fn latest(&self) -> Option<u64> {
        self.latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new(&Seed::new([7; 32]), 0, 1, 0)
    }

    #[test]
    fn only_a_datagram_carrying_our_nonce_confirms_the_peer() {
        let mut s = session();
        assert_eq!(s.classify(0xAA, 0), Incoming::NotOurs);
        assert_eq!(s.classify(0xBB, s.local ^ 1), Incoming::NotOurs);
        assert_eq!(s.peer, None);
        assert_eq!(
            (s.take_probe(), s.take_probe(), s.take_probe()),
            (Some(0xAA), Some(0xBB), None)
        );
        assert_eq!(s.classify(0xCC, s.local), Incoming::Confirmed);
        assert_eq!(s.classify(0xCC, s.local), Incoming::Current);
        // Once confirmed, hellos teach nothing; a new nonce echoing ours is a restart.
        assert_eq!(s.classify(0xDD, 0), Incoming::NotOurs);
        assert!(!s.has_probe());
        assert_eq!(s.classify(0xEE, s.local), Incoming::Restarted);
    }

    #[test]
    fn a_flood_of_candidates_keeps_the_newest_few() {
        let mut s = session();
        for n in 1..=10u64 {
            s.classify(n, 0);
            s.classify(n, 0);
        }
        let probed: Vec<u64> = core::iter::from_fn(|| s.take_probe()).collect();
        assert_eq!(probed, vec![7, 8, 9, 10]);
        assert_eq!(s.latest(), Some(10));
    }
}
