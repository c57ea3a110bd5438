//! The glue between two engines over an in-memory "transport", with fake nodes that log every
//! effect in order.

use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

use super::*;
use crate::hv::dispatch::Fault;
use gestalt_coherence::PAGE_SIZE;

#[derive(Default)]
struct FakeNode {
    frames: BTreeMap<u64, Vec<u8>>,
    rights: BTreeMap<u64, Option<Rights>>,
    log: Vec<String>,
    resumed: Vec<VcpuId>,
    refuse_maps: bool,
}

impl PageStore for FakeNode {
    fn copy_out(&mut self, gfn: Gfn, out: &mut Vec<u8>) {
        self.log.push(format!("copy {}", gfn.0));
        out.extend_from_slice(self.frames.get(&gfn.0).map_or(&[0u8; PAGE_SIZE][..], |f| &f[..]));
    }
    fn install(&mut self, gfn: Gfn, data: &[u8]) {
        self.log.push(format!("install {}", gfn.0));
        self.frames.insert(gfn.0, data.to_vec());
    }
}

impl LocalNode for FakeNode {
    fn set_rights(&mut self, gfn: Gfn, rights: Option<Rights>) -> Result<(), &'static str> {
        if self.refuse_maps && rights.is_some() {
            return Err("no tables left");
        }
        self.log.push(format!("rights {} {rights:?}", gfn.0));
        self.rights.insert(gfn.0, rights);
        Ok(())
    }
    fn flush_barrier(&mut self) {
        self.log.push("barrier".into());
    }
    fn resume(&mut self, vcpu: VcpuId) {
        self.log.push(format!("resume {}", vcpu.0));
        self.resumed.push(vcpu);
    }
    fn release(&mut self, gfn: Gfn) {
        self.log.push(format!("release {}", gfn.0));
        self.frames.remove(&gfn.0);
    }
}

/// Two nodes, 8 pages: 0..4 homed at node 0, 4..8 at node 1.
fn pair() -> [(Coherent, FakeNode); 2] {
    let cfg = Config::ranges(2, 8);
    [
        (Coherent::new(NodeId(0), cfg.clone()), FakeNode::default()),
        (Coherent::new(NodeId(1), cfg), FakeNode::default()),
    ]
}

/// Delivers every queued message, in order, until both outboxes are empty; returns how many.
fn deliver_all(nodes: &mut [(Coherent, FakeNode); 2]) -> usize {
    let mut n = 0;
    loop {
        let mut moved = false;
        for from in 0..2 {
            while let Some((to, bytes)) = nodes[from].0.next_outgoing() {
                let (c, node) = &mut nodes[usize::from(to.0)];
                c.message(node, NodeId(from as u8), &bytes, 0).unwrap();
                n += 1;
                moved = true;
            }
        }
        if !moved {
            return n;
        }
    }
}

#[test]
fn a_one_node_cluster_serves_every_fault_locally_without_messages() {
    let mut c = Coherent::new(NodeId(0), Config::ranges(1, 16));
    let mut node = FakeNode::default();
    assert_eq!(c.fault(&mut node, Gfn(3), false, VcpuId(0), 0), Fault::Mapped);
    assert_eq!(node.rights[&3], Some(Rights::ReadExec));
    assert_eq!(c.fault(&mut node, Gfn(3), true, VcpuId(1), 0), Fault::Mapped);
    assert_eq!(node.rights[&3], Some(Rights::ReadWriteExec));
    assert!(c.next_outgoing().is_none());
    assert_eq!(c.counters().sent, 0);
}

#[test]
fn a_remote_read_parks_the_vcpu_until_the_page_arrives_with_the_homes_contents() {
    let mut n = pair();
    n[0].1.frames.insert(2, vec![0xAB; PAGE_SIZE]);
    let (c1, node1) = &mut n[1];
    assert_eq!(c1.fault(node1, Gfn(2), false, VcpuId(5), 0), Fault::Wait);
    assert_eq!(node1.rights.get(&2), None, "nothing is mapped before the data is there");
    assert_eq!(deliver_all(&mut n), 2, "a read miss served by the home costs two messages");
    let node1 = &n[1].1;
    assert_eq!(node1.frames[&2], vec![0xAB; PAGE_SIZE]);
    assert_eq!(node1.rights[&2], Some(Rights::ReadExec));
    assert_eq!(node1.resumed, [VcpuId(5)]);
    // The page was installed before it was mapped, and mapped before the vCPU ran.
    let at = |s: &str| node1.log.iter().position(|l| l == s).unwrap();
    assert!(at("install 2") < at("rights 2 Some(ReadExec)"));
    assert!(at("rights 2 Some(ReadExec)") < at("resume 5"));
}

