//! The guest's ACPI tables, built from the guest's shape (ACPI 6.5 §5.2): RSDP, XSDT, a
//! hardware-reduced FADT with a reset register, sleep registers and the PM timer (the TSC's
//! calibration reference for Linux on AMD, `devices::pmtimer`), a small DSDT (COM1 and
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
/// The ACPI PM timer's DWORD port when the host has none to lend (`devices::pmtimer`).
pub const PM_TIMER_PORT: u16 = 0x608;
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

/// The guest's PM timer: its port, and whether that is the host's own timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmTimer {
    /// The DWORD port the FADT names.
    pub port: u16,
    /// The host's timer (from its FADT): a backend may let the guest read it directly (SVM
    /// does, `svm::hw::maps`); otherwise `devices::pmtimer` answers there from the TSC.
    pub host: bool,
}

/// The PM timer without the host's: emulated at [`PM_TIMER_PORT`].
pub const EMULATED_PM_TIMER: PmTimer = PmTimer { port: PM_TIMER_PORT, host: false };

/// Ports the guest's own devices answer on (`hv/devices.rs`): a host timer there is not lent.
const DEVICE_PORTS: [(u16, u16); 5] = [
    (0x3f8, 0x400),
    (SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT + 1),
    (RESET_PORT, RESET_PORT + 1),
    (0xf4, 0xf5),
    (0x64, 0x65),
];

/// The host's PM timer port from its FADT (ACPI 6.5 §5.2.9: X_PM_TMR_BLK in system I/O space,
/// else PM_TMR_BLK, with PM_TMR_LEN 4), if it has one: none in a hardware-reduced FADT, whose
/// PM fields an OS ignores, nor where the guest's own devices answer.
pub fn host_pm_timer(mem: &dyn crate::PhysRead, rsdp: u64) -> Option<u16> {
    let fadt = find_table(mem, rsdp, b"FACP")?;
    let len = mem.read_u32(fadt + 4).filter(|l| (116..=0x200).contains(l))?;
    let mut b = alloc::vec![0u8; len as usize];
    if !mem.read(fadt, &mut b) || b.iter().fold(0u8, |s, x| s.wrapping_add(*x)) != 0 {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if u32_at(112) & (1 << 20) != 0 || b[91] != 4 {
        return None;
    }
    let x = (b.len() >= 220 && b[208] == 1)
        .then(|| u64::from_le_bytes(b[212..220].try_into().unwrap_or([0; 8])))
        .filter(|a| *a != 0);
    let port = u16::try_from(x.unwrap_or(u64::from(u32_at(76)))).ok().filter(|p| *p != 0)?;
    let end = port.checked_add(4)?;
    DEVICE_PORTS.iter().all(|(a, b)| end <= *a || port >= *b).then_some(port)
}

/// The table with signature `sig` through the RSDP's XSDT (revision 2+) or RSDT.
fn find_table(mem: &dyn crate::PhysRead, rsdp: u64, sig: &[u8; 4]) -> Option<u64> {
    let mut rev = [0u8];
    mem.read(rsdp + 15, &mut rev).then_some(())?;
    let (root, entry) = match mem.read_u64(rsdp + 24) {
        Some(x) if rev[0] >= 2 && x != 0 => (x, 8),
        _ => (u64::from(mem.read_u32(rsdp + 16)?), 4),
    };
    let count = u64::from(mem.read_u32(root + 4)?).saturating_sub(36) / entry;
    (0..count.min(256)).find_map(|i| {
        let at = root + 36 + i * entry;
        let t = if entry == 8 { mem.read_u64(at)? } else { u64::from(mem.read_u32(at)?) };
        let mut s = [0u8; 4];
        (mem.read(t, &mut s) && &s == sig).then_some(t)
    })
}

/// This node's guest PM timer, chosen once: the host's when its FADT has one, else the
/// emulated one.
#[cfg(target_os = "none")]
pub fn pm_timer() -> PmTimer {
    static CHOSEN: spin::Once<PmTimer> = spin::Once::new();
    *CHOSEN.call_once(|| {
        // A dilated guest clock needs the emulated timer: the host's runs at the node's rate.
        let dilated = crate::hv::vm::dilation() > 1;
        let host = crate::acpi::find_rsdp(&HostMemory)
            .and_then(|r| host_pm_timer(&HostMemory, r))
            .filter(|_| !dilated);
        let t = host.map_or(EMULATED_PM_TIMER, |port| PmTimer { port, host: true });
        let whose = match (t.host, dilated) {
            (true, _) => "the host's",
            (false, true) => "emulated (the guest's clock is dilated)",
            (false, false) => "emulated (the host's FADT names none)",
        };
        crate::info!("hv: guest PM timer at port {:#x}: {whose}", t.port);
        t
    })
}

/// Host builds have no host tables: the emulated timer.
#[cfg(not(target_os = "none"))]
pub fn pm_timer() -> PmTimer {
    EMULATED_PM_TIMER
}

/// The host's firmware tables, read through the identity map between 4 KiB and 4 GiB (page 0,
/// with the EBDA pointer, is unmapped once the node runs: `find_rsdp` then scans the BIOS area).
#[cfg(target_os = "none")]
struct HostMemory;

#[cfg(target_os = "none")]
impl crate::PhysRead for HostMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else { return false };
        if addr < 0x1000 || end > 1 << 32 {
            return false;
        }
        // SAFETY: [addr, end) lies in the firmware's identity map (4 KiB to 4 GiB); the BIOS
        // area and the ACPI tables there are RAM or ROM the firmware never reuses.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }
}

fn fadt(dsdt: u64, pm: PmTimer) -> Vec<u8> {
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
    // The PM timer, 24 bits (TMR_VAL_EXT clear). The spec has an OS ignore the PM blocks of a
    // hardware-reduced FADT (§5.2.9); Linux reads this one regardless, as its only TSC
    // reference on AMD (`devices::pmtimer`), so both the 32-bit and the X field name it.
    f.pm_tmr_blk = u32::from(pm.port).into();
    f.pm_tmr_len = 4;
    f.x_pm_tmr_blk =
        GAS::new(AddressSpace::SystemIo, 32, 0, AccessSize::DwordAccess, u64::from(pm.port));
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"Gestalt\0").into();
    bytes_of(&f.finalize())
}

/// Builds the tables for a guest with these proximity domains (in node order; their vCPUs
/// numbered consecutively from 0), to be placed at `base`, with this node's [`pm_timer`].
pub fn build(domains: &[Domain], base: u64) -> Result<Tables, AcpiError> {
    build_with(domains, base, pm_timer())
}

/// [`build`] with the PM timer at `pm`.
pub fn build_with(domains: &[Domain], base: u64, pm: PmTimer) -> Result<Tables, AcpiError> {
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
    xsdt.add_entry(place(&mut out, &fadt(dsdt_at, pm)));
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
