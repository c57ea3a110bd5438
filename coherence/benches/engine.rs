//! Engine events per second on one core for the main protocol paths. Each iteration is one
//! complete transaction between in-memory engines (page copies included), so the reported
//! element rate is engine events per second.
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
    net: VecDeque<(NodeId, NodeId, Message)>,
    out: Vec<Action>,
    events: u64,
}

impl Bench {
    /// `nodes` nodes; frames `0..pages` are all homed at node 0.
    fn new(nodes: u16, pages: u64) -> Bench {
        let cfg = Config::ranges(nodes, pages.max(1) * u64::from(nodes));
        Bench {
            engines: (0..nodes).map(|i| Engine::new(NodeId(i as u8), cfg)).collect(),
            stores: (0..nodes).map(|_| Scratch(Box::new([7; PAGE_SIZE]))).collect(),
            net: VecDeque::new(),
            out: Vec::new(),
            events: 0,
        }
    }

    fn event(&mut self, node: NodeId, ev: Event) {
        self.events += 1;
        let i = node.index();
        self.engines[i].handle_into(ev, &mut self.stores[i], &mut self.out);
        for a in self.out.drain(..) {
            match a {
                Action::SendPage { to, mut msg } => {
                    let gfn = msg.gfn();
                    self.stores[i].copy_out(gfn, msg.page_mut().unwrap());
                    self.net.push_back((node, to, msg));
                }
                Action::Send { to, msg } => self.net.push_back((node, to, msg)),
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
        while let Some((from, to, msg)) = self.net.pop_front() {
            self.event(to, Event::Message { from, msg });
        }
    }
}

/// Times `iters` transactions, each on a fresh frame prepared by `setup` (untimed).
fn run(
    iters: u64,
    nodes: u16,
    setup: impl Fn(&mut Bench, u64),
    body: impl Fn(&mut Bench, u64),
) -> Duration {
    let mut b = Bench::new(nodes, iters);
    for g in 0..iters {
        setup(&mut b, g);
    }
    let t = Instant::now();
    for g in 0..iters {
        body(&mut b, g);
    }
    t.elapsed()
}

fn paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));

    // fault@1, ReadReq@0, DataShared@1
    g.throughput(Throughput::Elements(3));
    g.bench_function("read_miss", |bn| {
        bn.iter_custom(|n| run(n, 2, |_, _| {}, |b, g| b.access(1, g, Access::Read)));
    });

    // fault@1, WriteReq@0, DataExclusive@1
    g.bench_function("write_miss", |bn| {
        bn.iter_custom(|n| run(n, 2, |_, _| {}, |b, g| b.access(1, g, Access::Write)));
    });

    // fault@2, WriteReq@0, FwdWrite@1, DataExclusive@2 (3-hop)
    g.throughput(Throughput::Elements(4));
    g.bench_function("write_of_modified_elsewhere", |bn| {
        bn.iter_custom(|n| {
            run(n, 3, |b, g| b.access(1, g, Access::Write), |b, g| b.access(2, g, Access::Write))
        });
    });

    // fault@2, WriteReq@0, Inv@1, InvAck@0, DataExclusive@2
    g.throughput(Throughput::Elements(5));
    g.bench_function("write_invalidating_one_sharer", |bn| {
        bn.iter_custom(|n| {
            run(n, 3, |b, g| b.access(1, g, Access::Read), |b, g| b.access(2, g, Access::Write))
        });
    });

    // fault@63, WriteReq@0, 62 x (Inv, InvAck), DataExclusive@63
    g.throughput(Throughput::Elements(3 + 2 * 62));
    g.bench_function("write_invalidating_62_sharers_of_64_nodes", |bn| {
        bn.iter_custom(|n| {
            run(
                n,
                64,
                |b, g| (1..63).for_each(|s| b.access(s, g, Access::Read)),
                |b, g| b.access(63, g, Access::Write),
            )
        });
    });

    // fault@0 on its own page: no message
    g.throughput(Throughput::Elements(1));
    g.bench_function("home_local_hit", |bn| {
        bn.iter_custom(|n| run(n, 2, |_, _| {}, |b, g| b.access(0, g, Access::Write)));
    });
    g.finish();
}

criterion_group!(benches, paths);
criterion_main!(benches);
