//! Guest memory through the coherence engine (docs/design.md §3): every nested page fault on
//! guest RAM becomes an `Event::LocalFault`, and the engine's actions are carried out one at a
//! time, in order, on this node — nested-paging changes, the flush barrier after a right is
//! taken away, page copies, resumed vCPUs — while messages for other nodes queue, encoded, for
//! the transport. A one-node cluster runs through the same path (every fault a local hit).
//!
//! A page crosses with two copies: out of the frame straight into the outgoing buffer (framed
//! once, at the action's turn), and from the received datagram straight into the frame. The
//! outgoing buffers come back through [`Coherent::recycle`]; once they and the engine's own
//! have grown to the node's load, serving a fault allocates nothing (tested).
//!
//! Hardware stays behind [`LocalNode`]; the host tests drive this module with a fake node.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use gestalt_coherence::{
    Access, Action, CacheState, Config, Counters, DecodeError, Engine, Event, Gfn, Message, NodeId,
    PageStore, Rights, VcpuId,
};

use super::dispatch::Fault;
use super::faultstats::{FaultStats, Kind};

/// What the glue needs of this node: its frames (the engine's [`PageStore`]), its nested page
/// tables and its vCPUs.
pub trait LocalNode: PageStore {
    /// Sets the nested-paging rights of `gfn` (None: not mapped). Mapping uses the frame
    /// that holds the page on this node.
    fn set_rights(&mut self, gfn: Gfn, rights: Option<Rights>) -> Result<(), &'static str>;
    /// Returns only when no local vCPU can still use a translation with more rights than the
    /// nested tables now give (INVEPT completed everywhere): sends that follow depend on it.
    fn flush_barrier(&mut self);
    /// The fault of `vcpu` is served: let it run again.
    fn resume(&mut self, vcpu: VcpuId);
    /// The engine holds `gfn`, a page homed elsewhere, no longer: its frame may serve another.
    fn release(&mut self, gfn: Gfn);
}

/// Counters of the glue beside the engine's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlueStats {
    /// Nested-paging updates that failed (the guest is stopped on the faulting vCPU).
    pub map_failures: u64,
    /// Protocol errors reported by the engine (bad or unexpected input, ignored).
    pub protocol_errors: u64,
    /// Requests that waited longer than the stall threshold.
    pub stalls: u64,
    /// Flush barriers run.
    pub barriers: u64,
}

/// Outgoing buffers kept for reuse (each with room for a page message): enough for a batch
/// of invalidations and pages in flight, bounded so that a burst leaves no lasting heap behind.
const SPARE_BUFFERS: usize = 64;

/// The engine of this node and what its actions left to send.
pub struct Coherent {
    engine: Engine,
    actions: Vec<Action>,
    outbox: VecDeque<(NodeId, Vec<u8>)>,
    /// Sent buffers handed back by the transport side, reused by the next messages.
    spare: Vec<Vec<u8>>,
    stats: GlueStats,
    faults: FaultStats,
    now: u64,
    prefix: &'static [u8],
    /// Pages homed elsewhere whose frame the batch may have freed (unmapped, or acked).
    maybe_free: Vec<Gfn>,
    id: NodeId,
}

impl Coherent {
    /// Node `me` of a cluster shaped by `cfg`.
    pub fn new(me: NodeId, cfg: Config) -> Coherent {
        Coherent {
            engine: Engine::new(me, cfg),
            actions: Vec::new(),
            outbox: VecDeque::new(),
            spare: Vec::new(),
            stats: GlueStats::default(),
            faults: FaultStats::default(),
            now: 0,
            prefix: &[],
            maybe_free: Vec::new(),
            id: me,
        }
    }

    /// Hold at most `frames` pages homed elsewhere: a fault that needs another evicts one.
    pub fn set_cache_limit(&mut self, frames: usize) {
        self.engine.set_cache_limit(Some(frames));
    }

