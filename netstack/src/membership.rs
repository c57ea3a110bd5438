//! The discovery announcement (docs/design.md §5): what a node says about itself before node ids
//! exist, and the freshness and agreement fields cluster formation ([`crate::formation`])
//! runs on. Codec only.
//!
//! ```text
//!  0 magic u32 "GSTA"   4 version u8   5 flags u8 (bit 0: primary, bit 1: the recipient is
//!                                                  in the sender's view)   6 cores u16
//!  8 cluster_id u32    12 seq u32     16 build_id [u8; 16]          32 mac [u8; 6]
//! 38 expected_nodes u16 40 memory_bytes u64
//! 48 nonce u64         56 ip [u8; 4]  60 port u16   62 phase u8     63 zero u8
//! 64 echo nonce u64    72 echo seq u32 (0, 0: no echo)
//! 76 view [u8; 16]: id of the view the sender proposes, accepted or committed (zero: none)
//! 92 tag [u8; 16]: keyed BLAKE2b-128(cluster key, bytes 0..92)
//! ```
//! Big-endian integers, 108 bytes in all. Distinct from transport datagrams by its magic.
//! The nonce names the sender's boot (there is no separate epoch: the transport draws its own
//! session nonces), and formation checks it in every answer.
//!
//! A tag proves who wrote an announcement, not when: anyone can record one and send it again.
//! Freshness comes from the echo: the sender copies a recent `(nonce, seq)` of the recipient,
//! and the recipient's nonce is random per boot, so nothing recorded before the challenge was
//! issued can carry it.

use crate::transport::auth::{Authenticator, TAG_LEN};
use crate::transport::PROTOCOL_VERSION;

/// `"GSTA"`: first four bytes of an announcement.
pub const ANNOUNCE_MAGIC: u32 = 0x4753_5441;
/// Encoded length.
pub const ANNOUNCE_LEN: usize = 108;
const BODY_LEN: usize = ANNOUNCE_LEN - TAG_LEN;
const FLAG_PRIMARY: u8 = 1;
const FLAG_IN_VIEW: u8 = 2;

/// What a node says about itself; the same in every announcement of one boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The cluster it wants to join.
    pub cluster_id: u32,
    /// Build id of its image; all nodes must match (docs/design.md §5).
    pub build_id: [u8; 16],
    /// Its NIC's MAC: node ids come from sorting these.
    pub mac: [u8; 6],
    /// CPU cores it offers.
    pub cores: u16,
    /// Guest memory it offers, bytes.
    pub memory_bytes: u64,
    /// `nodes=N` from its command line (0: not given).
    pub expected_nodes: u16,
    /// `primary` was on its command line.
    pub primary: bool,
    /// Random per boot (never 0): names this boot of the node; challenges are made of it.
    pub nonce: u64,
}

/// A challenge: a node's `(nonce, seq)` as carried in one of its announcements. Echoed back,
/// it proves the echo was written after the challenge was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The challenger's boot nonce.
    pub nonce: u64,
    /// The challenger's announcement sequence number.
    pub seq: u32,
}

/// Where the sender is in cluster formation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Looking for nodes.
    Forming = 0,
    /// Coordinating: proposes `view` and waits for every member to accept it.
    Proposing = 1,
    /// Accepted `view` from its coordinator and waits for the commit; accepts no other.
    Accepted = 2,
    /// Committed `view`.
    Committed = 3,
    /// Out of the cluster: a view was committed without it.
    Out = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Option<Phase> {
        Some(match v {
            0 => Phase::Forming,
            1 => Phase::Proposing,
            2 => Phase::Accepted,
            3 => Phase::Committed,
            4 => Phase::Out,
            _ => return None,
        })
    }
}

/// Id of a view: a hash of its members (see [`crate::formation`]).
pub type ViewId = [u8; 16];

/// One announcement as sent on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The sender.
    pub node: Announce,
    /// Counts the sender's announcement rounds within its boot; a challenge when paired with
    /// `node.nonce`.
    pub seq: u32,
    /// The sender's own IPv4 address and transport port, as it knows them.
    pub addr: ([u8; 4], u16),
    /// A recent challenge of the recipient, copied back (unicast answers only).
    pub echo: Option<Challenge>,
    /// The sender's formation phase.
    pub phase: Phase,
    /// The view the phase is about (zero while forming).
    pub view: ViewId,
    /// The recipient is a member of `view` (unicast answers only).
    pub in_view: bool,
}

/// Why an announcement was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceError {
    /// Wrong length.
    Malformed,
    /// Not an announcement.
    BadMagic,
    /// Another protocol version.
    BadVersion,
    /// Another cluster.
    WrongCluster,
    /// Tag does not verify under our key.
    BadTag,
}

