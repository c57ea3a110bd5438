//! The message cost of every protocol case, exactly (docs/design.md §3: minimum cost is the
//! target). Frame 0 is homed at node 0 in these clusters.

use std::vec::Vec;

use super::cluster::Cluster;
use crate::{
    Access, Action, Config, Engine, Event, Gfn, MemStore, Message, NodeId, ProtocolError, Rights,
    VcpuId,
};

const HOME: u8 = 0;
const G: u64 = 0;

fn cluster(nodes: u16) -> Cluster {
    Cluster::new(&Config::interleaved(nodes, 64))
}

#[test]
fn read_miss_served_by_home_costs_two_messages() {
    let mut c = cluster(3);
    c.write(HOME, G, 42);
    assert_eq!(c.access(1, G, Access::Read), ["ReadReq", "DataShared"]);
    assert_eq!(c.read(1, G), 42);
    assert_eq!(c.maps[1][&Gfn(G)], Rights::ReadExec);
}

#[test]
fn read_miss_on_a_page_others_share_still_costs_two_messages() {
    let mut c = cluster(4);
    c.access(1, G, Access::Read);
    c.access(2, G, Access::Read);
    assert_eq!(c.access(3, G, Access::Exec), ["ReadReq", "DataShared"]);
}

#[test]
fn write_miss_on_a_page_no_one_caches_costs_two_messages() {
    let mut c = cluster(3);
    assert_eq!(c.access(2, G, Access::Write), ["WriteReq", "DataExclusive"]);
    assert_eq!(c.maps[2][&Gfn(G)], Rights::ReadWriteExec);
}

#[test]
fn write_to_a_page_with_k_other_sharers_costs_two_plus_two_k_messages() {
    for k in 1..=6u8 {
        let mut c = cluster(8);
        for s in 1..=k {
            c.access(s, G, Access::Read);
        }
        let log = c.access(7, G, Access::Write);
        assert_eq!(log.len(), 2 + 2 * usize::from(k), "k = {k}: {log:?}");
        assert_eq!(log.iter().filter(|&&m| m == "Inv").count(), usize::from(k));
        assert_eq!(log.iter().filter(|&&m| m == "InvAck").count(), usize::from(k));
        assert_eq!((log[0], *log.last().unwrap()), ("WriteReq", "DataExclusive"));
        for s in 1..=k {
            assert!(!c.maps[usize::from(s)].contains_key(&Gfn(G)), "sharer {s} still maps");
        }
    }
}

#[test]
fn upgrade_of_a_shared_copy_with_k_other_sharers_costs_two_plus_two_k_and_sends_no_page() {
    for k in 0..=5u8 {
        let mut c = cluster(8);
        c.write(HOME, G, 7);
        c.access(7, G, Access::Read);
        for s in 1..=k {
            c.access(s, G, Access::Read);
        }
        let pages_before: u64 = c.engines.iter().map(|e| e.counters().pages_sent).sum();
        let log = c.access(7, G, Access::Write);
        assert_eq!(log.len(), 2 + 2 * usize::from(k), "k = {k}: {log:?}");
        assert_eq!((log[0], *log.last().unwrap()), ("WriteReq", "Grant"));
        let pages_after: u64 = c.engines.iter().map(|e| e.counters().pages_sent).sum();
        assert_eq!(pages_after, pages_before, "an upgrade moves no page");
        assert_eq!(c.read(7, G), 7);
    }
}

#[test]
fn invalidating_the_home_itself_costs_no_message() {
    let mut c = cluster(4);
    c.access(HOME, G, Access::Read);
    c.access(1, G, Access::Read);
    c.access(2, G, Access::Read);
    // Sharers: home, 1, 2. Node 3 writes: only the two remote sharers cost messages.
    let log = c.access(3, G, Access::Write);
    assert_eq!(log, ["WriteReq", "Inv", "Inv", "InvAck", "InvAck", "DataExclusive"]);
    assert!(!c.maps[usize::from(HOME)].contains_key(&Gfn(G)));
}

