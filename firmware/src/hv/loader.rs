//! The guest loader's pure half: finds the Multiboot 1 header in a kernel image (spec 0.6.96
//! §3.1), lists what to copy where (a.out-kludge address fields, or ELF32/ELF64 program
//! headers), and lays out the boot information a Multiboot loader hands the kernel (§3.3).

use alloc::vec::Vec;
use core::fmt;

/// Header magic.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// EAX at the kernel's entry.
pub const BOOT_MAGIC: u32 = 0x2BAD_B002;
/// Where the header must be: within the first 8 KiB, 4-byte aligned.
const SEARCH: usize = 8192;

/// One piece of the image to copy into guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical destination.
    pub gpa: u64,
    /// Offset in the image.
    pub offset: usize,
    /// Bytes copied from the image.
    pub filesz: usize,
    /// Bytes at the destination (the rest is zeroed).
    pub memsz: u64,
}

/// What to load and where to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// 32-bit entry point.
    pub entry: u32,
    /// Pieces to copy.
    pub segments: Vec<Segment>,
}

impl Kernel {
    /// One past the highest guest-physical byte the kernel occupies.
    pub fn end(&self) -> u64 {
        self.segments.iter().map(|s| s.gpa + s.memsz).max().unwrap_or(0)
    }
}

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// No Multiboot 1 header in the first 8 KiB.
    NoHeader,
    /// The header asks for something this loader cannot give (flag bits).
    Unsupported(u32),
    /// The a.out-kludge address fields are inconsistent.
    BadAddresses,
    /// No address fields and not an ELF file.
    NotElf,
    /// The ELF headers are damaged or point outside the file.
    BadElf(&'static str),
    /// A segment lies outside 4 GiB or the image.
    OutOfRange,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NoHeader => write!(f, "no Multiboot 1 header in the first 8 KiB"),
            LoadError::Unsupported(b) => write!(f, "header requires unsupported features {b:#x}"),
            LoadError::BadAddresses => write!(f, "inconsistent a.out-kludge address fields"),
            LoadError::NotElf => write!(f, "no address fields in the header and not an ELF file"),
            LoadError::BadElf(w) => write!(f, "bad ELF file: {w}"),
            LoadError::OutOfRange => write!(f, "a segment lies outside the image or 4 GiB"),
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

/// Parses a Multiboot 1 kernel image.
pub fn parse(image: &[u8]) -> Result<Kernel, LoadError> {
    let header = (0..SEARCH.min(image.len()).saturating_sub(11))
        .step_by(4)
        .find(|&o| {
            let (m, f, c) = (u32_at(image, o), u32_at(image, o + 4), u32_at(image, o + 8));
            matches!((m, f, c), (Some(HEADER_MAGIC), Some(f), Some(c))
                if HEADER_MAGIC.wrapping_add(f).wrapping_add(c) == 0)
        })
        .ok_or(LoadError::NoHeader)?;
    let flags = u32_at(image, header + 4).ok_or(LoadError::NoHeader)?;
    // Bits 0-15 are requirements: page-aligned modules (0), memory info (1), video (2).
    let unknown = flags & 0xffff & !0b111;
    if unknown != 0 {
        return Err(LoadError::Unsupported(unknown));
    }
    if flags & (1 << 16) != 0 {
        return aout(image, header);
    }
    elf(image)
}

fn aout(image: &[u8], header: usize) -> Result<Kernel, LoadError> {
    let f = |i: usize| u32_at(image, header + 12 + 4 * i).ok_or(LoadError::BadAddresses);
    let (header_addr, load_addr, load_end, bss_end, entry) = (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?);
    if load_addr > header_addr {
        return Err(LoadError::BadAddresses);
    }
    let offset =
        header.checked_sub((header_addr - load_addr) as usize).ok_or(LoadError::BadAddresses)?;
    let filesz = if load_end == 0 {
        image.len() - offset
    } else {
        load_end.checked_sub(load_addr).ok_or(LoadError::BadAddresses)? as usize
    };
    if offset + filesz > image.len() {
        return Err(LoadError::OutOfRange);
    }
    let memsz = if bss_end == 0 {
        filesz as u64
    } else {
        u64::from(bss_end.checked_sub(load_addr).ok_or(LoadError::BadAddresses)?)
    }
    .max(filesz as u64);
    Ok(Kernel {
        entry,
        segments: alloc::vec![Segment { gpa: u64::from(load_addr), offset, filesz, memsz }],
    })
}

fn elf(b: &[u8]) -> Result<Kernel, LoadError> {
    if b.get(0..4) != Some(b"\x7fELF") {
        return Err(LoadError::NotElf);
    }
    let class64 = match b.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(LoadError::BadElf("unknown class")),
    };
    let bad = LoadError::BadElf("truncated header");
    let (entry, phoff, phentsize, phnum) = if class64 {
        (u64_at(b, 24), u64_at(b, 32).map(|v| v as usize), u16_at(b, 54), u16_at(b, 56))
    } else {
        (
            u32_at(b, 24).map(u64::from),
            u32_at(b, 28).map(|v| v as usize),
            u16_at(b, 42),
            u16_at(b, 44),
        )
    };
    let (entry, phoff, phentsize, phnum) =
        (entry.ok_or(bad)?, phoff.ok_or(bad)?, phentsize.ok_or(bad)?, phnum.ok_or(bad)?);
    let entry = u32::try_from(entry).map_err(|_| LoadError::OutOfRange)?;
    let mut segments = Vec::new();
    for i in 0..usize::from(phnum) {
        let p = phoff + i * usize::from(phentsize);
        let bad = LoadError::BadElf("program header outside the file");
        let kind = u32_at(b, p).ok_or(bad)?;
        if kind != 1 {
            continue;
        }
        let (offset, paddr, filesz, memsz) = if class64 {
            (u64_at(b, p + 8), u64_at(b, p + 24), u64_at(b, p + 32), u64_at(b, p + 40))
        } else {
            (
                u32_at(b, p + 4).map(u64::from),
                u32_at(b, p + 12).map(u64::from),
                u32_at(b, p + 16).map(u64::from),
                u32_at(b, p + 20).map(u64::from),
            )
        };
        let (offset, paddr, filesz, memsz) =
            (offset.ok_or(bad)?, paddr.ok_or(bad)?, filesz.ok_or(bad)?, memsz.ok_or(bad)?);
        if offset.saturating_add(filesz) > b.len() as u64
            || paddr.saturating_add(memsz) > 1 << 32
            || filesz > memsz
        {
            return Err(LoadError::OutOfRange);
        }
        segments.push(Segment {
            gpa: paddr,
            offset: offset as usize,
            filesz: filesz as usize,
            memsz,
        });
    }
    if segments.is_empty() {
        return Err(LoadError::BadElf("no loadable segment"));
    }
    Ok(Kernel { entry, segments })
}

