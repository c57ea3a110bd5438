//! Engine events per second on one core for every protocol path of README's message table.
//! Each iteration is one complete transaction between in-memory engines, every message
//! through the wire codec as the firmware's glue carries it (page copies included), so the
//! reported element rate is engine events per second.
//!
//! `cargo bench -p gestalt-coherence` (add `-- --quick` for a short run).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gestalt_coherence::{
    Access, Action, Config, Engine, Event, Gfn, Message, NodeId, PageStore, VcpuId, PAGE_SIZE,
};

/// One scratch frame standing for all of a node's memory: real 4 KiB copies, no growth.
struct Scratch(Box<[u8; PAGE_SIZE]>);

impl PageStore for Scratch {
    fn copy_out(&mut self, _: Gfn, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0[..]);
    }

    fn install(&mut self, _: Gfn, data: &[u8]) {
        self.0[..data.len()].copy_from_slice(data);
    }
}

struct Bench {
    engines: Vec<Engine>,
    stores: Vec<Scratch>,
    net: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    /// Wire buffers the network has delivered, reused as the firmware's glue reuses them.
    spare: Vec<Vec<u8>>,
    out: Vec<Action>,
    events: u64,
}

impl Bench {
    /// `nodes` nodes; frames `0..pages` are all homed at node 0.
    fn new(nodes: u16, pages: u64) -> Bench {
        let cfg = Config::ranges(nodes, pages.max(1) * u64::from(nodes));
        Bench {
            engines: (0..nodes).map(|i| Engine::new(NodeId(i as u8), cfg.clone())).collect(),
            stores: (0..nodes).map(|_| Scratch(Box::new([7; PAGE_SIZE]))).collect(),
            net: VecDeque::new(),
            spare: Vec::new(),
            out: Vec::new(),
            events: 0,
        }
    }

    fn event(&mut self, node: NodeId, ev: Event<'_>) {
        self.events += 1;
        let i = node.index();
        self.engines[i].handle_into(ev, &mut self.stores[i], &mut self.out);
        for a in self.out.drain(..) {
            match a {
                Action::SendPage { to, msg } | Action::Send { to, msg } => {
                    // The page straight from the frame into the wire buffer.
                    let mut bytes = self.spare.pop().unwrap_or_default();
                    let store = &mut self.stores[i];
                    msg.encode_with(&mut bytes, |b| store.copy_out(msg.gfn(), b));
                    self.net.push_back((node, to, bytes));
                }
                Action::Error(e) => panic!("{e}"),
                a => {
                    black_box(a);
                }
            }
        }
    }

    fn access(&mut self, node: u8, gfn: u64, access: Access) {
        let ev = Event::LocalFault { gfn: Gfn(gfn), access, vcpu: VcpuId(0) };
        self.event(NodeId(node), ev);
        self.drain();
    }

    /// `vcpus` vCPUs of `node` read-fault on `gfn` before anything is delivered.
    fn coalesced(&mut self, node: u8, gfn: u64, vcpus: u16) {
        for v in 0..vcpus {
            let ev = Event::LocalFault { gfn: Gfn(gfn), access: Access::Read, vcpu: VcpuId(v) };
            self.event(NodeId(node), ev);
        }
        self.drain();
    }

    fn evict(&mut self, node: u8, gfn: u64) {
        self.event(NodeId(node), Event::Evict { gfn: Gfn(gfn) });
        self.drain();
    }

    fn drain(&mut self) {
        while let Some((from, to, mut bytes)) = self.net.pop_front() {
            // Installed from the received bytes.
            let (msg, page) = Message::decode(&bytes).unwrap();
            self.event(to, Event::Message { from, msg, page });
            bytes.clear();
            self.spare.push(bytes);
        }
    }
}

/// One protocol path: `setup` prepares frame `g` (untimed), `body` is the transaction on it.
struct Path {
    name: &'static str,
    nodes: u16,
    /// Engine events one transaction takes (checked before timing).
    events: u64,
    /// `Engine::set_cache_limit` on node 1.
    limit: Option<usize>,
    setup: fn(&mut Bench, u64),
    body: fn(&mut Bench, u64),
}

