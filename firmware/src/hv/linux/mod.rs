//! The Linux x86 boot protocol's pure half (Documentation/arch/x86/boot.rst, "The Linux/x86
//! Boot Protocol", version 2.06 and later): recognises a bzImage by its setup header, lays out
//! the kernel, boot_params (the "zero page"), the command line and an initrd in guest RAM, and
//! builds boot_params with the setup header copied, an e820 map of the guest's RAM and the
//! RSDP address, and puts a reset stub at the reset vector (a restart through the BIOS
//! resets). A kernel that has the 64-bit entry (`XLF_KERNEL_64`) is entered at `startup_64` in
//! long mode through [`long`]'s trampoline and identity page tables; any other through the
//! 32-bit protocol (protected mode, paging off, ESI = boot_params at `code32_start`).

use alloc::borrow::Cow;
use alloc::vec::Vec;
use core::fmt;

use super::acpi;

pub mod long;

/// Where the setup header starts in the image and in boot_params.
const HDR: usize = 0x1f1;
/// "HdrS" at 0x202.
const HDR_MAGIC: u32 = 0x5372_6448;
/// Oldest protocol accepted: 2.06 gives `cmdline_size` (and 2.03 `initrd_addr_max`).
pub const MIN_VERSION: u16 = 0x0206;
/// loadflags bit 0: the protected-mode kernel loads at 0x100000 (a bzImage).
const LOADED_HIGH: u8 = 1 << 0;
/// xloadflags (0x236, protocol 2.12) bit 0: the kernel has the 64-bit entry at offset 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;
/// Most e820 entries boot_params holds.
pub const E820_MAX: usize = 128;
/// boot_params' size.
pub const ZERO_PAGE: usize = 4096;

/// Guest-physical placements below 1 MiB: boot_params, then the command line (both in RAM the
/// kernel copies from before it reuses low memory), then the legacy hole for the ACPI tables.
pub const BOOT_PARAMS_GPA: u64 = 0x7000;
/// The command line.
pub const CMDLINE_GPA: u64 = 0x8000;
/// Room for the command line (up to the legacy hole's start the e820 keeps as RAM).
pub const CMDLINE_ROOM: usize = 0x1000;
/// Start of the reserved legacy hole (RAM below it stays usable for the AP trampoline).
pub const LOW_RAM_END: u64 = 0x9f000;
/// The protected-mode kernel's classic load address.
pub const HIGH: u64 = 0x10_0000;
/// The reset vector, F000:FFF0 (SDM Vol. 3A §9.1.4): where a guest that restarts "through the
/// BIOS" jumps in real mode.
pub const RESET_VECTOR_GPA: u64 = 0xF_FFF0;

/// Why an image is not a bootable bzImage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxError {
    /// No "HdrS" setup header with the 0xAA55 boot flag.
    NotBzImage,
    /// Protocol version too old (the version found).
    TooOld(u16),
    /// A zImage (loaded low), not a bzImage.
    NotHigh,
    /// The setup sectors or the header point outside the file.
    Truncated,
    /// The kernel's working size does not fit the guest RAM below `initrd_addr_max`.
    NoRoom,
    /// The initrd does not fit between the kernel and `initrd_addr_max`.
    InitrdNoRoom,
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinuxError::NotBzImage => write!(f, "no Linux setup header (HdrS, 0xAA55)"),
            LinuxError::TooOld(v) => write!(
                f,
                "boot protocol {}.{:02} is older than {}.{:02}",
                v >> 8,
                v & 0xff,
                MIN_VERSION >> 8,
                MIN_VERSION & 0xff
            ),
            LinuxError::NotHigh => write!(f, "a zImage (loaded below 1 MiB), not a bzImage"),
            LinuxError::Truncated => write!(f, "the image ends inside its setup code or header"),
            LinuxError::NoRoom => write!(f, "the kernel's init_size does not fit the guest RAM"),
            LinuxError::InitrdNoRoom => {
                write!(f, "the initrd does not fit below initrd_addr_max above the kernel")
            }
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// A parsed bzImage: the fields of its setup header the loader uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BzImage {
    /// Protocol version (0x0206 = 2.06).
    pub version: u16,
    /// Offset of the protected-mode kernel in the file: (setup_sects + 1) * 512.
    pub kernel_offset: usize,
    /// Bytes of the protected-mode kernel.
    pub kernel_len: usize,
    /// Highest address an initrd may occupy (inclusive).
    pub initrd_addr_max: u32,
    /// Alignment a relocatable kernel needs.
    pub kernel_alignment: u32,
    /// The kernel may be loaded at any aligned address.
    pub relocatable: bool,
    /// Longest command line without its NUL.
    pub cmdline_size: u32,
    /// Preferred load address (2.10+; 0x100000 before).
    pub pref_address: u64,
    /// Bytes the kernel needs from its load address while it decompresses (2.10+).
    pub init_size: u32,
    /// The setup header, bytes 0x1f1 up to its end (0x202 + the byte at 0x201).
    pub header: Vec<u8>,
    /// The kernel has the 64-bit entry (protocol 2.12+, `XLF_KERNEL_64`).
    pub kernel_64: bool,
}

