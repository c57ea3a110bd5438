//! Whatever a peer or a guest sends, an engine answers with actions and never panics.

use proptest::prelude::*;

use crate::{Access, Action, Config, Engine, Event, Gfn, MemStore, Message, NodeId, VcpuId};

/// An event and the page bytes beside a message (owned here, borrowed by the event).
fn any_event() -> impl Strategy<Value = (Event<'static>, Option<Vec<u8>>)> {
    let gfn = (0u64..20).prop_map(Gfn);
    let node = (0u8..6).prop_map(NodeId);
    // Mostly whole pages for the data kinds and none for the others (so fills happen),
    // sometimes a wrong length or a page where none belongs (refused).
    let page = prop_oneof![
        3 => any::<u8>().prop_map(|b| Some(std::vec![b; crate::PAGE_SIZE])),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Some),
        1 => Just(None),
    ];
    let msg = prop_oneof![
        gfn.clone().prop_map(|gfn| Message::ReadReq { gfn }),
        gfn.clone().prop_map(|gfn| Message::WriteReq { gfn }),
        gfn.clone().prop_map(|gfn| Message::Inv { gfn }),
        gfn.clone().prop_map(|gfn| Message::InvAck { gfn }),
        gfn.clone().prop_map(|gfn| Message::Grant { gfn }),
        (gfn.clone(), node.clone())
            .prop_map(|(gfn, requester)| Message::FwdRead { gfn, requester }),
        (gfn.clone(), node.clone())
            .prop_map(|(gfn, requester)| Message::FwdWrite { gfn, requester }),
        gfn.clone().prop_map(|gfn| Message::DataShared { gfn }),
        gfn.clone().prop_map(|gfn| Message::DataExclusive { gfn }),
        gfn.clone().prop_map(|gfn| Message::WriteBack { gfn }),
        gfn.clone().prop_map(|gfn| Message::PutModified { gfn }),
        gfn.clone().prop_map(|gfn| Message::PutShared { gfn }),
        gfn.clone().prop_map(|gfn| Message::PutAck { gfn }),
    ];
    let access = prop_oneof![Just(Access::Read), Just(Access::Write), Just(Access::Exec)];
    prop_oneof![
        (node, msg, page).prop_map(|(from, msg, page)| {
            let page = if msg.has_page() { page } else { page.filter(|p| p.len() < 16) };
            (Event::Message { from, msg, page: None }, page)
        }),
        (gfn.clone(), access, 0u16..4).prop_map(|(gfn, access, v)| (
            Event::LocalFault { gfn, access, vcpu: VcpuId(v) },
            None
        )),
        (0u64..1000).prop_map(|now| (Event::Timer { now }, None)),
        gfn.prop_map(|gfn| (Event::Evict { gfn }, None)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn an_engine_fed_arbitrary_events_never_panics_and_never_sends_to_itself(
        me in 0u8..4,
        events in proptest::collection::vec(any_event(), 0..64),
    ) {
        let mut e = Engine::new(NodeId(me), Config::interleaved(4, 16));
        e.set_stall_after(100);
        let mut store = MemStore::new();
        for (mut ev, bytes) in events {
            if let Event::Message { page, .. } = &mut ev {
                *page = bytes.as_deref();
            }
            for a in e.handle(ev, &mut store) {
                if let Action::Send { to, .. } | Action::SendPage { to, .. } = a {
                    prop_assert_ne!(to, NodeId(me));
                    prop_assert!(to.0 < 4);
                }
            }
        }
    }
}
