//! The operations behind the subcommands: turn the firmware ELF64 into the stamped ELF32
//! `gestalt.elf`, describe a file (`inspect`) and check one strictly (`verify`).

use std::fmt;

use crate::elf::{self, FlatImage, IMAGE_OFFSET};
use crate::error::ImageError;
use crate::info::{self, Info};
use crate::multiboot::{self, Header};

/// What kind of file was described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A `gestalt.elf` (ELF32 wrapper) made by `gestalt-image build`.
    Image,
    /// The firmware ELF64 straight from `cargo firmware` (unstamped, not yet an image).
    FirmwareElf64,
}

/// Everything `inspect` shows about a file, and what `build` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReport {
    /// Kind of file.
    pub kind: FileKind,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// The multiboot header.
    pub header: Header,
    /// The info block.
    pub info: Info,
    /// The build id recomputed from the load image.
    pub computed_id: [u8; 32],
    /// Physical address of the first loaded byte.
    pub load_addr: u64,
    /// Bytes loaded from the file.
    pub load_size: u64,
    /// Bytes occupied in memory, bss included.
    pub mem_size: u64,
}

impl ImageReport {
    /// True when the stamped id equals the recomputed one.
    pub fn id_matches(&self) -> bool {
        self.info.is_stamped() && self.info.build_id == self.computed_id
    }
}

impl fmt::Display for ImageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FileKind::Image => "Gestalt image (ELF32 multiboot wrapper)",
            FileKind::FirmwareElf64 => {
                "firmware ELF64 (not yet an image: run `gestalt-image build`)"
            }
        };
        let id_state = if !self.info.is_stamped() {
            "unstamped".to_string()
        } else if self.id_matches() {
            "matches the image".to_string()
        } else {
            format!("MISMATCH: the image hashes to {}", info::hex(&self.computed_id))
        };
        let h = &self.header;
        writeln!(f, "kind:          {kind}")?;
        writeln!(f, "version:       {}", self.info.version)?;
        writeln!(f, "commit:        {}", self.info.commit)?;
        writeln!(f, "build:         {}", self.info.build_id_short())?;
        writeln!(f, "build id:      {} ({id_state})", self.info.build_id_hex())?;
        writeln!(f, "protocol:      {}", self.info.protocol)?;
        writeln!(f, "info layout:   {}", self.info.layout)?;
        writeln!(f, "multiboot:     flags {:#010x} at image offset {:#x}", h.flags, h.offset)?;
        writeln!(f, "load addr:     {:#010x}", h.load_addr)?;
        writeln!(f, "load end:      {:#010x}", h.load_end_addr)?;
        writeln!(f, "bss end:       {:#010x}", h.bss_end_addr)?;
        writeln!(f, "entry:         {:#010x}", h.entry_addr)?;
        writeln!(f, "file size:     {} bytes", self.file_size)?;
        writeln!(f, "load size:     {} bytes", self.load_size)?;
        write!(f, "memory size:   {} bytes (bss included)", self.mem_size)
    }
}

/// The result of `build`: the bytes of `gestalt.elf` and its description.
#[derive(Debug, Clone)]
pub struct Built {
    /// The ELF32 wrapper, ready to write to `gestalt.elf`.
    pub elf32: Vec<u8>,
    /// What is in it.
    pub report: ImageReport,
}

/// Describe a flat load image (header, info block, recomputed id).
fn describe_flat(
    kind: FileKind,
    file_size: u64,
    load_addr: u64,
    image: &[u8],
    mem_end: u64,
) -> Result<ImageReport, ImageError> {
    let header = multiboot::find(image)?;
    let info = info::find(image)?;
    let computed_id = info::compute_build_id(image, info.offset);
    Ok(ImageReport {
        kind,
        file_size,
        header,
        info,
        computed_id,
        load_addr,
        load_size: image.len() as u64,
        mem_size: mem_end.saturating_sub(load_addr),
    })
}

