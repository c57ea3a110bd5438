//! The engine serves faults without touching the heap once its buffers have grown: each case
//! of the message table, run the way the firmware's glue runs it (every message encoded into
//! a reused buffer with the page copied straight from the frame, decoded with the page
//! borrowed from the bytes and installed from them), costs no allocation per fault in steady
//! state. A counting global allocator (`support/counting.rs`) counts this thread's
//! allocations.
//!
//! `cargo test -p gestalt-coherence --test alloc -- --nocapture` prints the figures.

use std::collections::VecDeque;

use gestalt_coherence::{
    Access, Action, Config, Engine, Event, Gfn, Message, NodeId, PageStore, VcpuId, PAGE_SIZE,
};

#[path = "support/counting.rs"]
mod counting;
use counting::allocations;

/// Frames allocated once, page copies counted.
struct Frames {
    frames: Vec<[u8; PAGE_SIZE]>,
    copies: u64,
}

impl PageStore for Frames {
    fn copy_out(&mut self, gfn: Gfn, out: &mut Vec<u8>) {
        self.copies += 1;
        out.extend_from_slice(&self.frames[gfn.0 as usize]);
    }
    fn install(&mut self, gfn: Gfn, data: &[u8]) {
        self.copies += 1;
        self.frames[gfn.0 as usize].copy_from_slice(data);
    }
}

/// Four nodes over 32 pages (0..8 homed at node 0), the network a FIFO of wire buffers.
struct Net {
    engines: Vec<Engine>,
    stores: Vec<Frames>,
    wire: VecDeque<(usize, usize, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    out: Vec<Action>,
    now: u64,
    /// vCPUs resumed (or served at once) since the last `take_served`.
    served: u64,
}

impl Net {
    fn new(hold: u64) -> Net {
        let cfg = Config::ranges(4, 32);
        let engines = (0..4)
            .map(|i| {
                let mut e = Engine::new(NodeId(i), cfg.clone());
                e.set_hold(hold);
                e
            })
            .collect();
        let stores =
            (0..4).map(|_| Frames { frames: vec![[0; PAGE_SIZE]; 32], copies: 0 }).collect();
        Net {
            engines,
            stores,
            wire: VecDeque::new(),
            spare: Vec::new(),
            out: Vec::new(),
            now: 0,
            served: 0,
        }
    }

    fn event(&mut self, node: usize, ev: Event<'_>) {
        self.engines[node].handle_into(ev, &mut self.stores[node], &mut self.out);
        for a in self.out.drain(..) {
            match a {
                Action::Send { to, msg } | Action::SendPage { to, msg } => {
                    let mut b = self.spare.pop().unwrap_or_default();
                    let store = &mut self.stores[node];
                    msg.encode_with(&mut b, |b| store.copy_out(msg.gfn(), b));
                    self.wire.push_back((node, to.index(), b));
                }
                Action::Resume { .. } => self.served += 1,
                Action::Error(e) => panic!("node {node}: {e}"),
                _ => {}
            }
        }
    }

    fn deliver_all(&mut self) {
        while let Some((from, to, mut bytes)) = self.wire.pop_front() {
            let (msg, page) = Message::decode(&bytes).expect("own encoding decodes");
            self.event(to, Event::Message { from: NodeId(from as u8), msg, page });
            bytes.clear();
            self.spare.push(bytes);
        }
    }

    /// Faults of `vcpus` on `node`, then everything delivered (timers passing holds).
    fn access(&mut self, node: usize, gfn: u64, write: bool, vcpus: u16) {
        let access = if write { Access::Write } else { Access::Read };
        for v in 0..vcpus {
            let vcpu = VcpuId(node as u16 * 8 + v);
            self.event(node, Event::LocalFault { gfn: Gfn(gfn), access, vcpu });
        }
        self.settle();
    }

    fn settle(&mut self) {
        loop {
            self.deliver_all();
            if self.engines.iter().all(|e| e.held_count() == 0) {
                return;
            }
            self.now += 1_000;
            for n in 0..self.engines.len() {
                self.event(n, Event::Timer { now: self.now });
            }
        }
    }

