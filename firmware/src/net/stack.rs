//! The node's network loop: the NIC under netstack's smoltcp interface, discovery by
//! authenticated broadcast announcements, cluster formation, and the reliable transport to
//! every member; plus the `net`, `nodes`, `ping` and `netbench` tools that run over it.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use gestalt_netstack::device::{DeviceStats, DriverError, NetDevice};
use gestalt_netstack::iface::{IpConfig, NetInterface};
use gestalt_netstack::membership::{
    Announce, AnnounceError, Announcement, ANNOUNCE_LEN, ANNOUNCE_MAGIC,
};
use gestalt_netstack::transport::auth::{Authenticator, ClusterKey};
use gestalt_netstack::transport::{self, DropReason, Event, NodeId, Transport};
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

use super::app::{pong_for, AppMsg};
use crate::arch::time::uptime_us;
use crate::cmdline::{Config, IpMode};
use crate::console::ratelimit::{RefusalLog, Verdict};
use crate::{error, info, kprintln, warn};
use gestalt_netstack::formation::{Dest, Formation, Heard, Mac, Progress, View};

/// EtherType of the raw-frame ping (IEEE 802 local experimental 1).
const RAW_ETHERTYPE: u16 = 0x88B5;
/// Raw frame kinds (byte 14): a 60-byte ping and its reply; a frame of any size to be echoed
/// as it is, and the echo; a frame only to be counted; "report the count", and the report.
const RAW_PING: u8 = 1;
const RAW_PONG: u8 = 2;
const RAW_ECHO_ME: u8 = 3;
const RAW_ECHOED: u8 = 4;
const RAW_COUNT_ME: u8 = 5;
const RAW_REPORT: u8 = 6;
const RAW_REPORTED: u8 = 7;
/// Formation waits this long for `nodes=` peers before it gives up, or, without `nodes=`,
/// before it commits with whoever is there.
const FORMATION_TIMEOUT_US: u64 = 5_000_000;
/// Key used when the command line gives none. Not secret: production clusters set `key=`.
const DEFAULT_KEY: &[u8] = b"gestalt default cluster key: set key= on real clusters";

/// The NIC as `netstack` sees it, answering raw-frame pings below smoltcp.
pub struct AnyNic {
    dev: Box<dyn NetDevice>,
    raw_replies: VecDeque<u32>,
    raw_answered: u64,
    /// `RAW_COUNT_ME` frames received since the last report.
    raw_counted: u32,
    /// The peer's latest count report.
    raw_report: Option<u32>,
}

impl AnyNic {
    fn raw_frame(&self, dst: [u8; 6], kind: u8, token: u32) -> [u8; 60] {
        let mut f = [0u8; 60];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&self.dev.mac());
        f[12..14].copy_from_slice(&RAW_ETHERTYPE.to_be_bytes());
        f[14] = kind;
        f[15..19].copy_from_slice(&token.to_be_bytes());
        f
    }
}

impl NetDevice for AnyNic {
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
        loop {
            let n = self.dev.receive(buf)?;
            if n < 19 || buf[12..14] != RAW_ETHERTYPE.to_be_bytes() {
                return Some(n);
            }
            let token = u32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]);
            let mut src = [0u8; 6];
            src.copy_from_slice(&buf[6..12]);
            match buf[14] {
                RAW_PING | RAW_REPORT => {
                    let (kind, token) = match buf[14] {
                        RAW_PING => (RAW_PONG, token),
                        _ => (RAW_REPORTED, core::mem::take(&mut self.raw_counted)),
                    };
                    let reply = self.raw_frame(src, kind, token);
                    if self.dev.transmit(&reply).is_ok() {
                        self.raw_answered += 1;
                    }
                }
                RAW_ECHO_ME => {
                    // The same bytes back, addressed to the sender: as much on the wire as
                    // came in, without a copy.
                    buf[0..6].copy_from_slice(&src);
                    buf[6..12].copy_from_slice(&self.dev.mac());
                    buf[14] = RAW_ECHOED;
                    if self.dev.transmit(&buf[..n]).is_ok() {
                        self.raw_answered += 1;
                    }
                }
                RAW_COUNT_ME => self.raw_counted = self.raw_counted.wrapping_add(1),
                RAW_REPORTED => self.raw_report = Some(token),
                RAW_PONG | RAW_ECHOED if self.raw_replies.len() < 64 => {
                    self.raw_replies.push_back(token);
                }
                _ => {}
            }
        }
    }
    fn stats(&mut self) -> DeviceStats {
        self.dev.stats()
    }
}

/// Counters of the node loop itself.
#[derive(Default)]
struct Counters {
    announces_sent: u64,
    announces_heard: u64,
    announces_refused: u64,
    /// Authentic announcements not (yet) proven fresh, or replayed from another address.
    announces_unproven: u64,
    early_datagrams: u64,
    unknown_messages: u64,
}

