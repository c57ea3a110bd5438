//! Reliable, authenticated, per-peer FIFO messages over datagrams (DESIGN.md §4).
//!
//! [`Transport`] is sans-IO: the caller feeds it received datagrams and the current time
//! (microseconds from any monotonic origin) and asks it for datagrams to send. It knows node
//! ids, not addresses: mapping a [`NodeId`] to an IP and port is the caller's business. The
//! same engine runs over smoltcp in the firmware, over [`sim`] in tests and the simulator, and
//! over a std `UdpSocket` ([`udp`], feature `std`).
//!
//! Every pair of engines talks in a *session* named by one fresh nonce of each side
//! ([`session`]): nothing recorded in an earlier boot, view or session authenticates in a
//! later one, and a peer that restarts inside a view is seen by its counterparts
//! ([`Event::PeerRestarted`]). Randomness comes in as [`Config::seed`].

pub mod auth;
mod rtt;
mod session;
pub mod sim;
#[cfg(any(test, feature = "std"))]
pub mod udp;
mod window;
pub mod wire;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

pub use auth::{Authenticator, ClusterKey, Seed};
pub use wire::{DropReason, Header, Kind, HEADER_LEN, PROTOCOL_VERSION};

use rtt::Rtt;
use session::{Incoming, Session};
use window::{seq_lt, ReplayWindow};

/// A node's id within the cluster (DESIGN.md §5: ids come from sorting MACs).
pub type NodeId = u16;

/// Bytes of IPv4 (20) and UDP (8) headers in front of every transport datagram.
pub const IP_UDP_OVERHEAD: usize = 28;
/// The default largest message: one 4 KiB page plus room for the caller's own header.
pub const DEFAULT_MAX_MESSAGE: usize = 4096 + 256;
/// The most fragments the selective ack can describe beyond the cumulative ack, and so the
/// largest usable window.
pub const MAX_WINDOW: u32 = 64;
/// Send times kept per peer for the latest packet numbers, to date what an echo proves. An
/// echo older than this many datagrams proves nothing recent.
const SENT_LOG: usize = 128;

/// Tunables of a [`Transport`]. Times are in microseconds.
#[derive(Clone, Debug)]
pub struct Config {
    /// Cluster id; datagrams of other clusters are refused.
    pub cluster_id: u32,
    /// This node's id.
    pub local: NodeId,
    /// Fresh randomness for this engine: one per boot *and* per view (never reused, never
    /// derived from anything that repeats, such as ids or a TSC read at a fixed point).
    pub seed: Seed,
    /// IP MTU of the link: 1500 for plain Ethernet, up to 9000 with jumbo frames.
    pub mtu: usize,
    /// Fragments in flight per peer, at most [`MAX_WINDOW`].
    pub window: u32,
    /// Fragments queued per peer (unsent plus in flight) before `send` pushes back.
    pub send_queue: usize,
    /// Delivered messages held for the application before new data is refused (and left for
    /// the sender to retransmit).
    pub inbox_limit: usize,
    /// Largest message accepted by `send`.
    pub max_message: usize,
    /// Retransmission timeout before the first RTT sample.
    pub initial_rto_us: u64,
    /// Lower bound of the retransmission timeout.
    pub min_rto_us: u64,
    /// Upper bound of the retransmission timeout, backoff included.
    pub max_rto_us: u64,
    /// A peer that heard nothing from us for this long gets a heartbeat (which it answers).
    pub heartbeat_us: u64,
    /// A peer that showed for this long no sign of hearing us (its `pn_echo` did not move) is
    /// declared down: so a one-way cut is seen from both ends.
    pub peer_timeout_us: u64,
}

impl Config {
    /// Defaults for a LAN or an emulated switch: 1500-byte MTU, window 64, 50 ms initial RTO,
    /// heartbeats every 100 ms, peer down after 3 s of silence.
    pub fn new(cluster_id: u32, local: NodeId, seed: Seed) -> Self {
        Self {
            cluster_id,
            local,
            seed,
            mtu: 1500,
            window: MAX_WINDOW,
            send_queue: 256,
            inbox_limit: 1024,
            max_message: DEFAULT_MAX_MESSAGE,
            initial_rto_us: 50_000,
            min_rto_us: 2_000,
            max_rto_us: 2_000_000,
            heartbeat_us: 100_000,
            peer_timeout_us: 3_000_000,
        }
    }