#[test]
fn a_remote_write_takes_the_homes_right_away_behind_a_barrier_before_the_page_leaves() {
    let mut n = pair();
    let (c0, node0) = &mut n[0];
    assert_eq!(c0.fault(node0, Gfn(1), true, VcpuId(0), 0), Fault::Mapped);
    node0.frames.insert(1, vec![7; PAGE_SIZE]);
    node0.log.clear();
    let (c1, node1) = &mut n[1];
    assert_eq!(c1.fault(node1, Gfn(1), true, VcpuId(4), 0), Fault::Wait);
    deliver_all(&mut n);
    let log0 = &n[0].1.log;
    let at = |s: &str| log0.iter().position(|l| l == s).unwrap_or(usize::MAX);
    assert!(at("rights 1 None") < at("barrier"), "{log0:?}");
    assert!(at("barrier") < at("copy 1"), "the copy follows the barrier: {log0:?}");
    assert_eq!(n[0].1.rights[&1], None);
    assert_eq!(n[1].1.rights[&1], Some(Rights::ReadWriteExec));
    assert_eq!(n[1].1.frames[&1], vec![7; PAGE_SIZE]);
    assert_eq!(n[0].0.stats().barriers, 1);
}

#[test]
fn bytes_that_are_no_message_are_refused_before_the_engine() {
    let mut n = pair();
    let (c0, node0) = &mut n[0];
    assert!(c0.message(node0, NodeId(1), &[0xff, 0, 1], 0).is_err());
    assert!(c0.message(node0, NodeId(1), &[], 0).is_err());
    assert_eq!(c0.counters().events, 0);
    assert!(node0.log.is_empty());
}

#[test]
fn a_mapping_the_tables_refuse_is_reported_not_retried_forever() {
    let mut c = Coherent::new(NodeId(0), Config::ranges(1, 4));
    let mut node = FakeNode { refuse_maps: true, ..FakeNode::default() };
    assert_eq!(c.fault(&mut node, Gfn(0), true, VcpuId(0), 0), Fault::Deny("no tables left"));
    assert_eq!(c.stats().map_failures, 1);
}

#[test]
fn a_message_the_transport_could_not_take_keeps_its_place() {
    let mut n = pair();
    let (c1, node1) = &mut n[1];
    c1.fault(node1, Gfn(0), false, VcpuId(0), 0);
    c1.fault(node1, Gfn(1), false, VcpuId(1), 0);
    let first = c1.next_outgoing().unwrap();
    c1.push_back_outgoing(first.0, first.1.clone());
    assert_eq!(c1.next_outgoing(), Some(first));
}

#[test]
fn the_profile_counts_remote_faults_by_kind_messages_pages_and_latency() {
    let mut n = pair();
    let (c1, node1) = &mut n[1];
    assert_eq!(c1.fault(node1, Gfn(2), false, VcpuId(5), 100), Fault::Wait);
    deliver_all(&mut n);
    let (c1, node1) = &mut n[1];
    assert_eq!(c1.fault(node1, Gfn(2), true, VcpuId(5), 200), Fault::Wait);
    // The upgrade's messages, delivered with the clock at 900 µs.
    for from in [1usize, 0] {
        while let Some((to, bytes)) = n[from].0.next_outgoing() {
            let (c, node) = &mut n[usize::from(to.0)];
            c.message(node, NodeId(from as u8), &bytes, 900).unwrap();
        }
    }
    let s = n[1].0.fault_stats();
    assert_eq!((s.read_miss, s.write_miss, s.upgrade), (1, 0, 1));
    assert_eq!(s.messages_out, 2);
    assert_eq!(s.pages_in, 1, "the upgrade needed no page");
    assert_eq!(s.latency[9], 1, "700 µs lands in [512, 1024)");
    assert_eq!(s.hottest(1), vec![(2, 2)]);
    n[1].0.reset_fault_stats();
    assert_eq!(n[1].0.fault_stats().remote_faults(), 0);
}

#[test]
fn outgoing_messages_carry_the_callers_framing_in_front_of_the_engines_bytes() {
    let cfg = Config::ranges(2, 8);
    let mut c = Coherent::new(NodeId(1), cfg).with_prefix(&[0x47, 1]);
    let mut node = FakeNode::default();
    c.fault(&mut node, Gfn(0), false, VcpuId(0), 0);
    let (to, bytes) = c.next_outgoing().unwrap();
    assert_eq!(to, NodeId(0));
    assert_eq!(&bytes[..2], &[0x47, 1]);
    assert!(Message::decode(&bytes[2..]).is_ok());
}

