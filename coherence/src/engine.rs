//! The sans-IO coherence engine of one node: it is both the cache of the pages this node maps
//! and the home directory of the pages it owns in memory. Events go in, actions come out;
//! page contents pass through [`PageStore`].
//!
//! Messages a node sends to itself (its own faults on pages it is home to) go through an
//! internal FIFO and are handled in the same call, so the home's own accesses obey exactly the
//! rules remote nodes do, at zero message cost.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::hash::{Hash, Hasher};

use crate::directory::{CacheState, CacheStates, DirState, Directory};
use crate::home::Config;
use crate::message::Message;
use crate::types::{Access, Gfn, NodeId, NodeSet, Rights, VcpuId, PAGE_SIZE};
use crate::vecmap::VecMap;

mod cache_side;
mod evict;
mod home_side;

/// Guest memory of this node, as the engine and its caller see it. Tests use plain memory
/// ([`crate::MemStore`]).
pub trait PageStore {
    /// Appends the current contents of `gfn` to `out` ([`crate::PAGE_SIZE`] bytes): straight
    /// into the wire buffer, through [`Message::encode_with`]. The engine never calls this:
    /// the caller does, when it carries out [`Action::SendPage`], so the copy follows every
    /// action before it.
    fn copy_out(&mut self, gfn: Gfn, out: &mut Vec<u8>);

    /// Replaces the contents of `gfn` with `data` ([`crate::PAGE_SIZE`] bytes, borrowed from
    /// the received message). The engine calls this while handling a data-bearing message,
    /// only while this node does not map `gfn`.
    fn install(&mut self, gfn: Gfn, data: &[u8]);
}

/// Something that happened to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A local vCPU faulted (EPT violation) on `gfn`.
    LocalFault {
        /// Frame.
        gfn: Gfn,
        /// What the vCPU tried.
        access: Access,
        /// Which vCPU; it stays stopped until a [`Action::Resume`] names it.
        vcpu: VcpuId,
    },
    /// A message arrived from a peer (reliable, FIFO per peer).
    Message {
        /// Sender.
        from: NodeId,
        /// Header.
        msg: Message,
        /// The page of a data-bearing message ([`Message::has_page`]), exactly
        /// [`PAGE_SIZE`] bytes, borrowed from the received bytes ([`Message::decode`]); None
        /// for the others. Anything else is refused ([`ProtocolError::PageSize`]).
        page: Option<&'a [u8]>,
    },
    /// The caller wants this node's copy of `gfn` (a frame homed elsewhere) dropped, to reuse
    /// its memory: a Shared copy is dropped, a Modified one written back, both through the home
    /// ([`Message::PutShared`], [`Message::PutModified`]). A Shared copy's memory is free at
    /// once; a Modified copy's stays in use until the home's [`Message::PutAck`] is handled (a
    /// forward may still need its contents). Refused for a frame this node is home to, does not
    /// cache, or has a request, eviction or held message in flight for
    /// ([`Engine::can_evict`]).
    Evict {
        /// Frame.
        gfn: Gfn,
    },
    /// Time passed; `now` is in the caller's ticks (only compared with
    /// [`Engine::set_stall_after`]).
    Timer {
        /// Current time.
        now: u64,
    },
}

/// Something the node must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to node `to` (never this node).
    Send {
        /// Destination.
        to: NodeId,
        /// Message.
        msg: Message,
    },
    /// Send `msg` to `to` with the current contents of `msg.gfn()` as its page:
    /// `msg.encode_with(buf, |b| store.copy_out(gfn, b))` copies the frame straight into the
    /// wire buffer. The copy must be taken here, after the actions before it took effect: a
    /// preceding [`Action::Unmap`]/[`Action::Downgrade`] has stopped local writers, and a
    /// preceding [`Action::Resume`] may have let a vCPU write the page first.
    SendPage {
        /// Destination.
        to: NodeId,
        /// A `DataShared`, `DataExclusive`, `WriteBack` or `PutModified`.
        msg: Message,
    },
    /// Map `gfn` in the EPT with `rights` (its contents are already in place).
    Map {
        /// Frame.
        gfn: Gfn,
        /// Rights.
        rights: Rights,
    },
    /// Remove `gfn` from the EPT; every local vCPU must flush its EPT-derived translations
    /// (INVEPT) before any later `Send` of this batch leaves the node.
    Unmap {
        /// Frame.
        gfn: Gfn,
    },
    /// Make `gfn` read-only in the EPT; every local vCPU must flush as for [`Action::Unmap`].
    Downgrade {
        /// Frame.
        gfn: Gfn,
    },
    /// Let this vCPU run again: its fault is served (one action per vCPU, in the order they
    /// faulted).
    Resume {
        /// vCPU.
        vcpu: VcpuId,
    },
    /// A request for `gfn` has been outstanding since `since` (reported once; see
    /// [`Engine::set_stall_after`]).
    Stalled {
        /// Frame.
        gfn: Gfn,
        /// Its home, which has not answered.
        home: NodeId,
        /// When the request was sent.
        since: u64,
    },
    /// Input that the protocol does not allow; it was ignored.
    Error(ProtocolError),
}