    /// Payload bytes per datagram for this MTU. With a jumbo MTU (≥ 4,444) a whole page
    /// message travels in one datagram.
    pub fn fragment_payload(&self) -> usize {
        self.mtu.saturating_sub(IP_UDP_OVERHEAD + HEADER_LEN).max(1)
    }

    /// The largest datagram this transport emits (header included): size buffers with it.
    pub fn max_datagram(&self) -> usize {
        HEADER_LEN + self.fragment_payload().min(self.max_message.max(1))
    }
}

/// Why `send` refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The peer's send queue is full: poll and try again (back-pressure).
    WouldBlock,
    /// Longer than `Config::max_message`, or more than 255 fragments at this MTU.
    TooLarge,
    /// Not a configured peer.
    UnknownPeer,
    /// The peer was declared down.
    PeerDown,
    /// The peer restarted; it is out until [`Transport::reset_peer`].
    PeerRestarted,
}

impl core::fmt::Display for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::WouldBlock => "send queue full, retry after polling",
            Self::TooLarge => "message larger than the configured maximum",
            Self::UnknownPeer => "no such peer",
            Self::PeerDown => "peer is down",
            Self::PeerRestarted => "peer restarted (reset it to talk to its new instance)",
        })
    }
}

/// Something the caller should know about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// For `peer_timeout_us` the peer gave no sign of hearing us.
    PeerDown(NodeId),
    /// A peer that was down shows again that it hears us (same session).
    PeerUp(NodeId),
    /// A new instance of the peer (it rebooted, or reset its session with us) proved itself
    /// fresh. Everything of the old session is void: unsent and unacknowledged messages are
    /// dropped, nothing more is delivered from it. The peer stays out — sends fail with
    /// [`SendError::PeerRestarted`], its datagrams are dropped — until the caller either
    /// counts it as failed or readmits it with [`Transport::reset_peer`].
    PeerRestarted(NodeId),
}

/// A datagram to put on the wire: `len` bytes at the start of the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination node.
    pub to: NodeId,
    /// Datagram length.
    pub len: usize,
}

/// Counters; `dropped[r as usize]` counts datagrams dropped for [`DropReason`] `r`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages accepted by `send`.
    pub messages_sent: u64,
    /// Messages handed to the application.
    pub messages_delivered: u64,
    /// Datagrams emitted (all kinds, retransmissions included).
    pub datagrams_sent: u64,
    /// Datagrams that passed every check.
    pub datagrams_accepted: u64,
    /// Data fragments sent again.
    pub retransmits: u64,
    /// Retransmission timer expiries.
    pub timeouts: u64,
    /// Data fragments received again after acceptance (suppressed, re-acked).
    pub duplicates: u64,
    /// Standalone acknowledgements sent.
    pub acks_sent: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// `send` calls refused with `WouldBlock`.
    pub would_block: u64,
    /// Data refused because the inbox was full.
    pub inbox_full: u64,
    /// Peers declared down.
    pub peers_down: u64,
    /// Sessions confirmed (a peer's nonce proven fresh).
    pub sessions: u64,
    /// Peers seen to restart.
    pub peers_restarted: u64,
    /// RTT samples taken.
    pub rtt_samples: u64,
    /// Dropped datagrams by reason, indexed by `DropReason as usize`.
    pub dropped: [u64; 10],
}

