//! The smoltcp interface on an in-memory hub: addressing (static, DHCP, link-local) and
//! transport traffic over UDP.

use super::*;
use crate::device::{DeviceStats, DriverError};
use crate::transport::{ClusterKey, Config, Seed, SendError};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

/// An Ethernet hub: every frame goes to every other port; optionally drops every nth frame.
#[derive(Default)]
struct Hub {
    ports: Vec<VecDeque<Vec<u8>>>,
    sent: u64,
    drop_every: u64,
    log: Vec<Vec<u8>>,
    /// A port whose NIC delivers nothing yet (frames wait in its queue), as QEMU's e1000 does
    /// for about a second after receive is enabled.
    deaf: Option<usize>,
}

struct Port {
    hub: Rc<RefCell<Hub>>,
    index: usize,
    mac: [u8; 6],
    stats: DeviceStats,
}

fn port(hub: &Rc<RefCell<Hub>>, last: u8) -> Port {
    let index = {
        let mut h = hub.borrow_mut();
        h.ports.push(VecDeque::new());
        h.ports.len() - 1
    };
    Port {
        hub: Rc::clone(hub),
        index,
        mac: [0x02, 0, 0, 0, 0, last],
        stats: DeviceStats::default(),
    }
}

impl NetDevice for Port {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn link_up(&mut self) -> bool {
        true
    }
    fn mtu(&self) -> usize {
        1500
    }
    fn can_transmit(&mut self) -> bool {
        true
    }
    fn transmit(&mut self, frame: &[u8]) -> Result<(), DriverError> {
        let mut hub = self.hub.borrow_mut();
        hub.sent += 1;
        hub.log.push(frame.to_vec());
        self.stats.tx_packets += 1;
        if hub.drop_every != 0 && hub.sent.is_multiple_of(hub.drop_every) {
            return Ok(());
        }
        for (i, q) in hub.ports.iter_mut().enumerate() {
            if i != self.index {
                q.push_back(frame.to_vec());
            }
        }
        Ok(())
    }
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.hub.borrow().deaf == Some(self.index) {
            return None;
        }
        let f = self.hub.borrow_mut().ports[self.index].pop_front()?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        self.stats.rx_packets += 1;
        Some(n)
    }
    fn stats(&mut self) -> DeviceStats {
        self.stats
    }
}

const PORT: u16 = 7700;

fn cidr(s: &str) -> IpConfig {
    s.parse().unwrap()
}

/// Polls every interface at 1 ms virtual steps until `done` or `limit` µs pass.
fn run_until(
    nodes: &mut [NetInterface<Port>],
    now: &mut u64,
    limit: u64,
    mut done: impl FnMut(&mut [NetInterface<Port>]) -> bool,
) {
    while !done(nodes) {
        assert!(*now < limit, "condition not reached by {limit} µs");
        for n in nodes.iter_mut() {
            n.poll(*now);
        }
        *now += 1_000;
    }
}

#[test]
fn ip_config_parses_dhcp_auto_and_static_cidr() {
    assert_eq!(cidr("dhcp"), IpConfig::Dhcp);
    assert_eq!(cidr("auto"), IpConfig::Auto);
    assert_eq!(
        cidr("10.0.0.7/24"),
        IpConfig::Static(Ipv4Cidr::new(Ipv4Address::new(10, 0, 0, 7), 24))
    );
    for bad in [
        "",
        "10.0.0.7",
        "10.0.0/24",
        "10.0.0.7.1/24",
        "10.0.0.256/24",
        "10.0.0.7/0",
        "10.0.0.7/33",
        "DHCP",
    ] {
        assert_eq!(bad.parse::<IpConfig>(), Err(ParseIpConfigError), "{bad}");
    }
}

#[test]
fn link_local_candidates_are_in_range_deterministic_and_spread() {
    let mut seen = std::collections::BTreeSet::new();
    for last in 0..=255u8 {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, last];
        let a = LinkLocal::candidate_for(mac, 0);
        assert_eq!(a, LinkLocal::candidate_for(mac, 0));
        let o = a.octets();
        assert_eq!((o[0], o[1]), (169, 254));
        assert!((1..=254).contains(&o[2]), "{a}");
        seen.insert(a);
    }
    assert!(seen.len() > 250, "neighbouring MACs get different addresses");
}

