//! Protocol messages between engines and their versioned binary encoding.
//!
//! Layout (little endian): `version:u8, kind:u8, gfn:u64`, then for forwards `requester:u8`,
//! for data-bearing kinds `len:u16` and `len` page bytes (`len` must be 4096: a shorter page
//! would be installed as a whole one). Decoding never panics: any other byte string is a
//! [`DecodeError`].
//!
//! A [`Message`] is the header only (a few bytes, `Copy`): page contents never live in one.
//! Encoding appends the page straight from where it is (the sender's frame, through
//! [`crate::PageStore::copy_out`]) into the caller's wire buffer, and decoding hands the page
//! back as a slice of the received bytes, which the engine installs into the frame: one copy
//! on each side.

use alloc::vec::Vec;
use core::fmt;

use crate::types::{Gfn, NodeId, PAGE_SIZE};

/// Version byte leading every encoded message.
pub const WIRE_VERSION: u8 = 1;

/// A coherence message. The data-bearing kinds ([`Message::has_page`]) are followed by a full
/// page on the wire; the page is not part of the value (a message a node sends to itself
/// carries none, since the home's frame already is the data).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Requester → home: wants the page readable.
    ReadReq {
        /// Frame.
        gfn: Gfn,
    },
    /// Requester → home: wants the page writable (a Shared requester upgrades).
    WriteReq {
        /// Frame.
        gfn: Gfn,
    },
    /// Home → sharer: drop your copy and acknowledge.
    Inv {
        /// Frame.
        gfn: Gfn,
    },
    /// Sharer → home: copy dropped.
    InvAck {
        /// Frame.
        gfn: Gfn,
    },
    /// Home → owner: send the page to `requester` (read), keep a shared copy and write back.
    FwdRead {
        /// Frame.
        gfn: Gfn,
        /// Node that asked to read.
        requester: NodeId,
    },
    /// Home → owner: send the page to `requester` (write) and drop your copy.
    FwdWrite {
        /// Frame.
        gfn: Gfn,
        /// Node that asked to write.
        requester: NodeId,
    },
    /// Home or owner → requester: the page, readable only.
    DataShared {
        /// Frame.
        gfn: Gfn,
    },
    /// Home or owner → requester: the page, writable.
    DataExclusive {
        /// Frame.
        gfn: Gfn,
    },
    /// Home → requester: your shared copy is current, you may now write it (upgrade).
    Grant {
        /// Frame.
        gfn: Gfn,
    },
    /// Owner → home after a forwarded read: the current contents for the home's frame.
    WriteBack {
        /// Frame.
        gfn: Gfn,
    },
    /// Sharer → home: I dropped my shared copy to make room (eviction).
    PutShared {
        /// Frame.
        gfn: Gfn,
    },
    /// Owner → home: I gave up my modified copy to make room (eviction); the current contents.
    PutModified {
        /// Frame.
        gfn: Gfn,
    },
    /// Home → evicting node: your `PutShared`/`PutModified` is in; nothing about the frame
    /// is on its way to you any more, so its memory may be reused.
    PutAck {
        /// Frame.
        gfn: Gfn,
    },
}

const K_READ_REQ: u8 = 1;
const K_WRITE_REQ: u8 = 2;
const K_INV: u8 = 3;
const K_INV_ACK: u8 = 4;
const K_FWD_READ: u8 = 5;
const K_FWD_WRITE: u8 = 6;
const K_DATA_SHARED: u8 = 7;
const K_DATA_EXCLUSIVE: u8 = 8;
const K_GRANT: u8 = 9;
const K_WRITE_BACK: u8 = 10;
const K_PUT_SHARED: u8 = 11;
const K_PUT_MODIFIED: u8 = 12;
const K_PUT_ACK: u8 = 13;

