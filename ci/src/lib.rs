//! gestalt-ci: the emulator cluster harness. Boots Gestalt nodes in QEMU (TCG) or Bochs, joins
//! them through a virtual Ethernet switch of our own (unicast UDP on 127.0.0.1), captures and
//! drives each node's COM1 console, waits for console lines with timeouts, and stops every
//! process it started (by pid) when dropped — also when a test panics.
#![warn(missing_docs)]

pub mod artifacts;
pub mod cluster;
pub mod console;
pub mod error;
pub mod linux;
pub mod node;
pub mod switch;
mod util;

pub use artifacts::Artifacts;
pub use cluster::Cluster;
pub use console::Console;
pub use error::HarnessError;
pub use node::{accelerator, Accel, Boot, Emu, Node, NodeSpec, QEMU_CPU};
pub use switch::{PortKind, Switch, SwitchCounters, SwitchPort};
