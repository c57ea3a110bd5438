//! The one guest of a cluster: its shape (which node runs which vCPUs and homes which range of
//! guest RAM, computed the same way on every node from the committed view) and the messages
//! the nodes' hypervisors exchange about it over the transport beside the coherence traffic:
//! IPIs to vCPUs elsewhere, guest UART lines for the primary's console, and the guest's end.
//! Pure code: host-tested.

use alloc::vec::Vec;

use super::vlapic::IpiKind;

/// Bytes per 2 MiB chunk: every node contributes whole chunks.
const CHUNK: u64 = 2 << 20;
/// Guest RAM stays below the MMIO hole that starts at 3 GiB (no RAM above it yet).
pub const RAM_LIMIT: u64 = 3 << 30;

/// What one member brings, from the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node id in the view.
    pub node: u16,
    /// Its cores.
    pub cores: u32,
    /// Its guest pool in bytes (what it could hold).
    pub pool: u64,
}

/// One node's part of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// Node id.
    pub node: u16,
    /// Its first vCPU (global index, = x2APIC id).
    pub vcpu_base: u32,
    /// vCPUs it runs.
    pub vcpus: u32,
    /// First guest-physical byte it is home of.
    pub ram_base: u64,
    /// Bytes it is home of.
    pub ram_bytes: u64,
}

/// The whole guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// In node order.
    pub shares: Vec<Share>,
}

/// Why no guest can be shaped from a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// The view has no members.
    Empty,
    /// Some node's pool cannot give even one 2 MiB chunk to the guest beside its cache.
    PoolTooSmall {
        /// The node.
        node: u16,
    },
}

impl core::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ShapeError::Empty => write!(f, "the view has no members"),
            ShapeError::PoolTooSmall { node } => write!(
                f,
                "node {node}'s guest pool is too small for a share of guest RAM and a cache beside it"
            ),
        }
    }
}

impl Shape {
    /// The guest of `members` (any order; the shape is in node order). With more than one
    /// node, each keeps its boot core for the network, the console and the coherence engine
    /// (a service core) and runs a vCPU on every other core; a one-core node runs its single
    /// vCPU on the boot core between network polls. Each node contributes three quarters of
    /// what it holds (whole 2 MiB chunks, at most `cap`) as the range it is home of, and keeps
    /// the rest as its cache for pages homed elsewhere ([`Shape::cache_frames`]); alone, a node
    /// contributes all of it. RAM stays below the MMIO hole.
    pub fn new(members: &[Member], cap: u64) -> Result<Shape, ShapeError> {
        let mut m = members.to_vec();
        m.sort_by_key(|x| x.node);
        let n = m.len();
        if n == 0 {
            return Err(ShapeError::Empty);
        }
        let mut shares = Vec::with_capacity(n);
        let (mut vcpu, mut ram) = (0u32, 0u64);
        for x in &m {
            let holds = if n == 1 { x.pool } else { x.pool / 4 * 3 };
            let bytes = holds.min(cap) / CHUNK * CHUNK;
            if bytes == 0 {
                return Err(ShapeError::PoolTooSmall { node: x.node });
            }
            // Beyond the hole's start a node brings its vCPUs and its cache, no RAM.
            let bytes = bytes.min(RAM_LIMIT - ram);
            let vcpus = if n == 1 || x.cores <= 1 { x.cores.max(1) } else { x.cores - 1 };
            shares.push(Share {
                node: x.node,
                vcpu_base: vcpu,
                vcpus,
                ram_base: ram,
                ram_bytes: bytes,
            });
            vcpu += vcpus;
            ram += bytes;
        }
        Ok(Shape { shares })
    }

    /// Frames `node` keeps for pages homed elsewhere: a third of its share (the quarter of its
    /// pool it did not contribute), at least one chunk's worth; none alone.
    pub fn cache_frames(&self, node: u16) -> usize {
        match self.share(node) {
            Some(s) if self.shares.len() > 1 => ((s.ram_bytes / 3).max(CHUNK) / 4096) as usize,
            _ => 0,
        }
    }