/// True when `image` starts like a bzImage (its setup header magic), whatever its version.
pub fn is_bzimage(image: &[u8]) -> bool {
    u16_at(image, 0x1fe) == Some(0xAA55) && u32_at(image, 0x202) == Some(HDR_MAGIC)
}

/// Parses a bzImage's setup header.
pub fn parse(image: &[u8]) -> Result<BzImage, LinuxError> {
    if !is_bzimage(image) {
        return Err(LinuxError::NotBzImage);
    }
    let t = LinuxError::Truncated;
    let version = u16_at(image, 0x206).ok_or(t)?;
    if version < MIN_VERSION {
        return Err(LinuxError::TooOld(version));
    }
    if image.get(0x211).ok_or(t)? & LOADED_HIGH == 0 {
        return Err(LinuxError::NotHigh);
    }
    let sects = match *image.get(HDR).ok_or(t)? {
        0 => 4,
        n => usize::from(n),
    };
    let kernel_offset = (sects + 1) * 512;
    let hdr_end = 0x202 + usize::from(*image.get(0x201).ok_or(t)?);
    if kernel_offset >= image.len() || hdr_end > kernel_offset {
        return Err(t);
    }
    let v210 = version >= 0x020a;
    Ok(BzImage {
        version,
        kernel_offset,
        kernel_len: image.len() - kernel_offset,
        initrd_addr_max: u32_at(image, 0x22c).ok_or(t)?,
        kernel_alignment: u32_at(image, 0x230).ok_or(t)?.max(1),
        relocatable: *image.get(0x234).ok_or(t)? != 0,
        cmdline_size: u32_at(image, 0x238).ok_or(t)?,
        pref_address: if v210 { u64_at(image, 0x258).ok_or(t)? } else { HIGH },
        init_size: if v210 { u32_at(image, 0x260).ok_or(t)? } else { 0 },
        header: image[HDR..hdr_end].to_vec(),
        kernel_64: version >= 0x020c
            && hdr_end >= 0x238
            && u16_at(image, 0x236).ok_or(t)? & XLF_KERNEL_64 != 0,
    })
}

/// Where everything goes in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The protected-mode kernel (its 32-bit entry point).
    pub kernel: u64,
    /// boot_params.
    pub boot_params: u64,
    /// The command line.
    pub cmdline: u64,
    /// The initrd (start, bytes), if any.
    pub initrd: Option<(u64, u64)>,
}

/// Places the kernel and an initrd of `initrd_len` bytes in a guest with `ram` bytes of RAM
/// at guest-physical 0. The kernel goes to its preferred address when it fits (else to
/// 1 MiB), the initrd as high as `initrd_addr_max` and RAM allow, page-aligned, above the
/// kernel's working area (`init_size`).
pub fn plan(b: &BzImage, ram: u64, initrd_len: Option<u64>) -> Result<Layout, LinuxError> {
    let need = u64::from(b.init_size).max(b.kernel_len as u64);
    let fits = |at: u64| at >= HIGH && at.checked_add(need).is_some_and(|e| e <= ram);
    let align = u64::from(b.kernel_alignment);
    let kernel = if b.relocatable && fits(b.pref_address) && b.pref_address.is_multiple_of(align) {
        b.pref_address
    } else if fits(HIGH) {
        HIGH
    } else {
        return Err(LinuxError::NoRoom);
    };
    let initrd = match initrd_len {
        None | Some(0) => None,
        Some(len) => {
            let top = ram.min(u64::from(b.initrd_addr_max) + 1);
            let start = top.checked_sub(len).ok_or(LinuxError::InitrdNoRoom)? & !0xfff;
            if start < kernel + need {
                return Err(LinuxError::InitrdNoRoom);
            }
            Some((start, len))
        }
    };
    Ok(Layout { kernel, boot_params: BOOT_PARAMS_GPA, cmdline: CMDLINE_GPA, initrd })
}

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820 {
    /// Start.
    pub addr: u64,
    /// Bytes.
    pub size: u64,
    /// Type ([`E820_RAM`], [`E820_RESERVED`]).
    pub kind: u32,
}

