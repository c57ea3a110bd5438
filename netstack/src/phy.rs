//! The one adapter between drivers and smoltcp: [`SmolDevice`] implements
//! `smoltcp::phy::Device` over any [`NetDevice`].

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::device::NetDevice;

/// Ethernet header (14) plus one VLAN tag (4): frame bytes beyond the IP MTU.
const ETH_OVERHEAD: usize = 18;

/// A [`NetDevice`] seen by smoltcp. Holds one receive and one transmit buffer of the
/// device's maximum frame size, so no allocation happens per frame.
#[derive(Debug)]
pub struct SmolDevice<D: NetDevice> {
    dev: D,
    rx: Vec<u8>,
    tx: Vec<u8>,
    tx_errors: u64,
}

impl<D: NetDevice> SmolDevice<D> {
    /// Wraps `dev`.
    pub fn new(dev: D) -> Self {
        let max = dev.mtu() + ETH_OVERHEAD;
        Self { dev, rx: vec![0; max], tx: vec![0; max], tx_errors: 0 }
    }

    /// The driver underneath.
    pub fn inner(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Frames smoltcp produced that the driver refused (ring full or bad length).
    pub fn tx_errors(&self) -> u64 {
        self.tx_errors
    }
}

/// A received frame lent to smoltcp.
#[derive(Debug)]
pub struct RxToken<'a> {
    frame: &'a [u8],
}

/// A transmit slot lent to smoltcp.
#[derive(Debug)]
pub struct TxToken<'a, D: NetDevice> {
    dev: &'a mut D,
    buf: &'a mut [u8],
    errors: &'a mut u64,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

impl<D: NetDevice> phy::TxToken for TxToken<'_, D> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let len = len.min(self.buf.len());
        let frame = &mut self.buf[..len];
        let r = f(frame);
        if self.dev.transmit(frame).is_err() {
            *self.errors += 1;
        }
        r
    }
}

impl<D: NetDevice> phy::Device for SmolDevice<D> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, D>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let n = self.dev.receive(&mut self.rx)?;
        Some((
            RxToken { frame: &self.rx[..n] },
            TxToken { dev: &mut self.dev, buf: &mut self.tx, errors: &mut self.tx_errors },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if !self.dev.can_transmit() {
            return None;
        }
        Some(TxToken { dev: &mut self.dev, buf: &mut self.tx, errors: &mut self.tx_errors })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp counts the Ethernet header in the MTU of an Ethernet device.
        caps.max_transmission_unit = self.dev.mtu() + 14;
        caps
    }
}
