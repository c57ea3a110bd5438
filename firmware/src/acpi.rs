//! ACPI discovery: the RSDP in the BIOS areas, the RSDT/XSDT, and the MADT's list of
//! processors (ACPI 6.5 §5.2.5, §5.2.7–8, §5.2.12). Reads go through [`PhysRead`].

use heapless::Vec;

use crate::PhysRead;

/// Most CPUs a node brings up (and runs vCPUs on); the MADT's others stay offline, counted.
pub const MAX_CPUS: usize = 512;

/// The processors of a MADT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Madt {
    /// The first [`MAX_CPUS`] enabled processors, in table order.
    pub cpus: Vec<Cpu, MAX_CPUS>,
    /// Enabled processors beyond [`MAX_CPUS`], left offline.
    pub beyond: u32,
}

/// A processor the MADT lists as usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Its local APIC id (x2APIC id for type-9 entries).
    pub apic_id: u32,
}

/// Why there is no CPU list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No "RSD PTR " in the EBDA or 0xE0000–0xFFFFF.
    NoRsdp,
    /// No MADT ("APIC") in the RSDT/XSDT.
    NoMadt,
    /// A table's checksum or length is wrong.
    BadTable(&'static str),
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiError::NoRsdp => write!(f, "no ACPI RSDP found"),
            AcpiError::NoMadt => write!(f, "no MADT (APIC table) in the ACPI tables"),
            AcpiError::BadTable(t) => write!(f, "ACPI table {t} is corrupt"),
        }
    }
}

fn checksum_ok(mem: &dyn PhysRead, addr: u64, len: u64) -> bool {
    let mut sum = 0u8;
    let mut buf = [0u8; 64];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(64) as usize;
        if !mem.read(addr + off, &mut buf[..n]) {
            return false;
        }
        sum = buf[..n].iter().fold(sum, |s, b| s.wrapping_add(*b));
        off += n as u64;
    }
    sum == 0
}

/// Finds the RSDP: first KiB of the EBDA, then the BIOS area (ACPI 6.5 §5.2.5.1).
pub fn find_rsdp(mem: &dyn PhysRead) -> Option<u64> {
    let mut seg = [0u8; 2];
    let ebda = if mem.read(0x40e, &mut seg) { u64::from(u16::from_le_bytes(seg)) << 4 } else { 0 };
    let areas = [(ebda, ebda + 1024), (0xE_0000, 0x10_0000)];
    for (start, end) in areas.into_iter().filter(|(s, _)| *s != 0) {
        let mut a = start;
        while a < end {
            let mut sig = [0u8; 8];
            if mem.read(a, &mut sig) && &sig == b"RSD PTR " && checksum_ok(mem, a, 20) {
                return Some(a);
            }
            a += 16;
        }
    }
    None
}

fn sdt_signature(mem: &dyn PhysRead, addr: u64) -> Option<([u8; 4], u32)> {
    let mut sig = [0u8; 4];
    mem.read(addr, &mut sig).then_some(())?;
    Some((sig, mem.read_u32(addr + 4)?))
}

/// Finds the MADT through the RSDP's XSDT (revision ≥ 2) or RSDT.
pub fn find_madt(mem: &dyn PhysRead, rsdp: u64) -> Result<u64, AcpiError> {
    let mut rev = [0u8];
    if !mem.read(rsdp + 15, &mut rev) {
        return Err(AcpiError::BadTable("RSDP"));
    }
    let (root, entry) = match mem.read_u64(rsdp + 24) {
        Some(x) if rev[0] >= 2 && x != 0 => (x, 8),
        _ => (u64::from(mem.read_u32(rsdp + 16).ok_or(AcpiError::BadTable("RSDP"))?), 4),
    };
    let (_, len) = sdt_signature(mem, root).ok_or(AcpiError::BadTable("RSDT"))?;
    if len < 36 || !checksum_ok(mem, root, u64::from(len)) {
        return Err(AcpiError::BadTable("RSDT"));
    }
    let count = (u64::from(len) - 36) / entry;
    for i in 0..count {
        let at = root + 36 + i * entry;
        let table = if entry == 8 { mem.read_u64(at) } else { mem.read_u32(at).map(u64::from) };
        let Some(table) = table else { continue };
        if let Some((sig, len)) = sdt_signature(mem, table) {
            if &sig == b"APIC" {
                if !checksum_ok(mem, table, u64::from(len)) {
                    return Err(AcpiError::BadTable("MADT"));
                }
                return Ok(table);
            }
        }
    }
    Err(AcpiError::NoMadt)
}

