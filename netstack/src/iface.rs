//! The node's IPv4 interface: smoltcp with ARP, IPv4 and one UDP socket on the transport
//! port, addressed by `ip=dhcp`, `ip=A.B.C.D/N` or `ip=auto` (RFC 3927 link-local derived
//! from the MAC, with ARP probing for conflicts), plus the glue that moves transport
//! datagrams through it.

use alloc::vec;
use alloc::vec::Vec;
use core::str::FromStr;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use crate::device::{DeviceStats, DriverError, NetDevice};
use crate::phy::SmolDevice;
use crate::transport::{NodeId, Transport};

/// How the interface gets its address (`ip=` on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpConfig {
    /// DHCPv4 (smoltcp's client).
    Dhcp,
    /// A fixed address and prefix length.
    Static(Ipv4Cidr),
    /// IPv4 link-local 169.254.x.y chosen from the MAC, probed with ARP (RFC 3927).
    Auto,
}

/// Why an `ip=` value was not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseIpConfigError;

impl core::fmt::Display for ParseIpConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("expected ip=dhcp, ip=auto or ip=A.B.C.D/N (N from 1 to 32)")
    }
}

impl FromStr for IpConfig {
    type Err = ParseIpConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dhcp" => return Ok(Self::Dhcp),
            "auto" => return Ok(Self::Auto),
            _ => {}
        }
        let (addr, prefix) = s.split_once('/').ok_or(ParseIpConfigError)?;
        let mut octets = [0u8; 4];
        let mut parts = addr.split('.');
        for o in &mut octets {
            *o = parts.next().and_then(|p| p.parse().ok()).ok_or(ParseIpConfigError)?;
        }
        let prefix: u8 = prefix.parse().map_err(|_| ParseIpConfigError)?;
        if parts.next().is_some() || !(1..=32).contains(&prefix) {
            return Err(ParseIpConfigError);
        }
        let [a, b, c, d] = octets;
        Ok(Self::Static(Ipv4Cidr::new(Ipv4Address::new(a, b, c, d), prefix)))
    }
}

/// RFC 3927 probing, sans-IO. Timings are shorter than the RFC's (which assumes hosts
/// joining a shared LAN at human pace); a cluster boots together on its own switch.
#[derive(Clone, Debug)]
pub struct LinkLocal {
    mac: [u8; 6],
    attempt: u32,
    candidate: Ipv4Address,
    probes_sent: u8,
    next_at: u64,
    bound: bool,
    announced: u8,
    conflicts: u32,
}

/// Probes sent before claiming an address (RFC 3927 PROBE_NUM).
pub const PROBE_NUM: u8 = 3;
/// Gap between probes and the wait after the last one, in microseconds.
pub const PROBE_INTERVAL_US: u64 = 200_000;
/// Announcements after claiming (RFC 3927 ANNOUNCE_NUM).
const ANNOUNCE_NUM: u8 = 2;
/// A send queue whose head waits this long (µs) for its next hop's ARP answer is emptied.
/// smoltcp asks again each second (its neighbor cache's silent time), so a live peer that
/// missed one request still answers well within it.
pub const STUCK_US: u64 = 2_500_000;

impl LinkLocal {
    /// Starts probing at `now` (µs) for the first candidate derived from `mac`.
    pub fn new(mac: [u8; 6], now: u64) -> Self {
        Self {
            mac,
            attempt: 0,
            candidate: Self::candidate_for(mac, 0),
            probes_sent: 0,
            next_at: now,
            bound: false,
            announced: 0,
            conflicts: 0,
        }
    }

