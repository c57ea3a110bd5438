//! Host twin of the firmware's `netbench`: two transports on 127.0.0.1 UDP sockets (ports from
//! the OS) in two threads, against plain UDP between the same kind of sockets in the same run.
//! For MTU 1500 and 9000 it prints the page (4 KiB message) round trip against a plain 4 KiB
//! UDP datagram round trip, and the one-way page stream against the rate at which plain UDP
//! moves 4 KiB datagrams, as ratios (issue 13's goals: stream ≥ 0.5× UDP, round trip ≤ 2×
//! UDP, no retransmission on loss-free loopback).
//!
//! `CARGO_TARGET_DIR=target-netstack cargo run --release -p gestalt-netstack --features std --example udp_netbench`
//! (`MTU=9000` or `MTU=1500` runs one MTU only.)

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use gestalt_netstack::transport::udp::UdpEndpoint;
use gestalt_netstack::transport::{ClusterKey, Config, Seed, SendError, Transport};

const PINGS: usize = 2_000;
const STREAM: usize = 20_000;
const PAGE: usize = 4096;
/// Lower bound of the retransmission timeout on a shared host (see `endpoint`).
const MIN_RTO_US: u64 = 20_000;

fn endpoint(id: u16, mtu: usize) -> UdpEndpoint {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    // Fresh per run: the wall clock (to the nanosecond) and the socket's OS-chosen port.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let nanos = now.map_or(0, |d| d.as_nanos()).to_be_bytes();
    let port = socket.local_addr().map_or(0, |a| a.port()).to_be_bytes();
    let mut cfg = Config::new(1, id, Seed::condition(&[&nanos, &port, &id.to_be_bytes()]));
    cfg.mtu = mtu;
    // The firmware's 2 ms floor suits a node that polls on its own core; here a thread can
    // be off the CPU for milliseconds (the p99 round trips show it), and every such pause
    // would fire the timer for data that is not lost.
    cfg.min_rto_us = MIN_RTO_US;
    UdpEndpoint::new(Transport::new(cfg, &ClusterKey::from_passphrase(b"netbench")), socket)
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

struct Figures {
    rtt_p50_us: f64,
    rtt_p90_us: f64,
    rtt_p99_us: f64,
    stream_per_s: f64,
}

/// Plain UDP between two sockets in two threads, `burst` datagrams of `size` bytes for each
/// round trip and stream element: ping-pong (the echo thread answers each datagram), then a
/// one-way blast of `STREAM × burst` datagrams; the rate is what the receiver got per second
/// divided by `burst` (the kernel drops what overflows the socket buffer; nothing is resent).
fn plain_udp(size: usize, burst: usize) -> Figures {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr_b = b.local_addr().expect("addr");
    b.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        for _ in 0..PINGS * burst {
            let (n, from) = b.recv_from(&mut buf).expect("plain UDP ping lost");
            b.send_to(&buf[..n], from).expect("send");
        }
        let (mut got, mut first, mut last) = (0usize, None, Instant::now());
        // Until 200 ms of silence: the sender is done, the rest was dropped by the kernel.
        while let Ok((n, _)) = b.recv_from(&mut buf) {
            if n == size {
                got += 1;
                last = Instant::now();
                first.get_or_insert(last);
            }
        }
        (got, first.map_or(0.0, |f| last.duration_since(f).as_secs_f64()))
    });
    let mut buf = vec![0u8; 65_536];
    let datagram = vec![1u8; size];
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t0 = Instant::now();
        for _ in 0..burst {
            a.send_to(&datagram, addr_b).expect("send");
        }
        for _ in 0..burst {
            let (n, _) = a.recv_from(&mut buf).expect("recv");
            assert_eq!(n, size);
        }
        rtts.push(t0.elapsed());
    }
    for _ in 0..STREAM * burst {
        a.send_to(&datagram, addr_b).expect("send");
    }
    let (got, secs) = echo.join().expect("echo thread");
    rtts.sort();
    Figures {
        rtt_p50_us: percentile(&rtts, 50),
        rtt_p90_us: percentile(&rtts, 90),
        rtt_p99_us: percentile(&rtts, 99),
        stream_per_s: got as f64 / burst as f64 / secs.max(1e-9),
    }
}