impl core::fmt::Display for AnnounceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed announcement",
            Self::BadMagic => "not an announcement",
            Self::BadVersion => "announcement from another protocol version",
            Self::WrongCluster => "announcement for another cluster",
            Self::BadTag => "announcement failed authentication (wrong cluster key?)",
        })
    }
}

impl Announcement {
    /// Encodes and authenticates into the first [`ANNOUNCE_LEN`] bytes of `buf`; `None` if
    /// `buf` is shorter.
    pub fn encode(&self, auth: &Authenticator, buf: &mut [u8]) -> Option<usize> {
        let b = buf.get_mut(..ANNOUNCE_LEN)?;
        let n = &self.node;
        b[0..4].copy_from_slice(&ANNOUNCE_MAGIC.to_be_bytes());
        b[4] = PROTOCOL_VERSION;
        b[5] =
            if n.primary { FLAG_PRIMARY } else { 0 } | if self.in_view { FLAG_IN_VIEW } else { 0 };
        b[6..8].copy_from_slice(&n.cores.to_be_bytes());
        b[8..12].copy_from_slice(&n.cluster_id.to_be_bytes());
        b[12..16].copy_from_slice(&self.seq.to_be_bytes());
        b[16..32].copy_from_slice(&n.build_id);
        b[32..38].copy_from_slice(&n.mac);
        b[38..40].copy_from_slice(&n.expected_nodes.to_be_bytes());
        b[40..48].copy_from_slice(&n.memory_bytes.to_be_bytes());
        b[48..56].copy_from_slice(&n.nonce.to_be_bytes());
        b[56..60].copy_from_slice(&self.addr.0);
        b[60..62].copy_from_slice(&self.addr.1.to_be_bytes());
        b[62] = self.phase as u8;
        b[63] = 0;
        let echo = self.echo.unwrap_or(Challenge { nonce: 0, seq: 0 });
        b[64..72].copy_from_slice(&echo.nonce.to_be_bytes());
        b[72..76].copy_from_slice(&echo.seq.to_be_bytes());
        b[76..92].copy_from_slice(&self.view);
        let tag = auth.tag(&[&b[..BODY_LEN]]);
        b[BODY_LEN..].copy_from_slice(&tag);
        Some(ANNOUNCE_LEN)
    }