/// Why bytes are not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before the message does.
    Truncated,
    /// Encoded by another protocol version.
    Version(u8),
    /// Unknown message kind.
    Kind(u8),
    /// Page payload of another length than a page.
    PageLength(u16),
    /// Bytes left after the message.
    Trailing(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "coherence message truncated"),
            DecodeError::Version(v) => {
                write!(
                    f,
                    "coherence wire version {v}, expected {WIRE_VERSION}: peer runs another build"
                )
            }
            DecodeError::Kind(k) => write!(f, "unknown coherence message kind {k}"),
            DecodeError::PageLength(n) => {
                write!(f, "page payload of {n} bytes, a page is {PAGE_SIZE}")
            }
            DecodeError::Trailing(n) => write!(f, "{n} stray bytes after coherence message"),
        }
    }
}

impl Message {
    /// The frame the message is about.
    pub fn gfn(&self) -> Gfn {
        match self {
            Message::ReadReq { gfn }
            | Message::WriteReq { gfn }
            | Message::Inv { gfn }
            | Message::InvAck { gfn }
            | Message::FwdRead { gfn, .. }
            | Message::FwdWrite { gfn, .. }
            | Message::DataShared { gfn, .. }
            | Message::DataExclusive { gfn, .. }
            | Message::Grant { gfn }
            | Message::WriteBack { gfn, .. }
            | Message::PutShared { gfn }
            | Message::PutModified { gfn, .. }
            | Message::PutAck { gfn } => *gfn,
        }
    }