/// State of the `test=mesh` run.
struct Mesh {
    per_peer: u32,
    next: Vec<u32>,
    expect: Vec<u32>,
    errors: u32,
    done: bool,
}

/// The node's network side.
pub struct NodeNet {
    iface: NetInterface<AnyNic>,
    auth: Authenticator,
    key: ClusterKey,
    cluster: u32,
    port: u16,
    formation: Formation,
    transport: Option<Transport>,
    buf: Vec<u8>,
    /// Refusals shown on the console: bounded memory and rate (spoofed sources are free).
    refused: RefusalLog<([u8; 4], u8), 64>,
    counters: Counters,
    pongs: VecDeque<(NodeId, u32)>,
    bench_done: Option<(NodeId, u32)>,
    bench_rx: u32,
    mesh: Option<Mesh>,
    gave_up: bool,
    /// The address last logged, to report changes once.
    shown_ip: Option<Ipv4Cidr>,
    ip_mode: IpMode,
}

fn ip_config(ip: IpMode) -> IpConfig {
    match ip {
        IpMode::Dhcp => IpConfig::Dhcp,
        IpMode::Auto => IpConfig::Auto,
        IpMode::Static { addr, prefix } => IpConfig::Static(Ipv4Cidr::new(
            Ipv4Address::new(addr[0], addr[1], addr[2], addr[3]),
            prefix,
        )),
    }
}

/// This boot's formation nonce: formation's challenges are made of it, so it must differ
/// from every earlier boot's: from `crate::arch::rand` (RDSEED/RDRAND, or its stated
/// fallback), like the transport's session seeds.
fn boot_nonce(mac: [u8; 6]) -> u64 {
    crate::arch::rand::fresh_u64(b"formation boot nonce", &mac)
}

impl NodeNet {
    /// Brings the interface up and starts discovery.
    pub fn new(dev: Box<dyn NetDevice>, cfg: &Config, cores: u16, memory_bytes: u64) -> Self {
        let now = uptime_us();
        let nonce = boot_nonce(dev.mac());
        let key = match &cfg.key {
            Some(k) => super::secrets::cluster_key(k),
            None => {
                warn!("net: no valid key= on the command line: using the built-in default cluster key, which is public: anyone on this network can join the cluster or forge its traffic");
                super::secrets::cluster_key(DEFAULT_KEY)
            }
        };
        info!(
            "net: cluster key fingerprint {} (the same on every node of the cluster; the key is never shown)",
            super::secrets::fingerprint(&key)
        );
        let auth = Authenticator::new(&key);
        let info = crate::info::current();
        let mut build_id = [0u8; 16];
        build_id.copy_from_slice(&info.build_id[..16]);
        let mac = dev.mac();
        let me = Announce {
            cluster_id: cfg.cluster,
            build_id,
            mac,
            cores,
            memory_bytes,
            expected_nodes: cfg.nodes.unwrap_or(0),
            primary: cfg.primary,
            nonce,
        };
        let nic = AnyNic {
            dev,
            raw_replies: VecDeque::new(),
            raw_answered: 0,
            raw_counted: 0,
            raw_report: None,
        };
        let iface = NetInterface::new(nic, ip_config(cfg.ip), cfg.port, now, nonce);
        let formation =
            Formation::new(me, ([0; 4], cfg.port), cfg.nodes, now, FORMATION_TIMEOUT_US);
        let mesh = (cfg.test == Some("mesh")).then(|| Mesh {
            per_peer: 200,
            next: Vec::new(),
            expect: Vec::new(),
            errors: 0,
            done: false,
        });
        info!(
            "net: cluster {} port {}{}, waiting for {} node(s)",
            cfg.cluster,
            cfg.port,
            if cfg.primary { ", primary" } else { "" },
            cfg.nodes.map_or_else(
                || alloc::string::String::from("any number of"),
                |n| alloc::format!("{n}")
            )
        );
        NodeNet {
            iface,
            auth,
            key,
            cluster: cfg.cluster,
            port: cfg.port,
            formation,
            transport: None,
            buf: vec![0; 10_000],
            refused: RefusalLog::new(),
            counters: Counters::default(),
            pongs: VecDeque::new(),
            bench_done: None,
            bench_rx: 0,
            mesh,
            gave_up: false,
            shown_ip: None,
            ip_mode: cfg.ip,
        }
    }

    /// Frames the NIC moved so far, either way: a change means the loop had work.
    pub fn activity(&mut self) -> u64 {
        let s = self.iface.device().stats();
        s.rx_packets + s.tx_packets
    }

    fn my_ip(&self) -> Option<[u8; 4]> {
        self.iface.ipv4().map(|c| c.address().octets())
    }