impl Stats {
    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    /// Datagrams dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

#[derive(Clone, Debug)]
struct Fragment {
    seq: u32,
    index: u8,
    count: u8,
    data: Vec<u8>,
    sent_at: u64,
    /// Packet number of its latest transmission.
    pn: u64,
    retransmitted: bool,
    /// May give an RTT sample (Karn): sent once, and not outstanding when a timer fired.
    timed: bool,
    sacked: bool,
    lost: bool,
}

#[derive(Clone, Debug)]
struct Peer {
    id: NodeId,
    up: bool,
    /// Seen to restart: out until `reset_peer`.
    restarted: bool,
    session: Session,
    // Sending.
    /// Packet number of our next datagram to this peer. Per peer and per nonce of ours, so
    /// the receiver's 64-entry anti-replay window tolerates 64 datagrams of reordering
    /// however many peers we have.
    next_pn: u64,
    next_seq: u32,
    unsent: VecDeque<Fragment>,
    /// Sent and not cumulatively acked, ordered by seq; the front is `snd_una`.
    inflight: VecDeque<Fragment>,
    rtt: Rtt,
    backoff: u32,
    rto_deadline: Option<u64>,
    last_sent: u64,
    /// A hello or probe is owed now (new session).
    hello_due: bool,
    // Liveness: what the peer shows it heard from us.
    /// Highest `pn_echo` seen in this session.
    echo_seen: u64,
    /// When we sent the latest datagram the peer showed it received (or when we started).
    last_heard: u64,
    /// Send time of packet number `pn` at `pn % SENT_LOG`, for the latest `SENT_LOG`.
    sent_log: [u64; SENT_LOG],
    // Receiving (confirmed session only).
    replay: ReplayWindow,
    rcv_next: u32,
    out_of_order: BTreeMap<u32, (u8, u8, Vec<u8>)>,
    partial: Vec<u8>,
    partial_next: u8,
    ack_pending: bool,
}

impl Peer {
    fn new(id: NodeId, now: u64, cfg: &Config, generation: u32) -> Self {
        Self {
            id,
            up: true,
            restarted: false,
            session: Session::new(&cfg.seed, cfg.local, id, generation),
            next_pn: 0,
            next_seq: 0,
            unsent: VecDeque::new(),
            inflight: VecDeque::new(),
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
        }
    }

    fn current_rto(&self, cfg: &Config) -> u64 {
        self.rtt.rto.saturating_mul(1 << self.backoff.min(16)).min(cfg.max_rto_us)
    }