#[test]
fn at_the_cache_limit_a_fault_evicts_a_copy_and_its_frame_is_handed_back() {
    let mut n = pair();
    n[1].0.set_cache_limit(1);
    n[0].1.frames.insert(0, vec![1; PAGE_SIZE]);
    n[0].1.frames.insert(1, vec![2; PAGE_SIZE]);
    let (c1, node1) = &mut n[1];
    assert_eq!(c1.fault(node1, Gfn(0), false, VcpuId(4), 0), Fault::Wait);
    deliver_all(&mut n);
    assert_eq!(n[1].1.frames[&0], vec![1; PAGE_SIZE]);
    // A second remote page: the Shared copy of page 0 goes first, its frame at once.
    let (c1, node1) = &mut n[1];
    assert_eq!(c1.fault(node1, Gfn(1), false, VcpuId(4), 0), Fault::Wait);
    assert!(n[1].1.log.iter().any(|l| l == "release 0"), "{:?}", n[1].1.log);
    deliver_all(&mut n);
    assert_eq!(n[1].1.frames[&1], vec![2; PAGE_SIZE]);
    assert_eq!(n[1].0.counters().evictions, 1);
}

#[test]
fn an_evicted_modified_copy_keeps_its_frame_until_the_home_has_the_page() {
    let mut n = pair();
    n[1].0.set_cache_limit(1);
    let (c1, node1) = &mut n[1];
    assert_eq!(c1.fault(node1, Gfn(0), true, VcpuId(4), 0), Fault::Wait);
    deliver_all(&mut n);
    n[1].1.frames.insert(0, vec![9; PAGE_SIZE]); // the vCPU wrote the page
    let (c1, node1) = &mut n[1];
    c1.fault(node1, Gfn(1), false, VcpuId(4), 0);
    assert!(!n[1].1.log.iter().any(|l| l == "release 0"), "freed before the PutAck");
    deliver_all(&mut n);
    let log = &n[1].1.log;
    assert!(log.iter().any(|l| l == "release 0"), "{log:?}");
    assert_eq!(n[0].1.frames[&0], vec![9; PAGE_SIZE], "the write came home");
}

/// Heap allocations made by this thread, for the steady-state measurements (the engine's
/// allocation test uses the same counting allocator).
#[path = "../../../../coherence/tests/support/counting.rs"]
mod counting;

/// A node whose frames, tables and vCPUs cost no heap after it is built, counting page copies.
struct QuietNode {
    frames: Vec<[u8; PAGE_SIZE]>,
    rights: Vec<Option<Rights>>,
    copies_out: u64,
    installs: u64,
}

impl QuietNode {
    fn new(pages: usize) -> QuietNode {
        QuietNode {
            frames: vec![[0; PAGE_SIZE]; pages],
            rights: vec![None; pages],
            copies_out: 0,
            installs: 0,
        }
    }
}

impl PageStore for QuietNode {
    fn copy_out(&mut self, gfn: Gfn, out: &mut Vec<u8>) {
        self.copies_out += 1;
        out.extend_from_slice(&self.frames[gfn.0 as usize]);
    }
    fn install(&mut self, gfn: Gfn, data: &[u8]) {
        self.installs += 1;
        self.frames[gfn.0 as usize].copy_from_slice(data);
    }
}

impl LocalNode for QuietNode {
    fn set_rights(&mut self, gfn: Gfn, rights: Option<Rights>) -> Result<(), &'static str> {
        self.rights[gfn.0 as usize] = rights;
        Ok(())
    }
    fn flush_barrier(&mut self) {}
    fn resume(&mut self, _: VcpuId) {}
    fn release(&mut self, _: Gfn) {}
}

/// Three nodes over 24 pages (0..8 homed at node 0), moving messages as the firmware does.
struct Trio {
    nodes: Vec<(Coherent, QuietNode)>,
    /// Of the measured faults: faults, allocations, page copies by the nodes, page messages.
    faults: u64,
    allocs: u64,
    copies: u64,
    page_messages: u64,
}

impl Trio {
    fn new() -> Trio {
        let cfg = Config::ranges(3, 24);
        let nodes =
            (0..3).map(|i| (Coherent::new(NodeId(i), cfg.clone()), QuietNode::new(24))).collect();
        Trio { nodes, faults: 0, allocs: 0, copies: 0, page_messages: 0 }
    }

    fn node_copies(&self) -> u64 {
        self.nodes.iter().map(|(_, n)| n.copies_out + n.installs).sum()
    }

