//! The transport over a std `UdpSocket` (feature `std`, and in tests): the host twin of the
//! firmware's smoltcp UDP socket glue, and a worked example of driving [`Transport`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use std::vec;
use std::vec::Vec;

use super::{NodeId, SendError, Transport};

/// A [`Transport`] bound to a UDP socket, with a table of peer addresses.
#[derive(Debug)]
pub struct UdpEndpoint {
    transport: Transport,
    socket: UdpSocket,
    peers: Vec<(NodeId, SocketAddr)>,
    origin: Instant,
    tx: Vec<u8>,
    rx: Vec<u8>,
    drop_every: u64,
    tx_count: u64,
    /// The socket's mode and read timeout as last set (std cannot read them back cheaply).
    nonblocking: bool,
    timeout: Option<Duration>,
}

impl UdpEndpoint {
    /// Wraps `transport` around `socket` (bind it first, e.g. to `127.0.0.1:0`). Asks for a
    /// receive buffer that holds two windows of the largest datagrams, and lowers the window
    /// to what the buffer the OS granted holds (Linux caps it at `net.core.rmem_max`).
    pub fn new(mut transport: Transport, socket: UdpSocket) -> Self {
        let max = transport.config().max_datagram();
        let per = Self::kernel_bytes(max);
        let window = transport.config().window as usize;
        let sock = socket2::SockRef::from(&socket);
        // A refusal leaves the default buffer, which the window is then fitted to.
        let _ = sock.set_recv_buffer_size(2 * window * per);
        let granted = sock.recv_buffer_size().unwrap_or(0);
        transport.limit_window(u32::try_from(granted / per).unwrap_or(u32::MAX));
        Self {
            transport,
            socket,
            peers: Vec::new(),
            origin: Instant::now(),
            tx: vec![0; max],
            rx: vec![0; 65_536],
            drop_every: 0,
            tx_count: 0,
            nonblocking: false,
            timeout: None,
        }
    }

    /// What a received datagram of `len` bytes costs of a Linux socket buffer: its data in a
    /// power-of-two allocation with headroom and shared info, plus the `sk_buff` (about
    /// 8.7 KB for a 4.4 KB jumbo datagram, 4.6 KB for a 1.5 KB one).
    fn kernel_bytes(len: usize) -> usize {
        (len + 640).next_power_of_two() + 512
    }

    /// The socket's local address (give it to the peers).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound UDP socket always has a local address.
        self.socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Test knob: silently drop every `n`th outgoing datagram (0: none).
    pub fn drop_every(&mut self, n: u64) {
        self.drop_every = n;
    }

    /// Adds peer `id` reachable at `addr`.
    pub fn add_peer(&mut self, id: NodeId, addr: SocketAddr) {
        let now = self.now();
        self.transport.add_peer(id, now);
        self.peers.retain(|(p, _)| *p != id);
        self.peers.push((id, addr));
    }

    /// Microseconds since this endpoint was made: the transport's clock.
    pub fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The engine, for stats and events.
    pub fn transport(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// Queues a message and pushes out what the window allows.
    pub fn send(&mut self, to: NodeId, msg: &[u8]) -> Result<(), SendError> {
        self.transport.send(to, msg)?;
        // A failed flush is retried by the retransmission timer.
        let _ = self.flush();
        Ok(())
    }

    /// The next delivered message.
    pub fn recv(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.transport.recv()
    }

    /// Hands a read message back for reuse ([`Transport::recycle`]).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.transport.recycle(buf);
    }

    /// Sends every datagram the transport has ready.
    pub fn flush(&mut self) -> io::Result<()> {
        loop {
            let now = self.now();
            let Some(t) = self.transport.poll_transmit(now, &mut self.tx) else { return Ok(()) };
            self.tx_count += 1;
            if self.drop_every != 0 && self.tx_count.is_multiple_of(self.drop_every) {
                continue;
            }
            if let Some(&(_, addr)) = self.peers.iter().find(|(p, _)| *p == t.to) {
                self.socket.send_to(&self.tx[..t.len], addr)?;
            }
        }
    }

