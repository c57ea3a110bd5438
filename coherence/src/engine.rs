//! The sans-IO coherence engine of one node: it is both the cache of the pages this node maps
//! and the home directory of the pages it owns in memory. Events go in, actions come out;
//! page contents pass through [`PageStore`].
//!
//! Messages a node sends to itself (its own faults on pages it is home to) go through an
//! internal FIFO and are handled in the same call, so the home's own accesses obey exactly the
//! rules remote nodes do, at zero message cost.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;
use core::hash::{Hash, Hasher};

use crate::directory::{CacheState, CacheStates, DirState, Directory};
use crate::home::Config;
use crate::message::Message;
use crate::types::{Access, Gfn, NodeId, NodeSet, Rights, VcpuId, PAGE_SIZE};

mod evict;

/// Guest memory of this node, as the engine and its caller see it. Tests use plain memory
/// ([`crate::MemStore`]).
pub trait PageStore {
    /// Appends the current contents of `gfn` to `out` (normally [`crate::PAGE_SIZE`] bytes).
    /// The engine never calls this: the caller does, when it carries out
    /// [`Action::SendPage`], so the copy follows every action before it.
    fn copy_out(&mut self, gfn: Gfn, out: &mut Vec<u8>);

    /// Replaces the contents of `gfn` with `data`. The engine calls this while handling a
    /// data-bearing message, only while this node does not map `gfn`.
    fn install(&mut self, gfn: Gfn, data: &[u8]);
}

