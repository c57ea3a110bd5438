//! Datagram authentication: HMAC-SHA256 under the cluster key, truncated to 16 bytes.
//!
//! The MAC comes from RustCrypto (`hmac` + `sha2` with `force-soft`); this module only fixes
//! the key type, the tag length and a constant-time check.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of the authentication tag carried in every datagram (HMAC-SHA256 truncated to
/// 128 bits, as allowed by RFC 2104 §5 and NIST SP 800-107 §5.3.3).
pub const TAG_LEN: usize = 16;

/// The shared cluster key (from the image or the command line).
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// A key from 32 raw bytes.
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key derived from a passphrase of any length (SHA-256 of it), for command lines such
    /// as `key=...`.
    pub fn from_passphrase(passphrase: &[u8]) -> Self {
        use sha2::Digest;
        let digest = Sha256::digest(passphrase);
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

/// A keyed authenticator: the HMAC key schedule is done once and cloned per datagram.
#[derive(Clone)]
pub struct Authenticator {
    mac: Hmac<Sha256>,
}

impl core::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Authenticator(..)")
    }
}

impl Authenticator {
    /// An authenticator for `key`.
    pub fn new(key: &ClusterKey) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mac) = <Hmac<Sha256> as Mac>::new_from_slice(&key.0) else {
            unreachable!("HMAC takes keys of any length")
        };
        Self { mac }
    }

    /// The tag over the concatenation of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Whether `tag` authenticates the concatenation of `parts` (constant time in the tag).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac.verify_truncated_left(tag).is_ok() && tag.len() == TAG_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc4231_test_case_2_truncated() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        // HMAC pads short keys with zeros, so a zero-padded 32-byte key is the same key.
        let auth = Authenticator::new(&ClusterKey::new(key));
        let tag = auth.tag(&[b"what do ya ", b"want for nothing?"]);
        let expected = [
            0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
            0x75, 0xc7,
        ];
        assert_eq!(tag, expected);
        assert!(auth.verify(&[b"what do ya want for nothing?"], &expected));
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