/// The transport at `mtu`: page ping-pong (one outstanding), then `STREAM` pages one way
/// until all are acknowledged.
fn transport(mtu: usize) -> (Figures, u64) {
    let (mut a, mut b) = (endpoint(0, mtu), endpoint(1, mtu));
    let (addr_a, addr_b) = (a.local_addr(), b.local_addr());
    a.add_peer(1, addr_b);
    b.add_peer(0, addr_a);
    let deadline = Instant::now() + Duration::from_secs(120);

    // Node 1 echoes pings (first byte 0) and swallows stream messages (first byte 1) until
    // it has seen them all.
    let echo = std::thread::spawn(move || {
        let mut stream_seen = 0;
        while stream_seen < STREAM && Instant::now() < deadline {
            b.poll(Duration::from_millis(1)).expect("socket");
            while let Some((from, m)) = b.recv() {
                if m[0] == 0 {
                    while let Err(SendError::WouldBlock) = b.send(from, &m) {
                        b.poll(Duration::from_millis(1)).expect("socket");
                    }
                } else {
                    stream_seen += 1;
                }
                b.recycle(m);
            }
        }
        // Keep acknowledging until node 0 is quiet.
        let linger = Instant::now() + Duration::from_millis(500);
        while Instant::now() < linger {
            b.poll(Duration::from_millis(5)).expect("socket");
        }
        let st = b.transport().stats();
        (st.duplicates, st.inbox_full)
    });

    let mut ping = vec![0u8; PAGE];
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t0 = Instant::now();
        a.send(1, &ping).expect("send");
        'wait: loop {
            a.poll(Duration::from_millis(1)).expect("socket");
            if let Some((_, m)) = a.recv() {
                a.recycle(m);
                break 'wait;
            }
            assert!(Instant::now() < deadline, "ping timed out");
        }
        rtts.push(t0.elapsed());
    }
    rtts.sort();
    let before_stream = a.transport().stats().retransmits;

    ping[0] = 1;
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < STREAM {
        match a.send(1, &ping) {
            Ok(()) => sent += 1,
            Err(SendError::WouldBlock) => a.poll(Duration::from_millis(1)).expect("socket"),
            Err(e) => panic!("{e}"),
        }
    }
    while a.transport().send_capacity(1) < a.transport().config().send_queue {
        a.poll(Duration::from_millis(1)).expect("socket");
        assert!(Instant::now() < deadline, "stream timed out");
    }
    let secs = t0.elapsed().as_secs_f64();
    let retransmits = a.transport().stats().retransmits;
    let dup = echo.join().expect("echo thread");
    let st = a.transport().stats().clone();
    println!(
        "  (mtu {mtu}: window {} fragments; {} of the {retransmits} retransmissions during the stream; {} timer expiries; receiver: {} duplicates, {} refused on a full inbox)",
        a.transport().config().window,
        retransmits - before_stream,
        st.timeouts,
        dup.0,
        dup.1
    );
    let f = Figures {
        rtt_p50_us: percentile(&rtts, 50),
        rtt_p90_us: percentile(&rtts, 90),
        rtt_p99_us: percentile(&rtts, 99),
        stream_per_s: STREAM as f64 / secs,
    };
    (f, retransmits)
}

fn main() {
    let mtus: Vec<usize> = match std::env::var("MTU").ok().and_then(|m| m.parse().ok()) {
        Some(m) => vec![m],
        None => vec![1500, 9000],
    };
    let udp = plain_udp(PAGE, 1);
    println!(
        "netbench: plain UDP, 4 KiB datagrams on 127.0.0.1: rtt p50 {:.1} us (p90 {:.1}, p99 {:.1}); one way {:.0} datagrams/s received",
        udp.rtt_p50_us, udp.rtt_p90_us, udp.rtt_p99_us, udp.stream_per_s
    );
    // What the kernel costs for a page cut into MTU-1500 datagrams (3 of 1,472 bytes, as
    // the transport sends it): the floor of the MTU-1500 figures.
    let cut = plain_udp(1472, 3);
    println!(
        "netbench: plain UDP, 3 x 1,472-byte datagrams per page: rtt p50 {:.1} us (p90 {:.1}, p99 {:.1}); one way {:.0} pages/s received",
        cut.rtt_p50_us, cut.rtt_p90_us, cut.rtt_p99_us, cut.stream_per_s
    );
    for mtu in mtus {
        let (t, retransmits) = transport(mtu);
        println!(
            "netbench: mtu {mtu}: {PINGS} page round trips p50 {:.1} us (p90 {:.1}, p99 {:.1}); {STREAM} pages one way {:.0} msg/s ({:.1} MB/s); {} retransmits",
            t.rtt_p50_us,
            t.rtt_p90_us,
            t.rtt_p99_us,
            t.stream_per_s,
            t.stream_per_s * PAGE as f64 / 1e6,
            retransmits
        );
        println!(
            "netbench: mtu {mtu}: page rtt / UDP rtt = {:.2} (goal <= 2); page stream / UDP datagram rate = {:.2} (goal >= 0.5); retransmits {} (goal 0)",
            t.rtt_p50_us / udp.rtt_p50_us,
            t.stream_per_s / udp.stream_per_s,
            retransmits
        );
        if mtu <= 1500 {
            println!(
                "netbench: mtu {mtu}: against plain UDP sending the page as 3 datagrams: rtt {:.2}x, stream {:.2}x",
                t.rtt_p50_us / cut.rtt_p50_us,
                t.stream_per_s / cut.stream_per_s
            );
        }
    }
}
