//! The transport datagram: a fixed 84-byte header, the payload, and the checks a receiver
//! applies before it believes any field.
//!
//! ```text
//!  0  magic u32 "GSTL"      4 version u8   5 kind u8   6 frag_index u8   7 frag_count u8
//!  8  cluster_id u32       12 src u16     14 dst u16
//! 16  len u16              18 reserved u16 (0)          20 seq u32 (data only)
//! 24  src_nonce u64  the sender's nonce for this pair: fresh per boot, view and reset; never 0
//! 32  dst_nonce u64  the receiver's nonce as the sender knows it; 0 only in a Hello
//! 40  pn u64         packet number: per sender nonce, never reused; anti-replay
//! 48  pn_echo u64    highest pn the sender accepted from the receiver in this session, + 1
//! 56  ack u32 (next expected seq)   60 sack u64 (bit i: ack+1+i held)
//! 68  tag [u8; 16]  Poly1305(payload) under the one-time key BLAKE2b-256(cluster key, 0..68)
//! 84  payload (len bytes)
//! ```
//! All integers are big-endian (network order). Both nonces sit under the tag: a datagram
//! names the session (the pair of nonces) it belongs to, and nothing can move it to another.

use super::auth::DatagramKey;

/// `"GSTL"`: first four bytes of every transport datagram.
pub const MAGIC: u32 = 0x4753_544C;
/// The wire protocol version; a peer speaking another one is refused.
/// Version 2: session nonces and the packet-number echo replaced the boot epoch.
/// Version 3: the tag is Poly1305 under a one-time key derived from the header (it was keyed
/// BLAKE2b-128 over header and payload).
pub const PROTOCOL_VERSION: u8 = 3;
/// Length of the fixed header, tag included.
pub const HEADER_LEN: usize = 84;
/// Bytes of the header covered by the tag (everything before it).
const AUTH_LEN: usize = 68;
/// Node id meaning "every node" (not used for sequenced traffic).
pub const BROADCAST: u16 = 0xFFFF;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// One fragment of a message (sequenced, acknowledged).
    Data = 1,
    /// Acknowledgement only.
    Ack = 2,
    /// Keep-alive; also carries acknowledgements. The receiver answers it at once, so the
    /// sender learns through `pn_echo` that it is heard.
    Heartbeat = 3,
    /// "This is my nonce": sent while the receiver's nonce is unknown (`dst_nonce` 0). Carries
    /// nothing else, proves nothing about freshness, and is never acknowledged.
    Hello = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Ack),
            3 => Some(Self::Heartbeat),
            4 => Some(Self::Hello),
            _ => None,
        }
    }
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Datagram kind.
    pub kind: Kind,
    /// Index of this fragment within its message (data only).
    pub frag_index: u8,
    /// Number of fragments of the message (data only; 0 otherwise).
    pub frag_count: u8,
    /// Cluster this datagram belongs to.
    pub cluster_id: u32,
    /// Sending node.
    pub src: u16,
    /// Receiving node.
    pub dst: u16,
    /// The sender's nonce for this pair (never 0).
    pub src_nonce: u64,
    /// The receiver's nonce as the sender knows it; 0 in a [`Kind::Hello`] only.
    pub dst_nonce: u64,
    /// Packet number, unique per sender nonce.
    pub pn: u64,
    /// Highest packet number the sender accepted from the receiver in this session, plus one
    /// (0: none yet). Liveness: it advances only if the receiver's datagrams get through.
    pub pn_echo: u64,
    /// Sequence number of this fragment (data only).
    pub seq: u32,
    /// Cumulative acknowledgement: every seq below this was received.
    pub ack: u32,
    /// Selective acknowledgement: bit i set means `ack + 1 + i` was received.
    pub sack: u64,
}

