//! Input the engine refuses (README "What the engine refuses"): each case is one a peer, a
//! corrupted datagram or a duplicate can produce, and each test fails without its check.
//! Frame 0 is homed at node 0 in these clusters.

use std::vec;

use super::cluster::Cluster;
use crate::{Access, Action, Config, Gfn, Message, NodeId, ProtocolError, Rights, PAGE_SIZE};

const HOME: u8 = 0;
const G: u64 = 0;

fn cluster(nodes: u16) -> Cluster {
    Cluster::new(&Config::interleaved(nodes, 64))
}

fn is_refusal(acts: &[Action], kind: &str) -> bool {
    matches!(acts, [Action::Error(
        ProtocolError::Unexpected { kind: k, .. }
        | ProtocolError::FromSelf { kind: k, .. }
        | ProtocolError::PageSize { kind: k, .. }
    )] if *k == kind)
}

fn sends_anything(acts: &[Action]) -> bool {
    acts.iter().any(|a| matches!(a, Action::Send { .. } | Action::SendPage { .. }))
}

#[test]
fn a_duplicated_inv_ack_does_not_grant_write_while_another_sharer_still_maps() {
    let mut c = cluster(4);
    c.access(1, G, Access::Read);
    c.access(2, G, Access::Read);
    c.fault_only(3, G, Access::Write, 30);
    let req = c.take(3, HOME);
    c.deliver_raw(NodeId(3), NodeId(HOME), req);
    // Home sent Inv to 1 and 2; hold node 2's back, let node 1 ack.
    let inv2 = c.take(HOME, 2);
    let inv1 = c.take(HOME, 1);
    c.deliver_raw(NodeId(HOME), NodeId(1), inv1);
    let ack = c.take(1, HOME);
    assert_eq!(ack, Message::InvAck { gfn: Gfn(G) });
    assert!(!sends_anything(&c.deliver_raw(NodeId(1), NodeId(HOME), ack)));
    let dup = c.deliver_raw(NodeId(1), NodeId(HOME), ack);
    assert!(is_refusal(&dup, "InvAck"), "{dup:?}");
    // An ack from the writer itself, which was never invalidated, is no ack either.
    let stray = c.deliver_raw(NodeId(3), NodeId(HOME), Message::InvAck { gfn: Gfn(G) });
    assert!(is_refusal(&stray, "InvAck"), "{stray:?}");
    assert!(c.net.is_empty(), "no grant while node 2 still maps the page");
    assert_eq!(c.maps[2][&Gfn(G)], Rights::ReadExec);
    c.deliver_raw(NodeId(HOME), NodeId(2), inv2);
    c.run();
    assert_eq!(c.maps[3][&Gfn(G)], Rights::ReadWriteExec);
    assert!(!c.maps[1].contains_key(&Gfn(G)) && !c.maps[2].contains_key(&Gfn(G)));
}

#[test]
fn a_page_message_shorter_than_a_page_is_refused_and_not_mapped() {
    let mut c = cluster(3);
    c.write(HOME, G, 42);
    c.fault_only(1, G, Access::Read, 10);
    let req = c.take(1, HOME);
    c.deliver_raw(NodeId(1), NodeId(HOME), req);
    let (data, page) = c.take_page(HOME, 1);
    assert!(matches!(data, Message::DataShared { .. }), "expected data");
    for len in [0, 1, 8, PAGE_SIZE - 1, PAGE_SIZE + 1] {
        let short = vec![0xEE; len];
        let acts = c.deliver_page(NodeId(HOME), NodeId(1), data, Some(&short));
        assert!(is_refusal(&acts, "DataShared"), "{len} bytes: {acts:?}");
        assert!(!c.maps[1].contains_key(&Gfn(G)), "a {len}-byte page was mapped");
        assert!(c.engines[1].is_pending(Gfn(G)));
    }
    // No page at all is refused just the same.
    let acts = c.deliver_raw(NodeId(HOME), NodeId(1), data);
    assert!(is_refusal(&acts, "DataShared"), "no page: {acts:?}");
    assert!(c.engines[1].is_pending(Gfn(G)));
    c.deliver_page(NodeId(HOME), NodeId(1), data, Some(&page));
    assert_eq!(c.read(1, G), 42);
    // The home refuses a short write-back just the same.
    c.write(2, 1, 7);
    let wb = Message::WriteBack { gfn: Gfn(G) };
    let acts = c.deliver_page(NodeId(2), NodeId(HOME), wb, Some(&[1; 16]));
    assert!(is_refusal(&acts, "WriteBack"), "{acts:?}");
}

