//! Just enough ELF: read the firmware's ELF64 program headers into a flat load image, and write
//! or read the one-segment ELF32 wrapper of contracts.md §1. Field offsets follow the System V
//! gABI ("ELF-64 Object File Format" v1.5 §§3–4; the i386 psABI for ELF32).

use crate::error::ImageError;

/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of i386.
pub const EM_386: u16 = 3;
/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// File offset of the load image inside `gestalt.elf` (contracts.md §1).
pub const IMAGE_OFFSET: usize = 0x1000;
/// The largest flat load image we accept (protects against absurd program headers).
pub const MAX_IMAGE: u64 = 64 << 20;

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELF32_EHSIZE: usize = 52;
const ELF32_PHSIZE: usize = 32;
const ELF64_EHSIZE: usize = 64;
const ELF64_PHSIZE: usize = 56;

/// The loadable contents of an ELF as one contiguous range of physical memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatImage {
    /// Physical address of `bytes[0]`.
    pub load_addr: u64,
    /// Initialised bytes (gaps between segments zero-filled).
    pub bytes: Vec<u8>,
    /// End of the memory image including zero-initialised (bss) parts.
    pub mem_end: u64,
    /// `e_entry` of the ELF.
    pub elf_entry: u64,
}

/// Read a little-endian integer of `N` bytes at `off`, or say which structure is cut short.
fn le<const N: usize>(data: &[u8], off: usize, what: &'static str) -> Result<[u8; N], ImageError> {
    let end = off.checked_add(N).ok_or(ImageError::Truncated {
        what,
        need: u64::MAX,
        have: data.len() as u64,
    })?;
    data.get(off..end).and_then(|s| s.try_into().ok()).ok_or(ImageError::Truncated {
        what,
        need: end as u64,
        have: data.len() as u64,
    })
}