/// Why a datagram was dropped. Every variant has a counter in [`super::Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than the header, or `len` disagrees with the datagram size.
    Malformed,
    /// Not a Gestalt datagram.
    BadMagic,
    /// Another protocol version (another image).
    BadVersion,
    /// Another cluster.
    WrongCluster,
    /// Addressed to another node.
    NotForUs,
    /// Authentication tag does not verify (no key, wrong key, or tampered).
    BadTag,
    /// Packet number already seen or too old: a replay or a network duplicate.
    Replay,
    /// From a node that is not a configured peer.
    UnknownPeer,
    /// Authentic, but not for our current session with the peer: recorded in an earlier boot,
    /// view or session, or from a peer instance we no longer talk to (it restarted).
    StaleSession,
    /// Sequence number outside the receive window.
    OutOfWindow,
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed datagram",
            Self::BadMagic => "not a Gestalt datagram (bad magic)",
            Self::BadVersion => "another protocol version (image mismatch?)",
            Self::WrongCluster => "another cluster id",
            Self::NotForUs => "addressed to another node",
            Self::BadTag => "authentication failed (wrong cluster key?)",
            Self::Replay => "replayed or duplicated datagram",
            Self::UnknownPeer => "sender is not a configured peer",
            Self::StaleSession => "not for the current session (earlier boot, or restarted peer)",
            Self::OutOfWindow => "sequence number outside the receive window",
        })
    }
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 10] = [
        Self::Malformed,
        Self::BadMagic,
        Self::BadVersion,
        Self::WrongCluster,
        Self::NotForUs,
        Self::BadTag,
        Self::Replay,
        Self::UnknownPeer,
        Self::StaleSession,
        Self::OutOfWindow,
    ];
}

impl Header {
    /// Writes header and payload into `buf` and returns the datagram length, or `None` when
    /// `buf` is too small or the payload longer than `u16::MAX`.
    pub fn seal(&self, key: &DatagramKey, payload: &[u8], buf: &mut [u8]) -> Option<usize> {
        let total = HEADER_LEN.checked_add(payload.len())?;
        buf.get_mut(HEADER_LEN..total)?.copy_from_slice(payload);
        self.seal_in_place(key, payload.len(), buf)
    }

    /// Like [`Header::seal`] for a payload of `len` bytes already at `buf[HEADER_LEN..]`:
    /// writes the header and the tag around it, copying nothing.
    pub fn seal_in_place(&self, key: &DatagramKey, len: usize, buf: &mut [u8]) -> Option<usize> {
        let total = HEADER_LEN.checked_add(len)?;
        let len = u16::try_from(len).ok()?;
        if buf.len() < total {
            return None;
        }
        let h = &mut buf[..HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        h[4] = PROTOCOL_VERSION;
        h[5] = self.kind as u8;
        h[6] = self.frag_index;
        h[7] = self.frag_count;
        h[8..12].copy_from_slice(&self.cluster_id.to_be_bytes());
        h[12..14].copy_from_slice(&self.src.to_be_bytes());
        h[14..16].copy_from_slice(&self.dst.to_be_bytes());
        h[16..18].copy_from_slice(&len.to_be_bytes());
        h[18..20].copy_from_slice(&[0, 0]);
        h[20..24].copy_from_slice(&self.seq.to_be_bytes());
        h[24..32].copy_from_slice(&self.src_nonce.to_be_bytes());
        h[32..40].copy_from_slice(&self.dst_nonce.to_be_bytes());
        h[40..48].copy_from_slice(&self.pn.to_be_bytes());
        h[48..56].copy_from_slice(&self.pn_echo.to_be_bytes());
        h[56..60].copy_from_slice(&self.ack.to_be_bytes());
        h[60..68].copy_from_slice(&self.sack.to_be_bytes());
        let tag = key.tag(&buf[..AUTH_LEN], &buf[HEADER_LEN..total]);
        buf[AUTH_LEN..HEADER_LEN].copy_from_slice(&tag);
        Some(total)
    }

    /// Checks and decodes a datagram addressed to `local` in cluster `cluster_id`; returns
    /// the header and the payload. Cheap checks run before the tag; nothing here panics on
    /// any input.
    pub fn open<'a>(
        datagram: &'a [u8],
        key: &DatagramKey,
        cluster_id: u32,
        local: u16,
    ) -> Result<(Header, &'a [u8]), DropReason> {
        let header = Self::parse_unauthenticated(datagram)?;
        if header.cluster_id != cluster_id {
            return Err(DropReason::WrongCluster);
        }
        if header.dst != local {
            return Err(DropReason::NotForUs);
        }
        let payload = &datagram[HEADER_LEN..];
        if !key.verify(&datagram[..AUTH_LEN], payload, &datagram[AUTH_LEN..HEADER_LEN]) {
            return Err(DropReason::BadTag);
        }
        Ok((header, payload))
    }