/// Turn the firmware ELF64 into the stamped `gestalt.elf` (contracts.md §1–§2).
pub fn build_image(elf64: &[u8]) -> Result<Built, ImageError> {
    let FlatImage { load_addr, mut bytes, mem_end, .. } = elf::flatten_elf64(elf64)?;
    let header = multiboot::find(&bytes)?;
    // The linker script may end the initialised range after the last file byte (a zero tail
    // that the ELF keeps as bss); the flat image then carries those zeros explicitly.
    let want_end = u64::from(header.load_end_addr);
    let have_end = load_addr + bytes.len() as u64;
    if want_end > have_end && want_end <= mem_end {
        bytes.resize((want_end - load_addr) as usize, 0);
    }
    header.check(load_addr, bytes.len() as u64, mem_end)?;
    info::stamp(&mut bytes)?;
    let bss_end = u64::from(header.bss_end_addr).max(mem_end);
    let elf32 =
        elf::write_elf32(load_addr as u32, &bytes, (bss_end - load_addr) as u32, header.entry_addr);
    let report = describe_flat(FileKind::Image, elf32.len() as u64, load_addr, &bytes, bss_end)?;
    Ok(Built { elf32, report })
}

/// Describe any file: a `gestalt.elf` image or the firmware ELF64. Says why when it is neither.
pub fn describe_file(data: &[u8]) -> Result<ImageReport, ImageError> {
    if data.get(4) == Some(&2) && data.starts_with(b"\x7fELF") {
        let flat = elf::flatten_elf64(data)?;
        return describe_flat(
            FileKind::FirmwareElf64,
            data.len() as u64,
            flat.load_addr,
            &flat.bytes,
            flat.mem_end,
        );
    }
    let (seg, image) = image_bytes(data)?;
    describe_flat(
        FileKind::Image,
        data.len() as u64,
        u64::from(seg.paddr),
        image,
        u64::from(seg.paddr) + u64::from(seg.memsz),
    )
}

/// The ELF32 segment and the load image bytes it covers.
fn image_bytes(data: &[u8]) -> Result<(elf::Elf32Image, &[u8]), ImageError> {
    let seg = elf::read_elf32(data)?;
    if seg.offset as usize != IMAGE_OFFSET {
        return Err(ImageError::BadSegments(format!(
            "the load segment starts at file offset {:#x}; contracts.md §1 puts it at {IMAGE_OFFSET:#x}",
            seg.offset
        )));
    }
    let end = IMAGE_OFFSET as u64 + u64::from(seg.filesz);
    let image = data.get(IMAGE_OFFSET..end as usize).ok_or(ImageError::Truncated {
        what: "the load segment",
        need: end,
        have: data.len() as u64,
    })?;
    Ok((seg, image))
}

