//! e1000/82574L driver against the fake device: reset, EEPROM MAC, rings, jumbo, errors.

use super::*;
use crate::drivers::fake::{FakeE1000, E1000_BAR, EEPROM_MAC};
use std::rc::Rc;

fn frame(k: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0xFF; 6]);
    f[6..12].copy_from_slice(&EEPROM_MAC);
    f[12..14].copy_from_slice(&0x88B5u16.to_be_bytes());
    f[14..16].copy_from_slice(&k.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(16) {
        *b = (i as u16 ^ k) as u8;
    }
    f
}

fn driver(fake: &Rc<FakeE1000>, device_id: u16, config: E1000Config) -> E1000<Rc<FakeE1000>> {
    // SAFETY: the fake maps its registers at E1000_BAR.
    unsafe { E1000::with_config(Rc::clone(fake), E1000_BAR, device_id, config) }.expect("init")
}

fn small_rings() -> E1000Config {
    E1000Config { rx_descriptors: 8, tx_descriptors: 8, jumbo: false }
}

#[test]
fn mac_is_read_from_the_eeprom_when_ral0_reads_zero_as_on_bochs() {
    let fake = FakeE1000::new(Model::I8254x);
    let nic = driver(&fake, 0x100E, small_rings());
    assert_eq!(nic.mac(), EEPROM_MAC);
    assert!(fake.eerd_reads.get() >= 3, "three EEPROM words were read through EERD");
    // Written back with Address Valid so the receive filter matches it.
    assert_eq!(fake.reg(0x5400), 0x1200_5452);
    assert_eq!(fake.reg(0x5404), 0x8000_5634);
}

#[test]
fn mac_is_read_from_the_eeprom_with_the_82574l_eerd_layout() {
    let fake = FakeE1000::new(Model::I82574);
    let nic = driver(&fake, 0x10D3, small_rings());
    assert_eq!(nic.model(), Model::I82574);
    assert_eq!(nic.mac(), EEPROM_MAC);
    assert_ne!(fake.reg(0x5B00) & (1 << 22), 0, "GCR bit 22 set on the 82574L");
}

#[test]
fn mac_comes_from_the_receive_address_registers_when_they_hold_one() {
    let mac = [0x02, 0x00, 0x00, 0xAA, 0xBB, 0xCC];
    let fake = FakeE1000::with_ral(Model::I8254x, mac);
    let nic = driver(&fake, 0x100E, small_rings());
    assert_eq!(nic.mac(), mac);
    assert_eq!(fake.eerd_reads.get(), 0);
}

#[test]
fn an_unknown_device_id_is_refused() {
    let fake = FakeE1000::new(Model::I8254x);
    // SAFETY: the fake maps its registers at E1000_BAR.
    let r = unsafe { E1000::new(Rc::clone(&fake), E1000_BAR, 0x1234) };
    assert_eq!(r.err(), Some(DriverError::UnsupportedDevice(0x1234)));
}

#[test]
fn a_reset_that_never_completes_is_reported() {
    let fake = FakeE1000::new(Model::I8254x);
    fake.reset_reads.set(u32::MAX);
    // SAFETY: the fake maps its registers at E1000_BAR.
    let r = unsafe { E1000::new(Rc::clone(&fake), E1000_BAR, 0x100E) };
    assert_eq!(r.err(), Some(DriverError::ResetTimeout));
}

#[test]
fn init_programs_rings_link_and_receive_control() {
    let fake = FakeE1000::new(Model::I8254x);
    let _nic = driver(&fake, 0x100E, small_rings());
    assert_eq!(fake.reg(0x2808), 8 * 16, "RDLEN");
    assert_eq!(fake.reg(0x2818), 7, "all but one RX descriptor handed to the device");
    assert_eq!(fake.reg(0x2804), 1, "RDBAH carries the high half of a >4 GiB address");
    let rctl = fake.reg(0x0100);
    assert_eq!(rctl & (RCTL_EN | RCTL_BAM | RCTL_SECRC), RCTL_EN | RCTL_BAM | RCTL_SECRC);
    assert_eq!(rctl & RCTL_LPE, 0);
    assert_ne!(fake.reg(0) & CTRL_SLU, 0, "set link up");
    assert_ne!(fake.reg(0x0400) & TCTL_EN, 0);
}

#[test]
fn transmitted_frames_reach_the_wire_in_order_across_ring_wraparound() {
    let fake = FakeE1000::new(Model::I8254x);
    let mut nic = driver(&fake, 0x100E, small_rings());
    for k in 0..30u16 {
        nic.transmit(&frame(k, 60 + usize::from(k) * 40)).unwrap();
    }
    let wire = fake.wire.borrow();
    assert_eq!(wire.len(), 30);
    for (k, f) in wire.iter().enumerate() {
        assert_eq!(*f, frame(k as u16, 60 + k * 40));
    }
    let s = nic.stats();
    assert_eq!(s.tx_packets, 30);
    assert_eq!(s.tx_bytes, (0..30).map(|k| 60 + k * 40).sum::<u64>());
}

#[test]
fn a_stalled_transmitter_fills_the_ring_and_frees_it_when_done() {
    let fake = FakeE1000::new(Model::I8254x);
    let mut nic = driver(&fake, 0x100E, small_rings());
    fake.tx_running.set(false);
    for k in 0..7 {
        assert!(nic.can_transmit());
        nic.transmit(&frame(k, 64)).unwrap();
    }
    assert!(!nic.can_transmit(), "one slot stays empty to tell full from empty");
    assert_eq!(nic.transmit(&frame(7, 64)), Err(DriverError::TxRingFull));
    assert_eq!(nic.stats().tx_ring_full, 1);
    fake.tx_running.set(true);
    fake.run_tx();
    assert!(nic.can_transmit());
    nic.transmit(&frame(7, 64)).unwrap();
    assert_eq!(fake.wire.borrow().len(), 8);
}