    /// One round of network work; call from the node loop as often as possible.
    pub fn poll(&mut self) {
        // Nothing in the network loop waits for the serial line (console::serial).
        let _quiet = crate::console::serial::defer();
        let now = uptime_us();
        self.iface.poll(now);
        if self.iface.ipv4() != self.shown_ip {
            self.shown_ip = self.iface.ipv4();
            self.formation.set_addr((self.my_ip().unwrap_or([0; 4]), self.port));
            let how = match self.ip_mode {
                IpMode::Dhcp => "dhcp",
                IpMode::Auto => "link-local",
                IpMode::Static { .. } => "static",
            };
            match self.shown_ip {
                Some(c) => info!("net: address {c} ({how})"),
                None => warn!("net: address lost ({how})"),
            }
        }
        self.receive(now);
        if self.my_ip().is_some() {
            self.announce(now);
        }
        if self.transport.is_none() {
            self.form(now);
        }
        self.run_transport(now);
        self.iface.poll(now);
        if let Some(n) = self.refused.summary(now) {
            warn!("net: {n} more refusals not shown (rate limit; counts in 'net')");
        }
        crate::console::serial::pump();
    }

    /// Sends this round's announcements (formation decides when and to whom).
    fn announce(&mut self, now: u64) {
        let mut b = [0u8; ANNOUNCE_LEN];
        for (a, dest) in self.formation.poll_announce(now) {
            if a.encode(&self.auth, &mut b).is_none() {
                continue;
            }
            let (ip, port) = match dest {
                Dest::Broadcast => (Ipv4Address::BROADCAST, self.port),
                Dest::To((ip, port)) => (Ipv4Address::new(ip[0], ip[1], ip[2], ip[3]), port),
            };
            // A full socket buffer loses this one; the next round sends again.
            if self.iface.send_to(&b, ip, port).is_ok() {
                self.counters.announces_sent += 1;
            }
            self.iface.poll(now);
        }
    }

    /// Logs a refusal once per sender and reason, within the console's rate limit.
    fn refuse_once(&mut self, from: [u8; 4], kind: u8, what: core::fmt::Arguments<'_>) {
        self.counters.announces_refused += 1;
        if self.refused.check((from, kind), uptime_us()) == Verdict::Show {
            error!("net: refused {}.{}.{}.{}: {}", from[0], from[1], from[2], from[3], what);
        }
    }

    fn receive(&mut self, now: u64) {
        let mut buf = core::mem::take(&mut self.buf);
        while let Some((n, src, sport)) = self.iface.recv_from(&mut buf) {
            let d = &buf[..n];
            let from = src.octets();
            if Some(from) == self.my_ip() {
                continue; // our own broadcast
            }
            if n >= 4 && d[..4] == ANNOUNCE_MAGIC.to_be_bytes() {
                match Announcement::decode(d, &self.auth, self.cluster) {
                    Ok(a) => self.heard(a, (from, sport), now),
                    Err(
                        e @ (AnnounceError::BadTag
                        | AnnounceError::WrongCluster
                        | AnnounceError::BadVersion),
                    ) => self.refuse_once(from, e as u8, format_args!("{e}")),
                    Err(_) => self.counters.announces_refused += 1,
                }
                continue;
            }
            match &mut self.transport {
                Some(t) => {
                    if let Err(r) = t.handle_datagram(now, d) {
                        if matches!(
                            r,
                            DropReason::BadTag | DropReason::WrongCluster | DropReason::BadVersion
                        ) {
                            self.refuse_once(from, 100 + r as u8, format_args!("datagram: {r}"));
                        }
                    }
                }
                None => self.counters.early_datagrams += 1,
            }
        }
        self.buf = buf;
    }

    fn heard(&mut self, m: Announcement, addr: ([u8; 4], u16), now: u64) {
        self.counters.announces_heard += 1;
        let a = m.node;
        match self.formation.on_announce(m, addr, now) {
            Heard::New => info!(
                "net: found node {} at {}.{}.{}.{} ({} cores, {} MiB) — {} of {} nodes",
                Mac(a.mac),
                addr.0[0],
                addr.0[1],
                addr.0[2],
                addr.0[3],
                a.cores,
                a.memory_bytes >> 20,
                self.formation.count(now),
                self.formation
                    .expected()
                    .map_or_else(|| alloc::string::String::from("?"), |n| alloc::format!("{n}"))
            ),
            Heard::Known => {}
            Heard::Unproven | Heard::Replayed => self.counters.announces_unproven += 1,
            Heard::Moved { id, addr } => {
                let a = addr.0;
                warn!("net: node {id} now answers at {}.{}.{}.{}", a[0], a[1], a[2], a[3]);
            }
            Heard::Restarted { id } => error!(
                "net: node {id} booted again; its new boot is not a member of this view (reboot the cluster to take it back)"
            ),
            Heard::Refused(r) => self.refuse_once(addr.0, 200, format_args!("{r}")),
        }
    }

