//! virtio-net driver against the fake device: negotiation, queues, frames, refusals.

use super::*;
use crate::drivers::fake::*;
use std::rc::Rc;

fn regions() -> VirtioPciRegions {
    VirtioPciRegions {
        common_cfg: VIRTIO_COMMON,
        common_cfg_len: 0x40,
        notify: VIRTIO_NOTIFY,
        notify_len: VIRTIO_NOTIFY_LEN,
        notify_off_multiplier: VIRTIO_NOTIFY_MULTIPLIER,
        isr: VIRTIO_ISR,
        device_cfg: VIRTIO_DEVICE,
        device_cfg_len: 0x100,
    }
}

fn driver(
    fake: &Rc<FakeVirtioNet>,
    config: VirtioNetConfig,
) -> Result<VirtioNet<Rc<FakeVirtioNet>>, DriverError> {
    // SAFETY: the fake maps its regions at the addresses in `regions()`.
    unsafe { VirtioNet::with_config(Rc::clone(fake), regions(), config) }
}

fn small() -> VirtioNetConfig {
    VirtioNetConfig { queue_size: 8, jumbo: false }
}

fn frame(k: u16, len: usize) -> Vec<u8> {
    let mut f = vec![(k as u8) ^ 0x5A; len];
    f[..6].copy_from_slice(&[0xFF; 6]);
    f[6..12].copy_from_slice(&VIRTIO_MAC);
    f[12..14].copy_from_slice(&k.to_be_bytes());
    f
}

#[test]
fn init_negotiates_only_the_features_it_uses_and_reaches_driver_ok() {
    let fake = FakeVirtioNet::new().rc();
    let nic = driver(&fake, small()).unwrap();
    assert_eq!(fake.driver_features.get(), (1 << 32) | (1 << 5) | (1 << 16));
    assert_eq!(nic.features(), fake.driver_features.get());
    assert_eq!(fake.status(), 1 | 2 | 8 | 4, "ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK");
    assert_eq!((fake.queue_size(0), fake.queue_size(1)), (8, 8));
    assert_eq!(nic.mac(), VIRTIO_MAC);
    assert_eq!(nic.mtu(), 1500);
}

#[test]
fn a_device_without_version_1_is_refused() {
    let mut fake = FakeVirtioNet::new();
    fake.offered &= !(1 << 32);
    let fake = fake.rc();
    assert_eq!(driver(&fake, small()).err(), Some(DriverError::FeaturesRefused));
    assert_eq!(fake.status() & 128, 128, "FAILED is set");
}

#[test]
fn a_device_that_refuses_features_ok_is_reported() {
    let mut fake = FakeVirtioNet::new();
    fake.refuse_features = true;
    let fake = fake.rc();
    assert_eq!(driver(&fake, small()).err(), Some(DriverError::FeaturesRefused));
}

#[test]
fn a_device_without_a_mac_is_refused() {
    let mut fake = FakeVirtioNet::new();
    fake.offered &= !(1 << 5);
    assert_eq!(driver(&fake.rc(), small()).err(), Some(DriverError::NoMac));
}

#[test]
fn transmitted_frames_reach_the_wire_in_order_and_slots_are_reused() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    for k in 0..50u16 {
        nic.transmit(&frame(k, 60 + usize::from(k) * 20)).unwrap();
    }
    let wire = fake.wire.borrow();
    assert_eq!(wire.len(), 50);
    for (k, f) in wire.iter().enumerate() {
        assert_eq!(*f, frame(k as u16, 60 + k * 20));
    }
    assert_eq!(nic.stats().tx_packets, 50);
}

#[test]
fn received_frames_come_out_in_order_and_buffers_are_recycled() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    let mut buf = [0u8; 2048];
    for round in 0..4u16 {
        for k in 0..8 {
            assert!(fake.inject(&frame(round * 8 + k, 64 + usize::from(k))));
        }
        assert!(!fake.inject(&frame(999, 64)), "ring full: the device drops");
        for k in 0..8 {
            let n = nic.receive(&mut buf).unwrap();
            assert_eq!(buf[..n], frame(round * 8 + k, 64 + usize::from(k)));
        }
        assert_eq!(nic.receive(&mut buf), None);
    }
    assert_eq!(fake.rx_dropped.get(), 4);
    assert_eq!(nic.stats().rx_packets, 32);
}

#[test]
fn a_frame_longer_than_the_callers_buffer_is_dropped_and_counted() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    assert!(fake.inject(&frame(1, 1000)));
    assert!(fake.inject(&frame(2, 60)));
    let mut small_buf = [0u8; 100];
    assert_eq!(nic.receive(&mut small_buf), Some(60));
    assert_eq!(nic.stats().rx_errors, 1);
}

#[test]
fn link_status_comes_from_the_device_config() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    assert!(nic.link_up());
    fake.link.set(false);
    assert!(!nic.link_up());
}

#[test]
fn jumbo_mtu_is_taken_from_the_device_when_asked() {
    let mut fake = FakeVirtioNet::new();
    fake.mtu = 9000;
    let fake = fake.rc();
    let mut nic = driver(&fake, VirtioNetConfig { queue_size: 8, jumbo: true }).unwrap();
    assert_eq!(nic.mtu(), 9000);
    assert_ne!(nic.features() & (1 << 3), 0, "VIRTIO_NET_F_MTU negotiated");
    let big = frame(3, 9014);
    nic.transmit(&big).unwrap();
    assert_eq!(fake.wire.borrow()[0], big);
    assert!(fake.inject(&big));
    let mut buf = vec![0u8; 9018];
    assert_eq!(nic.receive(&mut buf), Some(9014));
    assert_eq!(buf[..9014], big[..]);
}

