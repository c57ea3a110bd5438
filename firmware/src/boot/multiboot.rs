//! Multiboot 1 boot information (Multiboot spec 0.6.96 §3.3), copied out of loader memory
//! into fixed-size owned data before anything may overwrite it.

use core::fmt;

use heapless::{String, Vec};

use crate::mem::regions::Region;
use crate::PhysRead;

/// EAX value a Multiboot 1 loader leaves (§3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Memory-map entry type "available RAM" (§3.3).
pub const MEM_AVAILABLE: u32 = 1;

/// One memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemEntry {
    /// Physical start.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Type (1 = available, 3 = ACPI, 4 = NVS, 5 = bad).
    pub kind: u32,
}

/// A boot module (e.g. the guest kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Physical range of its bytes.
    pub range: Region,
    /// Its command line.
    pub cmdline: String<128>,
}

/// Everything the firmware keeps from the loader.
#[derive(Clone, Debug, Default)]
pub struct BootInfo {
    /// Kernel command line.
    pub cmdline: String<1024>,
    /// Memory map.
    pub mmap: Vec<MemEntry, 128>,
    /// Modules.
    pub modules: Vec<Module, 16>,
    /// Loader name, when given.
    pub loader: String<64>,
    /// True when something did not fit the fixed buffers (reported, not fatal).
    pub truncated: bool,
}

/// Why the boot information could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// EAX was not the Multiboot 1 magic.
    BadMagic(u32),
    /// A structure the flags promise was not readable.
    Unreadable(u64),
    /// Neither a memory map nor mem_lower/mem_upper.
    NoMemoryInfo,
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::BadMagic(m) => write!(
                f,
                "not started by a Multiboot 1 loader (EAX {m:#x}, expected {BOOTLOADER_MAGIC:#x})"
            ),
            BootError::Unreadable(a) => write!(f, "boot information at {a:#x} is not readable"),
            BootError::NoMemoryInfo => write!(f, "the loader gave no memory map"),
        }
    }
}

fn read_cstr<const N: usize>(mem: &dyn PhysRead, addr: u64, out: &mut String<N>) -> bool {
    let mut truncated = false;
    for i in 0..(N as u64 + 1) {
        let mut b = [0u8];
        if !mem.read(addr + i, &mut b) || b[0] == 0 {
            return truncated;
        }
        let c = if b[0].is_ascii() { char::from(b[0]) } else { '?' };
        if out.push(c).is_err() {
            truncated = true;
        }
    }
    true
}