#[test]
fn read_of_a_page_modified_elsewhere_costs_four_messages_with_a_write_back() {
    let mut c = cluster(3);
    c.write(2, G, 99);
    let log = c.access(1, G, Access::Read);
    assert_eq!(log, ["ReadReq", "FwdRead", "DataShared", "WriteBack"]);
    assert_eq!(c.log[2], (2, 1, "DataShared"), "the owner sends the data straight to the reader");
    assert_eq!(c.log[3], (2, HOME, "WriteBack"));
    assert_eq!(c.read(1, G), 99);
    assert_eq!(c.maps[2][&Gfn(G)], Rights::ReadExec, "the old owner keeps a shared copy");
    assert_eq!(c.stores[usize::from(HOME)].frame(Gfn(G))[0], 99, "home memory is current");
    // Home memory is current again, so the next reader costs only two messages.
    assert_eq!(c.access(HOME, G, Access::Read), Vec::<&str>::new());
}

#[test]
fn write_of_a_page_modified_elsewhere_costs_three_messages_and_no_ack() {
    let mut c = cluster(3);
    c.write(2, G, 5);
    let log = c.access(1, G, Access::Write);
    assert_eq!(log, ["WriteReq", "FwdWrite", "DataExclusive"]);
    assert_eq!(c.log[2], (2, 1, "DataExclusive"));
    assert!(!c.maps[2].contains_key(&Gfn(G)));
    assert_eq!(c.read(1, G), 5);
}

#[test]
fn home_access_to_a_page_no_one_else_caches_costs_no_message() {
    let mut c = cluster(3);
    assert!(c.access(HOME, G, Access::Read).is_empty());
    assert!(c.access(HOME, G, Access::Write).is_empty());
    assert!(c.access(HOME, 3, Access::Write).is_empty());
    assert_eq!(c.engines[0].counters().local_hits, 3);
}

#[test]
fn home_access_to_a_page_modified_elsewhere_costs_two_messages() {
    let mut c = cluster(3);
    c.write(1, G, 11);
    assert_eq!(c.access(HOME, G, Access::Read), ["FwdRead", "WriteBack"]);
    assert_eq!(c.read(HOME, G), 11);
    c.write(2, G, 12);
    assert_eq!(c.access(HOME, G, Access::Write), ["FwdWrite", "DataExclusive"]);
    assert_eq!(c.read(HOME, G), 12);
}

#[test]
fn remote_access_to_a_page_modified_at_home_costs_two_messages() {
    let mut c = cluster(3);
    c.write(HOME, G, 21);
    assert_eq!(c.access(1, G, Access::Read), ["ReadReq", "DataShared"]);
    assert_eq!(c.read(1, G), 21);
    assert_eq!(c.maps[0][&Gfn(G)], Rights::ReadExec);
    c.write(HOME, G, 22);
    assert_eq!(c.access(2, G, Access::Write), ["WriteReq", "DataExclusive"]);
    assert_eq!(c.read(2, G), 22);
    assert!(!c.maps[0].contains_key(&Gfn(G)));
}

#[test]
fn concurrent_faults_on_one_page_from_several_vcpus_send_one_request() {
    let mut c = cluster(3);
    for v in 0..4 {
        c.fault_only(1, G, Access::Read, v);
    }
    c.run();
    assert_eq!(c.log.iter().map(|m| m.2).collect::<Vec<_>>(), ["ReadReq", "DataShared"]);
    assert_eq!(c.resumed.len(), 4);
    assert_eq!(c.engines[1].counters().coalesced, 3);
}

#[test]
fn a_write_fault_joining_a_read_in_flight_upgrades_after_the_read_is_served() {
    let mut c = cluster(3);
    c.fault_only(1, G, Access::Read, 0);
    c.fault_only(1, G, Access::Write, 1);
    c.run();
    let kinds: Vec<_> = c.log.iter().map(|m| m.2).collect();
    assert_eq!(kinds, ["ReadReq", "DataShared", "WriteReq", "Grant"]);
    assert_eq!(c.resumed, [(NodeId(1), VcpuId(0)), (NodeId(1), VcpuId(1))]);
    assert_eq!(c.maps[1][&Gfn(G)], Rights::ReadWriteExec);
}