    /// The home ranges in guest frames, for the coherence engine's table: (first, count, node).
    pub fn home_table(&self) -> Vec<(u64, u64, u16)> {
        self.shares
            .iter()
            .filter(|s| s.ram_bytes > 0)
            .map(|s| (s.ram_base / 4096, s.ram_bytes / 4096, s.node))
            .collect()
    }

    /// A single node running alone: every core a vCPU, `ram` bytes.
    pub fn alone(cores: u32, ram: u64) -> Shape {
        Shape {
            shares: alloc::vec![Share {
                node: 0,
                vcpu_base: 0,
                vcpus: cores.max(1),
                ram_base: 0,
                ram_bytes: ram,
            }],
        }
    }

    /// vCPUs of the guest.
    pub fn vcpus(&self) -> u32 {
        self.shares.iter().map(|s| s.vcpus).sum()
    }

    /// Bytes of guest RAM.
    pub fn ram(&self) -> u64 {
        self.shares.iter().map(|s| s.ram_bytes).sum()
    }

    /// Nodes.
    pub fn nodes(&self) -> u16 {
        self.shares.len() as u16
    }

    /// The share of `node`.
    pub fn share(&self, node: u16) -> Option<&Share> {
        self.shares.iter().find(|s| s.node == node)
    }

    /// The node that runs global vCPU `vcpu`.
    pub fn node_of_vcpu(&self, vcpu: u32) -> Option<u16> {
        self.shares
            .iter()
            .find(|s| (s.vcpu_base..s.vcpu_base + s.vcpus).contains(&vcpu))
            .map(|s| s.node)
    }
}

/// The first byte of every guest message on the transport (tool messages use 1..=5).
pub const TAG: u8 = 0x47;

/// Tag, kind, then the sender's guest TSC when it sent the message (`timesync`).
const HEADER: usize = 10;
const COHERENCE: u8 = 1;
/// The framing of a coherence message (the engine's bytes follow it); the stamp is filled in
/// when the message leaves ([`stamp`]).
pub const COHERENCE_PREFIX: &[u8] = &[TAG, COHERENCE, 0, 0, 0, 0, 0, 0, 0, 0];
const _: () = assert!(COHERENCE_PREFIX.len() == HEADER, "the prefix is a whole header");
const IPI: u8 = 2;
const LINE: u8 = 3;
const STOP: u8 = 4;
const TIME_PROBE: u8 = 5;
const TIME_REPLY: u8 = 6;
const PORT_WRITE: u8 = 7;
const PORT_READ: u8 = 8;
const DEVICE_REPLY: u8 = 9;
const MMIO_WRITE: u8 = 10;
const MMIO_READ: u8 = 11;

/// How the guest ended, as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End<'a> {
    /// The guest asked to exit with this code.
    Exit(u32),
    /// A hypervisor stopped it, for this reason.
    Fatal(&'a [u8]),
}

