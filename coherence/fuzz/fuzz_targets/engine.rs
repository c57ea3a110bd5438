//! Arbitrary traffic into one engine: frames of `[from, len, bytes...]` decoded as messages,
//! or local faults; whatever arrives, the engine answers with actions (errors included) and
//! never panics.
#![no_main]

use gestalt_coherence::{Access, Config, Engine, Event, Gfn, MemStore, Message, NodeId, VcpuId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&node, mut rest)) = data.split_first() else { return };
    let cfg = Config::interleaved(4, 16);
    let mut engine = Engine::new(NodeId(node % 4), cfg);
    let mut store = MemStore::new();
    while let [tag, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let event = if tag & 0x80 == 0 {
            match Message::decode(body) {
                Ok((msg, page)) => Event::Message { from: NodeId(tag % 5), msg, page },
                Err(_) => continue,
            }
        } else {
            let gfn = Gfn(u64::from(body.first().copied().unwrap_or(0) % 20));
            let access = [Access::Read, Access::Write, Access::Exec][usize::from(tag % 3)];
            Event::LocalFault { gfn, access, vcpu: VcpuId(u16::from(tag & 7)) }
        };
        let _ = engine.handle(event, &mut store);
    }
});
