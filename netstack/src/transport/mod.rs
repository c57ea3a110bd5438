//! Reliable, authenticated, per-peer FIFO messages over datagrams (docs/design.md §4).
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
mod peer;
mod receive;
mod rtt;
mod session;
pub mod sim;
#[cfg(any(test, feature = "std"))]
pub mod udp;
mod window;
pub mod wire;

use alloc::collections::VecDeque;
use alloc::vec::Vec;

pub use auth::{Authenticator, ClusterKey, DatagramKey, Seed};
pub use wire::{DropReason, Header, Kind, HEADER_LEN, PROTOCOL_VERSION};

use peer::{Fragment, Peer};

/// A node's id within the cluster (docs/design.md §5: ids come from sorting MACs).
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
    /// How long the acknowledgement of in-order data may wait for a reply to carry it (a
    /// page request answered by the page costs one datagram each way, not two). The fourth
    /// data datagram, a gap, a duplicate or a heartbeat is acknowledged at once; so a window
    /// below 4 fragments waits this long for each ack.
    pub ack_delay_us: u64,
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
            ack_delay_us: 200,
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

/// The transport engine for one node. See the module docs.
#[derive(Debug)]
pub struct Transport {
    cfg: Config,
    auth: DatagramKey,
    peers: Vec<Peer>,
    rr: usize,
    inbox: VecDeque<(NodeId, Vec<u8>)>,
    events: VecDeque<Event>,
    stats: Stats,
    pool: BufferPool,
}

/// Buffers to reuse for fragments and messages, so that a steady stream allocates nothing:
/// acknowledged fragments and the messages the application hands back
/// ([`Transport::recycle`]) come here, and new fragments and messages are taken from here.
#[derive(Debug)]
struct BufferPool(Vec<Vec<u8>>);

impl BufferPool {
    /// Buffers kept at most: one acknowledgement frees up to a window of fragments, and the
    /// application may hand back a few dozen messages at once (each buffer is at most a
    /// message long: ~420 KiB in all at the most, usually a window of fragments).
    const KEEP: usize = MAX_WINDOW as usize + 32;

    /// An empty buffer with room for at least `len` bytes.
    fn take(&mut self, len: usize) -> Vec<u8> {
        match self.0.pop() {
            Some(mut b) => {
                b.clear();
                b.reserve(len);
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    fn give(&mut self, buf: Vec<u8>) {
        if self.0.len() < Self::KEEP && buf.capacity() != 0 {
            self.0.push(buf);
        }
    }
}

impl Transport {
    /// A transport for `cfg.local` with no peers yet.
    pub fn new(mut cfg: Config, key: &ClusterKey) -> Self {
        cfg.window = cfg.window.clamp(1, MAX_WINDOW);
        Self {
            auth: DatagramKey::new(key),
            cfg,
            peers: Vec::new(),
            rr: 0,
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            pool: BufferPool(Vec::with_capacity(BufferPool::KEEP)),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Lowers the window to `fragments` (at least 1) when the path holds no more: e.g. the
    /// receiving socket buffer or NIC ring. A window larger than the path only turns into
    /// drops and retransmissions.
    pub fn limit_window(&mut self, fragments: u32) {
        self.cfg.window = self.cfg.window.min(fragments.max(1));
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
            // A whole chunk's room even for the last, shorter fragment: any pooled fragment
            // buffer then fits any later fragment without growing.
            let mut data = self.pool.take(chunk);
            data.extend_from_slice(&msg[start..end]);
            peer.unsent.push_back(Fragment {
                seq: peer.next_seq,
                index,
                count,
                data,
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

    /// Hands a message buffer from [`Transport::recv`] back once it has been read: the
    /// transport reuses it for later fragments and messages instead of allocating (a few
    /// dozen are kept; the rest are freed).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        // Only buffers of a message's size: the pool's memory stays bounded whatever the
        // application hands back.
        if buf.capacity() <= self.cfg.max_message.max(self.cfg.fragment_payload()) {
            self.pool.give(buf);
        }
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
                } else if peer.ack_pending && now >= peer.ack_at {
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
        peer.data_unacked = 0;
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
                let ack = (p.ack_pending && p.session.peer.is_some()).then_some(p.ack_at);
                [p.rto_deadline, Some(heartbeat), down, ack]
            })
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests;