/// One message between the nodes' hypervisors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMsg<'a> {
    /// A coherence-engine message (its own wire format).
    Coherence(&'a [u8]),
    /// An IPI for vCPU `to`, which the receiver runs.
    Ipi {
        /// Target vCPU (global).
        to: u32,
        /// What it is.
        kind: IpiKind,
    },
    /// A finished guest UART line, written by vCPU `vcpu`, for the primary's console.
    Line {
        /// The writer.
        vcpu: u32,
        /// The line, without its end.
        text: &'a [u8],
    },
    /// The guest ended on the sender (found by its vCPU `vcpu`).
    Stop {
        /// The vCPU that ended it.
        vcpu: u32,
        /// How.
        end: End<'a>,
    },
    /// Asks the primary for its guest TSC; `t0` is the asker's host TSC when it asked.
    TimeProbe {
        /// Echoed in the reply.
        t0: u64,
    },
    /// The primary's answer to a [`GuestMsg::TimeProbe`].
    TimeReply {
        /// The probe's `t0`.
        t0: u64,
        /// The primary's guest TSC when it answered.
        primary: u64,
    },
    /// A port write by vCPU `vcpu` on another node, for the primary's devices: posted (the
    /// writer goes on), applied there in the order it was made.
    PortWrite {
        /// The writer.
        vcpu: u32,
        /// The port.
        port: u16,
        /// Bytes (1, 2 or 4).
        size: u8,
        /// The value written.
        value: u32,
    },
    /// A port read by vCPU `vcpu` on another node, parked until the primary's
    /// [`GuestMsg::PortReply`].
    PortRead {
        /// The reader.
        vcpu: u32,
        /// The port.
        port: u16,
        /// Bytes (1, 2 or 4).
        size: u8,
    },
    /// A device-memory write by vCPU `vcpu` on another node (posted, like a port write).
    MmioWrite {
        /// The writer.
        vcpu: u32,
        /// Guest-physical address.
        gpa: u64,
        /// Bytes (1, 2, 4 or 8).
        size: u8,
        /// The value written.
        value: u64,
    },
    /// A device-memory read by vCPU `vcpu` on another node (parked, like a port read).
    MmioRead {
        /// The reader.
        vcpu: u32,
        /// Guest-physical address.
        gpa: u64,
        /// Bytes (1, 2, 4 or 8).
        size: u8,
    },
    /// The primary's answer to a [`GuestMsg::PortRead`] or [`GuestMsg::MmioRead`].
    DeviceReply {
        /// The reader.
        vcpu: u32,
        /// The value read.
        value: u64,
    },
}

impl GuestMsg<'_> {
    /// The message's bytes, with an empty stamp ([`stamp`] fills it when it is sent).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = alloc::vec![TAG, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        b[1] = match *self {
            GuestMsg::Coherence(m) => {
                b.extend_from_slice(m);
                COHERENCE
            }
            GuestMsg::Ipi { to, kind } => {
                b.extend_from_slice(&to.to_le_bytes());
                let (k, v) = match kind {
                    IpiKind::Fixed(v) => (0, v),
                    IpiKind::Init => (1, 0),
                    IpiKind::Startup(v) => (2, v),
                    IpiKind::Nmi => (3, 2),
                };
                b.extend_from_slice(&[k, v]);
                IPI
            }
            GuestMsg::Line { vcpu, text } => {
                b.extend_from_slice(&vcpu.to_le_bytes());
                b.extend_from_slice(text);
                LINE
            }
            GuestMsg::Stop { vcpu, end } => {
                b.extend_from_slice(&vcpu.to_le_bytes());
                match end {
                    End::Exit(code) => {
                        b.push(0);
                        b.extend_from_slice(&code.to_le_bytes());
                    }
                    End::Fatal(why) => {
                        b.push(1);
                        b.extend_from_slice(why);
                    }
                }
                STOP
            }
            GuestMsg::TimeProbe { t0 } => {
                b.extend_from_slice(&t0.to_le_bytes());
                TIME_PROBE
            }
            GuestMsg::TimeReply { t0, primary } => {
                b.extend_from_slice(&t0.to_le_bytes());
                b.extend_from_slice(&primary.to_le_bytes());
                TIME_REPLY
            }
            GuestMsg::PortWrite { vcpu, port, size, value } => {
                b.extend_from_slice(&vcpu.to_le_bytes());
                b.extend_from_slice(&port.to_le_bytes());
                b.push(size);
                b.extend_from_slice(&value.to_le_bytes());
                PORT_WRITE
            }
            GuestMsg::PortRead { vcpu, port, size } => {
                b.extend_from_slice(&vcpu.to_le_bytes());
                b.extend_from_slice(&port.to_le_bytes());
                b.push(size);
                PORT_READ
            }
            GuestMsg::MmioWrite { vcpu, gpa, size, value } => {
                b.extend_from_slice(&vcpu.to_le_bytes());
                b.extend_from_slice(&gpa.to_le_bytes());
                b.push(size);
                b.extend_from_slice(&value.to_le_bytes());
                MMIO_WRITE
            }
            GuestMsg::MmioRead { vcpu, gpa, size } => {
                b.extend_from_slice(&vcpu.to_le_bytes());
                b.extend_from_slice(&gpa.to_le_bytes());
                b.push(size);
                MMIO_READ
            }
            GuestMsg::DeviceReply { vcpu, value } => {
                b.extend_from_slice(&vcpu.to_le_bytes());
                b.extend_from_slice(&value.to_le_bytes());
                DEVICE_REPLY
            }
        };
        b
    }
}