#[test]
fn static_addresses_exchange_udp_after_arp() {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mut nodes = vec![
        NetInterface::new(port(&hub, 1), cidr("10.9.0.1/24"), PORT, 0, 1),
        NetInterface::new(port(&hub, 2), cidr("10.9.0.2/24"), PORT, 0, 2),
    ];
    nodes[0].send_to(b"hello", Ipv4Address::new(10, 9, 0, 2), PORT).unwrap();
    let mut now = 0;
    let mut buf = [0u8; 64];
    let mut got = None;
    run_until(&mut nodes, &mut now, 1_000_000, |n| {
        got = got.or_else(|| n[1].recv_from(&mut buf));
        got.is_some()
    });
    assert_eq!(got, Some((5, Ipv4Address::new(10, 9, 0, 1), PORT)));
    assert_eq!(&buf[..5], b"hello");
    let arp = hub.borrow().log.iter().filter(|f| f[12..14] == [8, 6]).count();
    assert!(arp >= 2, "an ARP request and its reply went over the wire");
}

#[test]
fn auto_addressing_claims_the_mac_derived_link_local_address() {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mut nodes = vec![
        NetInterface::new(port(&hub, 1), IpConfig::Auto, PORT, 0, 1),
        NetInterface::new(port(&hub, 2), IpConfig::Auto, PORT, 0, 2),
    ];
    assert_eq!(nodes[0].ipv4(), None, "no address while probing");
    assert_eq!(
        nodes[0].send_to(b"x", Ipv4Address::new(169, 254, 1, 1), PORT),
        Err(NetSendError::NoAddress)
    );
    let mut now = 0;
    run_until(&mut nodes, &mut now, 5_000_000, |n| n.iter().all(|n| n.ipv4().is_some()));
    for (i, n) in nodes.iter().enumerate() {
        let want = LinkLocal::candidate_for([0x02, 0, 0, 0, 0, i as u8 + 1], 0);
        assert_eq!(n.ipv4(), Some(Ipv4Cidr::new(want, 16)));
    }
    let probes = hub
        .borrow()
        .log
        .iter()
        .filter(|f| parse_arp(f).is_some_and(|a| a.1 == Ipv4Address::UNSPECIFIED))
        .count();
    assert_eq!(probes, 2 * usize::from(PROBE_NUM));
    // And they can talk.
    let dst = nodes[1].ipv4().unwrap().address();
    nodes[0].send_to(b"ll", dst, PORT).unwrap();
    let mut buf = [0u8; 16];
    run_until(&mut nodes, &mut now, 10_000_000, |n| n[1].recv_from(&mut buf).is_some());
}

#[test]
fn auto_addressing_moves_on_when_the_candidate_is_taken() {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mac_b = [0x02, 0, 0, 0, 0, 2];
    let squatted = LinkLocal::candidate_for(mac_b, 0);
    let squatter = IpConfig::Static(Ipv4Cidr::new(squatted, 16));
    let mut nodes = vec![
        NetInterface::new(port(&hub, 1), squatter, PORT, 0, 1),
        NetInterface::new(port(&hub, 2), IpConfig::Auto, PORT, 0, 2),
    ];
    let mut now = 0;
    run_until(&mut nodes, &mut now, 5_000_000, |n| n[1].ipv4().is_some());
    let ll = nodes[1].link_local().unwrap();
    assert_eq!(ll.conflicts(), 1);
    assert_eq!(nodes[0].probes_defended(), 1, "the holder answered the probe");
    assert_eq!(nodes[1].ipv4().unwrap().address(), LinkLocal::candidate_for(mac_b, 1));
}

#[test]
fn auto_addressing_gives_up_a_claimed_address_when_the_holder_is_heard_late() {
    let hub = Rc::new(RefCell::new(Hub { deaf: Some(1), ..Hub::default() }));
    let mac_b = [0x02, 0, 0, 0, 0, 2];
    let squatted = LinkLocal::candidate_for(mac_b, 0);
    let holder = IpConfig::Static(Ipv4Cidr::new(squatted, 16));
    let mut nodes = vec![
        NetInterface::new(port(&hub, 1), holder, PORT, 0, 1),
        NetInterface::new(port(&hub, 2), IpConfig::Auto, PORT, 0, 2),
    ];
    let mut now = 0;
    // Deaf, node 2 hears no defence and claims the taken address…
    run_until(&mut nodes, &mut now, 5_000_000, |n| n[1].ipv4().is_some());
    assert_eq!(nodes[1].ipv4().unwrap().address(), squatted);
    // …then its NIC delivers the holder's answer: it must give the address up and move on.
    hub.borrow_mut().deaf = None;
    let next = LinkLocal::candidate_for(mac_b, 1);
    run_until(&mut nodes, &mut now, 10_000_000, |n| {
        n[1].ipv4().is_some_and(|c| c.address() == next)
    });
    assert_eq!(nodes[1].link_local().unwrap().conflicts(), 1);
    assert_eq!(nodes[0].ipv4().unwrap().address(), squatted, "the holder keeps its address");
}