    /// The `attempt`-th candidate for `mac`: 169.254.1.0 – 169.254.254.255 (RFC 3927 §2.1),
    /// a hash of the MAC so every node picks the same address on every boot.
    pub fn candidate_for(mac: [u8; 6], attempt: u32) -> Ipv4Address {
        // FNV-1a over the MAC and the attempt number.
        let mut h: u32 = 0x811C_9DC5;
        for b in mac.iter().chain(attempt.to_le_bytes().iter()) {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        let host = h % (254 * 256);
        Ipv4Address::new(169, 254, (1 + host / 256) as u8, (host % 256) as u8)
    }

    /// The address being probed or claimed.
    pub fn candidate(&self) -> Ipv4Address {
        self.candidate
    }

    /// Whether the candidate is claimed.
    pub fn is_bound(&self) -> bool {
        self.bound
    }

    /// Conflicts seen so far.
    pub fn conflicts(&self) -> u32 {
        self.conflicts
    }

    /// The next ARP frame to send at `now` (probe or announcement) into `buf` (≥ 60 bytes);
    /// returns its length.
    pub fn poll(&mut self, now: u64, buf: &mut [u8]) -> Option<usize> {
        if now < self.next_at || buf.len() < 60 {
            return None;
        }
        if !self.bound {
            if self.probes_sent < PROBE_NUM {
                self.probes_sent += 1;
                self.next_at = now + PROBE_INTERVAL_US;
                // Probe: sender IP 0.0.0.0, target the candidate (RFC 3927 §2.2.1).
                return Some(arp_request(buf, self.mac, Ipv4Address::UNSPECIFIED, self.candidate));
            }
            self.bound = true;
        }
        if self.announced < ANNOUNCE_NUM {
            self.announced += 1;
            self.next_at = now + PROBE_INTERVAL_US;
            // Announcement: sender and target both the claimed address (RFC 3927 §2.4).
            return Some(arp_request(buf, self.mac, self.candidate, self.candidate));
        }
        None
    }

    /// Looks at a received frame; an ARP packet from another station that uses the
    /// candidate, or probes for it, is a conflict: move to the next candidate and start over.
    /// Returns whether there was a conflict.
    pub fn on_frame(&mut self, frame: &[u8], now: u64) -> bool {
        let Some((sha, spa, tpa, _)) = parse_arp(frame) else { return false };
        if sha == self.mac {
            return false;
        }
        let taken = spa == self.candidate;
        let contested = !self.bound && spa == Ipv4Address::UNSPECIFIED && tpa == self.candidate;
        if !(taken || contested) || self.bound {
            // After binding we keep the address (defence per RFC 3927 §2.5 is not done).
            return false;
        }
        self.next_candidate(now);
        true
    }

    /// Gives up a claimed address that another station turned out to hold (its answer came
    /// after our probes, as a NIC that starts receiving late makes happen): RFC 3927 §2.5 (c),
    /// stop using it and probe the next candidate. A link-local address yields to any holder.
    pub fn give_up(&mut self, now: u64) {
        self.next_candidate(now);
    }

    fn next_candidate(&mut self, now: u64) {
        self.conflicts += 1;
        self.attempt += 1;
        self.candidate = Self::candidate_for(self.mac, self.attempt);
        self.probes_sent = 0;
        self.announced = 0;
        self.bound = false;
        self.next_at = now;
    }
}

fn arp_request(buf: &mut [u8], mac: [u8; 6], spa: Ipv4Address, tpa: Ipv4Address) -> usize {
    let f = &mut buf[..60];
    f.fill(0);
    f[0..6].copy_from_slice(&[0xFF; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, oper request (RFC 826).
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&spa.octets());
    f[38..42].copy_from_slice(&tpa.octets());
    60
}

/// `(sender MAC, sender IP, target IP, operation)` of an Ethernet/IPv4 ARP frame.
fn parse_arp(f: &[u8]) -> Option<([u8; 6], Ipv4Address, Ipv4Address, u16)> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] || f[14..20] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let ip = |i: usize| Ipv4Address::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
    let mut sha = [0u8; 6];
    sha.copy_from_slice(&f[22..28]);
    Some((sha, ip(28), ip(38), u16::from_be_bytes([f[20], f[21]])))
}

/// Wraps the driver to answer ARP probes for our address (RFC 5227 §2.4 defence).
/// smoltcp ignores ARP requests from 0.0.0.0, so without this a node that holds an address
/// would never tell a prober that it is taken.
#[derive(Debug)]
pub struct ProbeGuard<D: NetDevice> {
    dev: D,
    claimed: Option<Ipv4Address>,
    /// MAC of a station that probed for our address, owed a reply.
    owed: Option<[u8; 6]>,
    defended: u64,
    /// Another station sent ARP with our address as its own.
    clash: bool,
}

