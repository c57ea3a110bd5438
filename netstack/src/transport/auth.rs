//! Datagram authentication: keyed BLAKE2b with a 128-bit output (RFC 7693 §2.5 keyed mode)
//! under the cluster key.
//!
//! The primitive comes from RustCrypto's `blake2` (portable code, no SIMD); this module only
//! fixes the key type, the tag length and a constant-time check. It also holds the per-engine
//! [`Seed`] from which session nonces are derived (README "Freshness"), and the key
//! [`ClusterKey::fingerprint`] that consoles show instead of the key.

use blake2::digest::consts::{U16, U32};
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2b, Blake2bMac};

/// Length of the authentication tag carried in every datagram.
pub const TAG_LEN: usize = 16;

type TagMac = Blake2bMac<U16>;

/// The shared cluster key (from the image or the command line).
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// A key from 32 raw bytes.
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key derived from a passphrase of any length (unkeyed BLAKE2b-256 of it), for
    /// command lines such as `key=...`.
    pub fn from_passphrase(passphrase: &[u8]) -> Self {
        let digest = Blake2b::<U32>::digest(passphrase);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&digest);
        Self(bytes)
    }
}

impl ClusterKey {
    /// A short public name for the key, for consoles and logs: the first 8 bytes of the keyed
    /// BLAKE2b tag of a fixed string. Two nodes with the same fingerprint hold the same key.
    /// It tells an eavesdropper no more than any datagram tag does (both are tags under the
    /// key), so it is safe to print where the key itself never may be.
    pub fn fingerprint(&self) -> [u8; 8] {
        let tag = Authenticator::new(self).tag(&[b"gestalt cluster key fingerprint"]);
        let mut f = [0u8; 8];
        f.copy_from_slice(&tag[..8]);
        f
    }
}

impl core::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Fresh randomness for one [`super::Transport`] (one boot, one view): 32 bytes that must
/// never repeat. Every session nonce the engine uses is derived from it, so a repeated seed
/// would let datagrams recorded under it authenticate again. The firmware fills it from
/// RDSEED/RDRAND (or its documented fallback) each time it builds a transport; tests pass
/// distinct constants. `Debug` does not show it.
#[derive(Clone)]
pub struct Seed([u8; 32]);

impl Seed {
    /// A seed from 32 bytes that are already uniformly random (e.g. RDSEED output).
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A seed from raw entropy of uneven quality (hardware random words, timer jitter,
    /// clocks, the MAC): BLAKE2b-256 over all `parts`, each length-prefixed so that parts
    /// cannot run into each other. The seed is as unpredictable as the parts together are,
    /// and differs from any other seed whenever any part differs.
    pub fn condition(parts: &[&[u8]]) -> Self {
        let mut h = Blake2b::<U32>::new();
        Digest::update(&mut h, b"gestalt transport seed v1");
        for part in parts {
            Digest::update(&mut h, (part.len() as u64).to_be_bytes());
            Digest::update(&mut h, part);
        }
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&h.finalize());
        Self(bytes)
    }

    /// A 64-bit value for another purpose (`label`), e.g. formation's boot nonce: as fresh
    /// as the seed, and independent of the transport's nonces. Never 0.
    pub fn value(&self, label: &[u8]) -> u64 {
        let tag = Authenticator::new(&ClusterKey(self.0)).tag(&[b"gestalt seed value", label]);
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag[..8]);
        u64::from_be_bytes(b).max(1)
    }

    /// The nonce this engine (node `local`) uses towards `peer` in session `generation`:
    /// keyed BLAKE2b under the seed, so nonces are unpredictable, distinct per peer and per
    /// generation, and never 0 (0 on the wire means "nonce not known yet").
    pub(crate) fn nonce(&self, local: u16, peer: u16, generation: u32) -> u64 {
        let auth = Authenticator::new(&ClusterKey(self.0));
        let tag = auth.tag(&[
            b"gestalt session nonce",
            &local.to_be_bytes(),
            &peer.to_be_bytes(),
            &generation.to_be_bytes(),
        ]);
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag[..8]);
        u64::from_be_bytes(b).max(1)
    }
}

impl core::fmt::Debug for Seed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Seed(..)")
    }
}