#[test]
fn frames_of_bad_length_are_refused() {
    let fake = FakeE1000::new(Model::I8254x);
    let mut nic = driver(&fake, 0x100E, small_rings());
    assert_eq!(nic.transmit(&[0; 10]), Err(DriverError::BadFrameLength(10)));
    assert_eq!(nic.transmit(&[0; 1519]), Err(DriverError::BadFrameLength(1519)));
    assert!(fake.wire.borrow().is_empty());
}

#[test]
fn received_frames_come_out_in_order_and_descriptors_are_recycled() {
    let fake = FakeE1000::new(Model::I8254x);
    let mut nic = driver(&fake, 0x100E, small_rings());
    let mut buf = [0u8; 2048];
    for round in 0..5u16 {
        for k in 0..7 {
            assert!(fake.inject(&frame(round * 10 + k, 100 + usize::from(k))));
        }
        for k in 0..7 {
            let n = nic.receive(&mut buf).expect("a frame");
            assert_eq!(buf[..n], frame(round * 10 + k, 100 + usize::from(k)));
        }
        assert_eq!(nic.receive(&mut buf), None);
    }
    assert_eq!(nic.stats().rx_packets, 35);
}

#[test]
fn frames_arriving_with_no_free_descriptor_are_counted_as_missed() {
    let fake = FakeE1000::new(Model::I8254x);
    let mut nic = driver(&fake, 0x100E, small_rings());
    let accepted = (0..10).filter(|&k| fake.inject(&frame(k, 64))).count();
    assert_eq!(accepted, 7);
    assert_eq!(nic.stats().rx_missed, 3);
    let mut buf = [0u8; 2048];
    assert_eq!((0..10).filter(|_| nic.receive(&mut buf).is_some()).count(), 7);
    assert!(fake.inject(&frame(99, 64)), "descriptors came back");
}

#[test]
fn errored_and_oversized_frames_are_dropped_and_counted_and_the_next_one_is_fine() {
    let fake = FakeE1000::new(Model::I8254x);
    let mut nic = driver(&fake, 0x100E, small_rings());
    assert!(fake.inject_with_errors(&frame(1, 64), 0x01));
    // 3000 bytes span two 2 KiB buffers: only the last has EOP.
    assert!(fake.inject(&frame(2, 3000)));
    assert!(fake.inject(&frame(3, 64)));
    let mut buf = [0u8; 2048];
    let n = nic.receive(&mut buf).expect("the good frame");
    assert_eq!(buf[..n], frame(3, 64));
    assert_eq!(nic.stats().rx_errors, 2, "the CRC error and the chained frame");
}

#[test]
fn a_frame_longer_than_the_callers_buffer_is_dropped_and_counted() {
    let fake = FakeE1000::new(Model::I8254x);
    let mut nic = driver(&fake, 0x100E, small_rings());
    assert!(fake.inject(&frame(1, 1000)));
    let mut small = [0u8; 100];
    assert_eq!(nic.receive(&mut small), None);
    assert_eq!(nic.stats().rx_errors, 1);
}

#[test]
fn link_status_follows_the_device() {
    let fake = FakeE1000::new(Model::I8254x);
    let mut nic = driver(&fake, 0x100E, small_rings());
    assert!(nic.link_up());
    fake.link.set(false);
    assert!(!nic.link_up());
}

#[test]
fn jumbo_frames_use_long_packets_and_16k_buffers() {
    for (model, id) in [(Model::I8254x, 0x100E), (Model::I82574, 0x10D3)] {
        let fake = FakeE1000::new(model);
        let cfg = E1000Config { jumbo: true, ..small_rings() };
        let mut nic = driver(&fake, id, cfg);
        assert_eq!(nic.mtu(), 9000);
        assert_ne!(fake.reg(0x0100) & RCTL_LPE, 0);
        let big = frame(5, 9014);
        nic.transmit(&big).unwrap();
        assert_eq!(fake.wire.borrow()[0], big);
        assert!(fake.inject(&big));
        let mut buf = vec![0u8; 9018];
        let n = nic.receive(&mut buf).unwrap();
        assert_eq!(buf[..n], big);
    }
}

#[test]
fn a_broadcast_or_multicast_station_address_is_reported() {
    for mac in [[0xFF; 6], [0x01, 0, 0, 0, 0, 1]] {
        let fake = FakeE1000::with_ral(Model::I8254x, mac);
        // SAFETY: the fake maps its registers at E1000_BAR.
        let r = unsafe { E1000::new(Rc::clone(&fake), E1000_BAR, 0x100E) };
        assert_eq!(r.err(), Some(DriverError::NoMac), "{mac:02x?}");
    }
}

#[test]
fn a_device_stuck_on_dd_costs_one_ring_pass_per_poll_and_is_counted() {
    let fake = FakeE1000::new(Model::I8254x);
    let mut nic = driver(&fake, 0x100E, small_rings());
    fake.dd_stuck.set(true);
    fake.set_dd_everywhere();
    let mut buf = [0u8; 2048];
    assert_eq!(nic.receive(&mut buf), None);
    assert_eq!(nic.stats().device_faults, 1);
    assert_eq!(nic.receive(&mut buf), None);
    let s = nic.stats();
    assert_eq!((s.rx_packets, s.device_faults), (0, 2));
}