#[test]
fn dhcp_addressing_sends_a_discover() {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mut nodes = vec![NetInterface::new(port(&hub, 1), IpConfig::Dhcp, PORT, 0, 1)];
    let mut now = 0;
    let is_discover = |f: &Vec<u8>| {
        f.len() > 42 && f[12..14] == [8, 0] && f[23] == 17 && f[36..38] == 67u16.to_be_bytes()
    };
    run_until(&mut nodes, &mut now, 5_000_000, |_| hub.borrow().log.iter().any(is_discover));
    assert_eq!(nodes[0].ipv4(), None);
}

#[test]
fn transport_messages_cross_smoltcp_exactly_once_in_order_despite_frame_loss() {
    let hub = Rc::new(RefCell::new(Hub { drop_every: 9, ..Hub::default() }));
    let mut nodes = [
        NetInterface::new(port(&hub, 1), cidr("10.9.0.1/24"), PORT, 0, 1),
        NetInterface::new(port(&hub, 2), cidr("10.9.0.2/24"), PORT, 0, 2),
    ];
    let key = ClusterKey::from_passphrase(b"smoltcp test");
    let mut transports: Vec<Transport> = (0..2)
        .map(|id| {
            let mut t = Transport::new(Config::new(3, id, Seed::new([40 + id as u8; 32])), &key);
            t.add_peer(1 - id, 0);
            t
        })
        .collect();
    let addr = |id: NodeId| Some((Ipv4Address::new(10, 9, 0, id as u8 + 1), PORT));
    let mut buf = vec![0u8; transports[0].config().max_datagram()];
    let (count, mut sent, mut received) = (200u32, 0u32, 0u32);
    let mut now = 0u64;
    while received < count {
        assert!(now < 120_000_000, "stalled at {received}/{count}");
        while sent < count {
            let mut m = vec![0xA5u8; 100 + (sent as usize * 37) % 4000];
            m[..4].copy_from_slice(&sent.to_be_bytes());
            match transports[0].send(1, &m) {
                Ok(()) => sent += 1,
                Err(SendError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        for (n, t) in nodes.iter_mut().zip(transports.iter_mut()) {
            n.poll(now);
            n.exchange(t, now, &mut buf, addr);
            n.poll(now);
        }
        while let Some((from, m)) = transports[1].recv() {
            assert_eq!(from, 0);
            assert_eq!(m[..4], received.to_be_bytes());
            assert_eq!(m.len(), 100 + (received as usize * 37) % 4000);
            received += 1;
        }
        now += 500;
    }
    assert!(transports[0].stats().retransmits > 0);
}

#[test]
fn a_datagram_for_an_address_nobody_answers_does_not_block_the_traffic_after_it() {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let mut nodes = vec![
        NetInterface::new(port(&hub, 1), cidr("10.9.0.1/24"), PORT, 0, 1),
        NetInterface::new(port(&hub, 2), cidr("10.9.0.2/24"), PORT, 0, 2),
    ];
    // A member that died: its address is never answered (no ARP reply). What queued behind
    // it is dropped with it; the transport resends, and that must go out.
    nodes[0].send_to(b"to the dead", Ipv4Address::new(10, 9, 0, 3), PORT).unwrap();
    nodes[0].send_to(b"to the living", Ipv4Address::new(10, 9, 0, 2), PORT).unwrap();
    let mut now = 0;
    run_until(&mut nodes, &mut now, 4_000_000, |n| n[0].stuck_drops() >= 1);
    nodes[0].send_to(b"to the living", Ipv4Address::new(10, 9, 0, 2), PORT).unwrap();
    let mut buf = [0u8; 64];
    let mut got = None;
    let limit = now + 1_000_000;
    run_until(&mut nodes, &mut now, limit, |n| {
        got = got.or_else(|| n[1].recv_from(&mut buf));
        got.is_some()
    });
    assert_eq!(&buf[..13], b"to the living");
    assert_eq!(nodes[0].stuck_drops(), 1);
}