#[test]
fn racing_writers_are_serialized_at_the_home_and_each_is_served_once() {
    let mut c = cluster(4);
    c.access(1, G, Access::Read);
    c.access(2, G, Access::Read);
    c.fault_only(1, G, Access::Write, 10);
    c.fault_only(2, G, Access::Write, 20);
    c.fault_only(3, G, Access::Write, 30);
    c.run();
    assert_eq!(c.resumed.len(), 3 + 2);
    let writers: Vec<_> =
        (1..4).filter(|&n| c.maps[n].get(&Gfn(G)) == Some(&Rights::ReadWriteExec)).collect();
    assert_eq!(writers.len(), 1, "single writer");
    let total: usize = (0..4).filter(|&n| c.maps[n].contains_key(&Gfn(G))).count();
    assert_eq!(total, 1, "the writer alone maps the page");
    assert!(c.engines.iter().all(|e| e.busy_count() == 0 && e.pending_count() == 0));
}

#[test]
fn a_fault_the_mapping_already_allows_is_remapped_without_messages() {
    let mut c = cluster(3);
    c.access(1, G, Access::Write);
    assert!(c.access(1, G, Access::Read).is_empty());
    assert_eq!(c.engines[1].counters().spurious, 1);
}

#[test]
fn faults_and_messages_outside_guest_memory_are_errors_not_panics() {
    let mut e = Engine::new(NodeId(1), Config::interleaved(2, 8));
    let mut s = MemStore::new();
    let ev = Event::LocalFault { gfn: Gfn(8), access: Access::Read, vcpu: VcpuId(0) };
    assert_eq!(e.handle(ev, &mut s), [Action::Error(ProtocolError::GfnOutOfRange { gfn: Gfn(8) })]);
    let ev = Event::Message { from: NodeId(7), msg: Message::Inv { gfn: Gfn(1) }, page: None };
    assert_eq!(
        e.handle(ev, &mut s),
        [Action::Error(ProtocolError::UnknownNode { from: NodeId(7) })]
    );
    // gfn 2 is homed at node 0, so node 1 refuses directory traffic for it.
    let ev = Event::Message { from: NodeId(0), msg: Message::ReadReq { gfn: Gfn(2) }, page: None };
    assert!(matches!(e.handle(ev, &mut s)[..], [Action::Error(ProtocolError::NotHome { .. })]));
    // A forward naming a requester outside the cluster is refused even in the right state.
    let mut c = cluster(3);
    c.write(1, G, 1);
    let ev = Event::Message {
        from: NodeId(HOME),
        msg: Message::FwdRead { gfn: Gfn(G), requester: NodeId(9) },
        page: None,
    };
    let acts = c.engines[1].handle(ev, &mut c.stores[1]);
    assert_eq!(acts, [Action::Error(ProtocolError::UnknownNode { from: NodeId(9) })]);
    assert_eq!(e.counters().errors, 3);
}

#[test]
fn a_duplicated_message_is_reported_and_changes_nothing() {
    let mut c = cluster(3);
    c.access(1, G, Access::Read);
    let before = c.engines[1].clone();
    let dup = Event::Message {
        from: NodeId(HOME),
        msg: Message::DataShared { gfn: Gfn(G) },
        page: Some(&[0; 4096]),
    };
    let acts = c.engines[1].handle(dup, &mut c.stores[1]);
    assert!(matches!(
        acts[..],
        [Action::Error(ProtocolError::Unexpected { kind: "DataShared", .. })]
    ));
    assert_eq!(c.engines[1], before);
    let dup = Event::Message { from: NodeId(1), msg: Message::InvAck { gfn: Gfn(G) }, page: None };
    let acts = c.engines[0].handle(dup, &mut c.stores[0]);
    assert!(matches!(acts[..], [Action::Error(ProtocolError::Unexpected { kind: "InvAck", .. })]));
}

#[test]
fn a_request_outstanding_past_the_stall_limit_is_reported_once() {
    let mut e = Engine::new(NodeId(1), Config::interleaved(2, 8));
    let mut s = MemStore::new();
    e.set_stall_after(100);
    assert!(e.handle(Event::Timer { now: 1000 }, &mut s).is_empty());
    let acts =
        e.handle(Event::LocalFault { gfn: Gfn(0), access: Access::Read, vcpu: VcpuId(3) }, &mut s);
    assert_eq!(acts, [Action::Send { to: NodeId(0), msg: Message::ReadReq { gfn: Gfn(0) } }]);
    assert!(e.handle(Event::Timer { now: 1099 }, &mut s).is_empty());
    let stalled = Action::Stalled { gfn: Gfn(0), home: NodeId(0), since: 1000 };
    assert_eq!(e.handle(Event::Timer { now: 1100 }, &mut s), [stalled]);
    assert!(e.handle(Event::Timer { now: 5000 }, &mut s).is_empty());
}