    /// Flushes, handles every datagram that already arrived, or else waits up to `max_wait`
    /// (less if a timer is due sooner) for one and then takes all that arrived; flushes the
    /// replies. The socket's mode and timeout change only when they must (each change is a
    /// system call, and a page round trip polls several times).
    pub fn poll(&mut self, max_wait: Duration) -> io::Result<()> {
        self.flush()?;
        if self.drain()? == 0 {
            let now = self.now();
            let timer = self
                .transport
                .next_deadline()
                .map_or(max_wait, |d| Duration::from_micros(d.saturating_sub(now)).min(max_wait));
            // Whole 100 µs steps, rounded down (an early wake-up only polls again), so that
            // the same timeout is asked for again and again; and never 0, which to the OS
            // means "block forever".
            let steps = (timer.as_micros() / 100).clamp(1, u128::from(u32::MAX));
            let timeout = Duration::from_micros(100) * u32::try_from(steps).unwrap_or(u32::MAX);
            if self.timeout != Some(timeout) {
                self.socket.set_read_timeout(Some(timeout))?;
                self.timeout = Some(timeout);
            }
            self.set_nonblocking(false)?;
            let got = self.receive_one()?;
            self.set_nonblocking(true)?;
            if got {
                self.drain()?;
            }
        }
        self.flush()
    }

    fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        if self.nonblocking != on {
            self.socket.set_nonblocking(on)?;
            self.nonblocking = on;
        }
        Ok(())
    }

    /// Handles every datagram already queued, without waiting; how many.
    fn drain(&mut self) -> io::Result<usize> {
        self.set_nonblocking(true)?;
        let mut n = 0;
        while self.receive_one()? {
            n += 1;
        }
        Ok(n)
    }

    /// Receives and handles one datagram (waiting as the socket's mode says); false when
    /// none came.
    fn receive_one(&mut self) -> io::Result<bool> {
        match self.socket.recv_from(&mut self.rx) {
            Ok((n, _from)) => {
                let now = self.now();
                // Drops are counted in the transport's stats.
                let _ = self.transport.handle_datagram(now, &self.rx[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::Rng;
    use super::super::{ClusterKey, Config, Seed};
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn endpoint(id: NodeId) -> UdpEndpoint {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let key = ClusterKey::from_passphrase(b"udp loopback test");
        let seed = Seed::condition(&[b"udp test", &id.to_be_bytes()]);
        UdpEndpoint::new(Transport::new(Config::new(7, id, seed), &key), socket)
    }

    fn msg(from: NodeId, k: u32, rng: &mut Rng) -> Vec<u8> {
        let len = 8 + rng.below(4096) as usize;
        let mut m = vec![from as u8; len];
        m[..4].copy_from_slice(&k.to_be_bytes());
        m
    }

    /// Sends `count` messages to `peer` and receives `count` from it; keeps serving until
    /// both sides have everything acknowledged, so the last acks get through.
    fn run(mut ep: UdpEndpoint, me: NodeId, peer: NodeId, count: u32, idle: &[AtomicBool; 2]) {
        let mut rng = Rng::new(u64::from(me));
        let (mut sent, mut received) = (0u32, 0u32);
        let mut pending = None;
        let give_up = Instant::now() + Duration::from_secs(60);
        while !(idle[0].load(Ordering::SeqCst) && idle[1].load(Ordering::SeqCst)) {
            assert!(Instant::now() < give_up, "node {me}: sent {sent}, received {received}");
            while sent < count {
                let m = pending.take().unwrap_or_else(|| msg(me, sent, &mut rng));
                match ep.send(peer, &m) {
                    Ok(()) => sent += 1,
                    Err(SendError::WouldBlock) => {
                        pending = Some(m);
                        break;
                    }
                    Err(e) => panic!("node {me}: {e}"),
                }
            }
            ep.poll(Duration::from_millis(5)).expect("socket I/O");
            while let Some((from, m)) = ep.recv() {
                assert_eq!(from, peer);
                assert_eq!(m[..4], received.to_be_bytes(), "in order, exactly once");
                assert!(m[4..].iter().all(|&b| b == peer as u8));
                received += 1;
            }
            let all_acked =
                ep.transport().send_capacity(peer) == ep.transport().config().send_queue;
            if sent == count && received == count && all_acked {
                idle[usize::from(me)].store(true, Ordering::SeqCst);
            }
        }
        assert_eq!(received, count);
        assert!(ep.transport().stats().retransmits > 0, "injected drops were repaired");
    }

    #[test]
    fn messages_cross_real_udp_sockets_on_loopback_exactly_once_and_in_order() {
        let (mut a, mut b) = (endpoint(0), endpoint(1));
        let (addr_a, addr_b) = (a.socket.local_addr().unwrap(), b.socket.local_addr().unwrap());
        a.add_peer(1, addr_b);
        b.add_peer(0, addr_a);
        a.drop_every(10);
        b.drop_every(7);
        let idle = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let idle_b = Arc::clone(&idle);
        let tb = std::thread::spawn(move || run(b, 1, 0, 300, &idle_b));
        run(a, 0, 1, 300, &idle);
        tb.join().expect("node 1 thread");
    }
}