    /// Outgoing messages start with `prefix` (the caller's framing on a shared transport), so
    /// they need no second copy to be framed.
    pub fn with_prefix(mut self, prefix: &'static [u8]) -> Coherent {
        self.prefix = prefix;
        self
    }

    /// The remote-fault profile (`stats`).
    pub fn fault_stats(&self) -> &FaultStats {
        &self.faults
    }

    /// Clears the remote-fault profile (`stats reset`).
    pub fn reset_fault_stats(&mut self) {
        self.faults = FaultStats::default();
    }

    /// A page that just arrived stays `ticks` (the timer's unit) before a request that waited
    /// for it takes it away: the vCPUs resumed on it retire their access first.
    pub fn set_hold(&mut self, ticks: u64) {
        self.engine.set_hold(ticks);
    }

    /// Requests waiting longer than `ticks` are reported (counted as stalls).
    pub fn set_stall_after(&mut self, ticks: u64) {
        self.engine.set_stall_after(ticks);
    }

    /// The engine's counters (faults, messages, pages, invalidations …).
    pub fn counters(&self) -> &Counters {
        self.engine.counters()
    }

    /// The glue's own counters.
    pub fn stats(&self) -> GlueStats {
        self.stats
    }

    /// A nested page fault of `vcpu` on `gfn` at `now` (µs).
    pub fn fault<L: LocalNode>(
        &mut self,
        node: &mut L,
        gfn: Gfn,
        write: bool,
        vcpu: VcpuId,
        now: u64,
    ) -> Fault {
        self.now = now;
        let access = if write { Access::Write } else { Access::Read };
        let before = self.engine.cache_state(gfn);
        let served = self.run(node, Event::LocalFault { gfn, access, vcpu }, Some(vcpu));
        if served == Fault::Wait {
            let kind = match (before, write) {
                (CacheState::Shared, true) => Kind::Upgrade,
                (_, true) => Kind::WriteMiss,
                (_, false) => Kind::ReadMiss,
            };
            self.faults.began(vcpu, gfn, kind, now);
        }
        served
    }

    /// A coherence message from node `from`, as it came off the transport. Bytes that do not
    /// decode are refused with the reason; nothing of them reaches the engine. A page is
    /// installed straight from `bytes`.
    pub fn message<L: LocalNode>(
        &mut self,
        node: &mut L,
        from: NodeId,
        bytes: &[u8],
        now: u64,
    ) -> Result<(), DecodeError> {
        let (msg, page) = Message::decode(bytes)?;
        self.now = now;
        self.faults.messages_in += 1;
        match msg {
            Message::DataShared { .. } | Message::DataExclusive { .. } => {
                self.faults.pages_in += 1;
                if self.engine.config().home(msg.gfn()) != from {
                    self.faults.three_hop_data(msg.gfn());
                }
            }
            Message::WriteBack { .. } => self.faults.pages_in += 1,
            Message::Inv { .. } => self.faults.invalidations_in += 1,
            // A Modified copy's frame stays in use until the home acks its eviction.
            Message::PutAck { gfn } => self.maybe_free.push(gfn),
            _ => {}
        }
        self.run(node, Event::Message { from, msg, page }, None);
        Ok(())
    }

    /// Time passed (holds and stall reports).
    pub fn timer<L: LocalNode>(&mut self, node: &mut L, now: u64) {
        self.run(node, Event::Timer { now }, None);
    }