/// The e820 map of a guest whose RAM is `[0, ram)`: RAM below the legacy hole (the kernel
/// puts its AP trampoline there), the hole reserved (the ACPI tables live in it), RAM above
/// 1 MiB. Nothing above `ram` is listed: the MMIO hole (I/O APIC, local APIC) is not RAM.
pub fn e820(ram: u64) -> Vec<E820> {
    let mut v = alloc::vec![
        E820 { addr: 0, size: LOW_RAM_END, kind: E820_RAM },
        E820 { addr: LOW_RAM_END, size: HIGH - LOW_RAM_END, kind: E820_RESERVED },
    ];
    if ram > HIGH {
        v.push(E820 { addr: HIGH, size: ram - HIGH, kind: E820_RAM });
    }
    v
}

/// Byte offsets in boot_params (arch/x86/include/uapi/asm/bootparam.h).
mod off {
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const E820_TABLE: usize = 0x2d0;
}

/// The command line as placed: cut to the kernel's `cmdline_size` and the room at
/// [`CMDLINE_GPA`], NUL-terminated.
pub fn cmdline_bytes(b: &BzImage, cmdline: &str) -> Vec<u8> {
    let max = (b.cmdline_size as usize).min(CMDLINE_ROOM - 1);
    cmdline.bytes().take(max).chain(core::iter::once(0)).collect()
}

/// boot_params for the kernel laid out by `l` in a guest of `ram` bytes, with the RSDP at
/// `rsdp`: zeroed, the image's setup header copied in, then the loader's fields (type
/// 0xFF = an unregistered loader; boot.rst "Details of header fields").
pub fn boot_params(b: &BzImage, l: &Layout, ram: u64, rsdp: u64) -> Vec<u8> {
    let mut p = alloc::vec![0u8; ZERO_PAGE];
    p[HDR..HDR + b.header.len()].copy_from_slice(&b.header);
    let put32 = |p: &mut Vec<u8>, o: usize, v: u32| p[o..o + 4].copy_from_slice(&v.to_le_bytes());
    p[off::TYPE_OF_LOADER] = 0xff;
    // Keep LOADED_HIGH; clear CAN_USE_HEAP (no real-mode setup runs) and KEEP_SEGMENTS.
    p[off::LOADFLAGS] = (p[off::LOADFLAGS] | LOADED_HIGH) & !((1 << 6) | (1 << 7));
    put32(&mut p, off::CODE32_START, l.kernel as u32);
    put32(&mut p, off::CMD_LINE_PTR, l.cmdline as u32);
    put32(&mut p, off::EXT_CMD_LINE_PTR, (l.cmdline >> 32) as u32);
    if let Some((at, len)) = l.initrd {
        put32(&mut p, off::RAMDISK_IMAGE, at as u32);
        put32(&mut p, off::RAMDISK_SIZE, len as u32);
        put32(&mut p, off::EXT_RAMDISK_IMAGE, (at >> 32) as u32);
        put32(&mut p, off::EXT_RAMDISK_SIZE, (len >> 32) as u32);
    }
    p[off::ACPI_RSDP_ADDR..off::ACPI_RSDP_ADDR + 8].copy_from_slice(&rsdp.to_le_bytes());
    let map = e820(ram);
    p[off::E820_ENTRIES] = map.len().min(E820_MAX) as u8;
    for (i, e) in map.iter().take(E820_MAX).enumerate() {
        let o = off::E820_TABLE + 20 * i;
        p[o..o + 8].copy_from_slice(&e.addr.to_le_bytes());
        p[o + 8..o + 16].copy_from_slice(&e.size.to_le_bytes());
        put32(&mut p, o + 16, e.kind);
    }
    p
}

