//! A virtual Ethernet switch of our own. Each port is a UDP socket on 127.0.0.1 with a port
//! number from the OS, paired with one emulator NIC that carries one raw Ethernet frame per
//! datagram (QEMU `-netdev dgram`, Bochs `ethmod=socket`). The switch learns source MACs,
//! floods unknown and broadcast destinations, and has knobs for loss, delay, duplication and
//! partitions, driven by a seeded RNG so a run can be replayed.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::HarnessError;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Which emulator sits on a port: it decides how the peer's UDP port relates to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// QEMU `-netdev dgram`: any free peer port, given to QEMU as `local.port`.
    Qemu,
    /// Bochs `ethmod=socket, ethdev=P`: Bochs receives on P and sends to P+1, so the switch
    /// socket is P+1 and the peer is P.
    Bochs,
}

/// One switch port as an emulator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchPort {
    /// Index of the port in the switch (for partitions and counters).
    pub index: usize,
    /// The switch's UDP port on 127.0.0.1 (QEMU `remote.port`).
    pub switch_udp: u16,
    /// The emulator's UDP port on 127.0.0.1 (QEMU `local.port`, Bochs `ethdev`).
    pub peer_udp: u16,
    /// The kind of emulator this port was made for.
    pub kind: PortKind,
}

impl SwitchPort {
    /// QEMU arguments for a NIC of QEMU device `model` (`e1000`, `e1000e`, `virtio-net-pci`)
    /// with id `id` and MAC `mac` on this port.
    pub fn qemu_args(&self, id: &str, model: &str, mac: [u8; 6]) -> Vec<String> {
        vec![
            "-netdev".into(),
            format!(
                "dgram,id={id},local.type=inet,local.host=127.0.0.1,local.port={},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                self.peer_udp, self.switch_udp
            ),
            "-device".into(),
            format!("{model},netdev={id},mac={},romfile=", mac_str(mac)),
        ]
    }

    /// The bochsrc line for an e1000 on this port.
    pub fn bochs_line(&self, mac: [u8; 6]) -> String {
        format!("e1000: enabled=1, mac={}, ethmod=socket, ethdev={}", mac_str(mac), self.peer_udp)
    }
}

/// `52:54:00:..` text form of a MAC.
pub fn mac_str(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Counters of everything the switch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Frames received from emulators.
    pub received: u64,
    /// Frame copies sent to emulators.
    pub sent: u64,
    /// Frames flooded (broadcast, multicast or unknown destination).
    pub flooded: u64,
    /// Copies dropped by the loss knob.
    pub dropped_loss: u64,
    /// Copies dropped because of a partition.
    pub dropped_partition: u64,
    /// Extra copies made by the duplication knob.
    pub duplicated: u64,
    /// Copies that went through the delay queue.
    pub delayed: u64,
    /// Datagrams too short to be Ethernet frames, or from a stranger.
    pub malformed: u64,
    /// Frames received per port.
    pub rx_per_port: Vec<u64>,
    /// Frames sent per port.
    pub tx_per_port: Vec<u64>,
}

struct Port {
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    group: u32,
}

struct State {
    ports: Vec<Port>,
    macs: HashMap<[u8; 6], usize>,
    loss: f64,
    duplicate: f64,
    delay: Duration,
    jitter: Duration,
    rng: u64,
    counters: SwitchCounters,
}

struct Delayed {
    due: Instant,
    seq: u64,
    port: usize,
    frame: Vec<u8>,
}