/// Input the engine refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A fault or message names a frame outside guest memory.
    GfnOutOfRange {
        /// Frame.
        gfn: Gfn,
    },
    /// A message from a node id outside the cluster.
    UnknownNode {
        /// Sender.
        from: NodeId,
    },
    /// A directory message for a frame this node is not home to.
    NotHome {
        /// Sender.
        from: NodeId,
        /// Message kind.
        kind: &'static str,
        /// Frame.
        gfn: Gfn,
    },
    /// A message that claims to come from this node itself: a node's messages to itself never
    /// leave the engine, so this one was forged or misrouted.
    FromSelf {
        /// Message kind.
        kind: &'static str,
        /// Frame.
        gfn: Gfn,
    },
    /// A data-bearing message whose page is not exactly [`PAGE_SIZE`] bytes, or a control
    /// message that comes with a page.
    PageSize {
        /// Sender.
        from: NodeId,
        /// Message kind.
        kind: &'static str,
        /// Frame.
        gfn: Gfn,
        /// Page bytes it carried.
        len: usize,
        /// Page bytes its kind carries ([`PAGE_SIZE`] or 0).
        want: usize,
    },
    /// An [`Event::Evict`] for a frame this node cannot evict now (homed here, not cached, or
    /// a request or eviction in flight).
    CannotEvict {
        /// Frame.
        gfn: Gfn,
    },
    /// A message that makes no sense in the frame's current state (a duplicate, a bug, or a
    /// peer running other code).
    Unexpected {
        /// Sender.
        from: NodeId,
        /// Message kind.
        kind: &'static str,
        /// Frame.
        gfn: Gfn,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::GfnOutOfRange { gfn } => {
                write!(f, "gfn {:#x} is outside guest memory", gfn.0)
            }
            ProtocolError::UnknownNode { from } => {
                write!(f, "message from node {} which is not in the cluster", from.0)
            }
            ProtocolError::NotHome { from, kind, gfn } => {
                write!(
                    f,
                    "{kind} from node {} for gfn {:#x} which is not homed here",
                    from.0, gfn.0
                )
            }
            ProtocolError::FromSelf { kind, gfn } => write!(
                f,
                "{kind} for gfn {:#x} claims to come from this node itself (forged or misrouted)",
                gfn.0
            ),
            ProtocolError::PageSize { from, kind, gfn, len, want } => write!(
                f,
                "{kind} from node {} for gfn {:#x} carries {len} page bytes, a {kind} carries {want}",
                from.0, gfn.0
            ),
            ProtocolError::CannotEvict { gfn } => write!(
                f,
                "gfn {:#x} cannot be evicted now (homed here, not cached, or in flight)",
                gfn.0
            ),
            ProtocolError::Unexpected { from, kind, gfn } => write!(
                f,
                "unexpected {kind} from node {} for gfn {:#x} (duplicate or peer bug)",
                from.0, gfn.0
            ),
        }
    }
}