impl<D: NetDevice> ProbeGuard<D> {
    fn new(dev: D) -> Self {
        Self { dev, claimed: None, owed: None, defended: 0, clash: false }
    }

    /// The wrapped driver.
    pub fn inner(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Probes for our address answered so far.
    pub fn defended(&self) -> u64 {
        self.defended
    }

    /// Whether another station claimed our address since the last call.
    fn take_clash(&mut self) -> bool {
        core::mem::take(&mut self.clash)
    }

    fn answer_probe(&mut self) {
        let (Some(to), Some(ip)) = (self.owed.take(), self.claimed) else { return };
        let mut f = [0u8; 60];
        let mac = self.dev.mac();
        arp_request(&mut f, mac, ip, ip);
        // An ARP reply to the prober, sender = the claimed address (RFC 826 reply format).
        f[0..6].copy_from_slice(&to);
        f[21] = 2;
        f[32..38].copy_from_slice(&to);
        f[38..42].fill(0);
        if self.dev.transmit(&f).is_ok() {
            self.defended += 1;
        }
    }
}

impl<D: NetDevice> NetDevice for ProbeGuard<D> {
    fn mac(&self) -> [u8; 6] {
        self.dev.mac()
    }

    fn link_up(&mut self) -> bool {
        self.dev.link_up()
    }

    fn mtu(&self) -> usize {
        self.dev.mtu()
    }

    fn can_transmit(&mut self) -> bool {
        self.dev.can_transmit()
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), DriverError> {
        self.dev.transmit(frame)
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let n = self.dev.receive(buf)?;
        if let (Some(ip), Some((sha, spa, tpa, 1))) = (self.claimed, parse_arp(&buf[..n])) {
            if spa == Ipv4Address::UNSPECIFIED && tpa == ip && sha != self.dev.mac() {
                self.owed = Some(sha);
            }
        }
        if let (Some(ip), Some((sha, spa, _, _))) = (self.claimed, parse_arp(&buf[..n])) {
            if spa == ip && sha != self.dev.mac() {
                self.clash = true;
            }
        }
        Some(n)
    }

    fn stats(&mut self) -> DeviceStats {
        self.dev.stats()
    }
}

/// Why a UDP datagram could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetSendError {
    /// The interface has no address yet (DHCP or link-local probing in progress).
    NoAddress,
    /// The socket's transmit buffer is full: poll and retry.
    Busy,
}

/// The interface of one node: device, smoltcp, the transport's UDP socket, addressing.
pub struct NetInterface<D: NetDevice> {
    device: SmolDevice<ProbeGuard<D>>,
    iface: Interface,
    sockets: SocketSet<'static>,
    udp: SocketHandle,
    udp_tx: SocketHandle,
    /// Bytes in the send socket's queue and since when (µs) they have not gone down.
    queued: (usize, u64),
    stuck_drops: u64,
    dhcp: Option<SocketHandle>,
    link_local: Option<LinkLocal>,
    port: u16,
    scratch: Vec<u8>,
}