#[test]
fn contiguous_range_homes_serve_their_own_range_without_messages() {
    let mut c = Cluster::new(&Config::ranges(4, 64));
    // Frames 16..32 live on node 1.
    assert!(c.access(1, 20, Access::Write).is_empty());
    assert_eq!(c.access(2, 20, Access::Read), ["ReadReq", "DataShared"]);
}

#[test]
fn a_page_just_filled_is_held_until_the_timer_before_a_deferred_forward_takes_it() {
    let mut c = cluster(4);
    for e in &mut c.engines {
        e.set_hold(10);
    }
    c.write(2, G, 1);
    c.timer(2, 10); // node 2's copy is no longer fresh
    c.log.clear();
    // Node 1 asks to write (forwarded to owner 2), node 3 to read (forwarded to the new
    // owner 1, which is still waiting for its data and defers the forward).
    c.fault_only(1, G, Access::Write, 10);
    c.fault_only(3, G, Access::Read, 30);
    c.run();
    assert_eq!(c.maps[1][&Gfn(G)], Rights::ReadWriteExec);
    assert!(c.resumed.contains(&(NodeId(1), VcpuId(10))));
    assert!(!c.maps[3].contains_key(&Gfn(G)), "the reader waits for the hold");
    assert_eq!(c.engines[1].held_count(), 1);
    c.timer(1, 9);
    assert_eq!(c.engines[1].held_count(), 1);
    c.write(1, G, 2);
    c.timer(1, 10);
    assert_eq!(c.engines[1].held_count(), 0);
    assert_eq!(c.maps[1][&Gfn(G)], Rights::ReadExec);
    assert_eq!(c.read(3, G), 2);
    let kinds: Vec<_> = c.log.iter().map(|m| m.2).collect();
    assert_eq!(
        kinds,
        ["WriteReq", "ReadReq", "FwdWrite", "FwdRead", "DataExclusive", "DataShared", "WriteBack"]
    );
}

/// The livelock seen on three Bochs nodes: the home's vCPU upgrades a page two remote
/// readers keep reading; served at once, each read took the page back before the home's
/// write retired, thousands of times over. With a hold, the home's fresh copy stays.
#[test]
fn a_page_the_home_just_took_back_for_its_own_write_stays_until_the_timer_before_a_reader_takes_it()
{
    let mut c = cluster(3);
    for e in &mut c.engines {
        e.set_hold(10);
    }
    let home = usize::from(HOME);
    c.access(1, G, Access::Read);
    c.access(2, G, Access::Read);
    c.timer(1, 10);
    c.timer(2, 10);
    assert_eq!(c.access(HOME, G, Access::Write), ["Inv", "Inv", "InvAck", "InvAck"]);
    assert!(c.resumed.contains(&(NodeId(HOME), VcpuId(u16::from(HOME) * 100))));
    // The readers come back at once: their requests wait for the hold.
    c.fault_only(1, G, Access::Read, 11);
    c.fault_only(2, G, Access::Read, 21);
    c.run();
    assert!(!c.maps[1].contains_key(&Gfn(G)) && !c.maps[2].contains_key(&Gfn(G)));
    assert_eq!(c.maps[home][&Gfn(G)], Rights::ReadWriteExec, "the home's write retires");
    c.stores[home].frame_mut(Gfn(G))[0] = 5;
    c.timer(HOME, 9);
    assert!(!c.maps[1].contains_key(&Gfn(G)), "held until the hold has passed");
    c.timer(HOME, 10);
    assert_eq!(c.read(1, G), 5);
    assert_eq!(c.read(2, G), 5);
    assert_eq!(c.engines[home].held_count(), 0);
}