/// Check `data` strictly as a `gestalt.elf` image; the report on success, the first problem
/// otherwise.
pub fn verify_image(data: &[u8]) -> Result<ImageReport, ImageError> {
    let (seg, image) = image_bytes(data)?;
    if seg.vaddr != seg.paddr {
        return Err(ImageError::BadSegments(format!(
            "p_vaddr {:#x} differs from p_paddr {:#x}; the image is identity mapped",
            seg.vaddr, seg.paddr
        )));
    }
    if seg.memsz < seg.filesz {
        return Err(ImageError::BadSegments(format!(
            "p_memsz {:#x} is smaller than p_filesz {:#x}",
            seg.memsz, seg.filesz
        )));
    }
    let header = multiboot::find(image)?;
    if header.offset != 0 {
        return Err(ImageError::BadMultiboot(format!(
            "the header is at image offset {:#x}; contracts.md §1 wants it first",
            header.offset
        )));
    }
    let load_addr = u64::from(seg.paddr);
    let mem_end = load_addr + u64::from(seg.memsz);
    header.check(load_addr, image.len() as u64, mem_end)?;
    if u64::from(header.bss_end_addr) != mem_end {
        return Err(ImageError::BadMultiboot(format!(
            "bss_end_addr {:#x} but the ELF segment's memory ends at {mem_end:#x}",
            header.bss_end_addr
        )));
    }
    if header.entry_addr != seg.entry {
        return Err(ImageError::BadMultiboot(format!(
            "entry_addr {:#x} but the ELF entry is {:#x}; ELF and a.out-kludge loaders would \
             disagree",
            header.entry_addr, seg.entry
        )));
    }
    let report = describe_flat(FileKind::Image, data.len() as u64, load_addr, image, mem_end)?;
    if !report.info.is_stamped() {
        return Err(ImageError::Unstamped);
    }
    if !report.id_matches() {
        return Err(ImageError::BuildIdMismatch {
            stored: report.info.build_id_hex(),
            computed: info::hex(&report.computed_id),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::elf64;
    use crate::info::tests::block;
    use proptest::prelude::*;

    const LOAD: u32 = 0x10_0000;

    /// A firmware-like ELF64: header first, code, info block, then a bss segment.
    fn firmware() -> Vec<u8> {
        let text_len = 0x200u32;
        let mut text = multiboot_header(LOAD, LOAD + text_len + 0x100, LOAD + 0x2000, LOAD + 0x40);
        text.resize(text_len as usize, 0x90);
        let mut data = block(7, "0.1.0", "deadbee");
        data.resize(0x100, 0x11);
        elf64(
            &[
                (u64::from(LOAD), &text, u64::from(text_len)),
                (u64::from(LOAD + text_len), &data, 0x100),
                (u64::from(LOAD) + 0x1000, &[], 0x1000),
            ],
            u64::from(LOAD + 0x40),
        )
    }

    fn multiboot_header(load: u32, load_end: u32, bss_end: u32, entry: u32) -> Vec<u8> {
        let flags = multiboot::GESTALT_FLAGS;
        let sum = 0u32.wrapping_sub(multiboot::MAGIC).wrapping_sub(flags);
        [multiboot::MAGIC, flags, sum, load, load, load_end, bss_end, entry]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    #[test]
    fn a_built_image_verifies_and_describes_itself() {
        let built = build_image(&firmware()).unwrap();
        let report = verify_image(&built.elf32).unwrap();
        assert_eq!(report, built.report);
        assert_eq!(report.info.version, "0.1.0");
        assert_eq!(report.info.commit, "deadbee");
        assert_eq!(report.info.protocol, 7);
        assert_eq!(report.header.entry_addr, LOAD + 0x40);
        assert_eq!(report.load_size, 0x300);
        assert_eq!(report.mem_size, 0x2000);
        assert!(report.id_matches());
        let text = report.to_string();
        assert!(text.contains(&format!("build:         {}", report.info.build_id_short())));
        assert_eq!(describe_file(&built.elf32).unwrap(), report);
    }

    #[test]
    fn the_multiboot_header_sits_at_file_offset_0x1000() {
        let built = build_image(&firmware()).unwrap();
        assert_eq!(&built.elf32[0x1000..0x1004], &multiboot::MAGIC.to_le_bytes());
    }

    #[test]
    fn building_twice_gives_the_same_bytes() {
        assert_eq!(
            build_image(&firmware()).unwrap().elf32,
            build_image(&firmware()).unwrap().elf32
        );
    }

    #[test]
    fn a_changed_byte_breaks_the_build_id() {
        let mut elf = build_image(&firmware()).unwrap().elf32;
        elf[0x1000 + 0x100] ^= 0xff;
        assert!(matches!(verify_image(&elf), Err(ImageError::BuildIdMismatch { .. })));
    }

    #[test]
    fn the_raw_firmware_is_described_but_does_not_verify() {
        let fw = firmware();
        let report = describe_file(&fw).unwrap();
        assert_eq!(report.kind, FileKind::FirmwareElf64);
        assert_eq!(report.info.build_id_short(), "unstamped");
        let err = verify_image(&fw).unwrap_err().to_string();
        assert!(err.contains("gestalt-image build"), "{err}");
    }

    #[test]
    fn firmware_without_an_info_block_is_refused_by_build() {
        let text = multiboot_header(LOAD, LOAD + 0x20, LOAD + 0x20, LOAD);
        let elf = elf64(&[(u64::from(LOAD), &text, 0x20)], u64::from(LOAD));
        let err = build_image(&elf).unwrap_err();
        assert!(matches!(err, ImageError::BadInfoBlock(_)), "{err}");
    }

    #[test]
    fn a_truncated_image_says_how_much_is_missing() {
        let elf = build_image(&firmware()).unwrap().elf32;
        let err = verify_image(&elf[..0x1100]).unwrap_err();
        assert!(matches!(err, ImageError::Truncated { need: 0x1300, have: 0x1100, .. }), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = verify_image(&data);
            let _ = describe_file(&data);
            let _ = build_image(&data);
        }

        #[test]
        fn corrupted_images_never_panic(pos in 0usize..0x1300, val in any::<u8>(), cut in 0usize..0x1400) {
            let mut elf = build_image(&firmware()).unwrap().elf32;
            let pos = pos % elf.len();
            elf[pos] = val;
            elf.truncate(cut.max(1));
            let _ = verify_image(&elf);
            let _ = describe_file(&elf);
        }

        #[test]
        fn corrupted_firmware_never_panics(pos in 0usize..0x600, val in any::<u8>()) {
            let mut fw = firmware();
            let pos = pos % fw.len();
            fw[pos] = val;
            let _ = build_image(&fw);
            let _ = describe_file(&fw);
        }
    }
}
