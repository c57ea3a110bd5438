//! Eviction: a node gives up its copy of a frame homed elsewhere to reuse the memory, through
//! the home — a Shared copy with `PutShared`, a Modified one with `PutModified` carrying the
//! page — and keeps the frame's memory until the home's `PutAck`, because a forward the home
//! sent before it saw the eviction may still need the contents. Faults on the frame meanwhile
//! wait for the `PutAck`, so that their request reaches the home after the eviction.
//!
//! Crossings (each the only one possible, by per-peer FIFO): an `Inv` that crossed a
//! `PutShared` is acked from Invalid; a forward that crossed a `PutModified` is served from the
//! kept frame, and the home takes the `PutModified` as that forward's write-back.

use alloc::vec::Vec;

use super::{Busy, Engine, Txn};
use crate::directory::{CacheState, DirState};
use crate::engine::{Action, PageStore, ProtocolError};
use crate::message::Message;
use crate::types::{Access, Gfn, NodeId, NodeSet, VcpuId};

/// A copy given up, until the home's `PutAck`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Evicting {
    /// The copy was Modified (a `PutModified` is on its way).
    pub(super) modified: bool,
    /// The one `Inv` or forward that can cross the eviction has been answered.
    pub(super) answered: bool,
    /// vCPUs that faulted on the frame meanwhile, served by a request after the `PutAck`.
    pub(super) waiters: Vec<(VcpuId, Access)>,
}

impl Engine {
    /// [`crate::Event::Evict`].
    pub(super) fn evict_request(&mut self, gfn: Gfn, out: &mut Vec<Action>) {
        if !self.cfg.contains(gfn) {
            return self.error(ProtocolError::GfnOutOfRange { gfn }, out);
        }
        if !self.evictable(gfn) {
            return self.error(ProtocolError::CannotEvict { gfn }, out);
        }
        self.evict(gfn, out);
    }

    /// Whether [`crate::Event::Evict`] for `gfn` would be taken: a stable copy of a frame
    /// homed elsewhere, with nothing in flight or parked for it.
    pub fn can_evict(&self, gfn: Gfn) -> bool {
        self.cfg.contains(gfn) && self.evictable(gfn)
    }

    fn evictable(&self, gfn: Gfn) -> bool {
        self.cfg.home(gfn) != self.id
            && self.cache.get(gfn.0 as usize) != CacheState::Invalid
            && !self.pending.contains_key(&gfn)
            && !self.evicting.contains_key(&gfn)
            && !self.held.contains_key(&gfn)
    }

    fn evict(&mut self, gfn: Gfn, out: &mut Vec<Action>) {
        let modified = self.cache.get(gfn.0 as usize) == CacheState::Modified;
        self.set_state(gfn, CacheState::Invalid);
        self.counters.evictions += 1;
        // The unmap (with its INVEPT) comes before the copy the PutModified takes.
        out.push(Action::Unmap { gfn });
        self.evicting.insert(gfn, Evicting { modified, answered: false, waiters: Vec::new() });
        let msg = if modified { Message::PutModified { gfn } } else { Message::PutShared { gfn } };
        self.send(self.cfg.home(gfn), msg, out);
    }

    /// Before a fault on `gfn` takes a new frame: at the cache limit, evict another copy.
    pub(super) fn make_room(&mut self, gfn: Gfn, out: &mut Vec<Action>) {
        let Some(limit) = self.cache_limit else { return };
        if self.cfg.home(gfn) == self.id
            || self.cached_remote == 0
            || self.remote_frames_in_use() < limit
        {
            return;
        }
        let pages = self.cfg.pages;
        for k in 0..pages {
            let g = Gfn((self.hand + k) % pages);
            if g != gfn && self.cfg.contains(g) && self.evictable(g) {
                self.hand = (g.0 + 1) % pages;
                return self.evict(g, out);
            }
        }
    }