struct Shared {
    state: Mutex<State>,
    queue: Mutex<Vec<Delayed>>,
    queue_cv: Condvar,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The switch. Dropping it stops its threads and closes its sockets.
pub struct Switch {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Switch {
    /// A switch with no ports whose random choices come from `seed`.
    pub fn new(seed: u64) -> Result<Switch, HarnessError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ports: Vec::new(),
                macs: HashMap::new(),
                loss: 0.0,
                duplicate: 0.0,
                delay: Duration::ZERO,
                jitter: Duration::ZERO,
                rng: seed ^ 0x9e37_79b9_7f4a_7c15,
                counters: SwitchCounters::default(),
            }),
            queue: Mutex::new(Vec::new()),
            queue_cv: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let timer = std::thread::Builder::new()
            .name("switch-delay".into())
            .spawn(move || delay_loop(&s))
            .map_err(|e| HarnessError::io("starting the switch", e))?;
        Ok(Switch { shared, threads: vec![timer] })
    }

    /// Add a port for an emulator of `kind`; both UDP ports come from the OS.
    pub fn add_port(&mut self, kind: PortKind) -> Result<SwitchPort, HarnessError> {
        let (sock, peer_udp) = match kind {
            PortKind::Qemu => {
                let sock = bind_any()?;
                (sock, free_port()?)
            }
            PortKind::Bochs => bochs_pair()?,
        };
        let switch_udp =
            sock.local_addr().map_err(|e| HarnessError::io("switch socket", e))?.port();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| HarnessError::io("switch socket", e))?;
        let sock = Arc::new(sock);
        let peer = SocketAddr::V4(SocketAddrV4::new(LOOPBACK, peer_udp));
        let index = {
            let mut st = lock(&self.shared.state);
            st.ports.push(Port { sock: Arc::clone(&sock), peer, group: 0 });
            st.counters.rx_per_port.push(0);
            st.counters.tx_per_port.push(0);
            st.ports.len() - 1
        };
        let s = Arc::clone(&self.shared);
        let t = std::thread::Builder::new()
            .name(format!("switch-port{index}"))
            .spawn(move || port_loop(&s, index, &sock, peer))
            .map_err(|e| HarnessError::io("starting a switch port", e))?;
        self.threads.push(t);
        Ok(SwitchPort { index, switch_udp, peer_udp, kind })
    }

    /// Drop each frame copy with probability `p` (0.0..=1.0).
    pub fn set_loss(&self, p: f64) {
        lock(&self.shared.state).loss = p.clamp(0.0, 1.0);
    }

    /// Send each frame copy twice with probability `p` (0.0..=1.0).
    pub fn set_duplication(&self, p: f64) {
        lock(&self.shared.state).duplicate = p.clamp(0.0, 1.0);
    }

    /// Delay each frame copy by `delay` plus a uniform random `0..=jitter` (jitter reorders).
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        let mut st = lock(&self.shared.state);
        st.delay = delay;
        st.jitter = jitter;
    }

    /// Split the ports into groups: frames pass only between ports of the same group. Ports
    /// not named form one more group of their own.
    pub fn partition(&self, groups: &[&[usize]]) {
        let mut st = lock(&self.shared.state);
        for p in st.ports.iter_mut() {
            p.group = u32::MAX;
        }
        for (g, members) in groups.iter().enumerate() {
            for &i in *members {
                if let Some(p) = st.ports.get_mut(i) {
                    p.group = g as u32;
                }
            }
        }
    }

    /// Undo any partition.
    pub fn heal(&self) {
        for p in lock(&self.shared.state).ports.iter_mut() {
            p.group = 0;
        }
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> SwitchCounters {
        lock(&self.shared.state).counters.clone()
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.queue_cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bind_any() -> Result<UdpSocket, HarnessError> {
    UdpSocket::bind((LOOPBACK, 0))
        .map_err(|e| HarnessError::io("binding a UDP socket on 127.0.0.1", e))
}

/// A UDP port that was free a moment ago (for QEMU to bind).
fn free_port() -> Result<u16, HarnessError> {
    let s = bind_any()?;
    s.local_addr().map(|a| a.port()).map_err(|e| HarnessError::io("probing a free UDP port", e))
}

/// A switch socket on port P+1 from the OS with port P free for Bochs.
fn bochs_pair() -> Result<(UdpSocket, u16), HarnessError> {
    let mut held = Vec::new();
    for _ in 0..64 {
        let s = bind_any()?;
        let port = s.local_addr().map_err(|e| HarnessError::io("switch socket", e))?.port();
        if port > 1024 && UdpSocket::bind((LOOPBACK, port - 1)).is_ok() {
            return Ok((s, port - 1));
        }
        held.push(s); // keep it so the OS hands out a different one next time
    }
    Err(HarnessError::io(
        "finding two adjacent free UDP ports for a Bochs NIC",
        std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free pair after 64 tries"),
    ))
}

/// splitmix64: small, seedable, good enough for fault injection.
fn next(rng: &mut u64) -> u64 {
    *rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *rng;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn chance(rng: &mut u64, p: f64) -> bool {
    p > 0.0 && (next(rng) >> 11) as f64 / (1u64 << 53) as f64 <= p
}

fn port_loop(shared: &Shared, index: usize, sock: &UdpSocket, peer: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    while !shared.stop.load(Ordering::Relaxed) {
        // A timeout (to check `stop`) or a transient error: try again.
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let frame = &buf[..n];
        let mut st = lock(&shared.state);
        if n < 14 || from != peer {
            st.counters.malformed += 1;
            continue;
        }
        st.counters.received += 1;
        st.counters.rx_per_port[index] += 1;
        let dst: [u8; 6] = frame[..6].try_into().expect("length checked");
        let src: [u8; 6] = frame[6..12].try_into().expect("length checked");
        if src[0] & 1 == 0 {
            st.macs.insert(src, index);
        }
        let outs: Vec<usize> = match st.macs.get(&dst) {
            Some(&p) if dst[0] & 1 == 0 => {
                if p == index {
                    vec![]
                } else {
                    vec![p]
                }
            }
            _ => {
                st.counters.flooded += 1;
                (0..st.ports.len()).filter(|&p| p != index).collect()
            }
        };
        let group = st.ports[index].group;
        for out in outs {
            if st.ports[out].group != group {
                st.counters.dropped_partition += 1;
                continue;
            }
            let (loss, dup) = (st.loss, st.duplicate);
            if chance(&mut st.rng, loss) {
                st.counters.dropped_loss += 1;
                continue;
            }
            let copies = if chance(&mut st.rng, dup) {
                st.counters.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let jitter = st.jitter.as_nanos() as u64;
                let extra = if jitter > 0 { next(&mut st.rng) % (jitter + 1) } else { 0 };
                let delay = st.delay + Duration::from_nanos(extra);
                if delay.is_zero() {
                    let _ = st.ports[out].sock.send_to(frame, st.ports[out].peer);
                    st.counters.sent += 1;
                    st.counters.tx_per_port[out] += 1;
                } else {
                    st.counters.delayed += 1;
                    let seq = st.counters.delayed;
                    lock(&shared.queue).push(Delayed {
                        due: Instant::now() + delay,
                        seq,
                        port: out,
                        frame: frame.to_vec(),
                    });
                    shared.queue_cv.notify_all();
                }
            }
        }
    }
}

fn delay_loop(shared: &Shared) {
    let mut q = lock(&shared.queue);
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Due frames leave in (due, arrival) order.
        q.sort_by_key(|d| (d.due, d.seq));
        let due: Vec<Delayed> = {
            let n = q.iter().take_while(|d| d.due <= now).count();
            q.drain(..n).collect()
        };
        if !due.is_empty() {
            drop(q);
            let mut st = lock(&shared.state);
            for d in due {
                if let Some(p) = st.ports.get(d.port) {
                    let _ = p.sock.send_to(&d.frame, p.peer);
                    st.counters.sent += 1;
                    st.counters.tx_per_port[d.port] += 1;
                }
            }
            drop(st);
            q = lock(&shared.queue);
            continue;
        }
        let wait =
            q.first().map_or(Duration::from_millis(100), |d| d.due.saturating_duration_since(now));
        q = shared.queue_cv.wait_timeout(q, wait).unwrap_or_else(PoisonError::into_inner).0;
    }
}
