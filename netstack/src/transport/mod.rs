//! Reliable, authenticated, per-peer FIFO messages over datagrams (DESIGN.md §4).
//!
//! [`Transport`] is sans-IO: the caller feeds it received datagrams and the current time
//! (microseconds from any monotonic origin) and asks it for datagrams to send. It knows node
//! ids, not addresses: mapping a [`NodeId`] to an IP and port is the caller's business. The
//! same engine runs over smoltcp in the firmware, over [`sim`] in tests and the simulator, and
//! over a std `UdpSocket` ([`udp`], feature `std`).

pub mod auth;
pub mod sim;
#[cfg(any(test, feature = "std"))]
pub mod udp;
pub mod wire;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

pub use auth::{Authenticator, ClusterKey};
pub use wire::{DropReason, Header, Kind, HEADER_LEN, PROTOCOL_VERSION};

/// A node's id within the cluster (DESIGN.md §5: ids come from sorting MACs).
pub type NodeId = u16;

/// Bytes of IPv4 (20) and UDP (8) headers in front of every transport datagram.
pub const IP_UDP_OVERHEAD: usize = 28;
/// The default largest message: one 4 KiB page plus room for the caller's own header.
pub const DEFAULT_MAX_MESSAGE: usize = 4096 + 256;
/// The most fragments the selective ack can describe beyond the cumulative ack, and so the
/// largest usable window.
pub const MAX_WINDOW: u32 = 64;

/// Tunables of a [`Transport`]. Times are in microseconds.
#[derive(Clone, Debug)]
pub struct Config {
    /// Cluster id; datagrams of other clusters are refused.
    pub cluster_id: u32,
    /// This node's id.
    pub local: NodeId,
    /// This boot's epoch (any value that differs between boots, e.g. from the TSC).
    pub epoch: u32,
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
    /// A peer that heard nothing from us for this long gets a heartbeat.
    pub heartbeat_us: u64,
    /// A peer we heard nothing from for this long is declared down.
    pub peer_timeout_us: u64,
}

impl Config {
    /// Defaults for a LAN or an emulated switch: 1500-byte MTU, window 64, 50 ms initial RTO,
    /// heartbeats every 100 ms, peer down after 3 s of silence.
    pub fn new(cluster_id: u32, local: NodeId, epoch: u32) -> Self {
        Self {
            cluster_id,
            local,
            epoch,
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
}

impl core::fmt::Display for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::WouldBlock => "send queue full, retry after polling",
            Self::TooLarge => "message larger than the configured maximum",
            Self::UnknownPeer => "no such peer",
            Self::PeerDown => "peer is down",
        })
    }
}

/// Something the caller should know about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing heard from this peer for `peer_timeout_us`.
    PeerDown(NodeId),
    /// A peer that was down spoke again (authenticated, same epoch).
    PeerUp(NodeId),
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

/// `a < b` in sequence space (RFC 1982 serial arithmetic).
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// RFC 6298 estimator in integer microseconds.
#[derive(Clone, Debug)]
struct Rtt {
    srtt: u64,
    rttvar: u64,
    rto: u64,
    sampled: bool,
}

impl Rtt {
    fn new(cfg: &Config) -> Self {
        Self { srtt: 0, rttvar: 0, rto: cfg.initial_rto_us, sampled: false }
    }