#[test]
fn a_data_message_claiming_to_come_from_the_receiver_itself_is_refused_not_mapped_stale() {
    let mut c = cluster(3);
    c.write(HOME, 1, 5); // frame 1 is homed at node 1: make node 1's own copy differ
    c.write(2, G, 9);
    c.fault_only(1, G, Access::Read, 10);
    // A forged DataShared "from node 1" to node 1 while its read is in flight: taken for the
    // loopback, it would map node 1's stale frame without installing anything.
    let forged = Message::DataShared { gfn: Gfn(G) };
    let acts = c.deliver_page(NodeId(1), NodeId(1), forged, Some(&[0; PAGE_SIZE]));
    assert!(is_refusal(&acts, "DataShared"), "{acts:?}");
    assert!(!c.maps[1].contains_key(&Gfn(G)));
    c.run();
    assert_eq!(c.read(1, G), 9);
}

#[test]
fn a_request_claiming_to_come_from_the_home_itself_is_refused_and_the_next_writer_is_served() {
    let mut c = cluster(3);
    let acts = c.deliver_raw(NodeId(HOME), NodeId(HOME), Message::ReadReq { gfn: Gfn(G) });
    assert!(is_refusal(&acts, "ReadReq"), "{acts:?}");
    let (_, _, sharers, busy) = c.engines[0].directory_entry(Gfn(G));
    assert!(sharers.is_empty() && !busy, "the home listed itself: {sharers:?}");
    assert_eq!(c.access(1, G, Access::Write), ["WriteReq", "DataExclusive"]);
}

#[test]
fn duplicate_requests_for_a_busy_frame_queue_at_most_once_per_node() {
    let mut c = cluster(4);
    c.write(2, G, 1);
    // Node 1 reads the page Modified at node 2: the home is busy until the write-back.
    c.fault_only(1, G, Access::Read, 10);
    let req = c.take(1, HOME);
    c.deliver_raw(NodeId(1), NodeId(HOME), req);
    assert!(c.engines[0].directory_entry(Gfn(G)).3, "entry busy");
    // Node 3's read, delivered 100,000 times.
    c.fault_only(3, G, Access::Read, 30);
    let req = c.take(3, HOME);
    let mut refused = 0;
    for _ in 0..100_000 {
        let acts = c.deliver_raw(NodeId(3), NodeId(HOME), req);
        refused += usize::from(is_refusal(&acts, "ReadReq"));
    }
    assert_eq!(c.engines[0].counters().queued, 1);
    assert_eq!(refused, 99_999);
    c.run();
    // The one queued request was served once: node 3 shares the page with 1 and 2.
    let (_, _, sharers, busy) = c.engines[0].directory_entry(Gfn(G));
    assert!(!busy);
    assert_eq!(sharers.iter().map(|n| n.0).collect::<std::vec::Vec<_>>(), [1, 2, 3]);
    assert_eq!(c.maps[3][&Gfn(G)], Rights::ReadExec);
}

#[test]
fn a_second_request_from_the_writer_whose_invalidations_are_out_is_refused() {
    let mut c = cluster(4);
    c.access(1, G, Access::Read);
    c.fault_only(2, G, Access::Write, 20);
    let req = c.take(2, HOME);
    c.deliver_raw(NodeId(2), NodeId(HOME), req);
    let acts = c.deliver_raw(NodeId(2), NodeId(HOME), Message::WriteReq { gfn: Gfn(G) });
    assert!(is_refusal(&acts, "WriteReq"), "{acts:?}");
    c.run();
    assert_eq!(c.maps[2][&Gfn(G)], Rights::ReadWriteExec);
    assert!(c.engines.iter().all(|e| e.busy_count() == 0 && e.pending_count() == 0));
}
