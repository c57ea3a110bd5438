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
    /// Some node cannot hold the whole guest (every node holds every page until remote
    /// frames can be evicted), even with the smallest contribution of 2 MiB each.
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
                "node {node}'s guest pool cannot hold the whole guest (each node holds every page)"
            ),
        }
    }
}

impl Shape {
    /// The guest of `members` (any order; the shape is in node order). With more than one
    /// node, each keeps its boot core for the network, the console and the coherence engine
    /// (a service core) and runs a vCPU on every other core; a one-core node runs its single
    /// vCPU on the boot core between network polls. Each node contributes the same amount of
    /// RAM: at most `cap` bytes, and little enough that every node can hold all of it.
    pub fn new(members: &[Member], cap: u64) -> Result<Shape, ShapeError> {
        let mut m = members.to_vec();
        m.sort_by_key(|x| x.node);
        let n = m.len() as u64;
        if n == 0 {
            return Err(ShapeError::Empty);
        }
        let smallest = m.iter().map(|x| x.pool).min().unwrap_or(0);
        let each = (smallest / n).min(cap).min(RAM_LIMIT / n) / CHUNK * CHUNK;
        if each == 0 {
            let node = m.iter().min_by_key(|x| x.pool).map_or(0, |x| x.node);
            return Err(ShapeError::PoolTooSmall { node });
        }
        let mut shares = Vec::with_capacity(m.len());
        let (mut vcpu, mut ram) = (0u32, 0u64);
        for x in &m {
            let vcpus = if n == 1 || x.cores <= 1 { x.cores.max(1) } else { x.cores - 1 };
            shares.push(Share {
                node: x.node,
                vcpu_base: vcpu,
                vcpus,
                ram_base: ram,
                ram_bytes: each,
            });
            vcpu += vcpus;
            ram += each;
        }
        Ok(Shape { shares })
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

    /// Guest frames homed at each node (equal shares).
    pub fn pages_per_node(&self) -> u64 {
        self.shares.first().map_or(0, |s| s.ram_bytes / 4096)
    }
}

/// The first byte of every guest message on the transport (tool messages use 1..=5).
pub const TAG: u8 = 0x47;

const COHERENCE: u8 = 1;
/// The framing of a coherence message (the engine's bytes follow it).
pub const COHERENCE_PREFIX: &[u8] = &[TAG, COHERENCE];
const IPI: u8 = 2;
const LINE: u8 = 3;
const STOP: u8 = 4;

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
}

impl GuestMsg<'_> {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = alloc::vec![TAG];
        match *self {
            GuestMsg::Coherence(m) => {
                b.push(COHERENCE);
                b.extend_from_slice(m);
            }
            GuestMsg::Ipi { to, kind } => {
                b.push(IPI);
                b.extend_from_slice(&to.to_le_bytes());
                let (k, v) = match kind {
                    IpiKind::Fixed(v) => (0, v),
                    IpiKind::Init => (1, 0),
                    IpiKind::Startup(v) => (2, v),
                };
                b.extend_from_slice(&[k, v]);
            }
            GuestMsg::Line { vcpu, text } => {
                b.push(LINE);
                b.extend_from_slice(&vcpu.to_le_bytes());
                b.extend_from_slice(text);
            }
            GuestMsg::Stop { vcpu, end } => {
                b.push(STOP);
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
            }
        }
        b
    }
}

/// Decodes a guest message; None for anything else (another tag, too short, unknown kind).
pub fn decode(b: &[u8]) -> Option<GuestMsg<'_>> {
    let (&tag, rest) = b.split_first()?;
    if tag != TAG {
        return None;
    }
    let (&kind, body) = rest.split_first()?;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
    };
    Some(match kind {
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
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: u16, cores: u32, mib: u64) -> Member {
        Member { node, cores, pool: mib << 20 }
    }

    #[test]
    fn a_cluster_guest_has_every_core_but_each_service_core_and_equal_ram_in_node_order() {
        let s = Shape::new(&[member(1, 4, 512), member(0, 2, 256)], 64 << 20).unwrap();
        assert_eq!(s.vcpus(), 1 + 3);
        assert_eq!(
            s.shares[0],
            Share { node: 0, vcpu_base: 0, vcpus: 1, ram_base: 0, ram_bytes: 64 << 20 }
        );
        assert_eq!(
            s.shares[1],
            Share { node: 1, vcpu_base: 1, vcpus: 3, ram_base: 64 << 20, ram_bytes: 64 << 20 }
        );
        assert_eq!(s.node_of_vcpu(0), Some(0));
        assert_eq!(s.node_of_vcpu(3), Some(1));
        assert_eq!(s.node_of_vcpu(4), None);
        assert_eq!(s.pages_per_node(), (64 << 20) / 4096);
    }

    #[test]
    fn every_node_must_be_able_to_hold_the_whole_guest() {
        // 3 nodes, the smallest pool 30 MiB: 10 MiB each, rounded down to 2 MiB chunks.
        let s =
            Shape::new(&[member(0, 2, 30), member(1, 2, 400), member(2, 2, 400)], 1 << 40).unwrap();
        assert!(s.shares.iter().all(|x| x.ram_bytes == 10 << 20));
        assert_eq!(s.ram(), 30 << 20);
        assert_eq!(
            Shape::new(&[member(0, 2, 3), member(1, 2, 400)], 1 << 40),
            Err(ShapeError::PoolTooSmall { node: 0 })
        );
        assert_eq!(Shape::new(&[], 1 << 30), Err(ShapeError::Empty));
    }

    #[test]
    fn guest_ram_stays_below_the_mmio_hole() {
        let s = Shape::new(&[member(0, 2, 64 << 10), member(1, 2, 64 << 10)], 1 << 40).unwrap();
        assert!(s.ram() <= RAM_LIMIT);
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
            GuestMsg::Line { vcpu: 1, text: b"hello from node 1" },
            GuestMsg::Stop { vcpu: 2, end: End::Exit(0) },
            GuestMsg::Stop { vcpu: 2, end: End::Fatal(b"triple fault") },
        ];
        for m in msgs {
            assert_eq!(decode(&m.encode()), Some(m));
        }
        let mut framed = COHERENCE_PREFIX.to_vec();
        framed.extend_from_slice(&[9, 9]);
        assert_eq!(decode(&framed), Some(GuestMsg::Coherence(&[9, 9])));
    }

    #[test]
    fn anything_else_decodes_to_none_without_panicking() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[1, 0, 0, 0, 1]), None, "a tool message");
        assert_eq!(decode(&[TAG]), None);
        assert_eq!(decode(&[TAG, 99]), None);
        assert_eq!(decode(&[TAG, IPI, 1, 0, 0]), None);
        assert_eq!(decode(&[TAG, IPI, 1, 0, 0, 0, 9, 0]), None);
        assert_eq!(decode(&[TAG, STOP, 0, 0, 0, 0, 0, 1]), None);
        for len in 0..12 {
            for fill in [0u8, 0xff, TAG] {
                let mut b = vec![TAG, (len % 5) as u8];
                b.resize(len + 2, fill);
                let _ = decode(&b);
            }
        }
    }
}
