//! Gestalt's network stack: NIC drivers behind a small [`NetDevice`](device::NetDevice) trait,
//! one smoltcp adapter, and the reliable authenticated transport between nodes.
//!
//! Layers, bottom up (DESIGN.md §2, §4):
//! - [`hal`]: what drivers need from the firmware (DMA memory, address translation, MMIO).
//! - [`transport`]: sans-IO reliable per-peer FIFO messages with authentication.
//! - [`membership`]: the discovery announcement codec.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod device;
pub mod drivers;
pub mod hal;
pub mod iface;
pub mod membership;
pub mod phy;
pub mod transport;