/// Writes the sender's guest TSC into an encoded guest message as it leaves.
pub fn stamp(bytes: &mut [u8], guest_tsc: u64) {
    if let Some(s) = bytes.get_mut(2..HEADER) {
        s.copy_from_slice(&guest_tsc.to_le_bytes());
    }
}

/// Decodes a guest message and its sender's stamp; None for anything else (another tag, too
/// short, unknown kind).
pub fn decode(b: &[u8]) -> Option<(u64, GuestMsg<'_>)> {
    if *b.first()? != TAG {
        return None;
    }
    let kind = *b.get(1)?;
    let stamp = u64::from_le_bytes(b.get(2..HEADER)?.try_into().ok()?);
    let body = &b[HEADER..];
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
    };
    let quad = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
    };
    let msg = match kind {
        COHERENCE => GuestMsg::Coherence(body),
        IPI => {
            let to = word(0)?;
            let (k, v) = (*body.get(4)?, *body.get(5)?);
            if body.len() != 6 {
                return None;
            }
            let kind = match k {
                0 => IpiKind::Fixed(v),
                1 => IpiKind::Init,
                2 => IpiKind::Startup(v),
                3 => IpiKind::Nmi,
                _ => return None,
            };
            GuestMsg::Ipi { to, kind }
        }
        LINE => GuestMsg::Line { vcpu: word(0)?, text: body.get(4..)? },
        STOP => {
            let vcpu = word(0)?;
            let end = match *body.get(4)? {
                0 if body.len() == 9 => End::Exit(word(5)?),
                1 => End::Fatal(body.get(5..)?),
                _ => return None,
            };
            GuestMsg::Stop { vcpu, end }
        }
        TIME_PROBE if body.len() == 8 => GuestMsg::TimeProbe { t0: quad(0)? },
        TIME_REPLY if body.len() == 16 => GuestMsg::TimeReply { t0: quad(0)?, primary: quad(8)? },
        PORT_WRITE | PORT_READ => {
            let port = u16::from_le_bytes(body.get(4..6)?.try_into().ok()?);
            let size = *body.get(6).filter(|s| matches!(**s, 1 | 2 | 4))?;
            match (kind, body.len()) {
                (PORT_WRITE, 11) => {
                    GuestMsg::PortWrite { vcpu: word(0)?, port, size, value: word(7)? }
                }
                (PORT_READ, 7) => GuestMsg::PortRead { vcpu: word(0)?, port, size },
                _ => return None,
            }
        }
        MMIO_WRITE | MMIO_READ => {
            let gpa = quad(4)?;
            let size = *body.get(12).filter(|s| matches!(**s, 1 | 2 | 4 | 8))?;
            match (kind, body.len()) {
                (MMIO_WRITE, 21) => {
                    GuestMsg::MmioWrite { vcpu: word(0)?, gpa, size, value: quad(13)? }
                }
                (MMIO_READ, 13) => GuestMsg::MmioRead { vcpu: word(0)?, gpa, size },
                _ => return None,
            }
        }
        DEVICE_REPLY if body.len() == 12 => {
            GuestMsg::DeviceReply { vcpu: word(0)?, value: quad(4)? }
        }
        _ => return None,
    };
    Some((stamp, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: u16, cores: u32, mib: u64) -> Member {
        Member { node, cores, pool: mib << 20 }
    }

    #[test]
    fn a_cluster_guest_has_every_core_but_each_service_core_and_ram_by_contribution() {
        let s = Shape::new(&[member(1, 4, 512), member(0, 2, 256)], u64::MAX).unwrap();
        assert_eq!(s.vcpus(), 1 + 3);
        assert_eq!(
            s.shares[0],
            Share { node: 0, vcpu_base: 0, vcpus: 1, ram_base: 0, ram_bytes: 192 << 20 }
        );
        assert_eq!(
            s.shares[1],
            Share { node: 1, vcpu_base: 1, vcpus: 3, ram_base: 192 << 20, ram_bytes: 384 << 20 }
        );
        assert_eq!(s.ram(), 576 << 20, "more than either node's pool");
        assert_eq!(s.cache_frames(0), (64 << 20) / 4096);
        assert_eq!(s.node_of_vcpu(0), Some(0));
        assert_eq!(s.node_of_vcpu(3), Some(1));
        assert_eq!(s.node_of_vcpu(4), None);
        assert_eq!(
            s.home_table(),
            vec![(0, (192 << 20) / 4096, 0), ((192 << 20) / 4096, (384 << 20) / 4096, 1)]
        );
    }

    #[test]
    fn every_node_must_have_room_for_a_share_and_a_cache() {
        let s = Shape::new(&[member(0, 2, 30), member(1, 2, 400)], 1 << 40).unwrap();
        assert_eq!(s.shares[0].ram_bytes, 22 << 20, "three quarters, whole chunks");
        assert_eq!(
            Shape::new(&[member(0, 2, 2), member(1, 2, 400)], 1 << 40),
            Err(ShapeError::PoolTooSmall { node: 0 })
        );
        assert_eq!(Shape::new(&[], 1 << 30), Err(ShapeError::Empty));
        let alone = Shape::new(&[member(0, 4, 64)], u64::MAX).unwrap();
        assert_eq!((alone.ram(), alone.cache_frames(0)), (64 << 20, 0));
    }

    #[test]
    fn guest_ram_stays_below_the_mmio_hole() {
        let s = Shape::new(&[member(0, 2, 64 << 10), member(1, 2, 64 << 10)], 1 << 40).unwrap();
        assert_eq!(s.ram(), RAM_LIMIT);
        assert_eq!(s.shares[1].ram_bytes, 0, "node 1 brings vCPUs and a cache, no RAM");
        assert_eq!(s.home_table().len(), 1);
        assert_eq!(s.cache_frames(1), 512);
    }

    #[test]
    fn one_core_nodes_still_run_a_vcpu_and_a_node_alone_uses_every_core() {
        let s = Shape::new(&[member(0, 1, 256), member(1, 1, 256)], 8 << 20).unwrap();
        assert_eq!(s.vcpus(), 2);
        let s = Shape::new(&[member(0, 4, 256)], 8 << 20).unwrap();
        assert_eq!(s.vcpus(), 4);
    }

    #[test]
    fn guest_messages_round_trip() {
        let msgs = [
            GuestMsg::Coherence(&[1, 2, 3]),
            GuestMsg::Ipi { to: 7, kind: IpiKind::Fixed(0x42) },
            GuestMsg::Ipi { to: 300, kind: IpiKind::Init },
            GuestMsg::Ipi { to: 1, kind: IpiKind::Startup(8) },
            GuestMsg::Ipi { to: 2, kind: IpiKind::Nmi },
            GuestMsg::Line { vcpu: 1, text: b"hello from node 1" },
            GuestMsg::Stop { vcpu: 2, end: End::Exit(0) },
            GuestMsg::Stop { vcpu: 2, end: End::Fatal(b"triple fault") },
            GuestMsg::TimeProbe { t0: u64::MAX - 3 },
            GuestMsg::TimeReply { t0: 12, primary: 1 << 63 },
            GuestMsg::PortWrite { vcpu: 3, port: 0x3f8, size: 1, value: 0x41 },
            GuestMsg::PortWrite { vcpu: 3, port: 0xb004, size: 2, value: 0x3c00 },
            GuestMsg::PortRead { vcpu: 1, port: 0x3fd, size: 1 },
            GuestMsg::DeviceReply { vcpu: 1, value: 0x60 },
            GuestMsg::DeviceReply { vcpu: 9, value: u64::MAX - 1 },
            GuestMsg::MmioWrite { vcpu: 2, gpa: 0xfec0_0010, size: 4, value: 0x1_0000_0030 },
            GuestMsg::MmioRead { vcpu: 2, gpa: 0xfec0_0010, size: 8 },
        ];
        for (i, m) in msgs.into_iter().enumerate() {
            let mut b = m.encode();
            assert_eq!(decode(&b), Some((0, m)));
            stamp(&mut b, 0x0102_0304_0506_0708 + i as u64);
            assert_eq!(decode(&b), Some((0x0102_0304_0506_0708 + i as u64, m)), "stamped");
        }
        let mut framed = COHERENCE_PREFIX.to_vec();
        framed.extend_from_slice(&[9, 9]);
        assert_eq!(decode(&framed), Some((0, GuestMsg::Coherence(&[9, 9]))));
    }

    #[test]
    fn anything_else_decodes_to_none_without_panicking() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[1, 0, 0, 0, 1]), None, "a tool message");
        assert_eq!(decode(&[TAG]), None);
        assert_eq!(decode(&[TAG, COHERENCE, 0, 0, 0]), None, "no room for the stamp");
        let z = [0u8; 8];
        let with = |kind: u8, body: &[u8]| [&[TAG, kind][..], &z, body].concat();
        assert_eq!(decode(&with(99, &[])), None);
        assert_eq!(decode(&with(IPI, &[1, 0, 0])), None);
        assert_eq!(decode(&with(IPI, &[1, 0, 0, 0, 9, 0])), None);
        assert_eq!(decode(&with(STOP, &[0, 0, 0, 0, 0, 1])), None);
        assert_eq!(decode(&with(TIME_PROBE, &[0; 7])), None);
        assert_eq!(decode(&with(TIME_REPLY, &[0; 17])), None);
        // Port accesses: a size other than 1, 2 or 4, or a wrong length.
        assert_eq!(decode(&with(PORT_READ, &[0, 0, 0, 0, 0xf8, 3, 3])), None);
        assert_eq!(decode(&with(PORT_READ, &[0, 0, 0, 0, 0xf8, 3, 1, 0])), None);
        assert_eq!(decode(&with(PORT_WRITE, &[0, 0, 0, 0, 0xf8, 3, 1])), None);
        assert_eq!(decode(&with(PORT_WRITE, &[0, 0, 0, 0, 0xf8, 3, 0, 0, 0, 0, 0])), None);
        assert_eq!(decode(&with(DEVICE_REPLY, &[0; 8])), None);
        assert_eq!(decode(&with(MMIO_READ, &[[0; 12].as_slice(), &[3]].concat())), None);
        assert_eq!(decode(&with(MMIO_READ, &[[0; 12].as_slice(), &[4, 0]].concat())), None);
        assert_eq!(decode(&with(MMIO_WRITE, &[[0; 12].as_slice(), &[4], &[0; 7]].concat())), None);
        for len in 0..30 {
            for fill in [0u8, 0xff, TAG] {
                let mut b = vec![TAG, (len % 13) as u8];
                b.resize(len + 2, fill);
                let _ = decode(&b);
            }
        }
    }
}