    /// Tells the operator how formation goes.
    fn report_progress(&mut self) {
        while let Some(p) = self.formation.take_progress() {
            match p {
                Progress::Proposed { members } => {
                    info!("net: proposing a view of {members} nodes (this node coordinates)");
                }
                Progress::Accepted { coordinator } => {
                    info!("net: accepted the view proposed by node {}", Mac(coordinator));
                }
                Progress::Withdrawn => info!("net: view proposal withdrawn; forming again"),
                Progress::LeftOut { by } => error!(
                    "net: left out: node {} committed a view without this node (more nodes than nodes=, or this one came late); this node stays out of the cluster",
                    Mac(by)
                ),
                Progress::CoordinatorSilent { coordinator } => error!(
                    "net: node {} proposed a view, this node accepted it, and it went silent; this node joins no other view (reboot the cluster)",
                    Mac(coordinator)
                ),
            }
        }
    }

    fn form(&mut self, now: u64) {
        let Some(ip) = self.my_ip() else { return };
        let committed = self.formation.poll(now).cloned();
        self.report_progress();
        let Some(view) = committed else {
            if !self.gave_up
                && !self.formation.is_out()
                && self.formation.expected().is_some()
                && now > FORMATION_TIMEOUT_US * 6
            {
                self.gave_up = true;
                warn!(
                    "net: still {} of {} nodes after {} s; waiting on (check cables, cluster= and key=)",
                    self.formation.count(now),
                    self.formation.expected().unwrap_or(0),
                    now / 1_000_000
                );
            }
            return;
        };
        // Fresh randomness for every view's engine: no datagram of an earlier boot or view
        // authenticates in its sessions.
        let (seed, _) = crate::arch::rand::fresh(b"transport view", &self.iface.mac());
        let mut cfg = transport::Config::new(self.cluster, view.me, seed);
        cfg.mtu = self.iface.device().mtu();
        // The transport authenticates with the same key as the announcements.
        let mut t = Transport::new(cfg, &self.key);
        for m in view.members.iter().filter(|m| m.id != view.me) {
            t.add_peer(m.id, now);
        }
        info!(
            "net: view committed: {} nodes, {} cores, {} MiB; this is node {}{}",
            view.members.len(),
            view.cores(),
            view.memory() >> 20,
            view.me,
            if view.me == 0 { " (primary)" } else { "" }
        );
        for m in &view.members {
            let a = m.addr.0;
            info!(
                "net:   node {} mac {} ip {}.{}.{}.{} cores {} memory {} MiB{}",
                m.id,
                Mac(m.announce.mac),
                if m.id == view.me { ip[0] } else { a[0] },
                if m.id == view.me { ip[1] } else { a[1] },
                if m.id == view.me { ip[2] } else { a[2] },
                if m.id == view.me { ip[3] } else { a[3] },
                m.announce.cores,
                m.announce.memory_bytes >> 20,
                if m.announce.primary { " primary" } else { "" }
            );
        }
        if let Some(mesh) = &mut self.mesh {
            mesh.next = vec![0; view.members.len()];
            mesh.expect = vec![0; view.members.len()];
            if view.members.len() == 1 {
                mesh.done = true;
                info!("test: mesh PASS (alone)");
            }
        }
        self.transport = Some(t);
    }

    fn run_transport(&mut self, now: u64) {
        let Some(t) = &mut self.transport else { return };
        t.poll(now);
        while let Some(e) = t.poll_event() {
            match e {
                Event::PeerDown(id) => {
                    error!("net: node {id} stopped answering");
                    crate::hv::vm::peer_lost(id);
                }
                Event::PeerUp(id) => info!("net: node {id} answers again"),
                // Gestalt counts a member that rebooted inside a view as failed: its share of
                // the cluster's state is gone. It is not readmitted (no `reset_peer`).
                Event::PeerRestarted(id) => {
                    error!(
                        "net: node {id} restarted: a new boot answered for it; counted as a node failure (reboot the cluster to take it back)"
                    );
                    crate::hv::vm::peer_lost(id);
                }
            }
        }
        let mut inbox = Vec::new();
        while let Some(m) = t.recv() {
            inbox.push(m);
        }
        for (from, msg) in inbox {
            self.on_message(from, &msg);
            // The buffer goes back to the transport for the next messages (no allocation
            // per message in a steady stream).
            if let Some(t) = &mut self.transport {
                t.recycle(msg);
            }
        }
        self.guest_step(now);
        self.mesh_step();
        self.flush(now);
    }

