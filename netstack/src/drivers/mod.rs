//! Polled NIC drivers. Each implements [`crate::device::NetDevice`] over a [`crate::hal::Hal`].

pub mod e1000;
pub mod virtio_net;

#[cfg(test)]
pub(crate) mod fake;
