//! The guest's ACPI tables, built from the guest's shape (ACPI 6.5 §5.2): RSDP, XSDT, a
//! hardware-reduced FADT with a reset register and sleep registers, a small DSDT (COM1 and
//! `_S5`), the MADT (an x2APIC entry per vCPU, the I/O APIC, the ISA timer override, the NMI
//! line), and SRAT/SLIT with one proximity domain per node. rust-vmm's `acpi_tables` builds
//! the tables; its MADT and SRAT lack the x86 x2APIC structures, so those two are filled in
//! through its generic `Sdt` with the entries packed here.

use alloc::vec::Vec;
use core::fmt;

use acpi_tables::aml::{self, Device, EISAName, Name, Package, ResourceTemplate, Scope};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::slit::SLIT;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

/// Where the tables go: the reserved BIOS area (an OS also finds the RSDP there by scanning).
pub const BASE: u64 = 0xE_0000;
/// Room for them (to 1 MiB).
pub const ROOM: usize = 0x2_0000;
/// The I/O APIC's MMIO page.
pub const IOAPIC_GPA: u64 = 0xFEC0_0000;
/// The local APIC's (x2APIC) address the MADT names.
pub const LAPIC_GPA: u32 = 0xFEE0_0000;
/// The hardware-reduced sleep control register (a port; `SLP_TYP << 2 | SLP_EN` ends the guest).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The sleep status register (reads 0x80, WAK_STS, after any sleep request).
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// The reset register: port 0xCF9 (the PCI reset control), value 6 (hard reset).
pub const RESET_PORT: u16 = 0xCF9;
/// The value written to it.
pub const RESET_VALUE: u8 = 6;
/// `_S5`'s SLP_TYP.
pub const S5_TYPE: u8 = 5;
/// SLIT distance between two nodes (10 is local; remote pages cost a network round trip).
pub const REMOTE_DISTANCE: u8 = 40;
/// COM1's ISA IRQ (= GSI, no override).
pub const COM1_IRQ: u32 = 4;

const OEM_ID: [u8; 6] = *b"GSTALT";
const OEM_TABLE: [u8; 8] = *b"GESTALT1";
const OEM_REV: u32 = 1;

/// One proximity domain: a node's vCPUs (x2APIC ids) and its home range of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain {
    /// First vCPU (= x2APIC id).
    pub first_vcpu: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// First byte of its RAM.
    pub ram_base: u64,
    /// Bytes of RAM.
    pub ram_bytes: u64,
}

/// Why no tables were built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No domain, or a domain without vCPUs.
    Empty,
    /// The tables need more bytes than [`ROOM`].
    TooBig(usize),
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::Empty => write!(f, "the guest has no vCPUs to describe"),
            AcpiError::TooBig(n) => {
                write!(f, "the guest's ACPI tables need {n} bytes, more than {ROOM}")
            }
        }
    }
}

/// The tables as one block to copy to [`BASE`]; the RSDP is at its start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The RSDP's guest-physical address.
    pub rsdp: u64,
}

fn bytes_of(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn dsdt() -> Vec<u8> {
    let hid = EISAName::new("PNP0501");
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let io = aml::IO::new(0x3f8, 0x3f8, 0, 8);
    let crs = ResourceTemplate::new(alloc::vec![&io, &irq]);
    let (n_hid, n_uid, n_crs) = (
        Name::new("_HID".into(), &hid),
        Name::new("_UID".into(), &0u8),
        Name::new("_CRS".into(), &crs),
    );
    let com1 = Device::new("COM1".into(), alloc::vec![&n_hid, &n_uid, &n_crs]);
    let sb = Scope::new("\\_SB_".into(), alloc::vec![&com1]);
    let (t, z) = (S5_TYPE, 0u8);
    let s5 = Name::new("_S5_".into(), &Package::new(alloc::vec![&t, &t, &z, &z]));
    let mut sdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE, OEM_REV);
    sdt.append_slice(&bytes_of(&sb));
    sdt.append_slice(&bytes_of(&s5));
    sdt.as_slice().to_vec()
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE, OEM_REV);
    // Local interrupt controller address; flags 0: no dual 8259 (PCAT_COMPAT clear).
    sdt.write_u32(36, LAPIC_GPA);
    let mut e = Vec::new();
    // I/O APIC (§5.2.12.3): id 0, address, GSI base 0.
    e.extend_from_slice(&[1, 12, 0, 0]);
    e.extend_from_slice(&(IOAPIC_GPA as u32).to_le_bytes());
    e.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source override (§5.2.12.5): ISA IRQ 0 is GSI 2, bus-conforming flags.
    e.extend_from_slice(&[2, 10, 0, 0]);
    e.extend_from_slice(&2u32.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    // Processor local x2APIC (§5.2.12.12): id = UID = vCPU index, enabled.
    for id in 0..vcpus {
        e.extend_from_slice(&[9, 16, 0, 0]);
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&id.to_le_bytes());
    }
    // Local x2APIC NMI (§5.2.12.13): every processor, LINT1.
    e.extend_from_slice(&[0xA, 12, 0, 0]);
    e.extend_from_slice(&u32::MAX.to_le_bytes());
    e.extend_from_slice(&[1, 0, 0, 0]);
    sdt.append_slice(&e);
    sdt.as_slice().to_vec()
}