    /// Sends what the transport has ready.
    fn flush(&mut self, now: u64) {
        let (Some(t), Some(view)) = (&mut self.transport, self.formation.view()) else { return };
        let mut buf = core::mem::take(&mut self.buf);
        while let Some(tx) = t.poll_transmit(now, &mut buf) {
            if let Some(m) = view.member(tx.to) {
                let a = m.addr.0;
                // A full socket buffer loses the datagram; retransmission recovers it.
                let _ = self.iface.send_to(
                    &buf[..tx.len],
                    Ipv4Address::new(a[0], a[1], a[2], a[3]),
                    m.addr.1,
                );
            }
            self.iface.poll(now);
        }
        self.buf = buf;
    }

    /// The guest's traffic: its messages go out in order until the transport pushes back
    /// (the rest wait, nothing is dropped); the coherence engine gets the time.
    fn guest_step(&mut self, now: u64) {
        let Some(t) = &mut self.transport else { return };
        while let Some((to, bytes)) = crate::hv::vm::next_outgoing() {
            if t.send(to, &bytes).is_err() {
                crate::hv::vm::push_back_outgoing(to, bytes);
                break;
            }
            crate::hv::vm::recycle_outgoing(bytes);
        }
        crate::hv::vm::tick(now);
    }

    fn on_message(&mut self, from: NodeId, msg: &[u8]) {
        if crate::hv::vm::deliver(from, msg) {
            return;
        }
        match AppMsg::decode(msg) {
            Some(AppMsg::Ping { .. }) => {
                self.send(from, &pong_for(msg));
            }
            Some(AppMsg::Pong { token }) => self.pongs.push_back((from, token)),
            Some(AppMsg::Bench { index, total }) => {
                self.bench_rx += 1;
                if index + 1 == total {
                    let done = AppMsg::BenchDone { count: self.bench_rx }.encode(0);
                    self.bench_rx = 0;
                    self.send(from, &done);
                }
            }
            Some(AppMsg::BenchDone { count }) => self.bench_done = Some((from, count)),
            Some(AppMsg::Mesh { seq }) => {
                if let Some(mesh) = &mut self.mesh {
                    let want = mesh.expect.get(usize::from(from)).copied().unwrap_or(u32::MAX);
                    if seq != want {
                        mesh.errors += 1;
                        error!("test: mesh message {seq} from node {from}, expected {want}");
                    }
                    if let Some(e) = mesh.expect.get_mut(usize::from(from)) {
                        *e = seq.wrapping_add(1);
                    }
                }
            }
            None => self.counters.unknown_messages += 1,
        }
    }

    /// Queues a message; false when the transport refuses it (no view, back-pressure).
    fn send(&mut self, to: NodeId, msg: &[u8]) -> bool {
        self.transport.as_mut().is_some_and(|t| t.send(to, msg).is_ok())
    }

    fn mesh_step(&mut self) {
        let (Some(view), Some(mesh)) = (self.formation.view(), &mut self.mesh) else { return };
        if mesh.done {
            return;
        }
        let Some(t) = &mut self.transport else { return };
        for m in view.members.iter().filter(|m| m.id != view.me) {
            let i = usize::from(m.id);
            while mesh.next[i] < mesh.per_peer {
                let msg = AppMsg::Mesh { seq: mesh.next[i] }.encode(0);
                if t.send(m.id, &msg).is_err() {
                    break;
                }
                mesh.next[i] += 1;
            }
        }
        let all_in = view
            .members
            .iter()
            .filter(|m| m.id != view.me)
            .all(|m| mesh.expect[usize::from(m.id)] >= mesh.per_peer);
        if all_in {
            mesh.done = true;
            let s = t.stats();
            if mesh.errors == 0 {
                info!(
                    "test: mesh PASS {} messages from each of {} peers in order; {} retransmits, {} duplicates suppressed",
                    mesh.per_peer,
                    view.members.len() - 1,
                    s.retransmits,
                    s.duplicates
                );
            } else {
                error!("test: mesh FAIL {} messages out of order or missing", mesh.errors);
            }
        }
    }

    /// The committed view, if any.
    pub fn view(&self) -> Option<&View> {
        self.formation.view()
    }

    /// A view was committed without this node: it stays out of the cluster (for `status`).
    pub fn left_out(&self) -> bool {
        self.formation.is_out()
    }

