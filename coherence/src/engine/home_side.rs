//! The home side of the engine: the directory entries of the frames homed at this node, the
//! transactions that serialize requests per frame (invalidations collected, a forwarded read
//! awaiting its write-back) and the requests queued behind them.

use alloc::vec::Vec;

use super::{Busy, Engine, Txn};
use crate::directory::DirState;
use crate::engine::{Action, PageStore};
use crate::message::Message;
use crate::types::{Gfn, NodeId, NodeSet};

impl Engine {
    pub(super) fn dir_request(
        &mut self,
        from: NodeId,
        gfn: Gfn,
        write: bool,
        out: &mut Vec<Action>,
    ) {
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
    pub(super) fn dir_serve(&mut self, r: NodeId, gfn: Gfn, write: bool, out: &mut Vec<Action>) {
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
                self.send(r, Message::DataShared { gfn }, out);
            }
            DirState::Uncached => {
                self.dir.set_modified(i, r);
                self.send(r, Message::DataExclusive { gfn }, out);
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
                let queue = self.spare.queue();
                self.busy.insert(gfn, Busy { txn, queue });
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
                    let queue = self.spare.queue();
                    self.busy.insert(gfn, Busy { txn, queue });
                    self.send(owner, Message::FwdRead { gfn, requester: r }, out);
                }
            }
        }
    }

    pub(super) fn grant_write(
        &mut self,
        r: NodeId,
        gfn: Gfn,
        upgrade: bool,
        out: &mut Vec<Action>,
    ) {
        let i = self.cfg.home_index(gfn);
        self.dir.set_modified(i, r);
        if upgrade {
            self.send(r, Message::Grant { gfn }, out);
        } else {
            self.send(r, Message::DataExclusive { gfn }, out);
        }
    }

    pub(super) fn dir_inv_ack(&mut self, from: NodeId, msg: &Message, out: &mut Vec<Action>) {
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

    pub(super) fn dir_write_back<S: PageStore>(
        &mut self,
        from: NodeId,
        msg: &Message,
        page: Option<&[u8]>,
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
        if let Some(page) = page.filter(|_| from != self.id) {
            store.install(gfn, page);
        }
        let mut sharers: NodeSet = [from, requester].into_iter().collect();
        if dropped {
            sharers.remove(requester);
        }
        self.dir.set_shared(i, &sharers);
        if requester == self.id {
            // The owner sent the data only once, to us as home; our own read is served now.
            self.send(self.id, Message::DataShared { gfn }, out);
        }
        self.finish(gfn, out);
    }

    /// Ends the transaction on `gfn` and serves the requests queued behind it.
    pub(super) fn finish(&mut self, gfn: Gfn, out: &mut Vec<Action>) {
        let i = self.cfg.home_index(gfn);
        self.dir.set_busy(i, false);
        let Some(mut b) = self.busy.remove(&gfn) else { return };
        while let Some((r, write)) = b.queue.pop_front() {
            self.dir_serve(r, gfn, write, out);
            if let Some(next) = self.busy.get_mut(&gfn) {
                next.queue.append(&mut b.queue);
                break;
            }
        }
        self.spare.keep_queue(b.queue);
    }
}
