//! A peer that holds the key but sends nonsense: validly authenticated datagrams whose header
//! fields (kind, fragments, nonces, packet numbers, seq, ack, sack, length) come from the fuzzer,
//! interleaved with local sends and timer polls. The engine must never panic.
//!
//! `cd netstack/fuzz && cargo fuzz run engine -- -max_total_time=60`
#![no_main]

use gestalt_netstack::transport::{
    ClusterKey, DatagramKey, Config, Header, Kind, Seed, Transport, HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_passphrase(b"fuzz");
    let auth = DatagramKey::new(&key);
    let mut cfg = Config::new(1, 1, Seed::new([9; 32]));
    cfg.mtu = 576;
    let mut t = Transport::new(cfg, &key);
    t.add_peer(0, 0);
    // Our nonce for peer 0, learnt the way a peer would: from our first datagram (a hello).
    let mut out = vec![0u8; t.config().max_datagram()];
    let ours = t.poll_transmit(0, &mut out).map_or(0, |tx| {
        Header::parse_unauthenticated(&out[..tx.len]).map_or(0, |h| h.src_nonce)
    });
    let mut dgram = vec![0u8; HEADER_LEN + 256];
    let mut now = 0u64;
    for rec in data.chunks_exact(32) {
        now += u64::from(rec[0]) * 1000;
        match rec[1] % 4 {
            0 => {
                let _ = t.send(0, &rec[2..2 + usize::from(rec[2] % 30)]);
            }
            1 => while t.poll_transmit(now, &mut out).is_some() {},
            _ => {
                let kind = match rec[3] % 4 {
                    0 => Kind::Data,
                    1 => Kind::Ack,
                    2 => Kind::Heartbeat,
                    _ => Kind::Hello,
                };
                let u32_at =
                    |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
                let h = Header {
                    kind,
                    frag_index: rec[4] % 4,
                    frag_count: rec[5] % 4,
                    cluster_id: 1,
                    src: 0,
                    dst: 1,
                    src_nonce: u64::from(rec[6] % 3),
                    dst_nonce: [0, ours, 5][usize::from(rec[28] % 3)],
                    pn: u64::from(u32_at(7) % 512),
                    pn_echo: u64::from(rec[29] % 64),
                    seq: u32_at(11) % 128,
                    ack: u32_at(15) % 128,
                    sack: u64::from(u32_at(19)) | (u64::from(u32_at(23)) << 32),
                };
                let len = usize::from(rec[27]) % 64;
                if let Some(n) = h.seal(&auth, &rec[..len.min(32)], &mut dgram) {
                    let _ = t.handle_datagram(now, &dgram[..n]);
                }
            }
        }
        while t.recv().is_some() {}
        while t.poll_event().is_some() {}
    }
});