    /// Short name, for counters and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::ReadReq { .. } => "ReadReq",
            Message::WriteReq { .. } => "WriteReq",
            Message::Inv { .. } => "Inv",
            Message::InvAck { .. } => "InvAck",
            Message::FwdRead { .. } => "FwdRead",
            Message::FwdWrite { .. } => "FwdWrite",
            Message::DataShared { .. } => "DataShared",
            Message::DataExclusive { .. } => "DataExclusive",
            Message::Grant { .. } => "Grant",
            Message::WriteBack { .. } => "WriteBack",
            Message::PutShared { .. } => "PutShared",
            Message::PutModified { .. } => "PutModified",
            Message::PutAck { .. } => "PutAck",
        }
    }

    /// Whether a page follows this message on the wire (`DataShared`, `DataExclusive`,
    /// `WriteBack`, `PutModified`).
    pub fn has_page(&self) -> bool {
        matches!(
            self,
            Message::DataShared { .. }
                | Message::DataExclusive { .. }
                | Message::WriteBack { .. }
                | Message::PutModified { .. }
        )
    }

    /// Appends the encoding of `self` to `out`, with `page` as the contents of a data-bearing
    /// kind (ignored by the others; pass `&[]`). See [`Message::encode_with`].
    pub fn encode(&self, page: &[u8], out: &mut Vec<u8>) {
        self.encode_with(out, |o| o.extend_from_slice(page));
    }

    /// Appends the encoding of `self` to `out`; for a data-bearing kind `fill` then appends
    /// the page to `out` itself (e.g. [`crate::PageStore::copy_out`] straight from the frame:
    /// the page's only copy on the way out). Whatever `fill` appends is cut or padded with
    /// zeros to exactly [`PAGE_SIZE`] bytes, so the encoding is always well formed.
    /// `out` allocates only if it has to grow.
    pub fn encode_with(&self, out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
        let kind = match self {
            Message::ReadReq { .. } => K_READ_REQ,
            Message::WriteReq { .. } => K_WRITE_REQ,
            Message::Inv { .. } => K_INV,
            Message::InvAck { .. } => K_INV_ACK,
            Message::FwdRead { .. } => K_FWD_READ,
            Message::FwdWrite { .. } => K_FWD_WRITE,
            Message::DataShared { .. } => K_DATA_SHARED,
            Message::DataExclusive { .. } => K_DATA_EXCLUSIVE,
            Message::Grant { .. } => K_GRANT,
            Message::WriteBack { .. } => K_WRITE_BACK,
            Message::PutShared { .. } => K_PUT_SHARED,
            Message::PutModified { .. } => K_PUT_MODIFIED,
            Message::PutAck { .. } => K_PUT_ACK,
        };
        out.push(WIRE_VERSION);
        out.push(kind);
        out.extend_from_slice(&self.gfn().0.to_le_bytes());
        match self {
            Message::FwdRead { requester, .. } | Message::FwdWrite { requester, .. } => {
                out.push(requester.0);
            }
            _ => {}
        }
        if self.has_page() {
            // PAGE_SIZE (4096) fits in u16.
            out.extend_from_slice(&(PAGE_SIZE as u16).to_le_bytes());
            let at = out.len();
            fill(out);
            out.resize(at + PAGE_SIZE, 0);
        }
    }

    /// Length of [`Message::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let fwd = matches!(self, Message::FwdRead { .. } | Message::FwdWrite { .. });
        10 + usize::from(fwd) + if self.has_page() { 2 + PAGE_SIZE } else { 0 }
    }

    /// Decodes exactly one message from `bytes`, and for a data-bearing kind its page: a
    /// slice of `bytes`, exactly [`PAGE_SIZE`] long (nothing is copied).
    pub fn decode(bytes: &[u8]) -> Result<(Message, Option<&[u8]>), DecodeError> {
        let mut r = Reader { bytes };
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = r.u8()?;
        let gfn = Gfn(u64::from_le_bytes(r.array()?));
        let mut page = None;
        let msg = match kind {
            K_READ_REQ => Message::ReadReq { gfn },
            K_WRITE_REQ => Message::WriteReq { gfn },
            K_INV => Message::Inv { gfn },
            K_INV_ACK => Message::InvAck { gfn },
            K_FWD_READ => Message::FwdRead { gfn, requester: NodeId(r.u8()?) },
            K_FWD_WRITE => Message::FwdWrite { gfn, requester: NodeId(r.u8()?) },
            K_DATA_SHARED => {
                page = Some(r.page()?);
                Message::DataShared { gfn }
            }
            K_DATA_EXCLUSIVE => {
                page = Some(r.page()?);
                Message::DataExclusive { gfn }
            }
            K_GRANT => Message::Grant { gfn },
            K_WRITE_BACK => {
                page = Some(r.page()?);
                Message::WriteBack { gfn }
            }
            K_PUT_SHARED => Message::PutShared { gfn },
            K_PUT_MODIFIED => {
                page = Some(r.page()?);
                Message::PutModified { gfn }
            }
            K_PUT_ACK => Message::PutAck { gfn },
            k => return Err(DecodeError::Kind(k)),
        };
        if !r.bytes.is_empty() {
            return Err(DecodeError::Trailing(r.bytes.len()));
        }
        Ok((msg, page))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn page(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = u16::from_le_bytes(self.array()?);
        if usize::from(len) != PAGE_SIZE {
            return Err(DecodeError::PageLength(len));
        }
        self.take(usize::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    /// A message and its page (empty for control kinds).
    fn any_message() -> impl Strategy<Value = (Message, Vec<u8>)> {
        let page = proptest::collection::vec(any::<u8>(), PAGE_SIZE);
        (any_header(), page).prop_map(|(m, p)| if m.has_page() { (m, p) } else { (m, Vec::new()) })
    }

    fn any_header() -> impl Strategy<Value = Message> {
        let gfn = any::<u64>().prop_map(Gfn);
        prop_oneof![
            gfn.clone().prop_map(|gfn| Message::ReadReq { gfn }),
            gfn.clone().prop_map(|gfn| Message::WriteReq { gfn }),
            gfn.clone().prop_map(|gfn| Message::Inv { gfn }),
            gfn.clone().prop_map(|gfn| Message::InvAck { gfn }),
            gfn.clone().prop_map(|gfn| Message::Grant { gfn }),
            (gfn.clone(), any::<u8>())
                .prop_map(|(gfn, n)| Message::FwdRead { gfn, requester: NodeId(n) }),
            (gfn.clone(), any::<u8>())
                .prop_map(|(gfn, n)| Message::FwdWrite { gfn, requester: NodeId(n) }),
            gfn.clone().prop_map(|gfn| Message::DataShared { gfn }),
            gfn.clone().prop_map(|gfn| Message::DataExclusive { gfn }),
            gfn.clone().prop_map(|gfn| Message::WriteBack { gfn }),
            gfn.clone().prop_map(|gfn| Message::PutModified { gfn }),
            gfn.clone().prop_map(|gfn| Message::PutShared { gfn }),
            gfn.prop_map(|gfn| Message::PutAck { gfn }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn every_message_round_trips_through_its_encoding((msg, page) in any_message()) {
            let mut buf = vec![0xAA];
            msg.encode(&page, &mut buf);
            prop_assert_eq!(buf.len(), 1 + msg.encoded_len());
            let want = msg.has_page().then_some(&page[..]);
            prop_assert_eq!(Message::decode(&buf[1..]), Ok((msg, want)));
        }

        #[test]
        fn a_page_filler_of_the_wrong_length_still_encodes_one_page(
            msg in any_header(), len in 0usize..2 * PAGE_SIZE
        ) {
            let mut buf = vec![];
            msg.encode_with(&mut buf, |o| o.resize(o.len() + len, 0x5A));
            prop_assert_eq!(buf.len(), msg.encoded_len());
            let (m, page) = Message::decode(&buf).expect("well formed");
            prop_assert_eq!(m, msg);
            if let Some(p) = page {
                let n = len.min(PAGE_SIZE);
                prop_assert!(p[..n].iter().all(|&b| b == 0x5A) && p[n..].iter().all(|&b| b == 0));
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_returns_a_value_and_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            if let Ok((msg, page)) = Message::decode(&bytes) {
                let mut again = vec![];
                msg.encode(page.unwrap_or(&[]), &mut again);
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn every_strict_prefix_of_an_encoding_is_rejected((msg, page) in any_message(), cut in any::<prop::sample::Index>()) {
            let mut buf = vec![];
            msg.encode(&page, &mut buf);
            let cut = cut.index(buf.len());
            prop_assert!(Message::decode(&buf[..cut]).is_err());
        }

        #[test]
        fn mutated_encodings_decode_or_fail_cleanly(
            (msg, page) in any_message(), at in any::<prop::sample::Index>(), byte in any::<u8>()
        ) {
            let mut buf = vec![];
            msg.encode(&page, &mut buf);
            let at = at.index(buf.len());
            buf[at] = byte;
            let _ = Message::decode(&buf);
        }
    }

    #[test]
    fn control_messages_are_ten_or_eleven_bytes_and_a_page_message_4108() {
        let mut buf = vec![];
        Message::Inv { gfn: Gfn(7) }.encode(&[], &mut buf);
        assert_eq!(buf.len(), 10);
        buf.clear();
        Message::FwdRead { gfn: Gfn(7), requester: NodeId(3) }.encode(&[], &mut buf);
        assert_eq!(buf.len(), 11);
        buf.clear();
        Message::DataShared { gfn: Gfn(7) }.encode(&[1; PAGE_SIZE], &mut buf);
        assert_eq!(buf.len(), 4108);
    }

    #[test]
    fn decode_names_what_is_wrong() {
        assert_eq!(Message::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(Message::decode(&[2, 1]), Err(DecodeError::Version(2)));
        let mut buf = vec![];
        Message::ReadReq { gfn: Gfn(1) }.encode(&[], &mut buf);
        buf[1] = 99;
        assert_eq!(Message::decode(&buf), Err(DecodeError::Kind(99)));
        buf[1] = K_READ_REQ;
        buf.push(0);
        assert_eq!(Message::decode(&buf), Err(DecodeError::Trailing(1)));
        let mut data = vec![WIRE_VERSION, K_WRITE_BACK, 0, 0, 0, 0, 0, 0, 0, 0];
        data.extend_from_slice(&4097u16.to_le_bytes());
        assert_eq!(Message::decode(&data), Err(DecodeError::PageLength(4097)));
    }

    #[test]
    fn a_page_message_shorter_than_a_page_is_refused_by_decode() {
        for len in [0usize, 1, 8, PAGE_SIZE - 1] {
            let mut buf = vec![WIRE_VERSION, K_DATA_EXCLUSIVE, 0, 0, 0, 0, 0, 0, 0, 0];
            buf.extend_from_slice(&(len as u16).to_le_bytes());
            buf.resize(buf.len() + len, 0xAB);
            assert_eq!(Message::decode(&buf), Err(DecodeError::PageLength(len as u16)));
        }
    }
}