fn srat(domains: &[Domain]) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"SRAT", 48, 3, OEM_ID, OEM_TABLE, OEM_REV);
    sdt.write_u32(36, 1); // reserved, 1 for compatibility (§5.2.16)
    let mut e = Vec::new();
    for (pxm, d) in domains.iter().enumerate() {
        let pxm = pxm as u32;
        // Processor local x2APIC affinity (§5.2.16.3).
        for id in d.first_vcpu..d.first_vcpu + d.vcpus {
            e.extend_from_slice(&[2, 24, 0, 0]);
            e.extend_from_slice(&pxm.to_le_bytes());
            e.extend_from_slice(&id.to_le_bytes());
            e.extend_from_slice(&1u32.to_le_bytes());
            e.extend_from_slice(&pxm.to_le_bytes()); // clock domain
            e.extend_from_slice(&0u32.to_le_bytes());
        }
        // Memory affinity (§5.2.16.2), enabled.
        if d.ram_bytes > 0 {
            e.extend_from_slice(&[1, 40]);
            e.extend_from_slice(&pxm.to_le_bytes());
            e.extend_from_slice(&0u16.to_le_bytes());
            e.extend_from_slice(&d.ram_base.to_le_bytes());
            e.extend_from_slice(&d.ram_bytes.to_le_bytes());
            e.extend_from_slice(&0u32.to_le_bytes());
            e.extend_from_slice(&1u32.to_le_bytes());
            e.extend_from_slice(&0u64.to_le_bytes());
        }
    }
    sdt.append_slice(&e);
    sdt.as_slice().to_vec()
}

fn slit(n: usize) -> Vec<u8> {
    let mut s = SLIT::new(OEM_ID, OEM_TABLE, OEM_REV, n as u32);
    for a in 0..n {
        for b in a + 1..n {
            s.set_distance(a, b, REMOTE_DISTANCE);
        }
    }
    bytes_of(&s)
}

fn io_gas(port: u16) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(port))
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE, OEM_REV)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::Headless);
    // IA-PC boot architecture flags (§5.2.9.3): no VGA (2), no MSI (3), no CMOS RTC (5); no
    // legacy devices and no 8042 (bits 0, 1 clear).
    f.iapc_boot_arch = ((1u16 << 2) | (1 << 3) | (1 << 5)).into();
    f.reset_reg = io_gas(RESET_PORT);
    f.reset_value = RESET_VALUE;
    f.sleep_control_reg = io_gas(SLEEP_CONTROL_PORT);
    f.sleep_status_reg = io_gas(SLEEP_STATUS_PORT);
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"Gestalt\0").into();
    bytes_of(&f.finalize())
}

/// Builds the tables for a guest with these proximity domains (in node order; their vCPUs
/// numbered consecutively from 0), to be placed at `base`.
pub fn build(domains: &[Domain], base: u64) -> Result<Tables, AcpiError> {
    let vcpus: u32 = domains.iter().map(|d| d.vcpus).sum();
    if domains.is_empty() || vcpus == 0 {
        return Err(AcpiError::Empty);
    }
    let mut out = alloc::vec![0u8; Rsdp::len()];
    let place = |out: &mut Vec<u8>, t: &[u8]| {
        out.resize(out.len().next_multiple_of(16), 0);
        let at = base + out.len() as u64;
        out.extend_from_slice(t);
        at
    };
    let dsdt_at = place(&mut out, &dsdt());
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, OEM_REV);
    xsdt.add_entry(place(&mut out, &fadt(dsdt_at)));
    xsdt.add_entry(place(&mut out, &madt(vcpus)));
    xsdt.add_entry(place(&mut out, &srat(domains)));
    xsdt.add_entry(place(&mut out, &slit(domains.len())));
    let xsdt_at = place(&mut out, &bytes_of(&xsdt));
    out[..Rsdp::len()].copy_from_slice(&bytes_of(&Rsdp::new(OEM_ID, xsdt_at)));
    if out.len() > ROOM {
        return Err(AcpiError::TooBig(out.len()));
    }
    Ok(Tables { bytes: out, rsdp: base })
}

#[cfg(test)]
mod tests;