#[test]
fn evicting_a_shared_copy_costs_two_messages_and_no_page() {
    let mut c = cluster(3);
    c.write(HOME, G, 3);
    c.access(1, G, Access::Read);
    c.log.clear();
    c.evict(1, G);
    assert_eq!(c.log.iter().map(|m| m.2).collect::<Vec<_>>(), ["PutShared", "PutAck"]);
    assert!(!c.maps[1].contains_key(&Gfn(G)));
    let (_, _, sharers, _) = c.engines[0].directory_entry(Gfn(G));
    assert!(!sharers.contains(NodeId(1)), "the home no longer lists it");
    // The next write invalidates no one.
    assert_eq!(c.access(2, G, Access::Write), ["WriteReq", "DataExclusive"]);
}

#[test]
fn evicting_a_modified_copy_writes_it_back_in_two_messages() {
    let mut c = cluster(3);
    c.write(1, G, 77);
    c.log.clear();
    c.evict(1, G);
    assert_eq!(c.log.iter().map(|m| m.2).collect::<Vec<_>>(), ["PutModified", "PutAck"]);
    assert_eq!(c.stores[usize::from(HOME)].frame(Gfn(G))[0], 77, "home memory is current");
    assert_eq!(c.engines[0].directory_entry(Gfn(G)).0, crate::DirState::Uncached);
    assert_eq!(c.access(2, G, Access::Read), ["ReadReq", "DataShared"]);
    assert_eq!(c.read(2, G), 77);
}

#[test]
fn a_fault_at_the_cache_limit_evicts_another_copy_first() {
    let mut c = cluster(3);
    c.engines[1].set_cache_limit(Some(1));
    c.write(1, 0, 5); // frame 0 homed at node 0
    assert_eq!(c.engines[1].remote_frames_in_use(), 1);
    let log = c.access(1, 2, Access::Read); // frame 2, homed at node 2
    assert_eq!(log, ["PutModified", "ReadReq", "PutAck", "DataShared"]);
    assert_eq!(c.engines[1].remote_frames_in_use(), 1);
    assert!(!c.maps[1].contains_key(&Gfn(0)));
    assert_eq!(c.engines[1].counters().evictions, 1);
    assert_eq!(c.read(2, 0), 5, "the evicted page was written back");
}

#[test]
fn an_evict_request_for_a_frame_homed_here_or_not_cached_is_refused() {
    let mut e = Engine::new(NodeId(1), Config::interleaved(2, 8));
    let mut s = MemStore::new();
    for g in [0u64, 1, 9] {
        let acts = e.handle(Event::Evict { gfn: Gfn(g) }, &mut s);
        assert!(matches!(acts[..], [Action::Error(_)]), "gfn {g}: {acts:?}");
    }
    assert!(!e.can_evict(Gfn(0)) && !e.can_evict(Gfn(1)));
}

#[test]
fn uneven_homes_serve_their_own_ranges_and_refuse_frames_in_the_hole() {
    // Node 0: frames 0..4 and 12..16 (a hole 4..12 between), node 1: 16..40, node 2: 40..42.
    let n = |i| NodeId(i);
    let cfg = Config::table(3, &[(0, 4, n(0)), (12, 4, n(0)), (16, 24, n(1)), (40, 2, n(2))])
        .expect("a valid table");
    let mut c = Cluster::new(&cfg);
    assert!(c.access(0, 13, Access::Write).is_empty(), "node 0 is home above the hole too");
    assert!(c.access(2, 41, Access::Write).is_empty());
    assert_eq!(c.access(2, 13, Access::Read), ["ReadReq", "DataShared"]);
    let mut e = Engine::new(NodeId(1), cfg);
    let mut s = MemStore::new();
    let ev = Event::LocalFault { gfn: Gfn(5), access: Access::Read, vcpu: VcpuId(0) };
    assert_eq!(e.handle(ev, &mut s), [Action::Error(ProtocolError::GfnOutOfRange { gfn: Gfn(5) })]);
    let ev = Event::Message { from: NodeId(0), msg: Message::Inv { gfn: Gfn(7) }, page: None };
    assert_eq!(e.handle(ev, &mut s), [Action::Error(ProtocolError::GfnOutOfRange { gfn: Gfn(7) })]);
}