/// Reads the information structure at `addr`.
pub fn parse(magic: u32, addr: u64, mem: &dyn PhysRead) -> Result<BootInfo, BootError> {
    if magic != BOOTLOADER_MAGIC {
        return Err(BootError::BadMagic(magic));
    }
    let rd = |off: u64| mem.read_u32(addr + off).ok_or(BootError::Unreadable(addr + off));
    let flags = rd(0)?;
    let mut info = BootInfo::default();

    if flags & (1 << 2) != 0 {
        info.truncated |= read_cstr(mem, u64::from(rd(16)?), &mut info.cmdline);
    }
    if flags & (1 << 9) != 0 {
        info.truncated |= read_cstr(mem, u64::from(rd(64)?), &mut info.loader);
    }
    if flags & (1 << 3) != 0 {
        let (count, base) = (rd(20)?, u64::from(rd(24)?));
        for i in 0..u64::from(count.min(64)) {
            let m = base + 16 * i;
            let start = mem.read_u32(m).ok_or(BootError::Unreadable(m))?;
            let end = mem.read_u32(m + 4).ok_or(BootError::Unreadable(m))?;
            let s = mem.read_u32(m + 8).ok_or(BootError::Unreadable(m))?;
            let mut module = Module {
                range: Region::new(u64::from(start), u64::from(end.max(start))),
                cmdline: String::new(),
            };
            if s != 0 {
                info.truncated |= read_cstr(mem, u64::from(s), &mut module.cmdline);
            }
            info.truncated |= info.modules.push(module).is_err();
        }
    }
    if flags & (1 << 6) != 0 {
        let (len, base) = (u64::from(rd(44)?), u64::from(rd(48)?));
        let mut off = 0;
        while off + 24 <= len {
            let e = base + off;
            let size = mem.read_u32(e).ok_or(BootError::Unreadable(e))?;
            let entry = MemEntry {
                base: mem.read_u64(e + 4).ok_or(BootError::Unreadable(e))?,
                len: mem.read_u64(e + 12).ok_or(BootError::Unreadable(e))?,
                kind: mem.read_u32(e + 20).ok_or(BootError::Unreadable(e))?,
            };
            info.truncated |= info.mmap.push(entry).is_err();
            // `size` excludes itself; a bogus small size would loop forever.
            off += u64::from(size.max(20)) + 4;
        }
    } else if flags & 1 != 0 {
        let lower = u64::from(rd(4)?) * 1024;
        let upper = u64::from(rd(8)?) * 1024;
        let _ = info.mmap.push(MemEntry { base: 0, len: lower, kind: MEM_AVAILABLE });
        let _ = info.mmap.push(MemEntry { base: 0x10_0000, len: upper, kind: MEM_AVAILABLE });
    }
    if info.mmap.is_empty() {
        return Err(BootError::NoMemoryInfo);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmem::FakeMem;

    fn mbi_with(flags: u32) -> FakeMem {
        let mut m = FakeMem::default();
        let mut hdr = vec![0u8; 88];
        hdr[0..4].copy_from_slice(&flags.to_le_bytes());
        hdr[16..20].copy_from_slice(&0x2000u32.to_le_bytes()); // cmdline
        hdr[20..24].copy_from_slice(&1u32.to_le_bytes()); // mods_count
        hdr[24..28].copy_from_slice(&0x3000u32.to_le_bytes()); // mods_addr
        hdr[44..48].copy_from_slice(&48u32.to_le_bytes()); // mmap_length
        hdr[48..52].copy_from_slice(&0x4000u32.to_le_bytes()); // mmap_addr
        m.put(0x1000, &hdr);
        m.put(0x2000, b"gestalt.elf nodes=2\0");
        let mut module = Vec::<u8, 16>::new();
        for v in [0x20_0000u32, 0x20_8000, 0x2100] {
            module.extend_from_slice(&v.to_le_bytes()).unwrap();
        }
        module.extend_from_slice(&[0; 4]).unwrap();
        m.put(0x3000, &module);
        m.put(0x2100, b"guest.elf\0");
        let mut mmap = std::vec::Vec::new();
        for (base, len, kind) in [(0u64, 0x9fc00u64, 1u32), (0x10_0000, 0x7ef_0000, 1)] {
            mmap.extend_from_slice(&20u32.to_le_bytes());
            mmap.extend_from_slice(&base.to_le_bytes());
            mmap.extend_from_slice(&len.to_le_bytes());
            mmap.extend_from_slice(&kind.to_le_bytes());
        }
        m.put(0x4000, &mmap);
        m
    }

    #[test]
    fn cmdline_modules_and_memory_map_are_copied_out() {
        let mem = mbi_with((1 << 2) | (1 << 3) | (1 << 6));
        let info = parse(BOOTLOADER_MAGIC, 0x1000, &mem).unwrap();
        assert_eq!(info.cmdline.as_str(), "gestalt.elf nodes=2");
        assert_eq!(info.modules.len(), 1);
        assert_eq!(info.modules[0].range, Region::new(0x20_0000, 0x20_8000));
        assert_eq!(info.modules[0].cmdline.as_str(), "guest.elf");
        assert_eq!(info.mmap.len(), 2);
        assert_eq!(info.mmap[1], MemEntry { base: 0x10_0000, len: 0x7ef_0000, kind: 1 });
        assert!(!info.truncated);
    }

    #[test]
    fn wrong_magic_is_refused_with_the_value_seen() {
        let err = parse(0x1234, 0x1000, &FakeMem::default()).unwrap_err();
        assert_eq!(err, BootError::BadMagic(0x1234));
        assert!(err.to_string().contains("0x1234"));
    }

    #[test]
    fn missing_memory_information_is_an_error_not_a_panic() {
        let mem = mbi_with(1 << 2);
        assert_eq!(parse(BOOTLOADER_MAGIC, 0x1000, &mem).unwrap_err(), BootError::NoMemoryInfo);
        assert!(matches!(
            parse(BOOTLOADER_MAGIC, 0x9999_0000, &mem),
            Err(BootError::Unreadable(0x9999_0000))
        ));
    }
}
