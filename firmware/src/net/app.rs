//! The node tools' own messages over the cluster transport (`ping`, `netbench`, `test=mesh`):
//! a tag byte, big-endian fields, and any padding after them (so round trips can be measured
//! with page-sized messages). Decoding arbitrary bytes gives `None`, never a panic.

use alloc::vec;
use alloc::vec::Vec;

const PING: u8 = 1;
const PONG: u8 = 2;
const BENCH: u8 = 3;
const BENCH_DONE: u8 = 4;
const MESH: u8 = 5;

/// One tool message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppMsg {
    /// Asks for a `Pong` with the same token and size.
    Ping {
        /// Matches the reply to the request.
        token: u32,
    },
    /// Answers a `Ping`.
    Pong {
        /// The request's token.
        token: u32,
    },
    /// One page of a throughput run.
    Bench {
        /// 0-based index.
        index: u32,
        /// Pages in the run.
        total: u32,
    },
    /// The receiver saw the last page of a run, after `count` of them.
    BenchDone {
        /// Pages the receiver counted.
        count: u32,
    },
    /// The `seq`-th message of a `test=mesh` run.
    Mesh {
        /// Per-peer sequence number.
        seq: u32,
    },
}

impl AppMsg {
    /// Encodes, padded with zeros to `size` bytes when that is longer.
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let (tag, a, b) = match *self {
            AppMsg::Ping { token } => (PING, token, None),
            AppMsg::Pong { token } => (PONG, token, None),
            AppMsg::Bench { index, total } => (BENCH, index, Some(total)),
            AppMsg::BenchDone { count } => (BENCH_DONE, count, None),
            AppMsg::Mesh { seq } => (MESH, seq, None),
        };
        let len = if b.is_some() { 9 } else { 5 };
        let mut out = vec![0u8; size.max(len)];
        out[0] = tag;
        out[1..5].copy_from_slice(&a.to_be_bytes());
        if let Some(b) = b {
            out[5..9].copy_from_slice(&b.to_be_bytes());
        }
        out
    }

    /// Decodes the fields; padding is ignored. `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<AppMsg> {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        Some(match *bytes.first()? {
            PING => AppMsg::Ping { token: word(1)? },
            PONG => AppMsg::Pong { token: word(1)? },
            BENCH => AppMsg::Bench { index: word(1)?, total: word(5)? },
            BENCH_DONE => AppMsg::BenchDone { count: word(1)? },
            MESH => AppMsg::Mesh { seq: word(1)? },
            _ => return None,
        })
    }
}

/// The reply to a `Ping` (`msg` as received): the same bytes, tagged `Pong`.
pub fn pong_for(ping: &[u8]) -> Vec<u8> {
    let mut reply = ping.to_vec();
    if let Some(tag) = reply.first_mut() {
        *tag = PONG;
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_padding_keeps_the_size() {
        let all = [
            AppMsg::Ping { token: 7 },
            AppMsg::Pong { token: u32::MAX },
            AppMsg::Bench { index: 255, total: 256 },
            AppMsg::BenchDone { count: 256 },
            AppMsg::Mesh { seq: 199 },
        ];
        for m in all {
            assert_eq!(AppMsg::decode(&m.encode(0)), Some(m));
            let page = m.encode(4096);
            assert_eq!(page.len(), 4096);
            assert_eq!(AppMsg::decode(&page), Some(m));
        }
    }

    #[test]
    fn a_pong_echoes_the_ping_with_its_size() {
        let ping = AppMsg::Ping { token: 42 }.encode(4096);
        let pong = pong_for(&ping);
        assert_eq!(pong.len(), 4096);
        assert_eq!(AppMsg::decode(&pong), Some(AppMsg::Pong { token: 42 }));
        assert!(pong_for(&[]).is_empty());
    }

    #[test]
    fn short_unknown_and_arbitrary_bytes_decode_to_none_without_panicking() {
        assert_eq!(AppMsg::decode(&[]), None);
        assert_eq!(AppMsg::decode(&[BENCH, 0, 0, 0, 1, 0, 0]), None);
        assert_eq!(AppMsg::decode(&[99, 0, 0, 0, 0]), None);
        let mut x = 0x9e37_79b9u32;
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 7) as u8
                })
                .collect();
            let _ = AppMsg::decode(&bytes);
        }
    }
}
