//! Per-peer engine state: what we send (queue, window, timers, packet numbers), what the peer
//! shows it heard (liveness), and what we receive (replay window, reassembly).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::rtt::Rtt;
use super::session::Session;
use super::window::ReplayWindow;
use super::{Config, NodeId, SENT_LOG};

/// In-order data datagrams acknowledged together at most. TCP acks every second segment
/// (RFC 9293 §3.8.6.3); four lets a page of three MTU-1500 fragments wait for its reply to
/// carry the ack, and still keeps acks flowing 16 times per 64-fragment window.
pub(super) const ACK_EVERY: u8 = 4;

#[derive(Clone, Debug)]
pub(super) struct Fragment {
    pub(super) seq: u32,
    pub(super) index: u8,
    pub(super) count: u8,
    pub(super) data: Vec<u8>,
    pub(super) sent_at: u64,
    /// Packet number of its latest transmission.
    pub(super) pn: u64,
    pub(super) retransmitted: bool,
    /// May give an RTT sample (Karn): sent once, and not outstanding when a timer fired.
    pub(super) timed: bool,
    pub(super) sacked: bool,
    pub(super) lost: bool,
}

#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub(super) id: NodeId,
    pub(super) up: bool,
    /// Seen to restart: out until `reset_peer`.
    pub(super) restarted: bool,
    pub(super) session: Session,
    // Sending.
    /// Packet number of our next datagram to this peer. Per peer and per nonce of ours, so
    /// the receiver's 64-entry anti-replay window tolerates 64 datagrams of reordering
    /// however many peers we have.
    pub(super) next_pn: u64,
    pub(super) next_seq: u32,
    pub(super) unsent: VecDeque<Fragment>,
    /// Sent and not cumulatively acked, ordered by seq; the front is `snd_una`.
    pub(super) inflight: VecDeque<Fragment>,
    pub(super) rtt: Rtt,
    pub(super) backoff: u32,
    pub(super) rto_deadline: Option<u64>,
    pub(super) last_sent: u64,
    /// A hello or probe is owed now (new session).
    pub(super) hello_due: bool,
    // Liveness: what the peer shows it heard from us.
    /// Highest `pn_echo` seen in this session.
    pub(super) echo_seen: u64,
    /// When we sent the latest datagram the peer showed it received (or when we started).
    pub(super) last_heard: u64,
    /// Send time of packet number `pn` at `pn % SENT_LOG`, for the latest `SENT_LOG`.
    pub(super) sent_log: [u64; SENT_LOG],
    // Receiving (confirmed session only).
    pub(super) replay: ReplayWindow,
    pub(super) rcv_next: u32,
    pub(super) out_of_order: BTreeMap<u32, (u8, u8, Vec<u8>)>,
    pub(super) partial: Vec<u8>,
    pub(super) partial_next: u8,
    /// An acknowledgement is owed; a standalone one goes out from `ack_at` on (any datagram
    /// we send carries it earlier).
    pub(super) ack_pending: bool,
    pub(super) ack_at: u64,
    /// Data datagrams accepted since our last datagram to the peer.
    pub(super) data_unacked: u8,
}

impl Peer {
    pub(super) fn new(id: NodeId, now: u64, cfg: &Config, generation: u32) -> Self {
        Self {
            id,
            up: true,
            restarted: false,
            session: Session::new(&cfg.seed, cfg.local, id, generation),
            next_pn: 0,
            next_seq: 0,
            // Full size at once: the hot path never grows them.
            unsent: VecDeque::with_capacity(cfg.send_queue),
            inflight: VecDeque::with_capacity(cfg.window as usize),
            rtt: Rtt::new(cfg),
            backoff: 0,
            rto_deadline: None,
            last_sent: now,
            hello_due: true,
            echo_seen: 0,
            last_heard: now,
            sent_log: [0; SENT_LOG],
            replay: ReplayWindow::default(),
            rcv_next: 0,
            out_of_order: BTreeMap::new(),
            partial: Vec::new(),
            partial_next: 0,
            ack_pending: false,
            ack_at: 0,
            data_unacked: 0,
        }
    }

    pub(super) fn current_rto(&self, cfg: &Config) -> u64 {
        self.rtt.rto.saturating_mul(1 << self.backoff.min(16)).min(cfg.max_rto_us)
    }

    /// An acknowledgement is owed now.
    pub(super) fn ack_now(&mut self) {
        self.ack_pending = true;
        self.ack_at = 0;
    }

    /// An acknowledgement of in-order data is owed, and may wait `delay` µs for a reply to
    /// carry it — but not beyond the [`ACK_EVERY`]th data datagram.
    pub(super) fn ack_later(&mut self, now: u64, delay: u64) {
        if !self.ack_pending {
            self.ack_pending = true;
            self.ack_at = now.saturating_add(delay);
        }
        self.data_unacked = self.data_unacked.saturating_add(1);
        if self.data_unacked >= ACK_EVERY {
            self.ack_at = 0;
        }
    }

    /// Cumulative ack and selective-ack bitmap describing what we hold.
    pub(super) fn ack_fields(&self) -> (u32, u64) {
        let mut sack = 0u64;
        for &seq in self.out_of_order.keys() {
            let off = seq.wrapping_sub(self.rcv_next);
            if (1..=64).contains(&off) {
                sack |= 1 << (off - 1);
            }
        }
        (self.rcv_next, sack)
    }

    /// The session is over: a new instance of the peer spoke. Nothing of it survives.
    pub(super) fn void(&mut self) {
        self.restarted = true;
        self.up = false;
        self.unsent.clear();
        self.inflight.clear();
        self.out_of_order.clear();
        self.partial.clear();
        self.rto_deadline = None;
        self.ack_pending = false;
    }
}