/// Times `iters` transactions, each on a fresh frame prepared by `setup` (untimed).
fn run(iters: u64, p: &Path) -> Duration {
    let mut b = Bench::new(p.nodes, iters);
    b.engines[1].set_cache_limit(p.limit);
    for g in 0..iters {
        (p.setup)(&mut b, g);
    }
    let t = Instant::now();
    for g in 0..iters {
        (p.body)(&mut b, g);
    }
    t.elapsed()
}

/// Each row of README's "Messages per case" table, plus the spurious fault. Frames are homed
/// at node 0 (H); node 1 is the requester R, node 2 the owner O or a sharer.
const PATHS: &[Path] = &[
    // fault@1, ReadReq@0, DataShared@1
    Path {
        name: "read_miss",
        nodes: 2,
        events: 3,
        limit: None,
        setup: |_, _| {},
        body: |b, g| b.access(1, g, Access::Read),
    },
    Path {
        name: "read_miss_on_a_page_others_share",
        nodes: 3,
        events: 3,
        limit: None,
        setup: |b, g| b.access(2, g, Access::Read),
        body: |b, g| b.access(1, g, Access::Read),
    },
    // fault@1, WriteReq@0, DataExclusive@1
    Path {
        name: "write_miss",
        nodes: 2,
        events: 3,
        limit: None,
        setup: |_, _| {},
        body: |b, g| b.access(1, g, Access::Write),
    },
    // fault@1, WriteReq@0, Inv@2, InvAck@0, DataExclusive@1
    Path {
        name: "write_invalidating_one_sharer",
        nodes: 3,
        events: 5,
        limit: None,
        setup: |b, g| b.access(2, g, Access::Read),
        body: |b, g| b.access(1, g, Access::Write),
    },
    // fault@63, WriteReq@0, 62 x (Inv, InvAck), DataExclusive@63
    Path {
        name: "write_invalidating_62_sharers_of_64_nodes",
        nodes: 64,
        events: 3 + 2 * 62,
        limit: None,
        setup: |b, g| (1..63).for_each(|s| b.access(s, g, Access::Read)),
        body: |b, g| b.access(63, g, Access::Write),
    },
    // fault@1, WriteReq@0, Grant@1
    Path {
        name: "upgrade_no_other_sharer",
        nodes: 2,
        events: 3,
        limit: None,
        setup: |b, g| b.access(1, g, Access::Read),
        body: |b, g| b.access(1, g, Access::Write),
    },
    // fault@1, WriteReq@0, Inv@2, InvAck@0, Grant@1
    Path {
        name: "upgrade_invalidating_one_sharer",
        nodes: 3,
        events: 5,
        limit: None,
        setup: |b, g| {
            b.access(1, g, Access::Read);
            b.access(2, g, Access::Read);
        },
        body: |b, g| b.access(1, g, Access::Write),
    },
    // fault@1, ReadReq@0, FwdRead@2, DataShared@1, WriteBack@0 (4 messages)
    Path {
        name: "read_of_modified_elsewhere",
        nodes: 3,
        events: 5,
        limit: None,
        setup: |b, g| b.access(2, g, Access::Write),
        body: |b, g| b.access(1, g, Access::Read),
    },
    // fault@1, WriteReq@0, FwdWrite@2, DataExclusive@1 (3-hop)
    Path {
        name: "write_of_modified_elsewhere",
        nodes: 3,
        events: 4,
        limit: None,
        setup: |b, g| b.access(2, g, Access::Write),
        body: |b, g| b.access(1, g, Access::Write),
    },
    // sharers {0, 1, 2}; fault@3, WriteReq@0 (+ its own Inv), Inv@1, Inv@2, 2 x InvAck@0,
    // DataExclusive@3
    Path {
        name: "write_with_the_home_among_the_sharers",
        nodes: 4,
        events: 7,
        limit: None,
        setup: |b, g| (0..3).for_each(|s| b.access(s, g, Access::Read)),
        body: |b, g| b.access(3, g, Access::Write),
    },
    // fault@0 on its own page: no message
    Path {
        name: "home_local_read",
        nodes: 2,
        events: 1,
        limit: None,
        setup: |_, _| {},
        body: |b, g| b.access(0, g, Access::Read),
    },
    Path {
        name: "home_local_write",
        nodes: 2,
        events: 1,
        limit: None,
        setup: |_, _| {},
        body: |b, g| b.access(0, g, Access::Write),
    },
    // fault@0, FwdRead@1, WriteBack@0
    Path {
        name: "home_reads_modified_elsewhere",
        nodes: 2,
        events: 3,
        limit: None,
        setup: |b, g| b.access(1, g, Access::Write),
        body: |b, g| b.access(0, g, Access::Read),
    },
    // fault@0, FwdWrite@1, DataExclusive@0
    Path {
        name: "home_writes_modified_elsewhere",
        nodes: 2,
        events: 3,
        limit: None,
        setup: |b, g| b.access(1, g, Access::Write),
        body: |b, g| b.access(0, g, Access::Write),
    },
    // fault@1, ReadReq@0, DataShared@1
    Path {
        name: "remote_reads_modified_at_home",
        nodes: 2,
        events: 3,
        limit: None,
        setup: |b, g| b.access(0, g, Access::Write),
        body: |b, g| b.access(1, g, Access::Read),
    },
    // fault@1, WriteReq@0, DataExclusive@1
    Path {
        name: "remote_writes_modified_at_home",
        nodes: 2,
        events: 3,
        limit: None,
        setup: |b, g| b.access(0, g, Access::Write),
        body: |b, g| b.access(1, g, Access::Write),
    },
    // 4 faults@1 (3 coalesced), ReadReq@0, DataShared@1
    Path {
        name: "four_vcpus_fault_on_one_page",
        nodes: 2,
        events: 6,
        limit: None,
        setup: |_, _| {},
        body: |b, g| b.coalesced(1, g, 4),
    },
    // fault@1 on a page it already maps (a stale TLB entry): remapped, no message
    Path {
        name: "spurious_fault",
        nodes: 2,
        events: 1,
        limit: None,
        setup: |b, g| b.access(1, g, Access::Write),
        body: |b, g| b.access(1, g, Access::Read),
    },
    // Evict@1, PutShared@0, PutAck@1
    Path {
        name: "evict_a_shared_copy",
        nodes: 2,
        events: 3,
        limit: None,
        setup: |b, g| b.access(1, g, Access::Read),
        body: |b, g| b.evict(1, g),
    },
    // Evict@1, PutModified@0 (page installed), PutAck@1
    Path {
        name: "evict_a_modified_copy",
        nodes: 2,
        events: 3,
        limit: None,
        setup: |b, g| b.access(1, g, Access::Write),
        body: |b, g| b.evict(1, g),
    },
    // fault@1 (evicts the last frame: PutShared, ReadReq), PutShared@0, ReadReq@0, PutAck@1,
    // DataShared@1
    Path {
        name: "read_miss_at_the_cache_limit",
        nodes: 2,
        events: 5,
        limit: Some(1),
        setup: |_, _| {},
        body: |b, g| b.access(1, g, Access::Read),
    },
];

fn paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    for p in PATHS {
        // The second transaction, as in the timed loop (at a cache limit, the first has
        // nothing to evict).
        let mut b = Bench::new(p.nodes, 2);
        b.engines[1].set_cache_limit(p.limit);
        (p.setup)(&mut b, 0);
        (p.body)(&mut b, 0);
        (p.setup)(&mut b, 1);
        b.events = 0;
        (p.body)(&mut b, 1);
        assert_eq!(b.events, p.events, "{}: events per transaction", p.name);
        g.throughput(Throughput::Elements(p.events));
        g.bench_function(p.name, |bn| bn.iter_custom(|n| run(n, p)));
    }
    g.finish();
}

criterion_group!(benches, paths);
criterion_main!(benches);