/// What the guest finds at the reset vector: real-mode code that writes the FADT's reset
/// value to its reset register, as a PC's BIOS would reset the machine. Linux on a
/// hardware-reduced ACPI machine restarts through EFI, and without EFI through the BIOS
/// (`machine_real_restart`, arch/x86/kernel/reboot.c) rather than the reset register.
pub fn reset_stub() -> [u8; 9] {
    let [lo, hi] = acpi::RESET_PORT.to_le_bytes();
    [
        0xB0,
        acpi::RESET_VALUE, // mov al, RESET_VALUE
        0xBA,
        lo,
        hi,   // mov dx, RESET_PORT
        0xEE, // out dx, al
        0xF4, // hlt
        0xEB,
        0xFD, // jmp back to the hlt
    ]
}

/// A Linux guest ready to copy into RAM and enter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot<'a> {
    /// Where the first vCPU starts in flat 32-bit protected mode with ESI =
    /// [`Boot::boot_params`]: the 32-bit entry (`code32_start`), or the trampoline to the
    /// 64-bit entry.
    pub entry: u32,
    /// The kernel is entered at `startup_64` in long mode (through the trampoline).
    pub long_mode: bool,
    /// boot_params' guest-physical address.
    pub boot_params: u64,
    /// Where everything went.
    pub layout: Layout,
    /// What to copy where: the kernel, boot_params, the command line, the initrd, the ACPI
    /// tables (bytes borrowed from the modules where they can be).
    pub writes: Vec<(u64, Cow<'a, [u8]>)>,
}

/// Why a Linux guest cannot be prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// The kernel image or the layout.
    Linux(LinuxError),
    /// The ACPI tables.
    Acpi(acpi::AcpiError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::Linux(e) => write!(f, "Linux kernel: {e}"),
            BootError::Acpi(e) => write!(f, "ACPI tables: {e}"),
        }
    }
}

/// The command line a kernel gets when its module carries none: the guest's console is COM1.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlyprintk=serial";

/// The kernel's command line from a Multiboot module's: without the module's own name (its
/// first word, when that is not a `key=value` parameter); [`DEFAULT_CMDLINE`] when nothing
/// is left.
pub fn kernel_cmdline(module_cmdline: &str) -> &str {
    let s = module_cmdline.trim_start();
    let args = match s.split_once(' ') {
        Some((first, rest)) if !first.contains('=') => rest.trim_start(),
        None if !s.contains('=') => "",
        _ => s,
    };
    if args.trim().is_empty() {
        DEFAULT_CMDLINE
    } else {
        args
    }
}

/// Prepares `image` (a bzImage) with `initrd` (empty for none) and `cmdline` for a guest of
/// `ram` bytes whose first `low_ram` bytes (the primary's share) take the kernel and the
/// initrd, shaped as `domains` (one per node).
pub fn prepare<'a>(
    image: &'a [u8],
    initrd: &'a [u8],
    cmdline: &str,
    ram: u64,
    low_ram: u64,
    domains: &[acpi::Domain],
) -> Result<Boot<'a>, BootError> {
    let b = parse(image).map_err(BootError::Linux)?;
    let initrd_len = (!initrd.is_empty()).then_some(initrd.len() as u64);
    let layout = plan(&b, low_ram.min(ram), initrd_len).map_err(BootError::Linux)?;
    let tables = acpi::build(domains, acpi::BASE).map_err(BootError::Acpi)?;
    let params = boot_params(&b, &layout, ram, tables.rsdp);
    let mut writes = alloc::vec![
        (layout.kernel, Cow::Borrowed(&image[b.kernel_offset..])),
        (layout.boot_params, Cow::Owned(params)),
        (layout.cmdline, Cow::Owned(cmdline_bytes(&b, cmdline))),
        (acpi::BASE, Cow::Owned(tables.bytes)),
        (RESET_VECTOR_GPA, Cow::Owned(reset_stub().to_vec())),
    ];
    if let Some((at, _)) = layout.initrd {
        writes.push((at, Cow::Borrowed(initrd)));
    }
    let entry = if b.kernel_64 {
        writes.push((long::TABLES_GPA, Cow::Owned(long::tables())));
        writes.push((
            long::TRAMPOLINE_GPA,
            Cow::Owned(long::trampoline(layout.kernel, layout.boot_params)),
        ));
        (long::TRAMPOLINE_GPA + long::CODE_OFFSET) as u32
    } else {
        layout.kernel as u32
    };
    Ok(Boot { entry, long_mode: b.kernel_64, boot_params: layout.boot_params, layout, writes })
}

#[cfg(test)]
mod tests;