/// A keyed authenticator: the keyed state is built once and cloned per datagram.
#[derive(Clone)]
pub struct Authenticator {
    mac: TagMac,
}

impl core::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Authenticator(..)")
    }
}

impl Authenticator {
    /// An authenticator for `key`.
    pub fn new(key: &ClusterKey) -> Self {
        // BLAKE2b takes keys of 1 to 64 bytes; ours is 32.
        let Ok(mac) = <TagMac as KeyInit>::new_from_slice(&key.0) else {
            unreachable!("a 32-byte key is a valid BLAKE2b key")
        };
        Self { mac }
    }

    /// The tag over the concatenation of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        for part in parts {
            Mac::update(&mut mac, part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` authenticates the concatenation of `parts` (constant time in the tag).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        for part in parts {
            Mac::update(&mut mac, part);
        }
        mac.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake2b_matches_rfc7693_appendix_a() {
        // BLAKE2b-512("abc"), RFC 7693 Appendix A: checks the primitive the MAC is built on.
        let d = Blake2b::<blake2::digest::consts::U64>::digest(b"abc");
        assert_eq!(d[..8], [0xBA, 0x80, 0xA5, 0x3F, 0x98, 0x1C, 0x4D, 0x0D]);
        assert_eq!(d[56..], [0xB9, 0x23, 0x86, 0xED, 0xD4, 0x00, 0x99, 0x23]);
    }

    #[test]
    fn the_tag_is_frozen_for_wire_compatibility() {
        // Known answer for key = 00..1f, message "gestalt": a change here changes the wire
        // format and needs a PROTOCOL_VERSION bump.
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        let auth = Authenticator::new(&ClusterKey::new(key));
        let tag = auth.tag(&[b"ges", b"talt"]);
        assert_eq!(tag, auth.tag(&[b"gestalt"]), "parts are concatenated");
        assert_eq!(tag, KNOWN_TAG, "got {tag:02x?}");
    }

    /// Same value from the BLAKE2 reference code: Python's
    /// `hashlib.blake2b(b"gestalt", key=bytes(range(32)), digest_size=16)`.
    const KNOWN_TAG: [u8; TAG_LEN] = [
        0xe9, 0x93, 0x41, 0x55, 0xe1, 0x7d, 0xbf, 0x06, 0xd7, 0x51, 0x72, 0xec, 0xbe, 0x6d, 0xc5,
        0xaa,
    ];

    #[test]
    fn the_fingerprint_names_the_key_without_containing_it() {
        let a = ClusterKey::from_passphrase(b"alpha");
        assert_eq!(a.fingerprint(), ClusterKey::from_passphrase(b"alpha").fingerprint());
        assert_ne!(a.fingerprint(), ClusterKey::from_passphrase(b"beta").fingerprint());
    }

    #[test]
    fn seeds_give_distinct_nonzero_nonces_per_peer_and_generation() {
        let s = Seed::condition(&[b"boot 1"]);
        let t = Seed::condition(&[b"boot 2"]);
        let all = [
            s.nonce(0, 1, 0),
            s.nonce(0, 1, 1),
            s.nonce(0, 2, 0),
            s.nonce(1, 0, 0),
            t.nonce(0, 1, 0),
        ];
        for (i, a) in all.iter().enumerate() {
            assert_ne!(*a, 0);
            assert!(all[i + 1..].iter().all(|b| b != a), "{all:x?}");
        }
        assert_eq!(s.nonce(0, 1, 0), Seed::condition(&[b"boot 1"]).nonce(0, 1, 0));
        // Length prefixes: moving a byte from one part to the next changes the seed.
        assert_ne!(Seed::condition(&[b"ab", b"c"]).0, Seed::condition(&[b"a", b"bc"]).0);
    }

    #[test]
    fn a_tag_under_another_key_does_not_verify() {
        let a = Authenticator::new(&ClusterKey::from_passphrase(b"alpha"));
        let b = Authenticator::new(&ClusterKey::from_passphrase(b"beta"));
        let tag = a.tag(&[b"hello"]);
        assert!(a.verify(&[b"hello"], &tag));
        assert!(!b.verify(&[b"hello"], &tag));
        assert!(!a.verify(&[b"hellO"], &tag));
        assert!(!a.verify(&[b"hello"], &tag[..8]));
    }
}
