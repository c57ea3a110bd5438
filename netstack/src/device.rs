//! The driver-facing network device trait, its counters and errors. Drivers implement
//! [`NetDevice`]; nothing above them knows which NIC is underneath.

/// A polled Ethernet device. Frames are whole Ethernet frames without the FCS.
pub trait NetDevice {
    /// The station MAC address.
    fn mac(&self) -> [u8; 6];

    /// Whether the link is up (read from the device now).
    fn link_up(&mut self) -> bool;

    /// The largest Ethernet payload (IP MTU) this device was set up for: 1500, or more with
    /// jumbo frames.
    fn mtu(&self) -> usize;

    /// Whether a frame can be queued for transmission now (the TX ring has room, after
    /// reclaiming completed descriptors).
    fn can_transmit(&mut self) -> bool;

    /// Queues one frame for transmission.
    fn transmit(&mut self, frame: &[u8]) -> Result<(), DriverError>;

    /// Takes one received frame into `buf` and returns its length; `None` when no frame is
    /// waiting. Frames longer than `buf` are dropped and counted.
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize>;

    /// Counters (hardware clear-on-read counters are folded in, hence `&mut`).
    fn stats(&mut self) -> DeviceStats;
}

/// Counters every driver keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames received and handed up.
    pub rx_packets: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames queued for transmission.
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames the device flagged as bad, or that did not fit the caller's buffer.
    pub rx_errors: u64,
    /// Frames the device dropped for lack of receive descriptors.
    pub rx_missed: u64,
    /// Transmissions refused because the ring was full.
    pub tx_ring_full: u64,
    /// Times the device broke its side of the ring protocol and the driver contained it:
    /// a completion for a descriptor it did not own, an impossible ring index, a receive poll
    /// cut short by a ring full of completions without one good frame.
    pub device_faults: u64,
}

/// Why a driver could not be set up or could not send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// The PCI device id is not one this driver supports.
    UnsupportedDevice(u16),
    /// The HAL could not provide DMA memory.
    NoDmaMemory,
    /// The device did not finish its reset.
    ResetTimeout,
    /// The EEPROM did not answer a read.
    EepromTimeout,
    /// Neither the receive-address registers nor the EEPROM hold a usable MAC.
    NoMac,
    /// The device refused the features the driver needs (virtio).
    FeaturesRefused,
    /// A queue the driver needs is missing or too small (virtio).
    QueueUnavailable,
    /// A structure the device describes lies outside the region it gave for it (virtio):
    /// which one.
    OutOfRegion(&'static str),
    /// The transmit ring is full; poll and retry.
    TxRingFull,
    /// The frame is longer than the device's maximum frame, or shorter than a header.
    BadFrameLength(usize),
}

impl core::fmt::Display for DriverError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnsupportedDevice(id) => write!(f, "unsupported PCI device id {id:#06x}"),
            Self::NoDmaMemory => f.write_str("out of DMA memory"),
            Self::ResetTimeout => f.write_str("device did not come out of reset"),
            Self::EepromTimeout => f.write_str("EEPROM read timed out"),
            Self::NoMac => f.write_str("no MAC address in registers or EEPROM"),
            Self::FeaturesRefused => f.write_str("device refused the negotiated features"),
            Self::QueueUnavailable => f.write_str("required virtqueue missing or too small"),
            Self::OutOfRegion(what) => write!(f, "{what} lies outside the region the device gave"),
            Self::TxRingFull => f.write_str("transmit ring full"),
            Self::BadFrameLength(n) => write!(f, "frame length {n} out of range"),
        }
    }
}

/// Lets the firmware pick a driver at run time: `NetInterface<Box<dyn NetDevice>>`.
impl<T: NetDevice + ?Sized> NetDevice for alloc::boxed::Box<T> {
    fn mac(&self) -> [u8; 6] {
        (**self).mac()
    }

    fn link_up(&mut self) -> bool {
        (**self).link_up()
    }

    fn mtu(&self) -> usize {
        (**self).mtu()
    }

    fn can_transmit(&mut self) -> bool {
        (**self).can_transmit()
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), DriverError> {
        (**self).transmit(frame)
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        (**self).receive(buf)
    }

    fn stats(&mut self) -> DeviceStats {
        (**self).stats()
    }
}
