//! Arbitrary bytes from the network: decoding returns a value and never panics, and whatever
//! decodes re-encodes to the same bytes (the encoding is canonical).
#![no_main]

use gestalt_coherence::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((msg, page)) = Message::decode(data) {
        let mut again = Vec::new();
        msg.encode(page.unwrap_or(&[]), &mut again);
        assert_eq!(again, data);
    }
});
