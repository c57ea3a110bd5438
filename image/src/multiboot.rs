//! The Multiboot 1 header ("Multiboot Specification" 0.6.96 §3.1): find it in a load image, and
//! check its a.out-kludge address fields against where the image really lies.

use crate::elf::u32_at;
use crate::error::ImageError;

/// `magic` of a Multiboot 1 header.
pub const MAGIC: u32 = 0x1BAD_B002;
/// Flags bit 16: the address fields are valid (the "a.out kludge").
pub const FLAG_ADDRESSES: u32 = 1 << 16;
/// The flags the Gestalt firmware uses: page-align modules, memory map, address fields.
pub const GESTALT_FLAGS: u32 = 0x0001_0003;
/// The header must lie within this many bytes of the image start (spec §3.1.1).
pub const SEARCH_LIMIT: usize = 8192;

/// A decoded Multiboot 1 header with the a.out-kludge fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header inside the searched bytes.
    pub offset: usize,
    /// `flags`.
    pub flags: u32,
    /// `header_addr`: physical address of the header itself.
    pub header_addr: u32,
    /// `load_addr`: physical address of the first loaded byte.
    pub load_addr: u32,
    /// `load_end_addr`: end of the initialised data.
    pub load_end_addr: u32,
    /// `bss_end_addr`: end of the zero-initialised data.
    pub bss_end_addr: u32,
    /// `entry_addr`: the 32-bit protected-mode entry point.
    pub entry_addr: u32,
}

/// Find the first Multiboot 1 header (magic and checksum) at a 4-byte-aligned offset within the
/// first [`SEARCH_LIMIT`] bytes of `data`, and decode it.
pub fn find(data: &[u8]) -> Result<Header, ImageError> {
    let limit = data.len().min(SEARCH_LIMIT);
    let mut off = 0;
    while off + 12 <= limit {
        let word = |i: usize| u32_at(data, off + 4 * i, "multiboot header");
        if word(0)? == MAGIC {
            let flags = word(1)?;
            let checksum = word(2)?;
            if MAGIC.wrapping_add(flags).wrapping_add(checksum) == 0 {
                if flags & FLAG_ADDRESSES == 0 {
                    return Err(ImageError::BadMultiboot(format!(
                        "flags {flags:#010x} lack bit 16 (address fields); QEMU -kernel needs \
                         them for this image (contracts.md §1 wants {GESTALT_FLAGS:#010x})"
                    )));
                }
                return Ok(Header {
                    offset: off,
                    flags,
                    header_addr: word(3)?,
                    load_addr: word(4)?,
                    load_end_addr: word(5)?,
                    bss_end_addr: word(6)?,
                    entry_addr: word(7)?,
                });
            }
        }
        off += 4;
    }
    Err(ImageError::NoMultibootHeader)
}

impl Header {
    /// Check the address fields against an image whose first byte is at `load_addr`, with
    /// `file_len` initialised bytes and memory up to `mem_end`.
    pub fn check(&self, load_addr: u64, file_len: u64, mem_end: u64) -> Result<(), ImageError> {
        let bad = |s: String| Err(ImageError::BadMultiboot(s));
        if u64::from(self.load_addr) != load_addr {
            return bad(format!(
                "load_addr {:#x} but the image starts at {load_addr:#x}",
                self.load_addr
            ));
        }
        let expect_header = load_addr + self.offset as u64;
        if u64::from(self.header_addr) != expect_header {
            return bad(format!(
                "header_addr {:#x} but the header lies at {expect_header:#x} (offset {:#x} into \
                 the image); loaders would place the image wrongly",
                self.header_addr, self.offset
            ));
        }
        let file_end = load_addr + file_len;
        if u64::from(self.load_end_addr) != file_end {
            return bad(format!(
                "load_end_addr {:#x} but the initialised image ends at {file_end:#x}",
                self.load_end_addr
            ));
        }
        if self.bss_end_addr != 0 && u64::from(self.bss_end_addr) < mem_end.max(file_end) {
            return bad(format!(
                "bss_end_addr {:#x} is below the end of the memory image {:#x}",
                self.bss_end_addr,
                mem_end.max(file_end)
            ));
        }
        let entry = u64::from(self.entry_addr);
        if entry < load_addr || entry >= file_end {
            return bad(format!(
                "entry_addr {entry:#x} lies outside the loaded code {load_addr:#x}..{file_end:#x}"
            ));
        }
        if self.flags != GESTALT_FLAGS {
            return bad(format!(
                "flags {:#010x}, contracts.md §1 says {GESTALT_FLAGS:#010x}",
                self.flags
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header(load: u32, load_end: u32, bss_end: u32, entry: u32) -> Vec<u8> {
        let flags = GESTALT_FLAGS;
        let sum = 0u32.wrapping_sub(MAGIC).wrapping_sub(flags);
        [MAGIC, flags, sum, load, load, load_end, bss_end, entry]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    #[test]
    fn a_header_at_the_image_start_is_found_and_consistent() {
        let mut img = header(0x10_0000, 0x10_0040, 0x10_1000, 0x10_0020);
        img.resize(0x40, 0);
        let h = find(&img).unwrap();
        assert_eq!(h.offset, 0);
        h.check(0x10_0000, 0x40, 0x10_1000).unwrap();
    }

    #[test]
    fn a_wrong_checksum_is_not_a_header() {
        let mut img = header(0x10_0000, 0x10_0040, 0x10_1000, 0x10_0020);
        img[8] ^= 1;
        assert_eq!(find(&img), Err(ImageError::NoMultibootHeader));
    }

    #[test]
    fn a_load_end_that_disagrees_with_the_image_is_reported() {
        let mut img = header(0x10_0000, 0x10_0080, 0x10_1000, 0x10_0020);
        img.resize(0x40, 0);
        let err = find(&img).unwrap().check(0x10_0000, 0x40, 0x10_1000).unwrap_err();
        assert!(err.to_string().contains("load_end_addr"), "{err}");
    }

    #[test]
    fn an_entry_outside_the_image_is_reported() {
        let mut img = header(0x10_0000, 0x10_0040, 0x10_1000, 0x20_0000);
        img.resize(0x40, 0);
        let err = find(&img).unwrap().check(0x10_0000, 0x40, 0x10_1000).unwrap_err();
        assert!(err.to_string().contains("entry_addr"), "{err}");
    }
}