#[test]
fn without_jumbo_a_big_device_mtu_is_ignored() {
    let mut fake = FakeVirtioNet::new();
    fake.mtu = 9000;
    let mut nic = driver(&fake.rc(), small()).unwrap();
    assert_eq!(nic.mtu(), 1500);
    assert_eq!(nic.transmit(&[0; 2000]), Err(DriverError::BadFrameLength(2000)));
}

#[test]
fn a_stalled_device_fills_the_tx_queue_and_slots_return_when_it_completes() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    fake.tx_running.set(false);
    for k in 0..8 {
        assert!(nic.can_transmit());
        nic.transmit(&frame(k, 64)).unwrap();
    }
    assert!(!nic.can_transmit());
    assert_eq!(nic.transmit(&frame(8, 64)), Err(DriverError::TxRingFull));
    assert_eq!(nic.stats().tx_ring_full, 1);
    fake.tx_running.set(true);
    fake.run_tx();
    assert!(nic.can_transmit());
    nic.transmit(&frame(8, 64)).unwrap();
    let wire = fake.wire.borrow();
    assert_eq!(wire.len(), 9);
    assert!(wire.iter().enumerate().all(|(k, f)| *f == frame(k as u16, 64)));
}

#[test]
fn notifications_are_skipped_while_the_device_asks_for_none() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    nic.transmit(&frame(0, 64)).unwrap();
    let before = fake.notifies.get();
    fake.suppress_notify.set(true);
    fake.run_tx();
    nic.transmit(&frame(1, 64)).unwrap();
    assert_eq!(fake.notifies.get(), before, "no notify while USED_F_NO_NOTIFY is set");
    fake.run_tx();
    assert_eq!(fake.wire.borrow().len(), 2, "the device still polls the ring");
}

#[test]
fn a_notify_register_one_past_the_notify_region_is_refused_before_anything_is_written_there() {
    let fake = FakeVirtioNet::new().rc();
    // 64 * 4 = the first byte after the 256-byte region.
    fake.notify_off.set(Some((VIRTIO_NOTIFY_LEN / VIRTIO_NOTIFY_MULTIPLIER as usize) as u16));
    let r = driver(&fake, small());
    assert_eq!(r.err(), Some(DriverError::OutOfRegion("queue notify register")));
    assert_eq!(fake.status() & 128, 128, "FAILED is set");
    assert_eq!(fake.notifies.get(), 0);
}

#[test]
fn a_tx_descriptor_returned_twice_is_freed_once_and_counted() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    fake.tx_running.set(false);
    for k in 0..8 {
        nic.transmit(&frame(k, 64)).unwrap();
    }
    // The first transmit went out on descriptor 0; a hostile device returns it twice.
    fake.push_used(1, 0, 0);
    fake.push_used(1, 0, 0);
    nic.transmit(&frame(8, 64)).unwrap();
    assert_eq!(
        nic.transmit(&frame(9, 64)),
        Err(DriverError::TxRingFull),
        "descriptor 0 is not handed out a second time while the first use is pending"
    );
    assert_eq!(nic.stats().device_faults, 1);
}

#[test]
fn a_completion_for_a_descriptor_outside_the_table_is_skipped_and_counted() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    fake.push_used(0, 99, 76);
    assert!(fake.inject(&frame(1, 64)));
    let mut buf = [0u8; 2048];
    assert_eq!(nic.receive(&mut buf), Some(64));
    assert_eq!(buf[..64], frame(1, 64));
    let s = nic.stats();
    assert_eq!((s.rx_packets, s.rx_errors, s.device_faults), (1, 0, 1));
}

#[test]
fn a_used_index_jump_replays_no_stale_frame_and_takes_the_device_out_of_service() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    let mut buf = [0u8; 2048];
    for k in 0..8 {
        assert!(fake.inject(&frame(k, 64)));
    }
    for _ in 0..8 {
        nic.receive(&mut buf).unwrap();
    }
    fake.jump_used(0, 1000);
    assert_eq!(nic.receive(&mut buf), None, "the ring's old elements are not taken as new");
    assert_eq!(nic.receive(&mut buf), None);
    let s = nic.stats();
    assert_eq!((s.rx_packets, s.rx_errors, s.device_faults), (8, 0, 1));
    assert!(!nic.link_up(), "a broken queue reads as link down");
    assert_eq!(fake.status() & 128, 128, "the driver told the device it gave up");
}

#[test]
fn a_device_returning_garbage_as_fast_as_buffers_are_recycled_costs_one_ring_per_poll() {
    let fake = FakeVirtioNet::new().rc();
    let mut nic = driver(&fake, small()).unwrap();
    fake.rx_garbage.set(true);
    fake.return_rx_garbage();
    let mut buf = [0u8; 2048];
    assert_eq!(nic.receive(&mut buf), None);
    let s = nic.stats();
    assert_eq!((s.rx_packets, s.rx_errors, s.device_faults), (0, 8, 1));
    assert_eq!(nic.receive(&mut buf), None);
    assert_eq!(nic.stats().device_faults, 2);
}
