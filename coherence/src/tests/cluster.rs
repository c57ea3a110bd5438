//! A tiny in-order cluster for case-by-case tests: engines over plain memory, one global FIFO
//! network (a legal schedule: every per-peer FIFO order is respected), every message passed
//! through the wire codec (the page copied out of the frame into the wire bytes, installed
//! from them), every sent message recorded.

use std::collections::{BTreeMap, VecDeque};
use std::vec::Vec;

use crate::{
    Access, Action, Config, Engine, Event, Gfn, MemStore, Message, NodeId, PageStore, Rights,
    VcpuId,
};

pub struct Cluster {
    pub engines: Vec<Engine>,
    pub stores: Vec<MemStore>,
    /// (from, to, encoded message).
    pub net: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    /// (from, to, kind) of every message sent since the last `take_log`.
    pub log: Vec<(u8, u8, &'static str)>,
    pub maps: Vec<BTreeMap<Gfn, Rights>>,
    pub resumed: Vec<(NodeId, VcpuId)>,
}

impl Cluster {
    pub fn new(cfg: &Config) -> Cluster {
        let n = usize::from(cfg.nodes);
        Cluster {
            engines: (0..n).map(|i| Engine::new(NodeId(i as u8), cfg.clone())).collect(),
            stores: (0..n).map(|_| MemStore::new()).collect(),
            net: VecDeque::new(),
            log: Vec::new(),
            maps: (0..n).map(|_| BTreeMap::new()).collect(),
            resumed: Vec::new(),
        }
    }

    fn apply(&mut self, node: NodeId, actions: Vec<Action>) {
        for a in actions {
            let sends_page = matches!(a, Action::SendPage { .. });
            match a {
                Action::SendPage { to, msg } | Action::Send { to, msg } => {
                    assert_eq!(sends_page, msg.has_page(), "a page goes by SendPage, only");
                    let mut buf = Vec::new();
                    let store = &mut self.stores[node.index()];
                    msg.encode_with(&mut buf, |b| store.copy_out(msg.gfn(), b));
                    let (msg2, _) = Message::decode(&buf).expect("own encoding decodes");
                    assert_eq!(msg2, msg);
                    self.log.push((node.0, to.0, msg.name()));
                    self.net.push_back((node, to, buf));
                }
                Action::Map { gfn, rights } => {
                    self.maps[node.index()].insert(gfn, rights);
                }
                Action::Unmap { gfn } => {
                    self.maps[node.index()].remove(&gfn);
                }
                Action::Downgrade { gfn } => {
                    self.maps[node.index()].insert(gfn, Rights::ReadExec);
                }
                Action::Resume { vcpu } => self.resumed.push((node, vcpu)),
                Action::Stalled { .. } => {}
                Action::Error(e) => panic!("node {}: protocol error: {e}", node.0),
            }
        }
    }

    /// Queues a fault without delivering anything.
    pub fn fault_only(&mut self, node: u8, gfn: u64, access: Access, vcpu: u16) {
        let ev = Event::LocalFault { gfn: Gfn(gfn), access, vcpu: VcpuId(vcpu) };
        let n = usize::from(node);
        let acts = self.engines[n].handle(ev, &mut self.stores[n]);
        self.apply(NodeId(node), acts);
    }

    /// `node` gives up its copy of `gfn`, then everything is delivered.
    pub fn evict(&mut self, node: u8, gfn: u64) {
        let n = usize::from(node);
        let acts = self.engines[n].handle(Event::Evict { gfn: Gfn(gfn) }, &mut self.stores[n]);
        self.apply(NodeId(node), acts);
        self.run();
    }

    /// A timer event on `node`, then delivery of whatever it sends.
    pub fn timer(&mut self, node: u8, now: u64) {
        let n = usize::from(node);
        let acts = self.engines[n].handle(Event::Timer { now }, &mut self.stores[n]);
        self.apply(NodeId(node), acts);
        self.run();
    }

    /// Hands `node` one message as if it came from `from` and carries out what it answers
    /// except errors, which are returned (the raw actions, for tests of refused input).
    pub fn deliver_raw(&mut self, from: NodeId, to: NodeId, msg: Message) -> Vec<Action> {
        self.deliver_page(from, to, msg, None)
    }

    /// [`Cluster::deliver_raw`] with a page (of any length) beside the message.
    pub fn deliver_page(
        &mut self,
        from: NodeId,
        to: NodeId,
        msg: Message,
        page: Option<&[u8]>,
    ) -> Vec<Action> {
        let ev = Event::Message { from, msg, page };
        let acts = self.engines[to.index()].handle(ev, &mut self.stores[to.index()]);
        let applied = acts.iter().filter(|a| !matches!(a, Action::Error(_))).cloned().collect();
        self.apply(to, applied);
        acts
    }

    /// Takes the first message in flight from `from` to `to` off the network (to hold it back
    /// or deliver it out of the global order; per-peer FIFO is the caller's to keep).
    pub fn take(&mut self, from: u8, to: u8) -> Message {
        self.take_page(from, to).0
    }

    /// [`Cluster::take`], with the message's page (empty for a control message).
    pub fn take_page(&mut self, from: u8, to: u8) -> (Message, Vec<u8>) {
        let i = self
            .net
            .iter()
            .position(|(f, t, _)| (f.0, t.0) == (from, to))
            .expect("a message in flight between these nodes");
        let bytes = self.net.remove(i).expect("index is in range").2;
        let (msg, page) = Message::decode(&bytes).expect("own encoding decodes");
        (msg, page.unwrap_or_default().to_vec())
    }

    /// Delivers messages in global FIFO order until the network is empty.
    pub fn run(&mut self) {
        while let Some((from, to, bytes)) = self.net.pop_front() {
            let (msg, page) = Message::decode(&bytes).expect("own encoding decodes");
            let acts = self.engines[to.index()]
                .handle(Event::Message { from, msg, page }, &mut self.stores[to.index()]);
            self.apply(to, acts);
        }
    }

    /// A fault served to completion; returns the kinds of the messages it cost.
    pub fn access(&mut self, node: u8, gfn: u64, access: Access) -> Vec<&'static str> {
        self.log.clear();
        self.fault_only(node, gfn, access, u16::from(node) * 100);
        self.run();
        let r = self.maps[usize::from(node)].get(&Gfn(gfn)).copied();
        assert!(r.is_some_and(|r| r.allows(access)), "fault not served: node {node} has {r:?}");
        self.log.iter().map(|&(_, _, k)| k).collect()
    }

    /// A guest write of `value` into the first byte, through node's writable mapping.
    pub fn write(&mut self, node: u8, gfn: u64, value: u8) {
        if self.maps[usize::from(node)].get(&Gfn(gfn)) != Some(&Rights::ReadWriteExec) {
            self.access(node, gfn, Access::Write);
        }
        self.stores[usize::from(node)].frame_mut(Gfn(gfn))[0] = value;
    }

    /// A guest read of the first byte through node's mapping.
    pub fn read(&mut self, node: u8, gfn: u64) -> u8 {
        if !self.maps[usize::from(node)].contains_key(&Gfn(gfn)) {
            self.access(node, gfn, Access::Read);
        }
        self.stores[usize::from(node)].frame(Gfn(gfn))[0]
    }
}