    /// `net`: addresses, link and counters.
    pub fn print_status(&mut self) {
        let mac = self.iface.mac();
        let link = self.iface.device().link_up();
        let mtu = self.iface.device().mtu();
        match self.iface.ipv4() {
            Some(c) => kprintln!(
                "mac {} ip {} link {} mtu {} port {}",
                Mac(mac),
                c,
                if link { "up" } else { "down" },
                mtu,
                self.port
            ),
            None => kprintln!(
                "mac {} ip (none yet) link {} mtu {} port {}",
                Mac(mac),
                if link { "up" } else { "down" },
                mtu,
                self.port
            ),
        }
        let stuck = self.iface.stuck_drops();
        let d = self.iface.device().stats();
        kprintln!(
            "nic: rx {} frames {} bytes ({} errors, {} missed); tx {} frames {} bytes ({} ring full); {} device faults contained; raw pings answered {}; {} send queues emptied for an unanswered address",
            d.rx_packets, d.rx_bytes, d.rx_errors, d.rx_missed, d.tx_packets, d.tx_bytes, d.tx_ring_full,
            d.device_faults, self.iface.device().raw_answered, stuck
        );
        let c = &self.counters;
        kprintln!(
            "discovery: {} announcements sent, {} heard, {} refused; {} datagrams before the view; {} not proven fresh",
            c.announces_sent,
            c.announces_heard,
            c.announces_refused,
            c.early_datagrams,
            c.announces_unproven
        );
        kprintln!(
            "console: {} log lines dropped; {} refusals shown, {} over the rate limit",
            crate::console::serial::dropped_lines(),
            self.refused.shown(),
            self.refused.suppressed()
        );
        if let Some(t) = &self.transport {
            let s = t.stats();
            kprintln!(
                "transport: {} messages sent, {} delivered; {} datagrams sent, {} accepted; {} retransmits, {} timeouts, {} duplicates, {} acks, {} heartbeats",
                s.messages_sent, s.messages_delivered, s.datagrams_sent, s.datagrams_accepted, s.retransmits, s.timeouts, s.duplicates, s.acks_sent, s.heartbeats_sent
            );
            for r in DropReason::ALL {
                if s.dropped(r) > 0 {
                    kprintln!("  dropped {}: {}", s.dropped(r), r);
                }
            }
        } else {
            kprintln!("transport: not started (no view yet)");
        }
    }

    /// `nodes`: the view.
    pub fn print_nodes(&self) {
        let Some(v) = self.formation.view() else {
            if self.formation.is_out() {
                kprintln!("not a member: a view was committed without this node (see the log)");
            } else {
                kprintln!(
                    "no view yet: {} node(s) found so far",
                    self.formation.count(uptime_us())
                );
            }
            return;
        };
        kprintln!(
            "{} nodes, {} cores, {} MiB guest memory; this is node {}",
            v.members.len(),
            v.cores(),
            v.memory() >> 20,
            v.me
        );
        let my_ip = self.my_ip().unwrap_or([0; 4]);
        for m in &v.members {
            let up = m.id == v.me || self.transport.as_ref().is_some_and(|t| t.is_up(m.id));
            let rtt = self.transport.as_ref().and_then(|t| t.rtt(m.id));
            let a = if m.id == v.me { my_ip } else { m.addr.0 };
            kprintln!(
                "  node {} {} mac {} ip {}.{}.{}.{} cores {} memory {} MiB{}{}",
                m.id,
                if m.id == v.me {
                    "(this)"
                } else if up {
                    "up"
                } else {
                    "DOWN"
                },
                Mac(m.announce.mac),
                a[0],
                a[1],
                a[2],
                a[3],
                m.announce.cores,
                m.announce.memory_bytes >> 20,
                rtt.filter(|r| r.0 > 0)
                    .map_or_else(alloc::string::String::new, |(srtt, _)| alloc::format!(
                        " srtt {srtt} us"
                    )),
                if m.announce.primary { " primary" } else { "" }
            );
        }
    }

