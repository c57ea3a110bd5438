use std::collections::BTreeMap;

use super::*;
use crate::acpi::{find_madt, find_rsdp, madt_cpus};
use crate::testmem::FakeMem;
use crate::PhysRead;

fn two_nodes() -> [Domain; 2] {
    [
        Domain { first_vcpu: 0, vcpus: 2, ram_base: 0, ram_bytes: 64 << 20 },
        Domain { first_vcpu: 2, vcpus: 3, ram_base: 64 << 20, ram_bytes: 64 << 20 },
    ]
}

/// The tables placed in a fake guest memory, and every table the XSDT lists by signature
/// (each checked: length inside the block, checksum zero).
fn load(domains: &[Domain]) -> (FakeMem, BTreeMap<[u8; 4], Vec<u8>>) {
    let t = build(domains, BASE).unwrap();
    assert_eq!(t.rsdp, BASE);
    let mut mem = FakeMem::default();
    mem.put(BASE, &t.bytes);
    let rsdp = find_rsdp(&mem).expect("the RSDP is found by the BIOS-area scan");
    assert_eq!(rsdp, BASE);
    let sum = |b: &[u8]| b.iter().fold(0u8, |s, x| s.wrapping_add(*x));
    let mut r = [0u8; 36];
    assert!(mem.read(rsdp, &mut r));
    assert_eq!(sum(&r[..20]), 0, "RSDP checksum");
    assert_eq!(sum(&r), 0, "RSDP extended checksum");
    assert_eq!(r[15], 2, "revision 2: the XSDT is used");
    let table = |at: u64| {
        let len = mem.read_u32(at + 4).unwrap() as usize;
        let mut b = vec![0u8; len];
        assert!(mem.read(at, &mut b), "table at {at:#x} inside the block");
        assert_eq!(sum(&b), 0, "checksum of {:?}", core::str::from_utf8(&b[..4]));
        b
    };
    let xsdt = table(mem.read_u64(rsdp + 24).unwrap());
    assert_eq!(&xsdt[..4], b"XSDT");
    let mut all = BTreeMap::new();
    for e in xsdt[36..].chunks(8) {
        let t = table(u64::from_le_bytes(e.try_into().unwrap()));
        all.insert(t[..4].try_into().unwrap(), t);
    }
    let dsdt_at = u64::from_le_bytes(all[b"FACP"][140..148].try_into().unwrap());
    all.insert(*b"DSDT", table(dsdt_at));
    (mem, all)
}

/// The MADT's or SRAT's entries as (type, bytes), from `start`.
fn entries(t: &[u8], start: usize) -> Vec<(u8, &[u8])> {
    let mut v = Vec::new();
    let mut o = start;
    while o < t.len() {
        let len = usize::from(t[o + 1]);
        assert!(len >= 2 && o + len <= t.len());
        v.push((t[o], &t[o..o + len]));
        o += len;
    }
    v
}