/// The enabled processors of the MADT at `madt` (types 0 and 9, flags bit 0).
pub fn madt_cpus(mem: &dyn PhysRead, madt: u64) -> Result<Madt, AcpiError> {
    let len = u64::from(mem.read_u32(madt + 4).ok_or(AcpiError::BadTable("MADT"))?);
    let mut cpus = Vec::new();
    let mut beyond = 0u32;
    let mut off = 44;
    while off + 2 <= len {
        let mut h = [0u8; 2];
        if !mem.read(madt + off, &mut h) || h[1] < 2 {
            return Err(AcpiError::BadTable("MADT"));
        }
        let e = madt + off;
        let cpu = match (h[0], h[1]) {
            (0, 8) => {
                let mut b = [0u8; 8];
                mem.read(e, &mut b).then_some(()).ok_or(AcpiError::BadTable("MADT"))?;
                (u32::from_le_bytes([b[4], b[5], b[6], b[7]]) & 1 != 0).then_some(u32::from(b[3]))
            }
            (9, 16) => {
                let id = mem.read_u32(e + 4).ok_or(AcpiError::BadTable("MADT"))?;
                let flags = mem.read_u32(e + 8).ok_or(AcpiError::BadTable("MADT"))?;
                (flags & 1 != 0).then_some(id)
            }
            _ => None,
        };
        if let Some(apic_id) = cpu {
            if !cpus.iter().any(|c: &Cpu| c.apic_id == apic_id)
                && cpus.push(Cpu { apic_id }).is_err()
            {
                beyond = beyond.saturating_add(1);
            }
        }
        off += u64::from(h[1]);
    }
    Ok(Madt { cpus, beyond })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmem::FakeMem;

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let s = t.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        t[at] = 0u8.wrapping_sub(s);
    }

    fn sdt(sig: &[u8; 4], body: &[u8]) -> std::vec::Vec<u8> {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    fn machine() -> FakeMem {
        let mut m = FakeMem::default();
        m.put(0x40e, &[0, 0]); // no EBDA
        for a in (0xE_0000..0x10_0000).step_by(16) {
            m.put(a, &[0; 8]);
        }
        let mut rsdp = b"RSD PTR ".to_vec();
        rsdp.extend_from_slice(&[0, b'B', b'O', b'C', b'H', b'S', b' ', 0]);
        rsdp.extend_from_slice(&0x1000u32.to_le_bytes());
        fix_checksum(&mut rsdp[..20], 8);
        m.put(0xF_5A40, &rsdp);
        m.put(0x1000, &sdt(b"RSDT", &[0x00, 0x20, 0, 0, 0x00, 0x30, 0, 0]));
        m.put(0x2000, &sdt(b"FACP", &[0; 8]));
        let mut madt = vec![0u8; 8]; // local APIC address + flags
        madt.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]); // cpu apic 0 enabled
        madt.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]); // IOAPIC
        madt.extend_from_slice(&[0, 8, 1, 1, 1, 0, 0, 0]); // cpu apic 1 enabled
        madt.extend_from_slice(&[0, 8, 2, 2, 0, 0, 0, 0]); // cpu apic 2 disabled
        madt.extend_from_slice(&[9, 16, 0, 0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]); // x2apic 0x107
        m.put(0x3000, &sdt(b"APIC", &madt));
        m
    }

    #[test]
    fn enabled_processors_are_found_through_rsdp_rsdt_and_madt() {
        let m = machine();
        let rsdp = find_rsdp(&m).unwrap();
        assert_eq!(rsdp, 0xF_5A40);
        let madt = find_madt(&m, rsdp).unwrap();
        let found = madt_cpus(&m, madt).unwrap();
        let ids: std::vec::Vec<u32> = found.cpus.iter().map(|c| c.apic_id).collect();
        assert_eq!(ids, vec![0, 1, 0x107]);
        assert_eq!(found.beyond, 0);
    }

    #[test]
    fn processors_beyond_the_limit_are_counted_not_dropped_silently() {
        let mut m = FakeMem::default();
        let mut madt = vec![0u8; 8];
        let total = MAX_CPUS as u32 + 88;
        for id in 0..total {
            let mut e = vec![9, 16, 0, 0];
            e.extend_from_slice(&(id * 3).to_le_bytes()); // x2APIC ids well above 255
            e.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
            madt.extend_from_slice(&e);
        }
        m.put(0x3000, &sdt(b"APIC", &madt));
        let found = madt_cpus(&m, 0x3000).unwrap();
        assert_eq!(found.cpus.len(), MAX_CPUS);
        assert_eq!(found.beyond, 88);
        assert_eq!(found.cpus[300].apic_id, 900);
    }

    #[test]
    fn corrupt_tables_are_errors() {
        let mut m = machine();
        m.put(0x3000 + 40, &[0xff]); // breaks the MADT checksum
        let rsdp = find_rsdp(&m).unwrap();
        assert_eq!(find_madt(&m, rsdp), Err(AcpiError::BadTable("MADT")));
        let mut m = machine();
        m.put(0x3000 + 45, &[0]); // zero-length entry
        assert_eq!(madt_cpus(&m, 0x3000), Err(AcpiError::BadTable("MADT")));
        assert_eq!(find_rsdp(&FakeMem::default()), None);
    }
}