/// Something that happened to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
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
        /// Contents.
        msg: Message,
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
    /// Copy the current contents of `msg.gfn()` into `msg`'s (empty) page, then send it to
    /// `to`. The copy must be taken here, after the actions before it took effect: a
    /// preceding [`Action::Unmap`]/[`Action::Downgrade`] has stopped local writers, and a
    /// preceding [`Action::Resume`] may have let a vCPU write the page first.
    SendPage {
        /// Destination.
        to: NodeId,
        /// A `DataShared`, `DataExclusive` or `WriteBack` with an empty page.
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
    /// Let these vCPUs run again: their fault is served.
    Resume {
        /// vCPUs.
        vcpus: Vec<VcpuId>,
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
    /// A data-bearing message whose page is not exactly [`PAGE_SIZE`] bytes.
    PageSize {
        /// Sender.
        from: NodeId,
        /// Message kind.
        kind: &'static str,
        /// Frame.
        gfn: Gfn,
        /// Bytes it carried.
        len: usize,
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
            ProtocolError::PageSize { from, kind, gfn, len } => write!(
                f,
                "{kind} from node {} for gfn {:#x} carries {len} bytes, not a {PAGE_SIZE}-byte page",
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
    pending: BTreeMap<Gfn, Pending>,
    busy: BTreeMap<Gfn, Busy>,
    /// Messages to self, drained before `handle` returns (always empty between calls).
    loopback: VecDeque<Message>,
    now: u64,
    stall_after: u64,
    /// Minimum residency: ticks a freshly filled page stays before a deferred message that
    /// takes it away is handled (0: at once).
    hold: u64,
    /// Deferred messages parked by `hold`: frame → (message, release time).
    held: BTreeMap<Gfn, (Message, u64)>,
    /// Copies given up whose `PutAck` has not come yet.
    evicting: BTreeMap<Gfn, evict::Evicting>,
    /// Remote frames this node may hold at once (see [`Engine::set_cache_limit`]).
    cache_limit: Option<usize>,
    /// Remote frames in Shared or Modified here.
    cached_remote: usize,
    /// Where the search for the next victim starts (a clock hand over the frames).
    hand: u64,
    counters: Counters,
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
            pending: BTreeMap::new(),
            busy: BTreeMap::new(),
            loopback: VecDeque::new(),
            now: 0,
            stall_after: 0,
            hold: 0,
            held: BTreeMap::new(),
            evicting: BTreeMap::new(),
            cache_limit: None,
            cached_remote: 0,
            hand: 0,
            counters: Counters::default(),
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
    /// [`Event::Timer`]) before handling a deferred invalidation or forward that takes it away,
    /// so that the vCPUs resumed on it can retire their access first — otherwise two nodes
    /// writing one page could take it from each other forever. The parked message is handled
    /// on the first `Timer` at or after the release time. 0 (the default) handles it at once.
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
    pub fn handle<S: PageStore>(&mut self, event: Event, store: &mut S) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle_into(event, store, &mut out);
        out
    }

    /// Like [`Engine::handle`], appending to `out` (no allocation once `out` has grown).
    pub fn handle_into<S: PageStore>(
        &mut self,
        event: Event,
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
            Event::Message { from, msg } => {
                self.peer_message(from, msg, store, out);
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
            self.message(self.id, msg, store, out);
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
            if msg.page().is_some() {
                self.counters.pages_sent += 1;
                out.push(Action::SendPage { to, msg });
            } else {
                out.push(Action::Send { to, msg });
            }
        }
    }

    fn timer(&mut self, now: u64, out: &mut Vec<Action>) {
        self.now = now;
        while let Some((&gfn, _)) = self.held.iter().find(|(_, &(_, until))| until <= now) {
            if let Some((msg, _)) = self.held.remove(&gfn) {
                self.release(msg, out);
            }
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

    // ---- cache side -------------------------------------------------------------------

    fn local_fault(&mut self, gfn: Gfn, access: Access, vcpu: VcpuId, out: &mut Vec<Action>) {
        if !self.cfg.contains(gfn) {
            return self.error(ProtocolError::GfnOutOfRange { gfn }, out);
        }
        if access.is_write() {
            self.counters.write_faults += 1;
        } else {
            self.counters.read_faults += 1;
        }
        if let Some(p) = self.pending.get_mut(&gfn) {
            self.counters.coalesced += 1;
            p.waiters.push((vcpu, access));
            return;
        }
        if let Some(e) = self.evicting.get_mut(&gfn) {
            // The new request must follow the eviction at the home: wait for its PutAck.
            self.counters.coalesced += 1;
            e.waiters.push((vcpu, access));
            return;
        }
        let rights = match self.cache.get(gfn.0 as usize) {
            CacheState::Invalid => None,
            CacheState::Shared => Some(Rights::ReadExec),
            CacheState::Modified => Some(Rights::ReadWriteExec),
        };
        if let Some(rights) = rights.filter(|r| r.allows(access)) {
            self.counters.spurious += 1;
            out.push(Action::Map { gfn, rights });
            out.push(Action::Resume { vcpus: alloc::vec![vcpu] });
            return;
        }
        if rights.is_none() {
            self.make_room(gfn, out);
        }
        self.request(gfn, access.is_write(), alloc::vec![(vcpu, access)], out);
    }

    /// Sets the stable state of `gfn`, keeping the count of cached remote frames.
    fn set_state(&mut self, gfn: Gfn, new: CacheState) {
        let i = gfn.0 as usize;
        let was = self.cache.get(i) != CacheState::Invalid;
        let is = new != CacheState::Invalid;
        if was != is && self.cfg.home(gfn) != self.id {
            if is {
                self.cached_remote += 1;
            } else {
                self.cached_remote -= 1;
            }
        }
        self.cache.set(i, new);
    }

    fn request(
        &mut self,
        gfn: Gfn,
        write: bool,
        waiters: Vec<(VcpuId, Access)>,
        out: &mut Vec<Action>,
    ) {
        let p = Pending { write, waiters, deferred: None, since: self.now, stall_reported: false };
        self.pending.insert(gfn, p);
        let msg = if write { Message::WriteReq { gfn } } else { Message::ReadReq { gfn } };
        self.send(self.cfg.home(gfn), msg, out);
    }

    /// A message from the network: refuses what only a forged, misrouted or corrupted message
    /// can be before the protocol sees it. The internal loopback bypasses this (its messages
    /// are from this node and carry no page: our frame is the home's frame).
    fn peer_message<S: PageStore>(
        &mut self,
        from: NodeId,
        msg: Message,
        store: &mut S,
        out: &mut Vec<Action>,
    ) {
        if from == self.id {
            let e = ProtocolError::FromSelf { kind: msg.name(), gfn: msg.gfn() };
            return self.error(e, out);
        }
        if let Some(len) = msg.page().map(<[u8]>::len).filter(|&l| l != PAGE_SIZE) {
            let e = ProtocolError::PageSize { from, kind: msg.name(), gfn: msg.gfn(), len };
            return self.error(e, out);
        }
        self.message(from, msg, store, out);
    }

    fn message<S: PageStore>(
        &mut self,
        from: NodeId,
        msg: Message,
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
            Message::WriteBack { .. } => self.dir_write_back(from, &msg, store, out),
            Message::Inv { .. } => self.cache_inv(from, msg, out),
            Message::FwdRead { .. } | Message::FwdWrite { .. } => {
                self.cache_forward(from, msg, out);
            }
            Message::DataShared { .. } | Message::DataExclusive { .. } | Message::Grant { .. } => {
                self.cache_fill(from, &msg, store, out);
            }
            Message::PutShared { .. } => self.dir_put_shared(from, gfn, out),
            Message::PutModified { .. } => self.dir_put_modified(from, &msg, store, out),
            Message::PutAck { .. } => self.cache_put_ack(from, &msg, out),
        }
    }

    fn cache_inv(&mut self, from: NodeId, msg: Message, out: &mut Vec<Action>) {
        let gfn = msg.gfn();
        let i = gfn.0 as usize;
        match (self.cache.get(i), self.pending.get_mut(&gfn)) {
            // A read of ours is in flight and the home already counts us as a sharer: the
            // data is on its way, so serve our read first.
            (CacheState::Invalid, Some(p)) if !p.write && p.deferred.is_none() => {
                self.counters.deferred += 1;
                p.deferred = Some(msg);
            }
            // Shared, possibly with an upgrade in flight that the home has not ordered yet:
            // drop the copy now (the upgrade will then be answered with data).
            (CacheState::Shared, _) => {
                self.set_state(gfn, CacheState::Invalid);
                out.push(Action::Unmap { gfn });
                self.send(from, Message::InvAck { gfn }, out);
            }
            // Our PutShared crossed this Inv: the copy is gone already, the home still counts
            // on our ack.
            (CacheState::Invalid, None)
                if self.evicting.get(&gfn).is_some_and(|e| !e.modified && !e.answered) =>
            {
                if let Some(e) = self.evicting.get_mut(&gfn) {
                    e.answered = true;
                }
                self.send(from, Message::InvAck { gfn }, out);
            }
            _ => self.unexpected(from, &msg, out),
        }
    }

    fn cache_forward(&mut self, from: NodeId, msg: Message, out: &mut Vec<Action>) {
        let gfn = msg.gfn();
        let i = gfn.0 as usize;
        match (self.cache.get(i), self.pending.get_mut(&gfn)) {
            // The home made us owner before our data arrived (3-hop): hold the forward.
            (CacheState::Invalid, Some(p)) if p.write && p.deferred.is_none() => {
                self.counters.deferred += 1;
                p.deferred = Some(msg);
            }
            (CacheState::Invalid, None)
                if self.evicting.get(&gfn).is_some_and(|e| e.modified && !e.answered) =>
            {
                self.forward_while_evicting(from, &msg, out);
            }
            (CacheState::Modified, None) => match msg {
                Message::FwdRead { requester, .. } if requester != self.id => {
                    self.set_state(gfn, CacheState::Shared);
                    out.push(Action::Downgrade { gfn });
                    if requester != from {
                        self.send(requester, Message::DataShared { gfn, page: Vec::new() }, out);
                    }
                    self.send(from, Message::WriteBack { gfn, page: Vec::new() }, out);
                }
                Message::FwdWrite { requester, .. } if requester != self.id => {
                    self.set_state(gfn, CacheState::Invalid);
                    out.push(Action::Unmap { gfn });
                    self.send(requester, Message::DataExclusive { gfn, page: Vec::new() }, out);
                }
                _ => self.unexpected(from, &msg, out),
            },
            _ => self.unexpected(from, &msg, out),
        }
    }

    /// Handles a deferred message from the home now that our own data has arrived.
    fn release(&mut self, deferred: Message, out: &mut Vec<Action>) {
        let home = self.cfg.home(deferred.gfn());
        match deferred {
            Message::Inv { .. } => self.cache_inv(home, deferred, out),
            _ => self.cache_forward(home, deferred, out),
        }
    }

    fn cache_fill<S: PageStore>(
        &mut self,
        from: NodeId,
        msg: &Message,
        store: &mut S,
        out: &mut Vec<Action>,
    ) {
        let gfn = msg.gfn();
        let i = gfn.0 as usize;
        let state = self.cache.get(i);
        let ok = match (&msg, self.pending.get(&gfn)) {
            (Message::DataShared { .. }, Some(p)) => !p.write && state == CacheState::Invalid,
            (Message::DataExclusive { .. }, Some(p)) => p.write && state == CacheState::Invalid,
            (Message::Grant { .. }, Some(p)) => p.write && state == CacheState::Shared,
            _ => false,
        };
        if !ok {
            return self.unexpected(from, msg, out);
        }
        let Some(p) = self.pending.remove(&gfn) else { return };
        if let Some(page) = msg.page() {
            // A message from ourselves (only ever the loopback: `peer_message` refuses our
            // own id) carries no page: our frame is the home's frame.
            if from != self.id {
                store.install(gfn, page);
            }
        }
        let (new, rights) = match msg {
            Message::DataShared { .. } => (CacheState::Shared, Rights::ReadExec),
            _ => (CacheState::Modified, Rights::ReadWriteExec),
        };
        self.set_state(gfn, new);
        out.push(Action::Map { gfn, rights });
        let mut waiting = p.waiters;
        let served: Vec<VcpuId> =
            waiting.iter().filter(|&&(_, a)| rights.allows(a)).map(|&(v, _)| v).collect();
        waiting.retain(|&(_, a)| !rights.allows(a));
        if !served.is_empty() {
            out.push(Action::Resume { vcpus: served });
        }
        if let Some(deferred) = p.deferred {
            if self.hold == 0 {
                self.release(deferred, out);
            } else {
                self.held.insert(gfn, (deferred, self.now.saturating_add(self.hold)));
            }
        }
        if !waiting.is_empty() {
            self.request(gfn, true, waiting, out);
        }
    }

    // ---- directory side ---------------------------------------------------------------

    fn dir_request(&mut self, from: NodeId, gfn: Gfn, write: bool, out: &mut Vec<Action>) {
        if let Some(b) = self.busy.get_mut(&gfn) {
            // A node sends its next request for a frame only once the last one is served, so
            // a second one from a node already queued, or from the node whose invalidations
            // are being collected, is a duplicate: refusing it keeps the queue within one
            // entry per node.
            let collecting_for = match b.txn {
                Txn::CollectAcks { requester, .. } => Some(requester),
                Txn::AwaitWriteBack { .. } => None,
            };
            if collecting_for == Some(from) || b.queue.iter().any(|&(n, _)| n == from) {
                let msg = if write { Message::WriteReq { gfn } } else { Message::ReadReq { gfn } };
                return self.unexpected(from, &msg, out);
            }
            self.counters.queued += 1;
            b.queue.push_back((from, write));
            return;
        }
        self.dir_serve(from, gfn, write, out);
    }

    /// Serves one request on an idle entry; may leave it busy.
    fn dir_serve(&mut self, r: NodeId, gfn: Gfn, write: bool, out: &mut Vec<Action>) {
        let i = self.cfg.home_index(gfn);
        let msg = if write { Message::WriteReq { gfn } } else { Message::ReadReq { gfn } };
        match self.dir.state(i) {
            DirState::Uncached | DirState::Shared if !write => {
                let mut sharers = self.dir.sharers(i);
                if sharers.contains(r) {
                    return self.unexpected(r, &msg, out);
                }
                sharers.insert(r);
                self.dir.set_shared(i, &sharers);
                self.send(r, Message::DataShared { gfn, page: Vec::new() }, out);
            }
            DirState::Uncached => {
                self.dir.set_modified(i, r);
                self.send(r, Message::DataExclusive { gfn, page: Vec::new() }, out);
            }
            DirState::Shared => {
                let sharers = self.dir.sharers(i);
                let upgrade = sharers.contains(r);
                let mut others = sharers;
                others.remove(r);
                if others.is_empty() {
                    self.grant_write(r, gfn, upgrade, out);
                    return;
                }
                // Invalidated sharers leave the set now: a later request from one of them
                // is a fresh miss.
                self.dir.set_shared(i, &NodeSet::EMPTY);
                self.dir.set_busy(i, true);
                let txn = Txn::CollectAcks { requester: r, waiting: others, upgrade };
                self.busy.insert(gfn, Busy { txn, queue: VecDeque::new() });
                for o in others.iter() {
                    self.counters.invalidations += 1;
                    self.send(o, Message::Inv { gfn }, out);
                }
            }
            DirState::Modified => {
                let owner = self.dir.owner(i);
                if owner == r {
                    return self.unexpected(r, &msg, out);
                }
                self.counters.forwards += 1;
                if write {
                    // The requester is owner from now on; it holds later forwards until the
                    // old owner's data reaches it, so the entry need not stay busy.
                    self.dir.set_modified(i, r);
                    self.send(owner, Message::FwdWrite { gfn, requester: r }, out);
                } else {
                    self.dir.set_busy(i, true);
                    let txn = Txn::AwaitWriteBack { requester: r, dropped: false };
                    self.busy.insert(gfn, Busy { txn, queue: VecDeque::new() });
                    self.send(owner, Message::FwdRead { gfn, requester: r }, out);
                }
            }
        }
    }

    fn grant_write(&mut self, r: NodeId, gfn: Gfn, upgrade: bool, out: &mut Vec<Action>) {
        let i = self.cfg.home_index(gfn);
        self.dir.set_modified(i, r);
        if upgrade {
            self.send(r, Message::Grant { gfn }, out);
        } else {
            self.send(r, Message::DataExclusive { gfn, page: Vec::new() }, out);
        }
    }

    fn dir_inv_ack(&mut self, from: NodeId, msg: &Message, out: &mut Vec<Action>) {
        let gfn = msg.gfn();
        let Some(Busy { txn: Txn::CollectAcks { requester, waiting, upgrade }, .. }) =
            self.busy.get_mut(&gfn)
        else {
            return self.unexpected(from, msg, out);
        };
        if !waiting.contains(from) {
            return self.unexpected(from, msg, out);
        }
        waiting.remove(from);
        if !waiting.is_empty() {
            return;
        }
        let (r, up) = (*requester, *upgrade);
        self.grant_write(r, gfn, up, out);
        self.finish(gfn, out);
    }

    fn dir_write_back<S: PageStore>(
        &mut self,
        from: NodeId,
        msg: &Message,
        store: &mut S,
        out: &mut Vec<Action>,
    ) {
        let gfn = msg.gfn();
        let i = self.cfg.home_index(gfn);
        let (requester, dropped) = match self.busy.get(&gfn) {
            Some(Busy { txn: Txn::AwaitWriteBack { requester, dropped }, .. })
                if self.dir.state(i) == DirState::Modified && self.dir.owner(i) == from =>
            {
                (*requester, *dropped)
            }
            _ => return self.unexpected(from, msg, out),
        };
        if from != self.id {
            if let Some(page) = msg.page() {
                store.install(gfn, page);
            }
        }
        let mut sharers: NodeSet = [from, requester].into_iter().collect();
        if dropped {
            sharers.remove(requester);
        }
        self.dir.set_shared(i, &sharers);
        if requester == self.id {
            // The owner sent the data only once, to us as home; our own read is served now.
            self.send(self.id, Message::DataShared { gfn, page: Vec::new() }, out);
        }
        self.finish(gfn, out);
    }

    /// Ends the transaction on `gfn` and serves the requests queued behind it.
    fn finish(&mut self, gfn: Gfn, out: &mut Vec<Action>) {
        let i = self.cfg.home_index(gfn);
        self.dir.set_busy(i, false);
        let Some(mut b) = self.busy.remove(&gfn) else { return };
        while let Some((r, write)) = b.queue.pop_front() {
            self.dir_serve(r, gfn, write, out);
            if let Some(next) = self.busy.get_mut(&gfn) {
                next.queue.append(&mut b.queue);
                return;
            }
        }
    }
}
