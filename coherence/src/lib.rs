//! Gestalt's guest-memory coherence protocol: a home-based MSI directory over 4 KiB guest
//! frames, as a sans-IO engine (events in, actions out) that runs unchanged in the firmware,
//! the unit tests, the model checker and the simulator. See `README.md` for the protocol and
//! its message counts.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod directory;
pub mod engine;
pub mod home;
pub mod message;
pub mod store;
pub mod types;
mod vecmap;

#[cfg(test)]
mod tests;

pub use directory::{CacheState, DirState, Directory};
pub use engine::{Action, Counters, Engine, Event, PageStore, ProtocolError};
pub use home::{Config, HomeMap, HomeMapError, HomeRange};
pub use message::{DecodeError, Message, WIRE_VERSION};
pub use store::MemStore;
pub use types::{Access, Gfn, NodeId, NodeSet, Rights, VcpuId, MAX_NODES, PAGE_SIZE};
