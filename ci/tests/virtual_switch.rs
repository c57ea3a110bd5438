//! The virtual switch without emulators: plain UDP sockets play the NICs (one raw Ethernet
//! frame per datagram, as QEMU dgram and Bochs ethmod=socket send them).

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use gestalt_ci::{PortKind, Switch, SwitchPort};

const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
const C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xc];
const BROADCAST: [u8; 6] = [0xff; 6];

/// A fake NIC: bound where the emulator would be, sending to the switch.
struct Nic {
    sock: UdpSocket,
    port: SwitchPort,
}

impl Nic {
    fn attach(switch: &mut Switch, kind: PortKind) -> Nic {
        let port = switch.add_port(kind).expect("port");
        let sock =
            UdpSocket::bind((Ipv4Addr::LOCALHOST, port.peer_udp)).expect("peer port is free");
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        Nic { sock, port }
    }

    fn send(&self, dst: [u8; 6], src: [u8; 6], payload: &[u8]) {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
        f.extend_from_slice(payload);
        self.sock.send_to(&f, (Ipv4Addr::LOCALHOST, self.port.switch_udp)).unwrap();
    }

    /// Every frame that arrives within `window`.
    fn frames(&self, window: Duration) -> Vec<Vec<u8>> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                out.push(buf[..n].to_vec());
            }
        }
        out
    }
}

const SETTLE: Duration = Duration::from_millis(300);

#[test]
fn frames_pass_between_two_ports_and_the_switch_learns_where_macs_are() {
    let mut sw = Switch::new(1).unwrap();
    let (a, b, c) = (
        Nic::attach(&mut sw, PortKind::Qemu),
        Nic::attach(&mut sw, PortKind::Qemu),
        Nic::attach(&mut sw, PortKind::Qemu),
    );
    // Unknown destination: flooded to both other ports.
    a.send(B, A, b"hello");
    assert_eq!(b.frames(SETTLE).len(), 1);
    assert_eq!(c.frames(SETTLE).len(), 1);
    // B answers A: A's MAC is learned, so only A gets it.
    b.send(A, B, b"hi");
    let got = a.frames(SETTLE);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][14..], b"hi");
    assert!(c.frames(SETTLE).is_empty(), "a learned unicast leaked to a third port");
    let n = sw.counters();
    assert_eq!((n.received, n.sent, n.flooded), (2, 3, 1));
    assert_eq!(n.rx_per_port, vec![1, 1, 0]);
}

#[test]
fn bochs_ports_receive_on_p_and_the_switch_listens_on_p_plus_one() {
    let mut sw = Switch::new(2).unwrap();
    let a = Nic::attach(&mut sw, PortKind::Bochs);
    let b = Nic::attach(&mut sw, PortKind::Qemu);
    assert_eq!(a.port.switch_udp, a.port.peer_udp + 1);
    a.send(BROADCAST, A, b"from bochs");
    assert_eq!(b.frames(SETTLE).len(), 1);
    b.send(A, B, b"to bochs");
    assert_eq!(a.frames(SETTLE).len(), 1);
}

#[test]
fn a_loss_rate_of_one_drops_every_frame_and_zero_drops_none() {
    let mut sw = Switch::new(3).unwrap();
    let (a, b) = (Nic::attach(&mut sw, PortKind::Qemu), Nic::attach(&mut sw, PortKind::Qemu));
    sw.set_loss(1.0);
    for _ in 0..20 {
        a.send(BROADCAST, A, b"x");
    }
    assert!(b.frames(SETTLE).is_empty());
    assert_eq!(sw.counters().dropped_loss, 20);
    sw.set_loss(0.0);
    for _ in 0..20 {
        a.send(BROADCAST, A, b"x");
    }
    assert_eq!(b.frames(SETTLE).len(), 20);
}

#[test]
fn a_partial_loss_rate_drops_about_that_share_reproducibly_per_seed() {
    let run = |seed| {
        let mut sw = Switch::new(seed).unwrap();
        let (a, b) = (Nic::attach(&mut sw, PortKind::Qemu), Nic::attach(&mut sw, PortKind::Qemu));
        sw.set_loss(0.5);
        for i in 0..200u8 {
            a.send(BROADCAST, A, &[i]);
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(5)); // stay within socket buffers
            }
        }
        let got: Vec<u8> = b.frames(SETTLE).iter().map(|f| f[14]).collect();
        got
    };
    let first = run(42);
    assert!((60..140).contains(&first.len()), "{} of 200 passed at loss 0.5", first.len());
    assert_eq!(first, run(42), "the same seed drops the same frames");
}

#[test]
fn a_partition_blocks_frames_between_groups_until_healed() {
    let mut sw = Switch::new(4).unwrap();
    let (a, b, c) = (
        Nic::attach(&mut sw, PortKind::Qemu),
        Nic::attach(&mut sw, PortKind::Qemu),
        Nic::attach(&mut sw, PortKind::Qemu),
    );
    sw.partition(&[&[0, 1], &[2]]);
    a.send(BROADCAST, A, b"p");
    assert_eq!(b.frames(SETTLE).len(), 1, "same side of the partition");
    assert!(c.frames(SETTLE).is_empty(), "crossed the partition");
    c.send(BROADCAST, C, b"q");
    assert!(a.frames(SETTLE).is_empty());
    assert_eq!(sw.counters().dropped_partition, 3);
    sw.heal();
    c.send(BROADCAST, C, b"r");
    assert_eq!(a.frames(SETTLE).len(), 1);
    assert_eq!(b.frames(SETTLE).len(), 1);
}

#[test]
fn duplication_sends_every_frame_twice() {
    let mut sw = Switch::new(5).unwrap();
    let (a, b) = (Nic::attach(&mut sw, PortKind::Qemu), Nic::attach(&mut sw, PortKind::Qemu));
    sw.set_duplication(1.0);
    for _ in 0..5 {
        a.send(BROADCAST, A, b"d");
    }
    assert_eq!(b.frames(SETTLE).len(), 10);
    assert_eq!(sw.counters().duplicated, 5);
}

#[test]
fn delay_holds_frames_back_and_keeps_their_order_without_jitter() {
    let mut sw = Switch::new(6).unwrap();
    let (a, b) = (Nic::attach(&mut sw, PortKind::Qemu), Nic::attach(&mut sw, PortKind::Qemu));
    sw.set_delay(Duration::from_millis(300), Duration::ZERO);
    let sent = Instant::now();
    for i in 0..5u8 {
        a.send(BROADCAST, A, &[i]);
    }
    assert!(b.frames(Duration::from_millis(150)).is_empty(), "a frame came before its delay");
    let got = b.frames(Duration::from_millis(600));
    assert!(sent.elapsed() >= Duration::from_millis(300));
    assert_eq!(got.iter().map(|f| f[14]).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(sw.counters().delayed, 5);
}

#[test]
fn datagrams_from_strangers_and_runts_are_counted_not_forwarded() {
    let mut sw = Switch::new(7).unwrap();
    let (a, b) = (Nic::attach(&mut sw, PortKind::Qemu), Nic::attach(&mut sw, PortKind::Qemu));
    let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    stranger.send_to(&[0xff; 60], (Ipv4Addr::LOCALHOST, a.port.switch_udp)).unwrap();
    a.sock.send_to(&[1, 2, 3], (Ipv4Addr::LOCALHOST, a.port.switch_udp)).unwrap();
    assert!(b.frames(SETTLE).is_empty());
    assert_eq!(sw.counters().malformed, 2);
}
