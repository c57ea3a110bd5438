//! The cache side of the engine: this node's copies of frames — faults, the requests they
//! send, fills, and the invalidations and forwards that take a copy away (deferred while our
//! own data is on its way).

use alloc::vec::Vec;

use super::{Engine, Pending};
use crate::directory::CacheState;
use crate::engine::{Action, PageStore, ProtocolError};
use crate::message::Message;
use crate::types::{Access, Gfn, NodeId, Rights, VcpuId};

impl Engine {
    pub(super) fn local_fault(
        &mut self,
        gfn: Gfn,
        access: Access,
        vcpu: VcpuId,
        out: &mut Vec<Action>,
    ) {
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
            if e.waiters.capacity() == 0 {
                e.waiters = self.spare.waiters();
            }
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
            out.push(Action::Resume { vcpu });
            return;
        }
        if rights.is_none() {
            self.make_room(gfn, out);
        }
        let mut waiters = self.spare.waiters();
        waiters.push((vcpu, access));
        self.request(gfn, access.is_write(), waiters, out);
    }
    /// Sets the stable state of `gfn`, keeping the count of cached remote frames.
    pub(super) fn set_state(&mut self, gfn: Gfn, new: CacheState) {
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
    pub(super) fn request(
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
    pub(super) fn cache_inv(&mut self, from: NodeId, msg: Message, out: &mut Vec<Action>) {
        let gfn = msg.gfn();
        let i = gfn.0 as usize;
        if self.cache.get(i) == CacheState::Shared && self.park_if_fresh(from, msg, out) {
            return;
        }
        match (self.cache.get(i), self.pending.get_mut(&gfn)) {
            // A read of ours is in flight and the home already counts us as a sharer: the
            // data is on its way, so serve our read first.
            (CacheState::Invalid, Some(p)) if !p.write && p.deferred.is_none() => {
                self.counters.deferred += 1;
                p.deferred = Some(msg);
            }
            // Shared, possibly with an upgrade in flight that the home has not ordered yet:
            // drop the copy now (the upgrade will then be answered with data), once it is no
            // longer fresh.
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
    pub(super) fn cache_forward(&mut self, from: NodeId, msg: Message, out: &mut Vec<Action>) {
        let gfn = msg.gfn();
        let i = gfn.0 as usize;
        if self.cache.get(i) == CacheState::Modified
            && !self.pending.contains_key(&gfn)
            && self.park_if_fresh(from, msg, out)
        {
            return;
        }
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
                        self.send(requester, Message::DataShared { gfn }, out);
                    }
                    self.send(from, Message::WriteBack { gfn }, out);
                }
                Message::FwdWrite { requester, .. } if requester != self.id => {
                    self.set_state(gfn, CacheState::Invalid);
                    out.push(Action::Unmap { gfn });
                    self.send(requester, Message::DataExclusive { gfn }, out);
                }
                _ => self.unexpected(from, &msg, out),
            },
            _ => self.unexpected(from, &msg, out),
        }
    }
    /// Parks `msg` (an invalidation or forward from the home) while its stable copy is fresh
    /// (see [`Engine::set_hold`]); true if it was taken. Only one such message can be on its
    /// way (the home waits for our answer), so a second one is refused.
    fn park_if_fresh(&mut self, from: NodeId, msg: Message, out: &mut Vec<Action>) -> bool {
        let gfn = msg.gfn();
        let Some(&until) = self.fresh.get(&gfn) else { return false };
        if self.held.contains_key(&gfn) {
            self.unexpected(from, &msg, out);
        } else {
            self.counters.deferred += 1;
            self.held.insert(gfn, (msg, until));
        }
        true
    }
    /// Handles a deferred message from the home now that our own data has arrived.
    pub(super) fn release(&mut self, deferred: Message, out: &mut Vec<Action>) {
        let home = self.cfg.home(deferred.gfn());
        match deferred {
            Message::Inv { .. } => self.cache_inv(home, deferred, out),
            _ => self.cache_forward(home, deferred, out),
        }
    }
    pub(super) fn cache_fill<S: PageStore>(
        &mut self,
        from: NodeId,
        msg: &Message,
        page: Option<&[u8]>,
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
        // A message from ourselves (only ever the loopback: `peer_message` refuses our own
        // id) carries no page: our frame is the home's frame.
        if let Some(page) = page.filter(|_| from != self.id) {
            store.install(gfn, page);
        }
        let (new, rights) = match msg {
            Message::DataShared { .. } => (CacheState::Shared, Rights::ReadExec),
            _ => (CacheState::Modified, Rights::ReadWriteExec),
        };
        self.set_state(gfn, new);
        out.push(Action::Map { gfn, rights });
        let mut waiting = p.waiters;
        for &(vcpu, a) in &waiting {
            if rights.allows(a) {
                out.push(Action::Resume { vcpu });
            }
        }
        waiting.retain(|&(_, a)| !rights.allows(a));
        if self.hold > 0 {
            self.fresh.insert(gfn, self.now.saturating_add(self.hold));
        }
        if let Some(deferred) = p.deferred {
            if self.hold == 0 {
                self.release(deferred, out);
            } else {
                self.held.insert(gfn, (deferred, self.now.saturating_add(self.hold)));
            }
        }
        if waiting.is_empty() {
            self.spare.keep_waiters(waiting);
        } else {
            self.request(gfn, true, waiting, out);
        }
    }
}