impl<D: NetDevice> core::fmt::Debug for NetInterface<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NetInterface")
            .field("ipv4", &self.ipv4())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl<D: NetDevice> NetInterface<D> {
    /// Brings up `dev` with addressing `ip` and a UDP socket bound to `port`. `now` is in
    /// microseconds; `seed` should differ between boots (smoltcp uses it for DHCP ids).
    pub fn new(dev: D, ip: IpConfig, port: u16, now: u64, seed: u64) -> Self {
        let mac = dev.mac();
        let mut device = SmolDevice::new(ProbeGuard::new(dev));
        let mut config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = seed;
        let iface = Interface::new(config, &mut device, instant(now));
        let mut sockets = SocketSet::new(Vec::new());
        let mtu = device.inner().mtu();
        let slots = 128;
        let buffer = |slots: usize, bytes: usize| {
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; slots], vec![0; bytes])
        };
        // Receiving and sending use two sockets on the port: smoltcp holds a datagram whose
        // destination's ARP is pending at the head of its socket's queue, and everything
        // behind it waits; the send socket can then be emptied without losing what came in.
        // smoltcp hands a datagram to the first socket that accepts it: the receiving one.
        let mut socket = udp::Socket::new(buffer(slots, slots * mtu.min(4500)), buffer(1, 64));
        // Binding a fresh socket to a non-zero port cannot fail.
        let _ = socket.bind(port);
        let udp = sockets.add(socket);
        let mut sender = udp::Socket::new(buffer(1, 64), buffer(slots, slots * mtu.min(4500)));
        let _ = sender.bind(port);
        let udp_tx = sockets.add(sender);
        let mut me = Self {
            device,
            iface,
            sockets,
            udp,
            udp_tx,
            queued: (0, 0),
            stuck_drops: 0,
            dhcp: None,
            link_local: None,
            port,
            scratch: vec![0; mtu + 18],
        };
        match ip {
            IpConfig::Static(cidr) => me.set_address(cidr),
            IpConfig::Dhcp => me.dhcp = Some(me.sockets.add(dhcpv4::Socket::new())),
            IpConfig::Auto => me.link_local = Some(LinkLocal::new(mac, now)),
        }
        me
    }

    fn set_address(&mut self, cidr: Ipv4Cidr) {
        self.device.inner().claimed = Some(cidr.address());
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            // Capacity is at least one address.
            let _ = addrs.push(IpCidr::Ipv4(cidr));
        });
    }

    /// The address in use, if any yet.
    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.iface.ip_addrs().iter().find_map(|a| match a {
            IpCidr::Ipv4(c) => Some(*c),
            #[allow(unreachable_patterns)]
            _ => None,
        })
    }

    /// The MAC address.
    pub fn mac(&mut self) -> [u8; 6] {
        self.device.inner().mac()
    }

    /// The driver, for link state and counters.
    pub fn device(&mut self) -> &mut D {
        self.device.inner().inner()
    }

    /// ARP probes for our address that were answered.
    pub fn probes_defended(&mut self) -> u64 {
        self.device.inner().defended()
    }

    /// The link-local state machine when `ip=auto`.
    pub fn link_local(&self) -> Option<&LinkLocal> {
        self.link_local.as_ref()
    }

    /// Moves frames and runs timers; call often (every loop iteration). Returns whether
    /// anything happened.
    pub fn poll(&mut self, now: u64) -> bool {
        if let Some(ll) = &mut self.link_local {
            if !ll.is_bound() {
                // While probing, frames are ours to inspect; smoltcp has no address yet.
                let mut frame = [0u8; 64];
                let mut busy = false;
                while let Some(n) = self.device.inner().receive(&mut self.scratch) {
                    ll.on_frame(&self.scratch[..n], now);
                    busy = true;
                }
                if let Some(n) = ll.poll(now, &mut frame) {
                    let _ = self.device.inner().transmit(&frame[..n]);
                    busy = true;
                }
                if ll.is_bound() {
                    let cidr = Ipv4Cidr::new(ll.candidate(), 16);
                    self.set_address(cidr);
                }
                return busy;
            }
            if self.device.inner().take_clash() {
                // Someone else holds it: drop the address and probe the next candidate.
                ll.give_up(now);
                self.device.inner().claimed = None;
                self.iface.update_ip_addrs(|addrs| {
                    addrs.clear();
                });
                return true;
            }
            let mut frame = [0u8; 64];
            if let Some(n) = ll.poll(now, &mut frame) {
                let _ = self.device.inner().transmit(&frame[..n]);
            }
        }
        let changed = self.iface.poll(instant(now), &mut self.device, &mut self.sockets);
        self.unstick(now);
        self.device.inner().answer_probe();
        if let Some(h) = self.dhcp {
            let event = self.sockets.get_mut::<dhcpv4::Socket<'_>>(h).poll();
            match event {
                Some(dhcpv4::Event::Configured(cfg)) => {
                    let (address, router) = (cfg.address, cfg.router);
                    self.set_address(address);
                    if let Some(r) = router {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                    }
                }
                Some(dhcpv4::Event::Deconfigured) => {
                    self.device.inner().claimed = None;
                    self.iface.update_ip_addrs(|addrs| {
                        addrs.clear();
                    });
                    self.iface.routes_mut().remove_default_ipv4_route();
                }
                None => {}
            }
        }
        changed != smoltcp::iface::PollResult::None
    }

    /// How long until `poll` has timer work, in microseconds (`None`: only on a frame).
    pub fn poll_delay(&mut self, now: u64) -> Option<u64> {
        if let Some(ll) = &self.link_local {
            if !ll.is_bound() {
                return Some(PROBE_INTERVAL_US / 4);
            }
        }
        self.iface.poll_delay(instant(now), &self.sockets).map(|d| d.total_micros())
    }

    /// Sends one UDP datagram from the transport port.
    pub fn send_to(
        &mut self,
        payload: &[u8],
        to: Ipv4Address,
        port: u16,
    ) -> Result<(), NetSendError> {
        if self.ipv4().is_none() {
            return Err(NetSendError::NoAddress);
        }
        let socket = self.sockets.get_mut::<udp::Socket<'_>>(self.udp_tx);
        socket.send_slice(payload, (to, port)).map_err(|_| NetSendError::Busy)
    }

    /// Times the send queue was emptied because its head waited for an address nobody answers.
    pub fn stuck_drops(&self) -> u64 {
        self.stuck_drops
    }

    /// A send queue that has not shrunk for [`STUCK_US`] waits for an ARP answer that is not
    /// coming (a member that died): its datagrams are dropped, for the transport to resend,
    /// so the ones for live peers behind it go out.
    fn unstick(&mut self, now: u64) {
        let socket = self.sockets.get_mut::<udp::Socket<'_>>(self.udp_tx);
        let bytes = socket.send_queue();
        let (before, since) = self.queued;
        if bytes == 0 || bytes < before {
            self.queued = (bytes, now);
        } else if now.saturating_sub(since) > STUCK_US {
            socket.close();
            let _ = socket.bind(self.port);
            self.stuck_drops += 1;
            self.queued = (0, now);
        } else {
            self.queued = (bytes, since);
        }
    }

    /// Takes one received UDP datagram on the transport port into `buf`:
    /// `(length, source address, source port)`.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> Option<(usize, Ipv4Address, u16)> {
        let socket = self.sockets.get_mut::<udp::Socket<'_>>(self.udp);
        let (n, meta) = socket.recv_slice(buf).ok()?;
        match meta.endpoint.addr {
            smoltcp::wire::IpAddress::Ipv4(a) => Some((n, a, meta.endpoint.port)),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// One round of transport I/O: hands every received datagram to `transport`, then
    /// sends everything it has ready to the addresses `peer_addr` gives (datagrams for
    /// unknown nodes are dropped and left to retransmission). `buf` must hold
    /// [`crate::transport::Config::max_datagram`] bytes. Call `poll` before and after.
    pub fn exchange(
        &mut self,
        transport: &mut Transport,
        now: u64,
        buf: &mut [u8],
        peer_addr: impl Fn(NodeId) -> Option<(Ipv4Address, u16)>,
    ) {
        while let Some((n, _, _)) = self.recv_from(buf) {
            // Drops are counted by the transport.
            let _ = transport.handle_datagram(now, &buf[..n]);
        }
        loop {
            let socket = self.sockets.get::<udp::Socket<'_>>(self.udp_tx);
            if !socket.can_send() {
                break;
            }
            let Some(t) = transport.poll_transmit(now, buf) else { break };
            if let Some((addr, port)) = peer_addr(t.to) {
                let _ = self.send_to(&buf[..t.len], addr, port);
            }
        }
    }
}

fn instant(now_us: u64) -> Instant {
    Instant::from_micros(i64::try_from(now_us).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
