//! The node's network side: the driver HAL over the reserve, NIC discovery on PCI, and (as
//! the transport lands) the smoltcp interface and the cluster transport.

pub mod app;
#[cfg(target_os = "none")]
pub mod hal;
#[cfg(target_os = "none")]
pub mod nic;
pub mod secrets;
#[cfg(target_os = "none")]
pub mod stack;
