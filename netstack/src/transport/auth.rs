//! Datagram authentication: keyed BLAKE2b with a 128-bit output (RFC 7693 §2.5 keyed mode)
//! under the cluster key.
//!
//! The primitive comes from RustCrypto's `blake2` (portable code, no SIMD); this module only
//! fixes the key type, the tag length and a constant-time check.

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

impl core::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ClusterKey(..)")
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
