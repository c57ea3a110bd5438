//! Host twin of the firmware's `netbench`: two transports on 127.0.0.1 UDP sockets (ports from
//! the OS) in two threads. Prints round-trip latency percentiles of page-sized messages
//! (ping-pong, one outstanding) and one-way throughput of page-sized messages.
//!
//! `CARGO_TARGET_DIR=target-netstack cargo run --release -p gestalt-netstack --features std --example udp_netbench`

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use gestalt_netstack::transport::udp::UdpEndpoint;
use gestalt_netstack::transport::{ClusterKey, Config, Seed, SendError, Transport};

const PINGS: usize = 2_000;
const STREAM: usize = 20_000;
const PAGE: usize = 4096;

fn endpoint(id: u16) -> UdpEndpoint {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    // Fresh per run: the wall clock (to the nanosecond) and the socket's OS-chosen port.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let nanos = now.map_or(0, |d| d.as_nanos()).to_be_bytes();
    let port = socket.local_addr().map_or(0, |a| a.port()).to_be_bytes();
    let mut cfg = Config::new(1, id, Seed::condition(&[&nanos, &port, &id.to_be_bytes()]));
    cfg.mtu = std::env::var("MTU").ok().and_then(|m| m.parse().ok()).unwrap_or(1500);
    UdpEndpoint::new(Transport::new(cfg, &ClusterKey::from_passphrase(b"netbench")), socket)
}

fn main() {
    let (mut a, mut b) = (endpoint(0), endpoint(1));
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
            }
        }
        // Keep acknowledging until node 0 is quiet.
        let linger = Instant::now() + Duration::from_millis(500);
        while Instant::now() < linger {
            b.poll(Duration::from_millis(5)).expect("socket");
        }
    });

    let mut ping = vec![0u8; PAGE];
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t0 = Instant::now();
        a.send(1, &ping).expect("send");
        'wait: loop {
            a.poll(Duration::from_millis(1)).expect("socket");
            if a.recv().is_some() {
                break 'wait;
            }
            assert!(Instant::now() < deadline, "ping timed out");
        }
        rtts.push(t0.elapsed());
    }
    rtts.sort();
    let pct = |p: usize| rtts[(rtts.len() * p / 100).min(rtts.len() - 1)].as_secs_f64() * 1e6;
    println!(
        "netbench: {PINGS} page round trips over UDP loopback: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us",
        pct(50),
        pct(90),
        pct(99)
    );

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
    println!(
        "netbench: {STREAM} page messages one way in {:.2} s: {:.0} msg/s, {:.1} MB/s, {} retransmits",
        secs,
        STREAM as f64 / secs,
        (STREAM * PAGE) as f64 / secs / 1e6,
        a.transport().stats().retransmits
    );
    echo.join().expect("echo thread");
}