    fn sample(&mut self, r: u64, cfg: &Config) {
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

/// RFC 4303 §3.4.3-style anti-replay window over packet numbers.
#[derive(Clone, Debug, Default)]
struct ReplayWindow {
    /// Highest packet number accepted plus one (0: none yet).
    top: u64,
    /// Bit i set: packet `top - 1 - i` accepted.
    bits: u64,
}

impl ReplayWindow {
    fn check(&self, pn: u64) -> bool {
        if pn >= self.top {
            return true;
        }
        let back = self.top - 1 - pn;
        back < 64 && self.bits & (1 << back) == 0
    }

    fn accept(&mut self, pn: u64) {
        if pn >= self.top {
            let shift = pn + 1 - self.top;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = pn + 1;
        } else {
            self.bits |= 1 << (self.top - 1 - pn);
        }
    }
}

#[derive(Clone, Debug)]
struct Fragment {
    seq: u32,
    index: u8,
    count: u8,
    data: Vec<u8>,
    sent_at: u64,
    retransmitted: bool,
    sacked: bool,
    lost: bool,
}

#[derive(Clone, Debug)]
struct Peer {
    id: NodeId,
    up: bool,
    // Sending.
    /// Packet number of our next datagram to this peer. Per peer, so the receiver's 64-entry
    /// anti-replay window tolerates 64 datagrams of reordering however many peers we have.
    next_pn: u64,
    next_seq: u32,
    unsent: VecDeque<Fragment>,
    /// Sent and not cumulatively acked, ordered by seq; the front is `snd_una`.
    inflight: VecDeque<Fragment>,
    rtt: Rtt,
    backoff: u32,
    rto_deadline: Option<u64>,
    last_sent: u64,
    // Receiving.
    peer_epoch: Option<u32>,
    replay: ReplayWindow,
    rcv_next: u32,
    out_of_order: BTreeMap<u32, (u8, u8, Vec<u8>)>,
    partial: Vec<u8>,
    partial_next: u8,
    ack_pending: bool,
    last_heard: u64,
}

impl Peer {
    fn new(id: NodeId, now: u64, cfg: &Config) -> Self {
        Self {
            id,
            up: true,
            next_pn: 0,
            next_seq: 0,
            unsent: VecDeque::new(),
            inflight: VecDeque::new(),
            rtt: Rtt::new(cfg),
            backoff: 0,
            rto_deadline: None,
            last_sent: now,
            peer_epoch: None,
            replay: ReplayWindow::default(),
            rcv_next: 0,
            out_of_order: BTreeMap::new(),
            partial: Vec::new(),
            partial_next: 0,
            ack_pending: false,
            last_heard: now,
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

    /// Starts talking to `id` (idempotent). `now` starts its peer-down clock.
    pub fn add_peer(&mut self, id: NodeId, now: u64) {
        if id != self.cfg.local && self.peer_index(id).is_none() {
            self.peers.push(Peer::new(id, now, &self.cfg));
        }
    }

    /// Forgets everything about `id` (e.g. to readmit it after it rebooted with a new epoch;
    /// the peer must reset us too). Returns whether it was known.
    pub fn reset_peer(&mut self, id: NodeId, now: u64) -> bool {
        match self.peer_index(id) {
            Some(i) => {
                self.peers[i] = Peer::new(id, now, &self.cfg);
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
    /// MTU-sized fragments; all or none of them are queued.
    pub fn send(&mut self, to: NodeId, msg: &[u8]) -> Result<(), SendError> {
        let i = self.peer_index(to).ok_or(SendError::UnknownPeer)?;
        if msg.len() > self.cfg.max_message {
            return Err(SendError::TooLarge);
        }
        let chunk = self.cfg.fragment_payload();
        let count = msg.len().div_ceil(chunk).max(1);
        let count = u8::try_from(count).map_err(|_| SendError::TooLarge)?;
        let peer = &mut self.peers[i];
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
                retransmitted: false,
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
        match peer.peer_epoch {
            Some(e) if e != h.epoch => return Err(DropReason::StaleEpoch),
            _ => {}
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
        // Authenticated, fresh and in window: from here on the datagram counts.
        peer.peer_epoch = Some(h.epoch);
        peer.replay.accept(h.pn);
        peer.last_heard = now;
        if !peer.up {
            peer.up = true;
            self.events.push_back(Event::PeerUp(h.src));
        }
        Self::on_ack(peer, &self.cfg, now, h.ack, h.sack);
        if h.kind == Kind::Data {
            Self::on_data(peer, &self.cfg, &mut self.inbox, &mut self.stats, &h, payload);
        }
        Ok(())
    }

    fn on_ack(peer: &mut Peer, cfg: &Config, now: u64, ack: u32, sack: u64) {
        // An ack for data never sent would be a peer bug; ignore it rather than trust it.
        let sent_end = match (peer.inflight.back(), peer.unsent.front()) {
            (Some(f), _) => f.seq.wrapping_add(1),
            (None, Some(f)) => f.seq,
            (None, None) => peer.next_seq,
        };
        if seq_lt(sent_end, ack) {
            return;
        }
        let mut newest_acked_sent_at = None::<u64>;
        let mut progressed = false;
        while let Some(front) = peer.inflight.front() {
            if !seq_lt(front.seq, ack) {
                break;
            }
            let Some(f) = peer.inflight.pop_front() else { break };
            progressed = true;
            if !f.sacked {
                if !f.retransmitted {
                    peer.rtt.sample(now.saturating_sub(f.sent_at), cfg);
                }
                newest_acked_sent_at = newest_acked_sent_at.max(Some(f.sent_at));
            }
        }
        for f in peer.inflight.iter_mut() {
            let off = f.seq.wrapping_sub(ack);
            if (1..=64).contains(&off) && sack & (1 << (off - 1)) != 0 && !f.sacked {
                f.sacked = true;
                f.lost = false;
                if !f.retransmitted {
                    peer.rtt.sample(now.saturating_sub(f.sent_at), cfg);
                }
                newest_acked_sent_at = newest_acked_sent_at.max(Some(f.sent_at));
            }
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
        for peer in &mut self.peers {
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
        let (ack, sack) = peer.ack_fields();
        let mut header = Header {
            kind: Kind::Ack,
            frag_index: 0,
            frag_count: 0,
            cluster_id: cfg.cluster_id,
            src: cfg.local,
            dst: peer.id,
            epoch: cfg.epoch,
            pn: peer.next_pn,
            seq: 0,
            ack,
            sack,
        };
        // Which in-flight fragment (if any) this datagram carries: a lost one first, then
        // new data while the window allows.
        let mut carry = None;
        if peer.up {
            if let Some(k) = peer.inflight.iter().position(|f| f.lost) {
                let f = &mut peer.inflight[k];
                f.lost = false;
                f.retransmitted = true;
                f.sent_at = now;
                self.stats.retransmits += 1;
                carry = Some(k);
            } else if peer.inflight.len() < cfg.window as usize {
                if let Some(mut f) = peer.unsent.pop_front() {
                    f.sent_at = now;
                    peer.inflight.push_back(f);
                    carry = Some(peer.inflight.len() - 1);
                    if peer.rto_deadline.is_none() {
                        peer.rto_deadline = Some(now + peer.current_rto(cfg));
                    }
                }
            }
        }
        let mut payload: &[u8] = &[];
        if let Some(f) = carry.and_then(|k| peer.inflight.get(k)) {
            (header.kind, header.seq) = (Kind::Data, f.seq);
            (header.frag_index, header.frag_count) = (f.index, f.count);
            payload = &f.data;
        }
        if header.kind == Kind::Ack {
            if peer.ack_pending {
                self.stats.acks_sent += 1;
            } else if now.saturating_sub(peer.last_sent) >= cfg.heartbeat_us {
                header.kind = Kind::Heartbeat;
                self.stats.heartbeats_sent += 1;
            } else {
                return None;
            }
        }
        let len = header.seal(&self.auth, payload, buf)?;
        peer.next_pn += 1;
        peer.ack_pending = false;
        peer.last_sent = now;
        Some(Transmit { to: peer.id, len })
    }

    /// The earliest time at which `poll_transmit`/`poll` has timer work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.peers
            .iter()
            .flat_map(|p| {
                let heartbeat = p.last_sent + self.cfg.heartbeat_us;
                let down = p.up.then_some(p.last_heard + self.cfg.peer_timeout_us);
                [p.rto_deadline, Some(heartbeat), down]
            })
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests;