    /// A fault of `node`'s vCPU on `gfn`, served to completion; its costs are added to the
    /// totals if `measured`.
    fn access(&mut self, node: usize, gfn: u64, write: bool, measured: bool) {
        let (a0, c0) = (counting::allocations(), self.node_copies());
        let mut pages = 0;
        let (c, n) = &mut self.nodes[node];
        let vcpu = VcpuId(node as u16 * 10);
        if c.fault(n, Gfn(gfn), write, vcpu, 0) == Fault::Wait {
            loop {
                let mut moved = false;
                for from in 0..self.nodes.len() {
                    while let Some((to, bytes)) = self.nodes[from].0.next_outgoing() {
                        let (c, n) = &mut self.nodes[usize::from(to.0)];
                        c.message(n, NodeId(from as u8), &bytes, 0).unwrap();
                        pages += u64::from(bytes.len() > PAGE_SIZE);
                        self.nodes[from].0.recycle(bytes);
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        let access = if write { Access::Write } else { Access::Read };
        assert!(self.nodes[node].1.rights[gfn as usize].is_some_and(|r| r.allows(access)));
        if measured {
            self.faults += 1;
            self.allocs += counting::allocations() - a0;
            self.copies += self.node_copies() - c0;
            self.page_messages += pages;
        }
    }
}

/// One case of the per-fault cost table: `round` serves faults of the case on a trio
/// (measured) and the faults that set the next round up alike (not measured).
struct Case {
    name: &'static str,
    limit: Option<usize>,
    round: fn(&mut Trio, bool),
}

const CASES: &[Case] = &[
    // node 1 reads page 0 (ReadReq, DataShared); node 0 writes it (Inv, InvAck).
    Case {
        name: "read miss",
        limit: None,
        round: |t, m| {
            t.access(1, 0, false, m);
            t.access(0, 0, true, false);
        },
    },
    // node 1 writes page 1 (WriteReq, DataExclusive); node 0 takes it back.
    Case {
        name: "write miss",
        limit: None,
        round: |t, m| {
            t.access(1, 1, true, m);
            t.access(0, 1, true, false);
        },
    },
    // node 1 reads page 2, then writes it (WriteReq, Grant); node 0 takes it back.
    Case {
        name: "upgrade",
        limit: None,
        round: |t, m| {
            t.access(1, 2, false, false);
            t.access(1, 2, true, m);
            t.access(0, 2, true, false);
        },
    },
    // nodes 1 and 2 write page 3 in turn, each served by the other (WriteReq, FwdWrite, data).
    Case {
        name: "3-hop write",
        limit: None,
        round: |t, m| {
            t.access(1, 3, true, m);
            t.access(2, 3, true, m);
        },
    },
    // node 1, with one frame for remote pages, writes pages 4 and 5 in turn: each fault writes
    // the other back (PutModified, PutAck) beside its own WriteReq, DataExclusive.
    Case {
        name: "eviction write-back",
        limit: Some(1),
        round: |t, m| {
            t.access(1, 4, true, m);
            t.access(1, 5, true, m);
        },
    },
];

/// (allocations, page copies by the nodes, page messages) per measured fault of `case` in
/// steady state: after a warm-up, over `rounds` rounds.
fn per_fault(case: &Case, rounds: u64) -> (f64, f64, f64) {
    let mut t = Trio::new();
    if let Some(l) = case.limit {
        t.nodes[1].0.set_cache_limit(l);
    }
    for _ in 0..20 {
        (case.round)(&mut t, false);
    }
    for _ in 0..rounds {
        (case.round)(&mut t, true);
    }
    let f = t.faults as f64;
    (t.allocs as f64 / f, t.copies as f64 / f, t.page_messages as f64 / f)
}

/// Steady state on the firmware path (engine, glue, codec): no heap allocation per fault in
/// any case, and a page crosses with two copies (out of the frame into the outgoing buffer,
/// from the received bytes into the frame). Before: 5-12 allocations and 4 copies per page.
/// `cargo test -p gestalt-firmware per_fault_costs -- --nocapture` prints the table.
#[test]
fn per_fault_costs_in_steady_state_are_no_allocation_and_two_copies_per_page() {
    for case in CASES {
        let (allocs, copies, pages) = per_fault(case, 200);
        std::println!(
            "{:<20} {allocs:>6.2} allocations {copies:>5.2} page copies {pages:>5.2} page messages per fault",
            case.name
        );
        assert_eq!(allocs, 0.0, "{}: heap allocations per fault", case.name);
        assert_eq!(copies, 2.0 * pages, "{}: page copies per page sent", case.name);
    }
}
