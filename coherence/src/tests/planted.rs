//! Planted action-order bugs, applied to an engine's action list by the model checker and the
//! simulator (never by the engine itself) to show that their one-action-at-a-time execution
//! catches what a batch-at-once execution hides. Each bug moves one revoking action after a
//! send that must follow it.

use std::vec::Vec;

use crate::{Action, Gfn, Message};

/// A reordering of the engine's actions that the firmware could get wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bug {
    /// Serving a `FwdRead`: copy the page (DataShared, WriteBack) before the `Downgrade`.
    CopyBeforeDowngrade,
    /// Serving a `FwdWrite`: copy the page (DataExclusive) before the `Unmap`.
    CopyBeforeUnmap,
    /// Serving an `Inv`: send the `InvAck` before the `Unmap`.
    AckBeforeUnmap,
}

impl Bug {
    pub const ALL: [Bug; 3] = [Bug::CopyBeforeDowngrade, Bug::CopyBeforeUnmap, Bug::AckBeforeUnmap];

    fn revokes(self, a: &Action) -> Option<Gfn> {
        match (self, a) {
            (Bug::CopyBeforeDowngrade, Action::Downgrade { gfn }) => Some(*gfn),
            (Bug::CopyBeforeUnmap | Bug::AckBeforeUnmap, Action::Unmap { gfn }) => Some(*gfn),
            _ => None,
        }
    }

    fn follows(self, a: &Action, g: Gfn) -> bool {
        match (self, a) {
            (Bug::CopyBeforeDowngrade, Action::SendPage { msg, .. }) => {
                msg.gfn() == g
                    && matches!(msg, Message::DataShared { .. } | Message::WriteBack { .. })
            }
            (
                Bug::CopyBeforeUnmap,
                Action::SendPage { msg: Message::DataExclusive { gfn, .. }, .. },
            )
            | (Bug::AckBeforeUnmap, Action::Send { msg: Message::InvAck { gfn }, .. }) => *gfn == g,
            _ => false,
        }
    }

    /// Moves each revoking action of `acts` after the run of sends for its frame that follows
    /// it directly.
    pub fn plant(self, acts: &mut Vec<Action>) {
        let mut i = 0;
        while i < acts.len() {
            if let Some(g) = self.revokes(&acts[i]) {
                let mut j = i + 1;
                while j < acts.len() && self.follows(&acts[j], g) {
                    j += 1;
                }
                if j > i + 1 {
                    let a = acts.remove(i);
                    acts.insert(j - 1, a);
                    i = j;
                    continue;
                }
            }
            i += 1;
        }
    }
}