    /// The next encoded message for the transport, in the order the actions produced them.
    /// Hand the buffer back through [`Coherent::recycle`] once the transport has taken it.
    pub fn next_outgoing(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// A buffer the transport is done with (any guest message's): kept for the next message
    /// if it has room for a page and fewer than [`SPARE_BUFFERS`] wait, else freed.
    pub fn recycle(&mut self, mut bytes: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && bytes.capacity() >= self.max_len() {
            bytes.clear();
            self.spare.push(bytes);
        }
    }

    /// The longest framed message: a page message.
    fn max_len(&self) -> usize {
        self.prefix.len() + Message::DataShared { gfn: Gfn(0) }.encoded_len()
    }

    /// Messages wait for the transport.
    pub fn has_outgoing(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// A message the transport could not take yet goes back to the front (back-pressure:
    /// nothing is dropped, and the order stays).
    pub fn push_back_outgoing(&mut self, to: NodeId, bytes: Vec<u8>) {
        self.outbox.push_front((to, bytes));
    }

    /// Handles `event` and carries out its actions in order; `me` is the faulting vCPU, whose
    /// own resume in this batch means it can retry at once.
    fn run<L: LocalNode>(&mut self, node: &mut L, event: Event<'_>, me: Option<VcpuId>) -> Fault {
        let mut actions = core::mem::take(&mut self.actions);
        actions.clear();
        self.engine.handle_into(event, node, &mut actions);
        let mut served = Fault::Wait;
        for action in actions.drain(..) {
            match action {
                // A page is copied now, straight into the outgoing buffer: every earlier
                // action (a downgrade that stopped local writers, a resume that let one write
                // first) has taken effect.
                Action::Send { to, msg } | Action::SendPage { to, msg } => {
                    self.queue(node, to, msg);
                }
                Action::Map { gfn, rights } => {
                    if let Err(e) = node.set_rights(gfn, Some(rights)) {
                        self.stats.map_failures += 1;
                        served = Fault::Deny(e);
                    }
                }
                Action::Unmap { gfn } => {
                    self.take_away(node, gfn, None);
                    self.maybe_free.push(gfn);
                }
                Action::Downgrade { gfn } => self.take_away(node, gfn, Some(Rights::ReadExec)),
                Action::Resume { vcpu } => {
                    if Some(vcpu) == me {
                        if served == Fault::Wait {
                            served = Fault::Mapped;
                        }
                    } else {
                        self.faults.served(vcpu, self.now);
                        node.resume(vcpu);
                    }
                }
                Action::Stalled { .. } => self.stats.stalls += 1,
                Action::Error(_) => self.stats.protocol_errors += 1,
            }
        }
        self.actions = actions;
        self.free_frames(node);
        served
    }

    /// Hands back the frames of remote pages the engine no longer holds or still needs.
    fn free_frames<L: LocalNode>(&mut self, node: &mut L) {
        let e = &self.engine;
        for &gfn in &self.maybe_free {
            // A Shared copy's frame is free once unmapped, even while its PutShared is in
            // flight; a Modified one's only when the home has acked its page.
            if e.config().contains(gfn)
                && e.config().home(gfn) != self.id
                && e.cache_state(gfn) == CacheState::Invalid
                && !e.is_pending(gfn)
                && !e.is_writing_back(gfn)
            {
                node.release(gfn);
            }
        }
        self.maybe_free.clear();
    }

    fn take_away<L: LocalNode>(&mut self, node: &mut L, gfn: Gfn, rights: Option<Rights>) {
        // Reducing rights on a page this node maps cannot fail for want of tables; if it
        // did, the barrier still runs so no stale right survives the sends that follow.
        if node.set_rights(gfn, rights).is_err() {
            self.stats.map_failures += 1;
        }
        self.stats.barriers += 1;
        node.flush_barrier();
    }

    /// Frames and encodes `msg` into a reused buffer, a page copied from `node`'s frame.
    fn queue<L: LocalNode>(&mut self, node: &mut L, to: NodeId, msg: Message) {
        self.faults.messages_out += 1;
        if msg.has_page() {
            self.faults.pages_out += 1;
        }
        let max = self.max_len();
        let mut bytes = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(max));
        bytes.extend_from_slice(self.prefix);
        msg.encode_with(&mut bytes, |b| node.copy_out(msg.gfn(), b));
        self.outbox.push_back((to, bytes));
    }
}

#[cfg(test)]
mod tests;