/// Guest-physical address of the boot information the loader writes.
pub const MBI_GPA: u64 = 0x6000;
/// Room for it (below the 0x8000 page guests commonly use for their AP trampoline).
pub const MBI_ROOM: usize = 0x2000;

/// The Multiboot information block for a guest with `ram` bytes at guest-physical 0, as bytes
/// to place at [`MBI_GPA`]: flags = memory (0), cmdline (2), memory map (6); the map lists
/// `[0, 0x9f000)` and `[1 MiB, ram)` as RAM and the legacy hole as reserved.
pub fn boot_info(ram: u64, cmdline: &str) -> Vec<u8> {
    let base = MBI_GPA as u32;
    let cmd_at = 116u32;
    let cmd: Vec<u8> = cmdline.bytes().take(MBI_ROOM - 400).chain(core::iter::once(0)).collect();
    let mmap_at = (cmd_at + cmd.len() as u32).next_multiple_of(8);
    let entries: [(u64, u64, u32); 3] =
        [(0, 0x9f000, 1), (0x9f000, 0x10_0000 - 0x9f000, 2), (0x10_0000, ram - 0x10_0000, 1)];
    let mut b = alloc::vec![0u8; mmap_at as usize];
    let put =
        |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut b, 0, (1 << 0) | (1 << 2) | (1 << 6));
    put(&mut b, 4, 639);
    put(&mut b, 8, ((ram - 0x10_0000) / 1024).min(u64::from(u32::MAX)) as u32);
    put(&mut b, 16, base + cmd_at);
    put(&mut b, 44, 24 * entries.len() as u32);
    put(&mut b, 48, base + mmap_at);
    b[cmd_at as usize..cmd_at as usize + cmd.len()].copy_from_slice(&cmd);
    for (start, len, kind) in entries {
        b.extend_from_slice(&20u32.to_le_bytes());
        b.extend_from_slice(&start.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::multiboot;
    use crate::testmem::FakeMem;

    fn header(flags: u32, fields: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [HEADER_MAGIC, flags, 0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags))] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        for w in fields {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }

    #[test]
    fn aout_kludge_fields_place_the_flat_image() {
        // Header at file offset 0x40 = load address 0x10_0040; 0x200 bytes of data, bss to 0x1000.
        let mut img = vec![0u8; 0x40];
        img.extend(header(0x0001_0003, &[0x10_0040, 0x10_0000, 0x10_0200, 0x10_1000, 0x10_0080]));
        img.resize(0x300, 0xAA);
        let k = parse(&img).unwrap();
        assert_eq!(k.entry, 0x10_0080);
        assert_eq!(
            k.segments,
            vec![Segment { gpa: 0x10_0000, offset: 0, filesz: 0x200, memsz: 0x1000 }]
        );
        assert_eq!(k.end(), 0x10_1000);
    }

    fn elf64(entry: u64, segs: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * segs.len()];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (off, paddr, filesz, memsz)) in segs.iter().enumerate() {
            let p = 64 + 56 * i;
            b[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
            b[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            b[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            b[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            b[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        b
    }

    #[test]
    fn elf64_program_headers_are_used_without_address_fields() {
        let mut img = elf64(0x10_0010, &[(0x1000, 0x10_0000, 0x20, 0x3000)]);
        img.resize(0x1000, 0);
        img.extend(header(0x3, &[]));
        img.resize(0x1020, 0);
        let k = parse(&img).unwrap();
        assert_eq!(k.entry, 0x10_0010);
        assert_eq!(
            k.segments[0],
            Segment { gpa: 0x10_0000, offset: 0x1000, filesz: 0x20, memsz: 0x3000 }
        );
    }

    #[test]
    fn damaged_images_are_errors_not_panics() {
        assert_eq!(parse(&[]), Err(LoadError::NoHeader));
        assert_eq!(parse(&header(0x3, &[])), Err(LoadError::NotElf));
        assert_eq!(parse(&header(0x8, &[])), Err(LoadError::Unsupported(0x8)));
        assert_eq!(
            parse(&header(0x1_0000, &[0x1000, 0x2000, 0, 0, 0])),
            Err(LoadError::BadAddresses)
        );
        let mut img = elf64(0x10_0000, &[(0x10, 0x10_0000, 0x1_0000, 0x1_0000)]);
        img.extend(header(0x3, &[]));
        assert_eq!(parse(&img), Err(LoadError::OutOfRange));
        let mut bad_bad = elf64(0x1_0000_0000, &[]);
        bad_bad.extend(header(0, &[]));
        assert_eq!(parse(&bad_bad), Err(LoadError::OutOfRange));
        for n in 0..64 {
            let _ = parse(&img[..n.min(img.len())]);
        }
    }

    #[test]
    fn boot_info_reads_back_with_the_firmwares_own_multiboot_parser() {
        let b = boot_info(64 << 20, "payload.elf fast=1");
        let mut mem = FakeMem::default();
        mem.put(MBI_GPA, &b);
        let info = multiboot::parse(BOOT_MAGIC, MBI_GPA, &mem).unwrap();
        assert_eq!(info.cmdline.as_str(), "payload.elf fast=1");
        assert_eq!(info.mmap.len(), 3);
        assert_eq!(info.mmap[2].base + info.mmap[2].len, 64 << 20);
        assert!(b.len() <= MBI_ROOM);
    }
}
