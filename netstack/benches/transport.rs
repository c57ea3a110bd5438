//! Transport cost on the host: per-datagram authentication, and messages per second
//! between two in-memory transports (no I/O, no loss) for small and page-sized messages.
//!
//! `CARGO_TARGET_DIR=target-netstack cargo bench -p gestalt-netstack --bench transport`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gestalt_netstack::transport::{
    Authenticator, ClusterKey, Config, Header, Kind, Seed, SendError, Transport, HEADER_LEN,
};

fn key() -> ClusterKey {
    ClusterKey::from_passphrase(b"bench")
}

fn seal_open(c: &mut Criterion) {
    let auth = Authenticator::new(&key());
    let header = Header {
        kind: Kind::Data,
        frag_index: 0,
        frag_count: 1,
        cluster_id: 1,
        src: 0,
        dst: 1,
        src_nonce: 1,
        dst_nonce: 2,
        pn: 1,
        pn_echo: 1,
        seq: 1,
        ack: 0,
        sack: 0,
    };
    let mut g = c.benchmark_group("datagram");
    for size in [64usize, 1388, 4096] {
        let payload = vec![0xA5u8; size];
        let mut buf = vec![0u8; size + HEADER_LEN];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("seal+open", size), &size, |b, _| {
            b.iter(|| {
                let n = header.seal(&auth, black_box(&payload), &mut buf).unwrap();
                black_box(Header::open(&buf[..n], &auth, 1, 1).unwrap());
            });
        });
    }
    g.finish();
}

/// Sends `count` messages of `size` bytes from node 0 to node 1 and pumps datagrams both
/// ways until all are delivered.
fn exchange(count: usize, size: usize, mtu: usize) {
    let mut nodes: Vec<Transport> = (0..2u16)
        .map(|id| {
            let mut cfg = Config::new(1, id, Seed::new([id as u8; 32]));
            cfg.mtu = mtu;
            let mut t = Transport::new(cfg, &key());
            t.add_peer(1 - id, 0);
            t
        })
        .collect();
    let msg = vec![0x5Au8; size];
    let mut buf = vec![0u8; nodes[0].config().max_datagram()];
    let (mut sent, mut got, mut now) = (0, 0, 0u64);
    while got < count {
        while sent < count {
            match nodes[0].send(1, &msg) {
                Ok(()) => sent += 1,
                Err(SendError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        for from in 0..2 {
            while let Some(t) = nodes[from].poll_transmit(now, &mut buf) {
                let _ = nodes[usize::from(t.to)].handle_datagram(now, &buf[..t.len]);
            }
        }
        while nodes[1].recv().is_some() {
            got += 1;
        }
        now += 10;
    }
}

fn messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("transport");
    let count = 1000;
    for (name, size, mtu) in
        [("64B/mtu1500", 64, 1500), ("4KiB/mtu1500", 4096, 1500), ("4KiB/mtu9000", 4096, 9000)]
    {
        g.throughput(Throughput::Elements(count as u64));
        g.bench_function(name, |b| b.iter(|| exchange(count, size, mtu)));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = seal_open, messages
}
criterion_main!(benches);
