//! Gestalt's network stack: NIC drivers behind a small [`NetDevice`](device::NetDevice) trait,
//! one smoltcp adapter, and the reliable authenticated transport between nodes.
//!
//! Layers, bottom up (docs/design.md §2, §4; README.md has the design and the firmware glue):
//! - [`hal`]: what drivers need from the firmware (DMA memory, address translation, MMIO).
//! - [`device`] and [`drivers`]: the `NetDevice` trait; e1000/82574L and virtio-net drivers.
//! - [`phy`]: the one `smoltcp::phy::Device` adapter over any `NetDevice`.
//! - [`iface`]: smoltcp interface, addressing (`dhcp`, static, link-local `auto`), UDP glue.
//! - [`transport`]: sans-IO reliable per-peer FIFO messages with authentication.
//! - [`membership`]: the discovery announcement codec.
//! - [`formation`]: the view every node commits from those announcements.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod device;
pub mod drivers;
pub mod formation;
pub mod hal;
pub mod iface;
pub mod membership;
pub mod phy;
pub mod transport;