    /// Checks and decodes an announcement for `cluster_id`. Authentic is not fresh: the
    /// caller (formation) checks the echo, and compares `build_id` with its own.
    pub fn decode(
        bytes: &[u8],
        auth: &Authenticator,
        cluster_id: u32,
    ) -> Result<Self, AnnounceError> {
        if bytes.len() != ANNOUNCE_LEN {
            return Err(AnnounceError::Malformed);
        }
        let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        if u32_at(0) != ANNOUNCE_MAGIC {
            return Err(AnnounceError::BadMagic);
        }
        if bytes[4] != PROTOCOL_VERSION {
            return Err(AnnounceError::BadVersion);
        }
        if u32_at(8) != cluster_id {
            return Err(AnnounceError::WrongCluster);
        }
        if !auth.verify(&[&bytes[..BODY_LEN]], &bytes[BODY_LEN..]) {
            return Err(AnnounceError::BadTag);
        }
        let flags = bytes[5];
        let nonce = u64_at(48);
        if flags & !(FLAG_PRIMARY | FLAG_IN_VIEW) != 0 || bytes[63] != 0 || nonce == 0 {
            return Err(AnnounceError::Malformed);
        }
        let phase = Phase::from_u8(bytes[62]).ok_or(AnnounceError::Malformed)?;
        let mut build_id = [0u8; 16];
        build_id.copy_from_slice(&bytes[16..32]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[32..38]);
        let mut ip = [0u8; 4];
        ip.copy_from_slice(&bytes[56..60]);
        let mut view = [0u8; 16];
        view.copy_from_slice(&bytes[76..92]);
        let echo = Challenge { nonce: u64_at(64), seq: u32_at(72) };
        Ok(Self {
            node: Announce {
                cluster_id,
                build_id,
                mac,
                cores: u16_at(6),
                memory_bytes: u64_at(40),
                expected_nodes: u16_at(38),
                primary: flags & FLAG_PRIMARY != 0,
                nonce,
            },
            seq: u32_at(12),
            addr: (ip, u16_at(60)),
            echo: (echo.nonce != 0).then_some(echo),
            phase,
            view,
            in_view: flags & FLAG_IN_VIEW != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ClusterKey;
    use proptest::prelude::*;

    fn auth() -> Authenticator {
        Authenticator::new(&ClusterKey::from_passphrase(b"membership"))
    }

    fn sample() -> Announcement {
        Announcement {
            node: Announce {
                cluster_id: 42,
                build_id: *b"build-0123456789",
                mac: [0x52, 0x54, 0, 1, 2, 3],
                cores: 8,
                memory_bytes: 16 << 30,
                expected_nodes: 3,
                primary: true,
                nonce: 0x0123_4567_89ab_cdef,
            },
            seq: 9,
            addr: ([169, 254, 3, 4], 7470),
            echo: Some(Challenge { nonce: 0xfeed, seq: 3 }),
            phase: Phase::Accepted,
            view: [0xa5; 16],
            in_view: true,
        }
    }

    #[test]
    fn an_announcement_roundtrips() {
        let mut buf = [0u8; 120];
        assert_eq!(sample().encode(&auth(), &mut buf), Some(ANNOUNCE_LEN));
        assert_eq!(Announcement::decode(&buf[..ANNOUNCE_LEN], &auth(), 42), Ok(sample()));
        let mut broadcast = sample();
        broadcast.echo = None;
        broadcast.in_view = false;
        broadcast.encode(&auth(), &mut buf).unwrap();
        assert_eq!(Announcement::decode(&buf[..ANNOUNCE_LEN], &auth(), 42), Ok(broadcast));
    }

    #[test]
    fn announcements_from_another_cluster_key_or_version_are_refused() {
        let mut buf = [0u8; ANNOUNCE_LEN];
        sample().encode(&auth(), &mut buf).unwrap();
        assert_eq!(Announcement::decode(&buf, &auth(), 43), Err(AnnounceError::WrongCluster));
        let stranger = Authenticator::new(&ClusterKey::from_passphrase(b"other"));
        assert_eq!(Announcement::decode(&buf, &stranger, 42), Err(AnnounceError::BadTag));
        let mut old = buf;
        old[4] = PROTOCOL_VERSION + 1;
        assert_eq!(Announcement::decode(&old, &auth(), 42), Err(AnnounceError::BadVersion));
        let mut forged = buf;
        forged[7] = 200; // claim more cores
        assert_eq!(Announcement::decode(&forged, &auth(), 42), Err(AnnounceError::BadTag));
        let mut echo = buf;
        echo[75] ^= 1; // answer another challenge
        assert_eq!(Announcement::decode(&echo, &auth(), 42), Err(AnnounceError::BadTag));
        assert_eq!(
            Announcement::decode(&buf[..ANNOUNCE_LEN - 1], &auth(), 42),
            Err(AnnounceError::Malformed)
        );
    }

    #[test]
    fn authentic_announcements_with_unknown_phases_or_a_zero_nonce_are_malformed() {
        let mut bad_phase = sample();
        let mut buf = [0u8; ANNOUNCE_LEN];
        bad_phase.encode(&auth(), &mut buf).unwrap();
        buf[62] = 9;
        let tag = auth().tag(&[&buf[..BODY_LEN]]);
        buf[BODY_LEN..].copy_from_slice(&tag);
        assert_eq!(Announcement::decode(&buf, &auth(), 42), Err(AnnounceError::Malformed));
        bad_phase.node.nonce = 0;
        bad_phase.encode(&auth(), &mut buf).unwrap();
        assert_eq!(Announcement::decode(&buf, &auth(), 42), Err(AnnounceError::Malformed));
    }

    fn phase() -> impl Strategy<Value = Phase> {
        prop_oneof![
            Just(Phase::Forming),
            Just(Phase::Proposing),
            Just(Phase::Accepted),
            Just(Phase::Committed),
            Just(Phase::Out)
        ]
    }

    proptest! {
        #[test]
        fn any_announcement_roundtrips(
            cluster_id in any::<u32>(), build_id in any::<[u8; 16]>(),
            mac in any::<[u8; 6]>(), cores in any::<u16>(), memory_bytes in any::<u64>(),
            expected_nodes in any::<u16>(), primary in any::<bool>(), nonce in 1..=u64::MAX,
            seq in any::<u32>(), ip in any::<[u8; 4]>(), port in any::<u16>(),
            echo in proptest::option::of((1..=u64::MAX, any::<u32>())), phase in phase(),
            view in any::<[u8; 16]>(), in_view in any::<bool>(),
        ) {
            let a = Announcement {
                node: Announce {
                    cluster_id, build_id, mac, cores, memory_bytes, expected_nodes, primary,
                    nonce,
                },
                seq,
                addr: (ip, port),
                echo: echo.map(|(nonce, seq)| Challenge { nonce, seq }),
                phase,
                view,
                in_view,
            };
            let mut buf = [0u8; ANNOUNCE_LEN];
            a.encode(&auth(), &mut buf).unwrap();
            prop_assert_eq!(Announcement::decode(&buf, &auth(), cluster_id), Ok(a));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..130)) {
            let _ = Announcement::decode(&bytes, &auth(), 42);
        }
    }
}