fn u32_of(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_of(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn every_table_is_reachable_from_the_rsdp_with_valid_checksums() {
    let (_, all) = load(&two_nodes());
    let sigs: Vec<&[u8; 4]> = all.keys().collect();
    assert_eq!(sigs, [b"APIC", b"DSDT", b"FACP", b"SLIT", b"SRAT"]);
}

#[test]
fn the_madt_lists_one_enabled_x2apic_per_vcpu_for_the_firmwares_own_parser() {
    let (mem, all) = load(&two_nodes());
    let madt = find_madt(&mem, BASE).unwrap();
    let cpus = madt_cpus(&mem, madt).unwrap();
    let ids: Vec<u32> = cpus.cpus.iter().map(|c| c.apic_id).collect();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    let m = &all[b"APIC"];
    assert_eq!(u32_of(m, 36), LAPIC_GPA);
    assert_eq!(u32_of(m, 40) & 1, 0, "no 8259 pair");
    let e = entries(m, 44);
    let x2: Vec<(u32, u32, u32)> = e
        .iter()
        .filter(|e| e.0 == 9)
        .map(|(_, b)| (u32_of(b, 4), u32_of(b, 8), u32_of(b, 12)))
        .collect();
    assert_eq!(x2, (0..5).map(|i| (i, 1, i)).collect::<Vec<_>>(), "(id, enabled, uid)");
    let ioapic: Vec<&[u8]> = e.iter().filter(|e| e.0 == 1).map(|e| e.1).collect();
    assert_eq!(ioapic.len(), 1);
    assert_eq!((u32_of(ioapic[0], 4), u32_of(ioapic[0], 8)), (IOAPIC_GPA as u32, 0));
    let iso: Vec<&[u8]> = e.iter().filter(|e| e.0 == 2).map(|e| e.1).collect();
    assert_eq!((iso.len(), iso[0][3], u32_of(iso[0], 4)), (1, 0, 2), "IRQ 0 -> GSI 2");
    assert!(e.iter().any(|e| e.0 == 0xA && e.1[8] == 1), "NMI on LINT1");
}

#[test]
fn srat_puts_each_nodes_vcpus_and_ram_in_its_own_domain() {
    let (_, all) = load(&two_nodes());
    let s = &all[b"SRAT"];
    assert_eq!(u32_of(s, 36), 1);
    let e = entries(s, 48);
    let cpus: Vec<(u32, u32)> =
        e.iter().filter(|e| e.0 == 2).map(|(_, b)| (u32_of(b, 8), u32_of(b, 4))).collect();
    assert_eq!(cpus, [(0, 0), (1, 0), (2, 1), (3, 1), (4, 1)], "(x2APIC id, domain)");
    let mem: Vec<(u32, u64, u64, u32)> = e
        .iter()
        .filter(|e| e.0 == 1)
        .map(|(_, b)| (u32_of(b, 2), u64_of(b, 8), u64_of(b, 16), u32_of(b, 28)))
        .collect();
    assert_eq!(mem, [(0, 0, 64 << 20, 1), (1, 64 << 20, 64 << 20, 1)]);
}

#[test]
fn slit_is_local_ten_and_remote_farther() {
    let (_, all) = load(&two_nodes());
    let s = &all[b"SLIT"];
    assert_eq!(u64_of(s, 36), 2);
    assert_eq!(&s[44..48], &[10, REMOTE_DISTANCE, REMOTE_DISTANCE, 10]);
    let (_, one) = load(&two_nodes()[..1]);
    assert_eq!((u64_of(&one[b"SLIT"], 36), one[b"SLIT"][44]), (1, 10));
}

#[test]
fn fadt_is_hardware_reduced_with_reset_and_sleep_registers() {
    let (_, all) = load(&two_nodes());
    let f = &all[b"FACP"];
    let flags = u32_of(f, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    // Reset register GAS at 116: system I/O, 8 bits, port 0xCF9; value at 128.
    assert_eq!((f[116], f[117], u64_of(f, 120), f[128]), (1, 8, 0xCF9, RESET_VALUE));
    // Sleep control / status GAS at 244 / 256 (ACPI 5.0+).
    assert_eq!((f[244], u64_of(f, 248)), (1, u64::from(SLEEP_CONTROL_PORT)));
    assert_eq!((f[256], u64_of(f, 260)), (1, u64::from(SLEEP_STATUS_PORT)));
    assert_ne!(u16::from_le_bytes([f[109], f[110]]) & (1 << 5), 0, "no CMOS RTC");
}

#[test]
fn fadt_names_the_pm_timer_the_devices_answer_on_at_its_rate() {
    use crate::hv::devices::{pmtimer, Devices, Time};
    use crate::hv::IoDir;
    let (_, all) = load(&two_nodes());
    let f = &all[b"FACP"];
    // PM_TMR_BLK at 76, PM_TMR_LEN at 91, X_PM_TMR_BLK (GAS) at 208: system I/O, 32 bits,
    // DWORD access, the same port.
    let port = u32_of(f, 76);
    assert_eq!(f[91], 4);
    assert_eq!((f[208], f[209], f[210], f[211]), (1, 32, 0, 3));
    assert_eq!(u64_of(f, 212), u64::from(port));
    assert_eq!(u32_of(f, 112) & (1 << 8), 0, "TMR_VAL_EXT clear: 24 bits");
    // What Linux does with it: two reads one second of TSC apart.
    let mut d = Devices::default();
    let hz = 2_500_000_000;
    let mut at = |ticks| d.access_at(port as u16, 4, IoDir::In, 0, Time { ticks, hz }).0;
    let (a, b) = (at(7 * hz), at(8 * hz));
    assert_eq!(b.wrapping_sub(a) & 0xff_ffff, pmtimer::HZ as u32);
    assert!(d.unclaimed.ports.is_empty());
}

/// A host's tables: ours, with the FADT changed by `patch` (its checksum fixed after).
fn host(patch: impl Fn(&mut [u8])) -> (FakeMem, u64) {
    let mut t = build_with(&two_nodes(), BASE, EMULATED_PM_TIMER).unwrap();
    let xsdt = u64_of(&t.bytes, 24) - BASE;
    let fadt = (u64_of(&t.bytes, xsdt as usize + 36) - BASE) as usize;
    let len = u32_of(&t.bytes, fadt + 4) as usize;
    let f = &mut t.bytes[fadt..fadt + len];
    patch(f);
    f[9] = 0;
    f[9] = 0u8.wrapping_sub(f.iter().fold(0u8, |s, x| s.wrapping_add(*x)));
    let mut mem = FakeMem::default();
    mem.put(BASE, &t.bytes);
    (mem, BASE)
}

fn not_reduced(f: &mut [u8]) {
    f[114] &= !(1 << 4); // flags bit 20
}

#[test]
fn the_hosts_pm_timer_is_found_in_its_fadt_x_field_first() {
    let (mem, rsdp) = host(not_reduced);
    assert_eq!(host_pm_timer(&mem, rsdp), Some(PM_TIMER_PORT));
    let (mem, rsdp) = host(|f| {
        not_reduced(f);
        f[212..220].copy_from_slice(&0xb008u64.to_le_bytes());
    });
    assert_eq!(host_pm_timer(&mem, rsdp), Some(0xb008), "X_PM_TMR_BLK over PM_TMR_BLK");
    let (mem, rsdp) = host(|f| {
        not_reduced(f);
        f[208..220].fill(0);
    });
    assert_eq!(host_pm_timer(&mem, rsdp), Some(PM_TIMER_PORT), "PM_TMR_BLK without X field");
}

#[test]
fn no_host_timer_is_lent_from_a_reduced_odd_corrupt_or_clashing_fadt() {
    let (mem, rsdp) = host(|_| {});
    assert_eq!(host_pm_timer(&mem, rsdp), None, "hardware-reduced: PM fields ignored");
    let (mem, rsdp) = host(|f| {
        not_reduced(f);
        f[91] = 3;
    });
    assert_eq!(host_pm_timer(&mem, rsdp), None, "PM_TMR_LEN not 4");
    let (mem, rsdp) = host(|f| {
        not_reduced(f);
        f[208..220].fill(0);
        f[76..80].copy_from_slice(&0x3fcu32.to_le_bytes());
    });
    assert_eq!(host_pm_timer(&mem, rsdp), None, "where COM1 answers");
    let (mem, rsdp) = host(|f| {
        not_reduced(f);
        f[76..80].fill(0);
        f[208..220].fill(0);
    });
    assert_eq!(host_pm_timer(&mem, rsdp), None, "no port");
    let (mut mem, rsdp) = host(not_reduced);
    let fadt = mem.read_u64(fadt_entry(&mem, rsdp)).unwrap();
    mem.put(fadt + 100, &[0x5a]);
    assert_eq!(host_pm_timer(&mem, rsdp), None, "bad checksum");
}

/// Where the XSDT's first entry (the FADT's address) is.
fn fadt_entry(mem: &FakeMem, rsdp: u64) -> u64 {
    mem.read_u64(rsdp + 24).unwrap() + 36
}

#[test]
fn the_fadt_names_the_hosts_timer_when_it_lends_one() {
    let host = PmTimer { port: 0xb008, host: true };
    let t = build_with(&two_nodes(), BASE, host).unwrap();
    let mut mem = FakeMem::default();
    mem.put(BASE, &t.bytes);
    let fadt = mem.read_u64(fadt_entry(&mem, BASE)).unwrap();
    assert_eq!(mem.read_u32(fadt + 76), Some(0xb008));
    assert_eq!(mem.read_u64(fadt + 212), Some(0xb008));
}

#[test]
fn dsdt_names_com1_with_irq_4_and_s5() {
    let (_, all) = load(&two_nodes());
    let d = &all[b"DSDT"];
    let has = |pat: &[u8]| d.windows(pat.len()).any(|w| w == pat);
    // EISA id PNP0501 as AML DWord (0x0C prefix), the extended IRQ descriptor with GSI 4.
    assert!(has(&[0x0C, 0x41, 0xD0, 0x05, 0x01]));
    assert!(has(&[0x89, 6, 0, 0x03, 1, 4, 0, 0, 0]));
    assert!(has(&[0x47, 1, 0xF8, 0x03, 0xF8, 0x03, 0, 8]), "IO 0x3f8, 8 ports");
    assert!(has(b"COM1") && has(b"_S5_"));
}

#[test]
fn an_empty_guest_has_no_tables_and_a_huge_one_does_not_overflow_the_room() {
    assert_eq!(build(&[], BASE), Err(AcpiError::Empty));
    let huge = [Domain { first_vcpu: 0, vcpus: 4000, ram_base: 0, ram_bytes: 1 << 30 }];
    assert!(matches!(build(&huge, BASE), Err(AcpiError::TooBig(_))));
    let big = [Domain { first_vcpu: 0, vcpus: 512, ram_base: 0, ram_bytes: 1 << 30 }];
    assert!(build(&big, BASE).unwrap().bytes.len() <= ROOM);
}