    /// A forward that crossed our `PutModified`: served from the frame we still hold, keeping
    /// no copy; the home takes the `PutModified` as the write-back.
    pub(super) fn forward_while_evicting(
        &mut self,
        from: NodeId,
        msg: &Message,
        out: &mut Vec<Action>,
    ) {
        let gfn = msg.gfn();
        match *msg {
            Message::FwdRead { requester, .. } if requester != self.id => {
                if requester != from {
                    self.send(requester, Message::DataShared { gfn }, out);
                }
            }
            Message::FwdWrite { requester, .. } if requester != self.id => {
                self.send(requester, Message::DataExclusive { gfn }, out);
            }
            _ => return self.unexpected(from, msg, out),
        }
        if let Some(e) = self.evicting.get_mut(&gfn) {
            e.answered = true;
        }
    }

    /// The home has our eviction: the frame's memory is free; faults that waited request it.
    pub(super) fn cache_put_ack(&mut self, from: NodeId, msg: &Message, out: &mut Vec<Action>) {
        let gfn = msg.gfn();
        let Some(e) = self.evicting.remove(&gfn) else {
            return self.unexpected(from, msg, out);
        };
        if e.waiters.is_empty() {
            self.spare.keep_waiters(e.waiters);
        } else {
            let write = e.waiters.iter().any(|&(_, a)| a.is_write());
            self.make_room(gfn, out);
            self.request(gfn, write, e.waiters, out);
        }
    }

    pub(super) fn dir_put_shared(&mut self, from: NodeId, gfn: Gfn, out: &mut Vec<Action>) {
        let i = self.cfg.home_index(gfn);
        let mut sharers = self.dir.sharers(i);
        let crossed_inv = matches!(
            self.busy.get(&gfn),
            Some(Busy { txn: Txn::CollectAcks { waiting, .. }, .. }) if waiting.contains(from)
        );
        // A reader served by a forward may drop its copy before the owner's write-back, which
        // lists it as a sharer, reaches us.
        if let Some(Busy { txn: Txn::AwaitWriteBack { requester, dropped }, .. }) =
            self.busy.get_mut(&gfn)
        {
            if *requester == from && !*dropped {
                *dropped = true;
                return self.send(from, Message::PutAck { gfn }, out);
            }
        }
        if self.dir.state(i) == DirState::Shared && sharers.contains(from) {
            sharers.remove(from);
            if sharers.is_empty() && !self.dir.busy(i) {
                self.dir.set_uncached(i);
            } else {
                self.dir.set_shared(i, &sharers);
            }
        } else if !crossed_inv {
            return self.unexpected(from, &Message::PutShared { gfn }, out);
        }
        self.send(from, Message::PutAck { gfn }, out);
    }

    pub(super) fn dir_put_modified<S: PageStore>(
        &mut self,
        from: NodeId,
        msg: &Message,
        page: Option<&[u8]>,
        store: &mut S,
        out: &mut Vec<Action>,
    ) {
        let gfn = msg.gfn();
        let i = self.cfg.home_index(gfn);
        if self.dir.state(i) == DirState::Modified && self.dir.owner(i) == from {
            let reader = match self.busy.get(&gfn) {
                None => None,
                Some(Busy { txn: Txn::AwaitWriteBack { requester, dropped }, .. }) => {
                    Some((*requester, *dropped))
                }
                Some(_) => return self.unexpected(from, msg, out),
            };
            if let Some(page) = page {
                store.install(gfn, page);
            }
            match reader {
                None => self.dir.set_uncached(i),
                // A FwdRead crossed it: the evicting owner sends the reader its data and no
                // write-back; this is the write-back.
                Some((r, dropped)) => {
                    if dropped {
                        self.dir.set_uncached(i);
                    } else {
                        let sharers: NodeSet = [r].into_iter().collect();
                        self.dir.set_shared(i, &sharers);
                    }
                    if r == self.id {
                        self.send(self.id, Message::DataShared { gfn }, out);
                    }
                    self.finish(gfn, out);
                }
            }
        }
        // Otherwise a FwdWrite crossed it: the evicting node serves the new owner from the
        // frame it still holds, and these contents are already superseded.
        self.send(from, Message::PutAck { gfn }, out);
    }
}