    /// Polls until `done` says so or `timeout_us` passes; true when done.
    fn wait(&mut self, timeout_us: u64, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let end = uptime_us() + timeout_us;
        while uptime_us() < end {
            self.poll();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn target(&self, arg: &str) -> Result<NodeId, &'static str> {
        let v = self.formation.view().ok_or("no view yet: the cluster has not formed")?;
        let id: NodeId = arg.trim().parse().map_err(|_| "give a node id (see 'nodes')")?;
        if id == v.me {
            return Err("that is this node");
        }
        v.member(id).map(|m| m.id).ok_or("no such node (see 'nodes')")
    }

    /// One transport ping of `size` bytes: the round trip in µs.
    fn ping_once(&mut self, to: NodeId, token: u32, size: usize) -> Option<u64> {
        let msg = AppMsg::Ping { token }.encode(size);
        let t0 = uptime_us();
        if !self.wait(1_000_000, |s| s.send(to, &msg)) {
            return None;
        }
        let ok = self.wait(2_000_000, |s| {
            let hit = s.pongs.iter().position(|p| *p == (to, token));
            if let Some(i) = hit {
                s.pongs.remove(i);
            }
            hit.is_some()
        });
        ok.then(|| uptime_us() - t0)
    }

    /// One raw-frame round trip (below IP and the transport), in µs.
    fn raw_ping_once(&mut self, to: NodeId, token: u32) -> Option<u64> {
        let mac = self.formation.view()?.member(to)?.announce.mac;
        let frame = self.iface.device().raw_frame(mac, RAW_PING, token);
        let t0 = uptime_us();
        self.iface.device().transmit(&frame).ok()?;
        let ok = self.wait(1_000_000, |s| {
            let r = &mut s.iface.device().raw_replies;
            let hit = r.iter().position(|t| *t == token);
            if let Some(i) = hit {
                r.remove(i);
            }
            hit.is_some()
        });
        ok.then(|| uptime_us() - t0)
    }

    /// The raw frames that carry a page's 4,096 bytes at this MTU (headers of 19 bytes
    /// each): their lengths, Ethernet header included.
    fn raw_page_frames(&mut self) -> Vec<usize> {
        let per = self.iface.device().mtu().max(64) - 5;
        let count = 4096usize.div_ceil(per);
        (0..count).map(|i| 14 + 5 + per.min(4096 - i * per)).collect()
    }

    /// One round trip of a page's bytes in raw frames (4 KiB each way, MTU-sized frames
    /// echoed by the peer's NIC glue), in µs: the floor of a page-message round trip.
    fn raw_page_ping_once(&mut self, to: NodeId, token: u32) -> Option<u64> {
        let mac = self.formation.view()?.member(to)?.announce.mac;
        let lens = self.raw_page_frames();
        let mut frame = vec![0u8; lens.iter().copied().max()?];
        let t0 = uptime_us();
        for (i, &len) in lens.iter().enumerate() {
            let head = self.iface.device().raw_frame(mac, RAW_ECHO_ME, token + i as u32);
            frame[..19].copy_from_slice(&head[..19]);
            while !self.iface.device().can_transmit() {
                self.poll();
            }
            self.iface.device().transmit(&frame[..len]).ok()?;
        }
        let want = lens.len();
        let mut got = 0;
        let ok = self.wait(1_000_000, |s| {
            let r = &mut s.iface.device().raw_replies;
            r.retain(|t| {
                let ours = t.wrapping_sub(token) < want as u32;
                got += usize::from(ours);
                !ours
            });
            got == want
        });
        ok.then(|| uptime_us() - t0)
    }

    /// Raw-frame throughput towards `to`: `pages` pages' worth of MTU-sized raw frames sent
    /// as fast as the TX ring takes them, then the peer's count of what arrived. Returns
    /// (bytes that arrived, µs from the first frame to the report).
    fn raw_stream(&mut self, to: NodeId, pages: u32) -> Option<(u64, u64)> {
        let mac = self.formation.view()?.member(to)?.announce.mac;
        let lens = self.raw_page_frames();
        let mut frame = vec![0u8; lens.iter().copied().max()?];
        let head = self.iface.device().raw_frame(mac, RAW_COUNT_ME, 0);
        frame[..19].copy_from_slice(&head[..19]);
        self.iface.device().raw_report = None;
        let t0 = uptime_us();
        for _ in 0..pages {
            for &len in &lens {
                let end = uptime_us() + 1_000_000;
                while !self.iface.device().can_transmit() && uptime_us() < end {
                    self.poll();
                }
                self.iface.device().transmit(&frame[..len]).ok()?;
            }
        }
        // Ask until the report comes (a report request may be lost like any frame).
        for _ in 0..5 {
            let ask = self.iface.device().raw_frame(mac, RAW_REPORT, 0);
            self.iface.device().transmit(&ask).ok()?;
            if self.wait(200_000, |s| s.iface.device().raw_report.is_some()) {
                let frames = u64::from(self.iface.device().raw_report.take()?);
                let bytes = frames * 4096 / lens.len() as u64;
                return Some((bytes, uptime_us() - t0));
            }
        }
        None
    }

    /// `ping <node>`: five small transport round trips.
    pub fn ping(&mut self, arg: &str) {
        let to = match self.target(arg) {
            Ok(t) => t,
            Err(e) => return kprintln!("ping: {e}"),
        };
        let mut got = Vec::new();
        for i in 0..5u32 {
            match self.ping_once(to, 0x5000 + i, 64) {
                Some(us) => {
                    kprintln!("64 bytes from node {to}: seq {i} time {us} us");
                    got.push(us);
                }
                None => kprintln!("no reply from node {to} for seq {i} within 2 s"),
            }
        }
        got.sort_unstable();
        match (got.first(), got.last()) {
            (Some(min), Some(max)) => kprintln!(
                "{} of 5 answered; min {min} us, median {} us, max {max} us",
                got.len(),
                got[got.len() / 2]
            ),
            _ => kprintln!("node {to} did not answer"),
        }
    }

    /// `netbench <node>`: page-message round trips and throughput, against raw frames.
    pub fn netbench(&mut self, arg: &str) {
        let to = match self.target(arg) {
            Ok(t) => t,
            Err(e) => return kprintln!("netbench: {e}"),
        };
        const ROUNDS: u32 = 20;
        let mut raw = Vec::new();
        let mut raw_page = Vec::new();
        let mut page = Vec::new();
        for i in 0..ROUNDS {
            if let Some(us) = self.raw_ping_once(to, 0x7000 + i) {
                raw.push(us);
            }
            if let Some(us) = self.raw_page_ping_once(to, 0x8000 + i * 8) {
                raw_page.push(us);
            }
            if let Some(us) = self.ping_once(to, 0x6000 + i, 4096) {
                page.push(us);
            }
        }
        raw.sort_unstable();
        raw_page.sort_unstable();
        page.sort_unstable();
        if raw.is_empty() || page.is_empty() {
            return kprintln!(
                "netbench: node {to} did not answer ({} raw, {} page replies)",
                raw.len(),
                page.len()
            );
        }
        let med = |v: &Vec<u64>| v[v.len() / 2];
        let p90 = |v: &Vec<u64>| v[(v.len() * 9 / 10).min(v.len() - 1)];
        kprintln!(
            "raw-frame rtt: {} samples, min {} us, median {} us, p90 {} us, max {} us",
            raw.len(),
            raw[0],
            med(&raw),
            p90(&raw),
            raw[raw.len() - 1]
        );
        kprintln!(
            "page-message rtt (4 KiB each way): {} samples, min {} us, median {} us, p90 {} us, max {} us",
            page.len(), page[0], med(&page), p90(&page), page[page.len() - 1]
        );
        let ratio10 = med(&page) * 10 / med(&raw).max(1);
        kprintln!("page rtt / raw-frame rtt (medians): {}.{}", ratio10 / 10, ratio10 % 10);
        let frames = self.raw_page_frames().len();
        if raw_page.is_empty() {
            kprintln!("raw 4 KiB rtt: no echo from node {to}");
        } else {
            kprintln!(
                "raw 4 KiB rtt ({frames} frames each way): {} samples, min {} us, median {} us, p90 {} us",
                raw_page.len(),
                raw_page[0],
                med(&raw_page),
                p90(&raw_page)
            );
            let r100 = med(&page) * 100 / med(&raw_page).max(1);
            kprintln!(
                "page rtt / raw 4 KiB rtt (medians): {}.{:02} (goal <= 2)",
                r100 / 100,
                r100 % 100
            );
        }

        const PAGES: u32 = 256;
        self.bench_done = None;
        let t0 = uptime_us();
        let mut sent = 0u32;
        let all_sent = self.wait(20_000_000, |s| {
            while sent < PAGES {
                // A whole page of payload after the fields.
                let msg = AppMsg::Bench { index: sent, total: PAGES }.encode(4096 + 9);
                if !s.send(to, &msg) {
                    break;
                }
                sent += 1;
            }
            sent == PAGES
        });
        let done = all_sent && self.wait(20_000_000, |s| s.bench_done.is_some());
        let us = (uptime_us() - t0).max(1);
        match (done, self.bench_done) {
            (true, Some((_, n))) => {
                let kib_s = u64::from(PAGES) * 4 * 1_000_000 / us;
                kprintln!(
                    "throughput: {PAGES} page messages in {us} us: {} KiB/s, {} messages/s; receiver counted {n}",
                    kib_s,
                    u64::from(PAGES) * 1_000_000 / us
                );
                // One page per raw-frame round trip is what a stop-and-wait protocol without
                // any overhead would reach; the window should beat it.
                let stop_and_wait = 4 * 1_000_000 / med(&raw).max(1);
                let r10 = kib_s * 10 / stop_and_wait.max(1);
                kprintln!(
                    "throughput / (one page per raw-frame rtt = {stop_and_wait} KiB/s): {}.{}",
                    r10 / 10,
                    r10 % 10
                );
            }
            _ => kprintln!("throughput: timed out after {sent} of {PAGES} pages"),
        }
        match (done, self.raw_stream(to, PAGES)) {
            (true, Some((bytes, raw_us))) => {
                let raw_kib_s = bytes * 1_000_000 / 1024 / raw_us.max(1);
                let page_kib_s = u64::from(PAGES) * 4 * 1_000_000 / us;
                let r100 = page_kib_s * 100 / raw_kib_s.max(1);
                kprintln!(
                    "raw-frame throughput: {PAGES} pages of raw frames, {bytes} bytes arrived in {raw_us} us: {raw_kib_s} KiB/s; page throughput / raw: {}.{:02}",
                    r100 / 100,
                    r100 % 100
                );
            }
            (true, None) => kprintln!("raw-frame throughput: no count report from node {to}"),
            (false, _) => {}
        }
    }
}