    /// Structural decoding without the tag check: magic, version, length, kind, fragment
    /// fields. Exposed for the fuzz target and diagnostics; never trust its result.
    pub fn parse_unauthenticated(datagram: &[u8]) -> Result<Header, DropReason> {
        if datagram.len() < HEADER_LEN {
            return Err(DropReason::Malformed);
        }
        let u16_at = |i: usize| u16::from_be_bytes([datagram[i], datagram[i + 1]]);
        let u32_at = |i: usize| {
            u32::from_be_bytes([datagram[i], datagram[i + 1], datagram[i + 2], datagram[i + 3]])
        };
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        if u32_at(0) != MAGIC {
            return Err(DropReason::BadMagic);
        }
        if datagram[4] != PROTOCOL_VERSION {
            return Err(DropReason::BadVersion);
        }
        let kind = Kind::from_u8(datagram[5]).ok_or(DropReason::Malformed)?;
        let (frag_index, frag_count) = (datagram[6], datagram[7]);
        let len = usize::from(u16_at(16));
        if len != datagram.len() - HEADER_LEN || u16_at(18) != 0 {
            return Err(DropReason::Malformed);
        }
        let h = Header {
            kind,
            frag_index,
            frag_count,
            cluster_id: u32_at(8),
            src: u16_at(12),
            dst: u16_at(14),
            src_nonce: u64_at(24),
            dst_nonce: u64_at(32),
            pn: u64_at(40),
            pn_echo: u64_at(48),
            seq: u32_at(20),
            ack: u32_at(56),
            sack: u64_at(60),
        };
        let no_fragment = frag_count == 0 && frag_index == 0 && len == 0;
        let shape_ok = h.src_nonce != 0
            && match kind {
                Kind::Data => frag_count != 0 && frag_index < frag_count && h.dst_nonce != 0,
                Kind::Ack | Kind::Heartbeat => no_fragment && h.seq == 0 && h.dst_nonce != 0,
                // A hello knows nothing of the receiver, so it cannot acknowledge anything.
                Kind::Hello => {
                    no_fragment
                        && h.dst_nonce == 0
                        && (h.seq, h.ack, h.sack, h.pn_echo) == (0, 0, 0, 0)
                }
            };
        if !shape_ok {
            return Err(DropReason::Malformed);
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::super::auth::ClusterKey;
    use super::*;
    use proptest::prelude::*;

    fn auth() -> DatagramKey {
        DatagramKey::new(&ClusterKey::from_passphrase(b"test cluster"))
    }

    fn sample() -> Header {
        Header {
            kind: Kind::Data,
            frag_index: 1,
            frag_count: 3,
            cluster_id: 7,
            src: 2,
            dst: 5,
            src_nonce: 0xdead_beef_0bad_cafe,
            dst_nonce: 0x0123_4567_89ab_cdef,
            pn: 1 << 40,
            pn_echo: 77,
            seq: 99,
            ack: 42,
            sack: 0b1011,
        }
    }

    #[test]
    fn sealed_datagram_opens_to_the_same_header_and_payload() {
        let mut buf = [0u8; 256];
        let n = sample().seal(&auth(), b"payload", &mut buf).unwrap();
        assert_eq!(n, HEADER_LEN + 7);
        let (h, p) = Header::open(&buf[..n], &auth(), 7, 5).unwrap();
        assert_eq!(h, sample());
        assert_eq!(p, b"payload");
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let mut buf = [0u8; 128];
        let n = sample().seal(&auth(), b"0123456789", &mut buf).unwrap();
        for bit in 0..n * 8 {
            let mut d = buf;
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(Header::open(&d[..n], &auth(), 7, 5).is_err(), "bit {bit} flip accepted");
        }
    }

    #[test]
    fn datagram_for_another_cluster_or_node_is_refused_before_the_tag() {
        let mut buf = [0u8; 128];
        let n = sample().seal(&auth(), b"", &mut buf).unwrap();
        assert_eq!(Header::open(&buf[..n], &auth(), 8, 5), Err(DropReason::WrongCluster));
        assert_eq!(Header::open(&buf[..n], &auth(), 7, 4), Err(DropReason::NotForUs));
    }

    #[test]
    fn datagram_under_another_key_fails_authentication() {
        let mut buf = [0u8; 128];
        let n = sample().seal(&auth(), b"x", &mut buf).unwrap();
        let other = DatagramKey::new(&ClusterKey::from_passphrase(b"intruder"));
        assert_eq!(Header::open(&buf[..n], &other, 7, 5), Err(DropReason::BadTag));
    }

    #[test]
    fn a_hello_carries_no_receiver_nonce_and_acknowledges_nothing() {
        let hello = Header {
            kind: Kind::Hello,
            frag_index: 0,
            frag_count: 0,
            dst_nonce: 0,
            pn_echo: 0,
            seq: 0,
            ack: 0,
            sack: 0,
            ..sample()
        };
        let mut buf = [0u8; 128];
        let n = hello.seal(&auth(), b"", &mut buf).unwrap();
        assert_eq!(Header::open(&buf[..n], &auth(), 7, 5).map(|h| h.0), Ok(hello));
        for bad in [
            Header { ack: 1, ..hello },
            Header { pn_echo: 1, ..hello },
            Header { dst_nonce: 1, ..hello },
            Header { kind: Kind::Heartbeat, ..hello },
            Header { kind: Kind::Ack, src_nonce: 0, dst_nonce: 3, ..hello },
        ] {
            let n = bad.seal(&auth(), b"", &mut buf).unwrap();
            assert_eq!(
                Header::open(&buf[..n], &auth(), 7, 5),
                Err(DropReason::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn seal_refuses_a_buffer_that_is_too_small() {
        let mut buf = [0u8; HEADER_LEN + 3];
        assert_eq!(sample().seal(&auth(), b"1234", &mut buf), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Header::open(&bytes, &auth(), 7, 5);
        }

        #[test]
        fn decoder_never_panics_on_mutated_valid_datagrams(
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            flip in (any::<usize>(), 1u8..=255),
            cut in 0usize..4,
        ) {
            let mut buf = [0u8; 256];
            let n = sample().seal(&auth(), &payload, &mut buf).unwrap();
            buf[flip.0 % n] ^= flip.1;
            let end = n - cut;
            prop_assert!(Header::open(&buf[..end], &auth(), 7, 5).is_err());
        }

        #[test]
        fn any_header_roundtrips(
            kind in 1u8..=3, seq in any::<u32>(), ack in any::<u32>(), sack in any::<u64>(),
            pn in any::<u64>(), pn_echo in any::<u64>(), src in any::<u16>(),
            src_nonce in 1..=u64::MAX, dst_nonce in 1..=u64::MAX,
            count in 1u8..=255, index in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let kind = Kind::from_u8(kind).unwrap();
            let (frag_index, frag_count, payload, seq) = if kind == Kind::Data {
                (index % count, count, payload, seq)
            } else {
                (0, 0, Vec::new(), 0)
            };
            let h = Header {
                kind, frag_index, frag_count, cluster_id: 1, src, dst: 9,
                src_nonce, dst_nonce, pn, pn_echo, seq, ack, sack,
            };
            let mut buf = [0u8; 256];
            let n = h.seal(&auth(), &payload, &mut buf).unwrap();
            let (back, p) = Header::open(&buf[..n], &auth(), 1, 9).unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(p, &payload[..]);
        }
    }
}