    /// Cumulative ack and selective-ack bitmap describing what we hold.
    fn ack_fields(&self) -> (u32, u64) {
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
    fn void(&mut self) {
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

/// The transport engine for one node. See the module docs.
#[derive(Debug)]
pub struct Transport {
    cfg: Config,
    auth: Authenticator,
    peers: Vec<Peer>,
    rr: usize,
    inbox: VecDeque<(NodeId, Vec<u8>)>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Transport {
    /// A transport for `cfg.local` with no peers yet.
    pub fn new(mut cfg: Config, key: &ClusterKey) -> Self {
        cfg.window = cfg.window.clamp(1, MAX_WINDOW);
        Self {
            auth: Authenticator::new(key),
            cfg,
            peers: Vec::new(),
            rr: 0,
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Starts talking to `id` (idempotent). `now` starts its peer-down clock: a peer that
    /// never completes the handshake is declared down after `peer_timeout_us`.
    pub fn add_peer(&mut self, id: NodeId, now: u64) {
        if id != self.cfg.local && self.peer_index(id).is_none() {
            self.peers.push(Peer::new(id, now, &self.cfg, 0));
        }
    }

    /// Starts a new session with `id`: everything queued, in flight or half received is
    /// dropped, and a new nonce of ours (the next generation from the seed) names the new
    /// session, so nothing sent or received in an earlier one — retransmissions, acks, a
    /// recording — can authenticate in it. The peer learns the new nonce from our next
    /// datagram; if it still runs the old session it sees [`Event::PeerRestarted`] for us.
    /// Returns whether `id` was known.
    pub fn reset_peer(&mut self, id: NodeId, now: u64) -> bool {
        match self.peer_index(id) {
            Some(i) => {
                let generation = self.peers[i].session.generation.wrapping_add(1);
                self.peers[i] = Peer::new(id, now, &self.cfg, generation);
                true
            }
            None => false,
        }
    }

    /// The configured peers.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.iter().map(|p| p.id)
    }

    /// Whether `id` is a peer currently considered up.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.peer_index(id).is_some_and(|i| self.peers[i].up)
    }

    /// Whether the session with `id` is confirmed (its nonce proven fresh) and running.
    pub fn is_connected(&self, id: NodeId) -> bool {
        self.peer_index(id).is_some_and(|i| {
            let p = &self.peers[i];
            p.session.peer.is_some() && !p.restarted
        })
    }

    /// The current smoothed RTT and RTO to `id`, in microseconds.
    pub fn rtt(&self, id: NodeId) -> Option<(u64, u64)> {
        self.peer_index(id).map(|i| (self.peers[i].rtt.srtt, self.peers[i].rtt.rto))
    }

    /// Fragments that can still be queued to `id` before `send` returns `WouldBlock`.
    pub fn send_capacity(&self, id: NodeId) -> usize {
        self.peer_index(id).map_or(0, |i| {
            let p = &self.peers[i];
            self.cfg.send_queue.saturating_sub(p.unsent.len() + p.inflight.len())
        })
    }

    fn peer_index(&self, id: NodeId) -> Option<usize> {
        self.peers.iter().position(|p| p.id == id)
    }

    /// Queues `msg` for reliable in-order delivery to `to`. The message is split into
    /// MTU-sized fragments; all or none of them are queued. Data waits for the session
    /// handshake (one round trip) before it is sent.
    pub fn send(&mut self, to: NodeId, msg: &[u8]) -> Result<(), SendError> {
        let i = self.peer_index(to).ok_or(SendError::UnknownPeer)?;
        if msg.len() > self.cfg.max_message {
            return Err(SendError::TooLarge);
        }
        let chunk = self.cfg.fragment_payload();
        let count = msg.len().div_ceil(chunk).max(1);
        let count = u8::try_from(count).map_err(|_| SendError::TooLarge)?;
        let peer = &mut self.peers[i];
        if peer.restarted {
            return Err(SendError::PeerRestarted);
        }
        if !peer.up {
            return Err(SendError::PeerDown);
        }
        if peer.unsent.len() + peer.inflight.len() + usize::from(count) > self.cfg.send_queue {
            self.stats.would_block += 1;
            return Err(SendError::WouldBlock);
        }
        for index in 0..count {
            let start = usize::from(index) * chunk;
            let end = (start + chunk).min(msg.len());
            peer.unsent.push_back(Fragment {
                seq: peer.next_seq,
                index,
                count,
                data: msg[start..end].to_vec(),
                sent_at: 0,
                pn: 0,
                retransmitted: false,
                timed: true,
                sacked: false,
                lost: false,
            });
            peer.next_seq = peer.next_seq.wrapping_add(1);
        }
        self.stats.messages_sent += 1;
        Ok(())
    }

    /// The next delivered message, in per-peer order.
    pub fn recv(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.inbox.pop_front()
    }

    /// The next peer event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Processes one received datagram. Returns why it was dropped, if it was (the reason is
    /// also counted in [`Stats::dropped`]).
    pub fn handle_datagram(&mut self, now: u64, datagram: &[u8]) -> Result<(), DropReason> {
        let result = self.accept(now, datagram);
        match result {
            Ok(()) => self.stats.datagrams_accepted += 1,
            Err(reason) => self.stats.dropped[reason as usize] += 1,
        }
        result
    }

    fn accept(&mut self, now: u64, datagram: &[u8]) -> Result<(), DropReason> {
        let (h, payload) = Header::open(datagram, &self.auth, self.cfg.cluster_id, self.cfg.local)?;
        let i = self.peer_index(h.src).ok_or(DropReason::UnknownPeer)?;
        let peer = &mut self.peers[i];
        if peer.restarted {
            return Err(DropReason::StaleSession);
        }
        match peer.session.classify(h.src_nonce, h.dst_nonce) {
            // Before the session, a hello is what it claims to be (a nonce to probe) whenever
            // it was sent; anything else for another nonce of ours, or any hello once the
            // session runs, belongs to a session that is over.
            Incoming::NotOurs if h.kind == Kind::Hello && peer.session.peer.is_none() => {
                return Ok(())
            }
            Incoming::NotOurs => return Err(DropReason::StaleSession),
            Incoming::Restarted => {
                peer.void();
                self.stats.peers_restarted += 1;
                self.events.push_back(Event::PeerRestarted(h.src));
                return Ok(());
            }
            Incoming::Confirmed => self.stats.sessions += 1,
            Incoming::Current => {}
        }
        if !peer.replay.check(h.pn) {
            return Err(DropReason::Replay);
        }
        if h.kind == Kind::Data {
            let off = h.seq.wrapping_sub(peer.rcv_next);
            if off > MAX_WINDOW && !seq_lt(h.seq, peer.rcv_next) {
                return Err(DropReason::OutOfWindow);
            }
        }
        // Authenticated, of this session, fresh and in window: from here on it counts.
        peer.replay.accept(h.pn);
        Self::on_ack(peer, &self.cfg, &mut self.stats, now, h.ack, h.sack);
        Self::on_echo(peer, &self.cfg, &mut self.events, now, h.pn_echo);
        match h.kind {
            Kind::Data => {
                Self::on_data(peer, &self.cfg, &mut self.inbox, &mut self.stats, &h, payload);
            }
            // Answered at once: the echo in the answer is the sender's proof that we hear it.
            Kind::Heartbeat => peer.ack_pending = true,
            Kind::Ack | Kind::Hello => {}
        }
        Ok(())
    }

    /// Liveness comes from what the peer shows it heard from us, not from hearing it: with
    /// one direction cut we keep hearing the peer, but its echo stops moving. And it is
    /// dated by when we *sent* what the peer echoes: an echo of something old proves nothing
    /// about now.
    fn on_echo(peer: &mut Peer, cfg: &Config, events: &mut VecDeque<Event>, now: u64, echo: u64) {
        // An echo of a number we never sent would be a peer bug; it proves nothing.
        if echo <= peer.echo_seen || echo > peer.next_pn {
            return;
        }
        peer.echo_seen = echo;
        let heard = echo - 1;
        if heard.saturating_add(SENT_LOG as u64) >= peer.next_pn {
            let sent_at = peer.sent_log[(heard % SENT_LOG as u64) as usize];
            peer.last_heard = peer.last_heard.max(sent_at);
        }
        if !peer.up && now.saturating_sub(peer.last_heard) < cfg.peer_timeout_us {
            peer.up = true;
            events.push_back(Event::PeerUp(peer.id));
            // Answer at once, so the peer sees our echo move too and recovers without
            // waiting for our next heartbeat.
            peer.ack_pending = true;
        }
        if peer.backoff > 0 {
            // Recovering from a timeout, and the peer heard a datagram we sent after the
            // latest transmission of the oldest unacknowledged fragment: that copy is lost
            // (typically, the path just came back after a partition). Resend it now rather
            // than after the backed-off timer, which may be seconds away.
            if let Some(f) = peer.inflight.iter_mut().find(|f| !f.sacked) {
                if f.pn < echo - 1 {
                    f.lost = true;
                }
            }
        }
    }

    fn on_ack(peer: &mut Peer, cfg: &Config, stats: &mut Stats, now: u64, ack: u32, sack: u64) {
        // An ack for data never sent would be a peer bug; ignore it rather than trust it.
        let sent_end = match (peer.inflight.back(), peer.unsent.front()) {
            (Some(f), _) => f.seq.wrapping_add(1),
            (None, Some(f)) => f.seq,
            (None, None) => peer.next_seq,
        };
        if seq_lt(sent_end, ack) {
            return;
        }
        // Karn (RFC 6298 §3): one ack covering any retransmitted or timer-era fragment may
        // have been prompted by the retransmission, or held up by whatever made the timer
        // fire; it says nothing about the round trip, and neither do the other fragments it
        // covers (after a partition heals, they would read as seconds).
        let mut ambiguous = false;
        let mut newest_timed = None::<u64>;
        let mut newest_acked_sent_at = None::<u64>;
        let mut newly = |f: &Fragment| {
            if f.retransmitted || !f.timed {
                ambiguous = true;
            } else {
                newest_timed = newest_timed.max(Some(f.sent_at));
            }
            newest_acked_sent_at = newest_acked_sent_at.max(Some(f.sent_at));
        };
        let mut progressed = false;
        while let Some(front) = peer.inflight.front() {
            if !seq_lt(front.seq, ack) {
                break;
            }
            let Some(f) = peer.inflight.pop_front() else { break };
            progressed = true;
            if !f.sacked {
                newly(&f);
            }
        }
        for f in peer.inflight.iter_mut() {
            let off = f.seq.wrapping_sub(ack);
            if (1..=64).contains(&off) && sack & (1 << (off - 1)) != 0 && !f.sacked {
                f.sacked = true;
                f.lost = false;
                newly(f);
            }
        }
        if let (false, Some(t)) = (ambiguous, newest_timed) {
            // The most recently sent fragment: the sample least inflated by queueing.
            peer.rtt.sample(now.saturating_sub(t), cfg);
            stats.rtt_samples += 1;
        }
        if progressed {
            peer.backoff = 0;
        }
        // RACK (RFC 8985, simplified): anything sent a reordering window before something
        // that has been acknowledged is lost; resend it without waiting for the timer.
        if let Some(t) = newest_acked_sent_at {
            let reo_wnd = peer.rtt.srtt / 4;
            for f in peer.inflight.iter_mut() {
                if !f.sacked && f.sent_at + reo_wnd < t {
                    f.lost = true;
                }
            }
        }
        if peer.inflight.iter().all(|f| f.sacked) {
            peer.rto_deadline = None;
        } else if progressed {
            peer.rto_deadline = Some(now + peer.current_rto(cfg));
        }
    }

    fn on_data(
        peer: &mut Peer,
        cfg: &Config,
        inbox: &mut VecDeque<(NodeId, Vec<u8>)>,
        stats: &mut Stats,
        h: &Header,
        payload: &[u8],
    ) {
        if seq_lt(h.seq, peer.rcv_next) || peer.out_of_order.contains_key(&h.seq) {
            stats.duplicates += 1;
            peer.ack_pending = true;
            return;
        }
        if inbox.len() >= cfg.inbox_limit {
            // Not acknowledged: the sender will retransmit once the application caught up.
            stats.inbox_full += 1;
            return;
        }
        peer.ack_pending = true;
        peer.out_of_order.insert(h.seq, (h.frag_index, h.frag_count, payload.to_vec()));
        while let Some((index, count, data)) = peer.out_of_order.remove(&peer.rcv_next) {
            peer.rcv_next = peer.rcv_next.wrapping_add(1);
            if index != peer.partial_next {
                // Cannot happen between correct peers (fragments are sequenced); recover by
                // discarding the partial message.
                peer.partial.clear();
                peer.partial_next = 0;
                if index != 0 {
                    continue;
                }
            }
            peer.partial.extend_from_slice(&data);
            peer.partial_next = index + 1;
            if peer.partial_next == count {
                inbox.push_back((peer.id, core::mem::take(&mut peer.partial)));
                peer.partial_next = 0;
                stats.messages_delivered += 1;
            }
        }
    }

    /// Advances timers: declares silent peers down and arms retransmissions. `poll_transmit`
    /// calls it; call it directly when there is nothing to send.
    pub fn poll(&mut self, now: u64) {
        for peer in self.peers.iter_mut().filter(|p| !p.restarted) {
            if peer.up && now.saturating_sub(peer.last_heard) >= self.cfg.peer_timeout_us {
                peer.up = false;
                self.stats.peers_down += 1;
                self.events.push_back(Event::PeerDown(peer.id));
            }
            if let Some(deadline) = peer.rto_deadline {
                if now >= deadline {
                    // Timer expiry (RFC 6298 §5.4): resend the oldest unacknowledged fragment;
                    // its acknowledgement lets RACK mark whatever else was lost. Resending the
                    // whole window instead would double the load on a receiver that is merely
                    // slow.
                    self.stats.timeouts += 1;
                    if let Some(f) = peer.inflight.iter_mut().find(|f| !f.sacked) {
                        f.lost = true;
                    }
                    // Karn: whatever was outstanding when the timer fired may be acknowledged
                    // arbitrarily late (a partition); none of it may give an RTT sample.
                    for f in peer.inflight.iter_mut() {
                        f.timed = false;
                    }
                    peer.backoff = (peer.backoff + 1).min(16);
                    peer.rto_deadline = Some(now + peer.current_rto(&self.cfg));
                }
            }
        }
    }

    /// Writes the next datagram to send into `buf` (at least [`Config::max_datagram`] bytes)
    /// and says where it goes; `None` when there is nothing to send now. Call until `None`
    /// after every received datagram, `send`, or timer ([`Transport::next_deadline`]).
    pub fn poll_transmit(&mut self, now: u64, buf: &mut [u8]) -> Option<Transmit> {
        self.poll(now);
        let n = self.peers.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            if let Some(t) = self.transmit_for(i, now, buf) {
                self.rr = (i + 1) % n;
                self.stats.datagrams_sent += 1;
                return Some(t);
            }
        }
        None
    }

    fn transmit_for(&mut self, i: usize, now: u64, buf: &mut [u8]) -> Option<Transmit> {
        let cfg = &self.cfg;
        let peer = &mut self.peers[i];
        // A restarted peer is out; and a pair whose packet numbers ran out (2^64 datagrams:
        // never in practice) falls silent rather than reuse one.
        if peer.restarted || peer.next_pn == u64::MAX {
            return None;
        }
        let mut header = Header {
            kind: Kind::Heartbeat,
            frag_index: 0,
            frag_count: 0,
            cluster_id: cfg.cluster_id,
            src: cfg.local,
            dst: peer.id,
            src_nonce: peer.session.local,
            dst_nonce: 0,
            pn: peer.next_pn,
            pn_echo: 0,
            seq: 0,
            ack: 0,
            sack: 0,
        };
        let heartbeat_due = now.saturating_sub(peer.last_sent) >= cfg.heartbeat_us;
        let mut payload: &[u8] = &[];
        match peer.session.peer {
            None => {
                // Handshake: probe a nonce we heard of, or say ours. No data, no acks: we
                // cannot tell yet which session (if any) they would belong to.
                if let Some(n) = peer.session.take_probe() {
                    header.dst_nonce = n;
                } else if peer.hello_due || heartbeat_due {
                    match peer.session.latest() {
                        Some(n) => header.dst_nonce = n,
                        None => header.kind = Kind::Hello,
                    }
                } else {
                    return None;
                }
                self.stats.heartbeats_sent += 1;
            }
            Some(dst_nonce) => {
                let (ack, sack) = peer.ack_fields();
                (header.dst_nonce, header.pn_echo, header.ack, header.sack) =
                    (dst_nonce, peer.replay.echo(), ack, sack);
                // Which in-flight fragment (if any) this datagram carries: a lost one first,
                // then new data while the window allows.
                let mut carry = None;
                if peer.up {
                    if let Some(k) = peer.inflight.iter().position(|f| f.lost) {
                        let f = &mut peer.inflight[k];
                        f.lost = false;
                        f.retransmitted = true;
                        self.stats.retransmits += 1;
                        carry = Some(k);
                    } else if peer.inflight.len() < cfg.window as usize {
                        if let Some(f) = peer.unsent.pop_front() {
                            peer.inflight.push_back(f);
                            carry = Some(peer.inflight.len() - 1);
                            if peer.rto_deadline.is_none() {
                                peer.rto_deadline = Some(now + peer.current_rto(cfg));
                            }
                        }
                    }
                }
                if let Some(f) = carry.and_then(|k| peer.inflight.get_mut(k)) {
                    (f.sent_at, f.pn) = (now, peer.next_pn);
                    (header.kind, header.seq) = (Kind::Data, f.seq);
                    (header.frag_index, header.frag_count) = (f.index, f.count);
                    payload = &f.data;
                } else if peer.ack_pending {
                    header.kind = Kind::Ack;
                    self.stats.acks_sent += 1;
                } else if heartbeat_due || peer.hello_due {
                    self.stats.heartbeats_sent += 1;
                } else {
                    return None;
                }
            }
        }
        let len = header.seal(&self.auth, payload, buf)?;
        peer.sent_log[(peer.next_pn % SENT_LOG as u64) as usize] = now;
        peer.next_pn += 1;
        peer.ack_pending = false;
        peer.hello_due = false;
        peer.last_sent = now;
        Some(Transmit { to: peer.id, len })
    }

    /// The earliest time at which `poll_transmit`/`poll` has timer work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.peers
            .iter()
            .filter(|p| !p.restarted)
            .flat_map(|p| {
                let heartbeat = if p.hello_due || p.session.has_probe() {
                    p.last_sent
                } else {
                    p.last_sent + self.cfg.heartbeat_us
                };
                let down = p.up.then_some(p.last_heard + self.cfg.peer_timeout_us);
                [p.rto_deadline, Some(heartbeat), down]
            })
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests;