/// What the engine has done so far (not protocol state: equal engines may count differently).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Events handled.
    pub events: u64,
    /// Read or exec faults.
    pub read_faults: u64,
    /// Write faults.
    pub write_faults: u64,
    /// Faults that joined a request already in flight for the same frame.
    pub coalesced: u64,
    /// Faults the current mapping already allowed (stale TLB), answered by re-mapping.
    pub spurious: u64,
    /// Faults answered without any message (this node is home and nobody else had a copy).
    pub local_hits: u64,
    /// Messages sent to other nodes.
    pub sent: u64,
    /// Data-bearing messages sent to other nodes.
    pub pages_sent: u64,
    /// Invalidations sent by this home (including to itself).
    pub invalidations: u64,
    /// Forwards sent by this home to an owner (including to itself).
    pub forwards: u64,
    /// Requests that waited behind a busy directory entry.
    pub queued: u64,
    /// Messages held until this node's own outstanding data arrived.
    pub deferred: u64,
    /// Protocol errors reported.
    pub errors: u64,
    /// Copies given up to make room (asked for, or chosen to stay within the cache limit).
    pub evictions: u64,
}

impl PartialEq for Counters {
    fn eq(&self, _: &Counters) -> bool {
        true
    }
}

impl Eq for Counters {}

impl Hash for Counters {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

/// This node's outstanding request for a frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pending {
    /// The request in flight is a WriteReq (else ReadReq).
    write: bool,
    /// Faulted vCPUs waiting for it.
    waiters: Vec<(VcpuId, Access)>,
    /// A home message that must wait until our data arrives (it was ordered after us).
    deferred: Option<Message>,
    since: u64,
    stall_reported: bool,
}

/// A directory transaction in flight at the home.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Txn {
    /// Invalidations sent to `waiting`; grant `requester` write once each of them has acked
    /// (an ack from anyone else, or a second one, is refused: counting acks would let a
    /// duplicate stand in for a sharer that still maps the page). `upgrade`: the requester
    /// still holds a current shared copy, so the grant carries no data.
    CollectAcks { requester: NodeId, waiting: NodeSet, upgrade: bool },
    /// Read forwarded to the owner; wait for its write-back, then `requester` shares —
    /// unless it has `dropped` the copy meanwhile (evicted it: the owner's data reaches the
    /// reader directly, before the write-back reaches us).
    AwaitWriteBack { requester: NodeId, dropped: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Busy {
    txn: Txn,
    /// Requests waiting behind the transaction: (requester, wants write). A node has at most
    /// one request in flight per frame, so this holds at most one entry per node.
    queue: VecDeque<(NodeId, bool)>,
}

/// A node's coherence engine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Engine {
    id: NodeId,
    cfg: Config,
    cache: CacheStates,
    dir: Directory,
    pending: VecMap<Gfn, Pending>,
    busy: VecMap<Gfn, Busy>,
    /// Messages to self, drained before `handle` returns (always empty between calls).
    loopback: VecDeque<Message>,
    now: u64,
    stall_after: u64,
    /// Minimum residency: ticks a freshly filled page stays before a deferred message that
    /// takes it away is handled (0: at once).
    hold: u64,
    /// Deferred messages parked by `hold`: frame → (message, release time).
    held: VecMap<Gfn, (Message, u64)>,
    /// Frames filled here less than `hold` ago (until the first `Timer` at or after the
    /// time): an invalidation or forward that takes one away is parked in `held` until then,
    /// so that the vCPUs resumed on it retire their access first.
    fresh: VecMap<Gfn, u64>,
    /// Copies given up whose `PutAck` has not come yet.
    evicting: VecMap<Gfn, evict::Evicting>,
    /// Remote frames this node may hold at once (see [`Engine::set_cache_limit`]).
    cache_limit: Option<usize>,
    /// Remote frames in Shared or Modified here.
    cached_remote: usize,
    /// Where the search for the next victim starts (a clock hand over the frames).
    hand: u64,
    counters: Counters,
    /// Emptied waiter lists and queues, reused so that steady state allocates nothing.
    spare: Spare,
}

/// Buffers kept for reuse: not protocol state (equal engines may keep different ones, and a
/// clone starts without any).
#[derive(Debug, Default)]
struct Spare {
    waiters: Vec<Vec<(VcpuId, Access)>>,
    queues: Vec<VecDeque<(NodeId, bool)>>,
}

/// Buffers kept per kind: bounded, so a burst leaves no lasting heap behind.
const SPARE: usize = 64;

impl Spare {
    fn waiters(&mut self) -> Vec<(VcpuId, Access)> {
        self.waiters.pop().unwrap_or_default()
    }

