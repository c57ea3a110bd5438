//! The discovery announcement (DESIGN.md §5): what a node broadcasts on the transport port
//! before node ids exist. Codec only; the view agreement lives with the firmware.
//!
//! ```text
//!  0 magic u32 "GSTA"   4 version u8   5 flags u8 (bit 0: primary)   6 cores u16
//!  8 cluster_id u32    12 epoch u32   16 build_id [u8; 16]          32 mac [u8; 6]
//! 38 expected_nodes u16 40 memory_bytes u64
//! 48 tag [u8; 16]: keyed BLAKE2b-128(cluster key, bytes 0..48)
//! ```
//! Big-endian integers, 64 bytes in all. Distinct from transport datagrams by its magic.

use crate::transport::auth::{Authenticator, TAG_LEN};
use crate::transport::PROTOCOL_VERSION;

/// `"GSTA"`: first four bytes of an announcement.
pub const ANNOUNCE_MAGIC: u32 = 0x4753_5441;
/// Encoded length.
pub const ANNOUNCE_LEN: usize = 64;
const BODY_LEN: usize = ANNOUNCE_LEN - TAG_LEN;
const FLAG_PRIMARY: u8 = 1;

/// One node's announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The cluster it wants to join.
    pub cluster_id: u32,
    /// Its boot epoch (as in transport headers).
    pub epoch: u32,
    /// Build id of its image; all nodes must match (DESIGN.md §5).
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

impl Announce {
    /// Encodes and authenticates into the first [`ANNOUNCE_LEN`] bytes of `buf`; `None` if
    /// `buf` is shorter.
    pub fn encode(&self, auth: &Authenticator, buf: &mut [u8]) -> Option<usize> {
        let b = buf.get_mut(..ANNOUNCE_LEN)?;
        b[0..4].copy_from_slice(&ANNOUNCE_MAGIC.to_be_bytes());
        b[4] = PROTOCOL_VERSION;
        b[5] = if self.primary { FLAG_PRIMARY } else { 0 };
        b[6..8].copy_from_slice(&self.cores.to_be_bytes());
        b[8..12].copy_from_slice(&self.cluster_id.to_be_bytes());
        b[12..16].copy_from_slice(&self.epoch.to_be_bytes());
        b[16..32].copy_from_slice(&self.build_id);
        b[32..38].copy_from_slice(&self.mac);
        b[38..40].copy_from_slice(&self.expected_nodes.to_be_bytes());
        b[40..48].copy_from_slice(&self.memory_bytes.to_be_bytes());
        let tag = auth.tag(&[&b[..BODY_LEN]]);
        b[BODY_LEN..].copy_from_slice(&tag);
        Some(ANNOUNCE_LEN)
    }

    /// Checks and decodes an announcement for `cluster_id`. The caller still compares
    /// `build_id` with its own and refuses (and logs) a mismatch.
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
        if bytes[5] & !FLAG_PRIMARY != 0 {
            return Err(AnnounceError::Malformed);
        }
        let mut build_id = [0u8; 16];
        build_id.copy_from_slice(&bytes[16..32]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[32..38]);
        Ok(Self {
            cluster_id,
            epoch: u32_at(12),
            build_id,
            mac,
            cores: u16_at(6),
            memory_bytes: (u64::from(u32_at(40)) << 32) | u64::from(u32_at(44)),
            expected_nodes: u16_at(38),
            primary: bytes[5] & FLAG_PRIMARY != 0,
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

    fn sample() -> Announce {
        Announce {
            cluster_id: 42,
            epoch: 7,
            build_id: *b"build-0123456789",
            mac: [0x52, 0x54, 0, 1, 2, 3],
            cores: 8,
            memory_bytes: 16 << 30,
            expected_nodes: 3,
            primary: true,
        }
    }

    #[test]
    fn an_announcement_roundtrips() {
        let mut buf = [0u8; 80];
        assert_eq!(sample().encode(&auth(), &mut buf), Some(ANNOUNCE_LEN));
        assert_eq!(Announce::decode(&buf[..ANNOUNCE_LEN], &auth(), 42), Ok(sample()));
    }

    #[test]
    fn announcements_from_another_cluster_key_or_version_are_refused() {
        let mut buf = [0u8; ANNOUNCE_LEN];
        sample().encode(&auth(), &mut buf).unwrap();
        assert_eq!(Announce::decode(&buf, &auth(), 43), Err(AnnounceError::WrongCluster));
        let stranger = Authenticator::new(&ClusterKey::from_passphrase(b"other"));
        assert_eq!(Announce::decode(&buf, &stranger, 42), Err(AnnounceError::BadTag));
        let mut old = buf;
        old[4] = PROTOCOL_VERSION + 1;
        assert_eq!(Announce::decode(&old, &auth(), 42), Err(AnnounceError::BadVersion));
        let mut forged = buf;
        forged[7] = 200; // claim more cores
        assert_eq!(Announce::decode(&forged, &auth(), 42), Err(AnnounceError::BadTag));
        assert_eq!(Announce::decode(&buf[..63], &auth(), 42), Err(AnnounceError::Malformed));
    }

    proptest! {
        #[test]
        fn any_announcement_roundtrips(
            cluster_id in any::<u32>(), epoch in any::<u32>(), build_id in any::<[u8; 16]>(),
            mac in any::<[u8; 6]>(), cores in any::<u16>(), memory_bytes in any::<u64>(),
            expected_nodes in any::<u16>(), primary in any::<bool>(),
        ) {
            let a = Announce { cluster_id, epoch, build_id, mac, cores, memory_bytes, expected_nodes, primary };
            let mut buf = [0u8; ANNOUNCE_LEN];
            a.encode(&auth(), &mut buf).unwrap();
            prop_assert_eq!(Announce::decode(&buf, &auth(), cluster_id), Ok(a));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Announce::decode(&bytes, &auth(), 42);
        }
    }
}
