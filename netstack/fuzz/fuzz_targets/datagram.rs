//! Feeds arbitrary bytes to every decoder that sees network input: the transport header
//! parser and authenticator, a live transport engine, and the membership announcement codec.
//! None may panic; the engine must count every rejected input.
//!
//! `cd netstack/fuzz && cargo fuzz run datagram -- -max_total_time=60`
#![no_main]

use gestalt_netstack::membership::Announcement;
use gestalt_netstack::transport::{
    Authenticator, ClusterKey, Config, DatagramKey, Header, Seed, Transport,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_passphrase(b"fuzz");
    let auth = Authenticator::new(&key);
    let _ = Header::parse_unauthenticated(data);
    let _ = Header::open(data, &DatagramKey::new(&key), 1, 1);
    let _ = Announcement::decode(data, &auth, 1);

    let mut t = Transport::new(Config::new(1, 1, Seed::new([9; 32])), &key);
    t.add_peer(0, 0);
    let before = t.stats().dropped_total();
    if t.handle_datagram(1, data).is_err() {
        assert_eq!(t.stats().dropped_total(), before + 1);
    }
    let mut buf = vec![0u8; t.config().max_datagram()];
    while t.poll_transmit(2, &mut buf).is_some() {}
});