    fn keep_waiters(&mut self, mut w: Vec<(VcpuId, Access)>) {
        if w.capacity() > 0 && self.waiters.len() < SPARE {
            w.clear();
            self.waiters.push(w);
        }
    }

    fn queue(&mut self) -> VecDeque<(NodeId, bool)> {
        self.queues.pop().unwrap_or_default()
    }

    fn keep_queue(&mut self, mut q: VecDeque<(NodeId, bool)>) {
        if q.capacity() > 0 && self.queues.len() < SPARE {
            q.clear();
            self.queues.push(q);
        }
    }
}

impl Clone for Spare {
    fn clone(&self) -> Spare {
        Spare::default()
    }
}

impl PartialEq for Spare {
    fn eq(&self, _: &Spare) -> bool {
        true
    }
}

impl Eq for Spare {}

impl Hash for Spare {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

impl Engine {
    /// The engine of node `id` in a cluster described by `cfg`.
    ///
    /// # Panics
    /// If `id` is not a node of `cfg`, `cfg.nodes` is 0 or above 256, or a range placement
    /// has empty ranges.
    pub fn new(id: NodeId, cfg: Config) -> Engine {
        assert!((1..=256).contains(&cfg.nodes), "a cluster has 1..=256 nodes");
        if let crate::HomeMap::Ranges { pages_per_node } = cfg.home {
            assert!(pages_per_node > 0, "home ranges must not be empty");
        }
        assert!(cfg.has_node(id), "node id outside the cluster");
        let homed = cfg.pages_homed_at(id) as usize;
        Engine {
            id,
            cache: CacheStates::new(cfg.pages as usize),
            dir: Directory::new(homed, cfg.nodes),
            cfg,
            pending: VecMap::default(),
            busy: VecMap::default(),
            loopback: VecDeque::new(),
            now: 0,
            stall_after: 0,
            hold: 0,
            held: VecMap::default(),
            fresh: VecMap::default(),
            evicting: VecMap::default(),
            cache_limit: None,
            cached_remote: 0,
            hand: 0,
            counters: Counters::default(),
            spare: Spare::default(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The cluster configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// What the engine has done so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Report [`Action::Stalled`] on a [`Event::Timer`] once a request has waited `ticks`
    /// (0, the default, never reports).
    pub fn set_stall_after(&mut self, ticks: u64) {
        self.stall_after = ticks;
    }

    /// Keep a page that just arrived for at least `ticks` (counted from the last
    /// [`Event::Timer`]) before handling an invalidation or forward that takes it away —
    /// one deferred while the data was on its way, or one that comes while the page is still
    /// fresh (the home's own copy included) — so that the vCPUs resumed on it can retire
    /// their access first: otherwise two nodes writing one page, or readers of a page the
    /// home writes, could take it from each other forever. The parked message is handled on
    /// the first `Timer` at or after the release time. 0 (the default) handles it at once.
    pub fn set_hold(&mut self, ticks: u64) {
        self.hold = ticks;
    }

    /// Number of deferred messages parked by [`Engine::set_hold`].
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// This node's stable cache state for `gfn`.
    ///
    /// # Panics
    /// If `gfn` is outside guest memory.
    pub fn cache_state(&self, gfn: Gfn) -> CacheState {
        self.cache.get(gfn.0 as usize)
    }

    /// Whether this node has a request in flight for `gfn`.
    pub fn is_pending(&self, gfn: Gfn) -> bool {
        self.pending.contains_key(&gfn)
    }

    /// Number of frames with a request or an eviction in flight from this node.
    pub fn pending_count(&self) -> usize {
        self.pending.len() + self.evicting.len()
    }

    /// Whether this node is giving up its copy of `gfn` (waiting for the home's `PutAck`).
    pub fn is_evicting(&self, gfn: Gfn) -> bool {
        self.evicting.contains_key(&gfn)
    }

    /// Whether this node gave up its Modified copy of `gfn` (a `PutModified` is out) and the
    /// home has not acked it yet: until then a forward may still need the frame's contents.
    /// A Shared copy's frame is free at once.
    pub fn is_writing_back(&self, gfn: Gfn) -> bool {
        self.evicting.get(&gfn).is_some_and(|e| e.modified)
    }

    /// Frames homed elsewhere that this node caches or is filling (what
    /// [`Engine::set_cache_limit`] bounds). A Shared copy's frame is free as soon as it is
    /// evicted; a Modified copy's frame is also in use until its `PutAck`
    /// ([`Engine::is_evicting`]), one round trip.
    pub fn remote_frames_in_use(&self) -> usize {
        let filling = self
            .pending
            .iter()
            .filter(|(g, _)| {
                self.cfg.home(**g) != self.id && self.cache.get(g.0 as usize) == CacheState::Invalid
            })
            .count();
        self.cached_remote + filling
    }

    /// Cache or fill at most `frames` remote frames at once: a fault that needs a new frame
    /// first evicts another (a stable Shared or Modified copy, found by a clock hand). The
    /// limit is exceeded only while no copy can be evicted (all in flight), by at most the
    /// faults in flight. `None` (the default): no limit.
    pub fn set_cache_limit(&mut self, frames: Option<usize>) {
        self.cache_limit = frames;
    }

    /// Number of directory entries with a transaction in flight at this home.
    pub fn busy_count(&self) -> usize {
        self.busy.len()
    }

    /// The directory's view of `gfn`: state, owner, sharers, busy.
    ///
    /// # Panics
    /// If `gfn` is not homed at this node.
    pub fn directory_entry(&self, gfn: Gfn) -> (DirState, NodeId, NodeSet, bool) {
        let i = self.cfg.home_index(gfn);
        (self.dir.state(i), self.dir.owner(i), self.dir.sharers(i), self.dir.busy(i))
    }

    /// Handles one event and returns the actions to carry out, in order.
    pub fn handle<S: PageStore>(&mut self, event: Event<'_>, store: &mut S) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle_into(event, store, &mut out);
        out
    }

    /// Like [`Engine::handle`], appending to `out`. Once `out` and the engine's own buffers
    /// have grown to the node's load, serving a fault allocates nothing.
    pub fn handle_into<S: PageStore>(
        &mut self,
        event: Event<'_>,
        store: &mut S,
        out: &mut Vec<Action>,
    ) {
        self.counters.events += 1;
        let before = (self.counters.sent, self.counters.coalesced + self.counters.spurious);
        let fault = match event {
            Event::LocalFault { gfn, access, vcpu } => {
                self.local_fault(gfn, access, vcpu, out);
                Some(gfn)
            }
            Event::Message { from, msg, page } => {
                self.peer_message(from, msg, page, store, out);
                None
            }
            Event::Evict { gfn } => {
                self.evict_request(gfn, out);
                None
            }
            Event::Timer { now } => {
                self.timer(now, out);
                None
            }
        };
        while let Some(msg) = self.loopback.pop_front() {
            self.message(self.id, msg, None, store, out);
        }
        if let Some(gfn) = fault {
            let after = (self.counters.sent, self.counters.coalesced + self.counters.spurious);
            if after == before && self.cfg.contains(gfn) && !self.pending.contains_key(&gfn) {
                self.counters.local_hits += 1;
            }
        }
    }

    fn error(&mut self, e: ProtocolError, out: &mut Vec<Action>) {
        self.counters.errors += 1;
        out.push(Action::Error(e));
    }

    fn unexpected(&mut self, from: NodeId, msg: &Message, out: &mut Vec<Action>) {
        let e = ProtocolError::Unexpected { from, kind: msg.name(), gfn: msg.gfn() };
        self.error(e, out);
    }

    /// Sends `msg`; a data-bearing message to another node gets this node's copy of the page
    /// (through [`Action::SendPage`]), one to ourselves none: our frame is the home's frame.
    fn send(&mut self, to: NodeId, msg: Message, out: &mut Vec<Action>) {
        if to == self.id {
            self.loopback.push_back(msg);
        } else {
            self.counters.sent += 1;
            if msg.has_page() {
                self.counters.pages_sent += 1;
                out.push(Action::SendPage { to, msg });
            } else {
                out.push(Action::Send { to, msg });
            }
        }
    }

    fn timer(&mut self, now: u64, out: &mut Vec<Action>) {
        self.now = now;
        // First the residency ends, so that a released message is handled, not parked again.
        loop {
            let due = self.fresh.iter().find(|(_, &until)| until <= now).map(|(g, _)| *g);
            if due.and_then(|gfn| self.fresh.remove(&gfn)).is_none() {
                break;
            }
        }
        loop {
            let due = self.held.iter().find(|(_, &(_, until))| until <= now).map(|(g, _)| *g);
            let Some((msg, _)) = due.and_then(|gfn| self.held.remove(&gfn)) else { break };
            self.release(msg, out);
        }
        if self.stall_after == 0 {
            return;
        }
        for (&gfn, p) in self.pending.iter_mut() {
            if !p.stall_reported && now.saturating_sub(p.since) >= self.stall_after {
                p.stall_reported = true;
                out.push(Action::Stalled { gfn, home: self.cfg.home(gfn), since: p.since });
            }
        }
    }

    /// A message from the network: refuses what only a forged, misrouted or corrupted message
    /// can be before the protocol sees it. The internal loopback bypasses this (its messages
    /// are from this node and carry no page: our frame is the home's frame).
    fn peer_message<S: PageStore>(
        &mut self,
        from: NodeId,
        msg: Message,
        page: Option<&[u8]>,
        store: &mut S,
        out: &mut Vec<Action>,
    ) {
        if from == self.id {
            let e = ProtocolError::FromSelf { kind: msg.name(), gfn: msg.gfn() };
            return self.error(e, out);
        }
        let len = page.map_or(0, <[u8]>::len);
        let want = if msg.has_page() { PAGE_SIZE } else { 0 };
        if len != want {
            let e = ProtocolError::PageSize { from, kind: msg.name(), gfn: msg.gfn(), len, want };
            return self.error(e, out);
        }
        self.message(from, msg, page, store, out);
    }

    /// `page`: the page of a data-bearing message from a peer (checked by `peer_message`);
    /// None from the loopback, whose frame is the home's frame.
    fn message<S: PageStore>(
        &mut self,
        from: NodeId,
        msg: Message,
        page: Option<&[u8]>,
        store: &mut S,
        out: &mut Vec<Action>,
    ) {
        let gfn = msg.gfn();
        if !self.cfg.has_node(from) {
            return self.error(ProtocolError::UnknownNode { from }, out);
        }
        if let Message::FwdRead { requester, .. } | Message::FwdWrite { requester, .. } = msg {
            if !self.cfg.has_node(requester) {
                return self.error(ProtocolError::UnknownNode { from: requester }, out);
            }
        }
        if !self.cfg.contains(gfn) {
            return self.error(ProtocolError::GfnOutOfRange { gfn }, out);
        }
        let home = self.cfg.home(gfn);
        let to_directory = matches!(
            msg,
            Message::ReadReq { .. }
                | Message::WriteReq { .. }
                | Message::InvAck { .. }
                | Message::WriteBack { .. }
                | Message::PutShared { .. }
                | Message::PutModified { .. }
        );
        if to_directory && home != self.id {
            let e = ProtocolError::NotHome { from, kind: msg.name(), gfn };
            return self.error(e, out);
        }
        // Invalidations, forwards and eviction acks come only from the home.
        if matches!(
            msg,
            Message::Inv { .. }
                | Message::FwdRead { .. }
                | Message::FwdWrite { .. }
                | Message::PutAck { .. }
        ) && from != home
        {
            return self.unexpected(from, &msg, out);
        }
        match msg {
            Message::ReadReq { gfn } => self.dir_request(from, gfn, false, out),
            Message::WriteReq { gfn } => self.dir_request(from, gfn, true, out),
            Message::InvAck { .. } => self.dir_inv_ack(from, &msg, out),
            Message::WriteBack { .. } => self.dir_write_back(from, &msg, page, store, out),
            Message::Inv { .. } => self.cache_inv(from, msg, out),
            Message::FwdRead { .. } | Message::FwdWrite { .. } => {
                self.cache_forward(from, msg, out);
            }
            Message::DataShared { .. } | Message::DataExclusive { .. } | Message::Grant { .. } => {
                self.cache_fill(from, &msg, page, store, out);
            }
            Message::PutShared { .. } => self.dir_put_shared(from, gfn, out),
            Message::PutModified { .. } => self.dir_put_modified(from, &msg, page, store, out),
            Message::PutAck { .. } => self.cache_put_ack(from, &msg, out),
        }
    }
}