    fn copies(&self) -> u64 {
        self.stores.iter().map(|s| s.copies).sum()
    }
}

/// `m(net, measured, f)`: runs `f` on `net`, adding its costs to the totals if `measured`.
type Measure<'a> = dyn FnMut(&mut Net, bool, &dyn Fn(&mut Net)) + 'a;

struct Case {
    name: &'static str,
    hold: u64,
    limit: Option<usize>,
    /// Serves the case's faults (measured) and sets the next round up (not measured).
    round: fn(&mut Net, &mut Measure<'_>),
}

const CASES: &[Case] = &[
    Case {
        name: "read miss",
        hold: 0,
        limit: None,
        round: |n, m| {
            m(n, true, &|n| n.access(1, 0, false, 1));
            m(n, false, &|n| n.access(0, 0, true, 1));
        },
    },
    Case {
        name: "write miss",
        hold: 0,
        limit: None,
        round: |n, m| {
            m(n, true, &|n| n.access(1, 1, true, 1));
            m(n, false, &|n| n.access(0, 1, true, 1));
        },
    },
    Case {
        name: "upgrade",
        hold: 0,
        limit: None,
        round: |n, m| {
            m(n, false, &|n| n.access(1, 2, false, 1));
            m(n, true, &|n| n.access(1, 2, true, 1));
            m(n, false, &|n| n.access(0, 2, true, 1));
        },
    },
    Case {
        name: "3-hop write",
        hold: 0,
        limit: None,
        round: |n, m| {
            m(n, true, &|n| n.access(1, 3, true, 1));
            m(n, true, &|n| n.access(2, 3, true, 1));
        },
    },
    Case {
        name: "read of a page modified elsewhere (write-back)",
        hold: 0,
        limit: None,
        round: |n, m| {
            m(n, false, &|n| n.access(2, 4, true, 1));
            m(n, true, &|n| n.access(1, 4, false, 1));
        },
    },
    Case {
        name: "write invalidating three sharers, the home among them",
        hold: 0,
        limit: None,
        round: |n, m| {
            m(n, false, &|n| n.access(0, 5, true, 1));
            m(n, false, &|n| n.access(1, 5, false, 1));
            m(n, false, &|n| n.access(2, 5, false, 1));
            m(n, true, &|n| n.access(3, 5, true, 1));
        },
    },
    Case {
        name: "eviction write-back at the cache limit",
        hold: 0,
        limit: Some(1),
        round: |n, m| {
            m(n, true, &|n| n.access(1, 6, true, 1));
            m(n, true, &|n| n.access(1, 7, true, 1));
        },
    },
    Case {
        name: "racing writers, queued and held pages, coalesced faults",
        hold: 500,
        limit: None,
        round: |n, m| {
            m(n, true, &|n| {
                for node in 1..4 {
                    let vcpu = VcpuId(node as u16 * 8);
                    let ev = Event::LocalFault { gfn: Gfn(0), access: Access::Write, vcpu };
                    n.event(node, ev);
                    let vcpu = VcpuId(node as u16 * 8 + 1);
                    n.event(node, Event::LocalFault { gfn: Gfn(0), access: Access::Read, vcpu });
                }
                n.settle();
            });
        },
    },
];

/// (allocations, page copies, faults) of the measured faults, after a warm-up.
fn run(case: &Case) -> (u64, u64, u64) {
    let mut net = Net::new(case.hold);
    net.engines[1].set_cache_limit(case.limit);
    let mut totals = (0, 0, 0);
    for r in 0..220 {
        let mut m = |n: &mut Net, measured: bool, f: &dyn Fn(&mut Net)| {
            let (a0, c0, s0) = (allocations(), n.copies(), n.served);
            f(n);
            if measured && r >= 20 {
                totals.0 += allocations() - a0;
                totals.1 += n.copies() - c0;
                totals.2 += n.served - s0;
            }
        };
        (case.round)(&mut net, &mut m);
    }
    totals
}

#[test]
fn serving_a_fault_allocates_nothing_in_steady_state() {
    for case in CASES {
        let (allocs, copies, served) = run(case);
        println!(
            "{:<56} {allocs} allocations, {copies} page copies for {served} vCPUs served",
            case.name
        );
        assert!(served >= 200, "{}: {served} served", case.name);
        assert_eq!(allocs, 0, "{}: heap allocations in {served} served faults", case.name);
    }
}