pub(crate) fn u16_at(data: &[u8], off: usize, what: &'static str) -> Result<u16, ImageError> {
    le::<2>(data, off, what).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(data: &[u8], off: usize, what: &'static str) -> Result<u32, ImageError> {
    le::<4>(data, off, what).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(data: &[u8], off: usize, what: &'static str) -> Result<u64, ImageError> {
    le::<8>(data, off, what).map(u64::from_le_bytes)
}

/// What the first bytes of a non-ELF file suggest, for error messages.
pub fn guess_kind(data: &[u8]) -> String {
    if data.is_empty() {
        return "the file is empty".into();
    }
    if data.get(0x8001..0x8006) == Some(b"CD001") {
        return "it is an ISO 9660 image; verify the gestalt.elf next to it instead".into();
    }
    if data.starts_with(b"#!ipxe") {
        return "it is an iPXE script".into();
    }
    if data.len() >= 512 && data[510] == 0x55 && data[511] == 0xaa {
        return "it looks like a disk image with a boot sector".into();
    }
    let head: Vec<String> = data.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("it starts with bytes {}", head.join(" "))
}

/// Class of an ELF file (`EI_CLASS`), after checking magic, endianness and version.
fn elf_class(data: &[u8]) -> Result<u8, ImageError> {
    if data.len() < 16 || data[..4] != ELF_MAGIC {
        if data.len() >= 4 && data[..4] == ELF_MAGIC {
            return Err(ImageError::Truncated {
                what: "ELF identification",
                need: 16,
                have: data.len() as u64,
            });
        }
        return Err(ImageError::NotElf { looks_like: guess_kind(data) });
    }
    if data[5] != 1 {
        return Err(ImageError::WrongElfKind {
            found: "a big-endian ELF".into(),
            expected: "x86 firmware images are little-endian",
        });
    }
    Ok(data[4])
}

/// Human description of an ELF header, e.g. "an ELF64 executable for machine 62 (x86-64)".
pub fn describe_elf(data: &[u8]) -> String {
    let class = match data.get(4) {
        Some(1) => "ELF32",
        Some(2) => "ELF64",
        _ => "ELF of unknown class",
    };
    let machine = u16_at(data, 18, "e_machine").unwrap_or(0);
    let mname = match machine {
        EM_X86_64 => "x86-64",
        EM_386 => "i386",
        _ => "not x86",
    };
    format!("an {class} file for machine {machine} ({mname})")
}

/// Collect the `PT_LOAD` segments of the firmware's ELF64 into one flat image.
///
/// Segments are placed at their physical addresses (`p_paddr`); gaps are zero-filled.
pub fn flatten_elf64(data: &[u8]) -> Result<FlatImage, ImageError> {
    let class = elf_class(data)?;
    if class != 2 {
        return Err(ImageError::WrongElfKind {
            found: describe_elf(data),
            expected:
                "`build` needs the firmware ELF64 (target/x86_64-gestalt/release/gestalt-firmware)",
        });
    }
    let machine = u16_at(data, 18, "ELF header")?;
    if machine != EM_X86_64 {
        return Err(ImageError::WrongElfKind {
            found: describe_elf(data),
            expected: "`build` needs an x86-64 ELF64",
        });
    }
    if data.len() < ELF64_EHSIZE {
        return Err(ImageError::Truncated {
            what: "ELF64 header",
            need: 64,
            have: data.len() as u64,
        });
    }
    let entry = u64_at(data, 24, "e_entry")?;
    let phoff = u64_at(data, 32, "e_phoff")?;
    let phentsize = usize::from(u16_at(data, 54, "e_phentsize")?);
    let phnum = usize::from(u16_at(data, 56, "e_phnum")?);
    if phnum == 0 {
        return Err(ImageError::BadSegments("the ELF has no program headers".into()));
    }
    if phentsize < ELF64_PHSIZE {
        return Err(ImageError::BadSegments(format!(
            "e_phentsize is {phentsize}, smaller than an ELF64 program header (56)"
        )));
    }
    let phoff = usize::try_from(phoff)
        .map_err(|_| ImageError::BadSegments(format!("e_phoff {phoff:#x} is absurd")))?;

    struct Seg {
        paddr: u64,
        offset: u64,
        filesz: u64,
        memsz: u64,
    }
    let mut segs = Vec::new();
    for i in 0..phnum {
        let base = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(|| ImageError::BadSegments("program header table overflows".into()))?;
        let what = "program header table";
        if u32_at(data, base, what)? != PT_LOAD {
            continue;
        }
        let seg = Seg {
            offset: u64_at(data, base + 8, what)?,
            paddr: u64_at(data, base + 24, what)?,
            filesz: u64_at(data, base + 32, what)?,
            memsz: u64_at(data, base + 40, what)?,
        };
        if seg.memsz == 0 {
            continue;
        }
        if seg.filesz > seg.memsz {
            return Err(ImageError::BadSegments(format!(
                "segment {i}: p_filesz {:#x} exceeds p_memsz {:#x}",
                seg.filesz, seg.memsz
            )));
        }
        let file_end = seg.offset.checked_add(seg.filesz);
        if file_end.is_none_or(|e| e > data.len() as u64) {
            return Err(ImageError::BadSegments(format!(
                "segment {i}: bytes {:#x}+{:#x} lie outside the {}-byte file",
                seg.offset,
                seg.filesz,
                data.len()
            )));
        }
        if seg.paddr.checked_add(seg.memsz).is_none_or(|e| e > 1 << 32) {
            return Err(ImageError::BadSegments(format!(
                "segment {i}: physical range {:#x}+{:#x} is not below 4 GiB (multiboot loads \
                 32-bit images)",
                seg.paddr, seg.memsz
            )));
        }
        segs.push(seg);
    }
    let Some(load_addr) = segs.iter().map(|s| s.paddr).min() else {
        return Err(ImageError::BadSegments("the ELF has no loadable (PT_LOAD) segment".into()));
    };
    let mem_end = segs.iter().map(|s| s.paddr + s.memsz).max().unwrap_or(load_addr);
    let file_end =
        segs.iter().filter(|s| s.filesz > 0).map(|s| s.paddr + s.filesz).max().unwrap_or(load_addr);
    if mem_end - load_addr > MAX_IMAGE {
        return Err(ImageError::BadSegments(format!(
            "segments span {:#x}..{mem_end:#x}, more than the {} MiB an image may have",
            load_addr,
            MAX_IMAGE >> 20
        )));
    }
    let mut bytes = vec![0u8; (file_end - load_addr) as usize];
    let mut written: Vec<(u64, u64)> = Vec::new();
    for s in &segs {
        let (start, end) = (s.paddr, s.paddr + s.memsz);
        if let Some(&(a, b)) = written.iter().find(|&&(a, b)| start < b && a < end) {
            return Err(ImageError::BadSegments(format!(
                "segments overlap in physical memory: {start:#x}..{end:#x} and {a:#x}..{b:#x}"
            )));
        }
        written.push((start, end));
        let dst = (s.paddr - load_addr) as usize;
        let src = s.offset as usize;
        let n = s.filesz as usize;
        if n == 0 {
            continue;
        }
        bytes[dst..dst + n].copy_from_slice(&data[src..src + n]);
    }
    Ok(FlatImage { load_addr, bytes, mem_end, elf_entry: entry })
}

/// The single loadable segment of a `gestalt.elf` wrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elf32Image {
    /// `e_entry`.
    pub entry: u32,
    /// `p_offset` of the segment.
    pub offset: u32,
    /// `p_vaddr`.
    pub vaddr: u32,
    /// `p_paddr`.
    pub paddr: u32,
    /// `p_filesz`.
    pub filesz: u32,
    /// `p_memsz`.
    pub memsz: u32,
}

/// Write the ELF32 wrapper: header, one program header, padding to [`IMAGE_OFFSET`], the image.
pub fn write_elf32(load_addr: u32, image: &[u8], memsz: u32, entry: u32) -> Vec<u8> {
    let mut out = vec![0u8; IMAGE_OFFSET];
    out[..4].copy_from_slice(&ELF_MAGIC);
    out[4] = 1; // ELFCLASS32
    out[5] = 1; // ELFDATA2LSB
    out[6] = 1; // EV_CURRENT
    let put16 =
        |o: &mut Vec<u8>, at: usize, v: u16| o[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |o: &mut Vec<u8>, at: usize, v: u32| o[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put16(&mut out, 16, 2); // ET_EXEC
    put16(&mut out, 18, EM_386);
    put32(&mut out, 20, 1); // e_version
    put32(&mut out, 24, entry);
    put32(&mut out, 28, ELF32_EHSIZE as u32); // e_phoff
    put32(&mut out, 32, 0); // e_shoff: no sections
    put32(&mut out, 36, 0); // e_flags
    put16(&mut out, 40, ELF32_EHSIZE as u16);
    put16(&mut out, 42, ELF32_PHSIZE as u16);
    put16(&mut out, 44, 1); // e_phnum
    put16(&mut out, 46, 40); // e_shentsize
    put16(&mut out, 48, 0); // e_shnum
    put16(&mut out, 50, 0); // e_shstrndx
    let ph = ELF32_EHSIZE;
    put32(&mut out, ph, PT_LOAD);
    put32(&mut out, ph + 4, IMAGE_OFFSET as u32);
    put32(&mut out, ph + 8, load_addr); // p_vaddr
    put32(&mut out, ph + 12, load_addr); // p_paddr
    put32(&mut out, ph + 16, image.len() as u32);
    put32(&mut out, ph + 20, memsz);
    put32(&mut out, ph + 24, 7); // PF_R | PF_W | PF_X
    put32(&mut out, ph + 28, 0x1000);
    out.extend_from_slice(image);
    out
}

/// Parse a `gestalt.elf` wrapper: ELF32, i386, executable, exactly one `PT_LOAD`.
pub fn read_elf32(data: &[u8]) -> Result<Elf32Image, ImageError> {
    let class = elf_class(data)?;
    if class == 2 {
        return Err(ImageError::WrongElfKind {
            found: describe_elf(data),
            expected: "an image is the ELF32 `gestalt.elf`; the ELF64 firmware becomes one \
                       through `gestalt-image build`",
        });
    }
    if class != 1 {
        return Err(ImageError::WrongElfKind {
            found: format!("an ELF with unknown class {class}"),
            expected: "an image is an ELF32 file",
        });
    }
    if data.len() < ELF32_EHSIZE {
        return Err(ImageError::Truncated {
            what: "ELF32 header",
            need: 52,
            have: data.len() as u64,
        });
    }
    let etype = u16_at(data, 16, "ELF32 header")?;
    let machine = u16_at(data, 18, "ELF32 header")?;
    if etype != 2 || machine != EM_386 {
        return Err(ImageError::WrongElfKind {
            found: format!("an ELF32 of type {etype} for machine {machine}"),
            expected: "an image is an ELF32 executable (type 2) for i386 (machine 3)",
        });
    }
    let entry = u32_at(data, 24, "ELF32 header")?;
    let phoff = u32_at(data, 28, "ELF32 header")? as usize;
    let phentsize = usize::from(u16_at(data, 42, "ELF32 header")?);
    let phnum = usize::from(u16_at(data, 44, "ELF32 header")?);
    if phentsize < ELF32_PHSIZE {
        return Err(ImageError::BadSegments(format!(
            "e_phentsize is {phentsize}, smaller than an ELF32 program header (32)"
        )));
    }
    let mut loads = Vec::new();
    for i in 0..phnum {
        let base = phoff
            .checked_add(i * phentsize)
            .ok_or_else(|| ImageError::BadSegments("program header table overflows".into()))?;
        let what = "program header table";
        if u32_at(data, base, what)? == PT_LOAD {
            loads.push(Elf32Image {
                entry,
                offset: u32_at(data, base + 4, what)?,
                vaddr: u32_at(data, base + 8, what)?,
                paddr: u32_at(data, base + 12, what)?,
                filesz: u32_at(data, base + 16, what)?,
                memsz: u32_at(data, base + 20, what)?,
            });
        }
    }
    match loads.as_slice() {
        [one] => Ok(*one),
        _ => Err(ImageError::BadSegments(format!(
            "an image has exactly one PT_LOAD segment, this file has {}",
            loads.len()
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 with the given (paddr, file bytes, memsz) segments.
    pub(crate) fn elf64(segs: &[(u64, &[u8], u64)], entry: u64) -> Vec<u8> {
        let phoff = 64usize;
        let mut data = vec![0u8; phoff + 56 * segs.len()];
        data[..4].copy_from_slice(&ELF_MAGIC);
        data[4] = 2;
        data[5] = 1;
        data[6] = 1;
        data[16..18].copy_from_slice(&2u16.to_le_bytes());
        data[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        data[24..32].copy_from_slice(&entry.to_le_bytes());
        data[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        data[54..56].copy_from_slice(&56u16.to_le_bytes());
        data[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (paddr, bytes, memsz)) in segs.iter().enumerate() {
            let off = data.len() as u64;
            data.extend_from_slice(bytes);
            let ph = phoff + 56 * i;
            data[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            data[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            data[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
            data[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            data[ph + 32..ph + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            data[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        data
    }

    #[test]
    fn segments_are_placed_at_their_physical_addresses_with_zero_filled_gaps() {
        let elf = elf64(&[(0x10_0000, &[1, 2, 3], 3), (0x10_0010, &[9], 0x100)], 0x10_0000);
        let flat = flatten_elf64(&elf).unwrap();
        assert_eq!(flat.load_addr, 0x10_0000);
        assert_eq!(flat.bytes.len(), 0x11);
        assert_eq!(&flat.bytes[..3], &[1, 2, 3]);
        assert!(flat.bytes[3..0x10].iter().all(|&b| b == 0));
        assert_eq!(flat.bytes[0x10], 9);
        assert_eq!(flat.mem_end, 0x10_0110);
    }

    #[test]
    fn overlapping_segments_are_refused() {
        let elf = elf64(&[(0x10_0000, &[1, 2, 3], 3), (0x10_0001, &[9], 1)], 0);
        assert!(matches!(flatten_elf64(&elf), Err(ImageError::BadSegments(_))));
    }

    #[test]
    fn a_segment_pointing_past_the_file_is_refused() {
        let mut elf = elf64(&[(0x10_0000, &[1, 2, 3], 3)], 0);
        elf[64 + 32] = 0xff; // p_filesz
        assert!(matches!(flatten_elf64(&elf), Err(ImageError::BadSegments(_))));
    }

    #[test]
    fn a_huge_address_span_is_refused_without_allocating_it() {
        let elf = elf64(&[(0x10_0000, &[1], 1), (0xf000_0000, &[2], 1)], 0);
        assert!(matches!(flatten_elf64(&elf), Err(ImageError::BadSegments(_))));
    }

    #[test]
    fn elf32_wrapper_round_trips() {
        let out = write_elf32(0x10_0000, &[7; 10], 0x40, 0x10_0004);
        assert_eq!(out.len(), IMAGE_OFFSET + 10);
        let e = read_elf32(&out).unwrap();
        assert_eq!(
            e,
            Elf32Image {
                entry: 0x10_0004,
                offset: 0x1000,
                vaddr: 0x10_0000,
                paddr: 0x10_0000,
                filesz: 10,
                memsz: 0x40
            }
        );
    }

    #[test]
    fn reading_an_elf64_as_an_image_points_at_build() {
        let elf = elf64(&[(0x10_0000, &[1], 1)], 0);
        let err = read_elf32(&elf).unwrap_err().to_string();
        assert!(err.contains("gestalt-image build"), "{err}");
    }

    #[test]
    fn a_text_file_is_not_an_elf() {
        let err = read_elf32(b"hello world").unwrap_err();
        assert!(matches!(err, ImageError::NotElf { .. }));
    }
}
