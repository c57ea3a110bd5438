//! The Linux 64-bit boot protocol's entry (Documentation/arch/x86/boot.rst, "64-bit Boot
//! Protocol"): the kernel is entered at `startup_64` (its load address + 0x200) in long mode,
//! with the loaded kernel, boot_params and the command line identity-mapped, a GDT whose
//! `__BOOT_CS` (0x10) is a 64-bit code segment and `__BOOT_DS` (0x18) a flat data segment in
//! CS, DS, ES and SS, interrupts off and RSI = boot_params.
//!
//! The vCPU starts as for the 32-bit protocol (flat protected mode, paging off) at a small
//! trampoline the loader writes below the legacy hole: it loads the GDT, turns on PAE,
//! points CR3 at identity page tables of the first 4 GiB (2 MiB pages), sets EFER.LME,
//! turns on paging (the CPU activates IA-32e mode, SDM Vol. 3A §10.8.5) and jumps through
//! `__BOOT_CS` into 64-bit code that loads the data segments, RSI and jumps to
//! `startup_64`. Everything it touches is in this module's byte strings, checked in the host
//! tests by decoding them and walking the tables.

use alloc::vec::Vec;

/// The PML4; the PDPT and four page directories follow it, one page each.
pub const TABLES_GPA: u64 = 0x9000;
/// Pages of page tables: PML4, PDPT, 4 page directories.
pub const TABLE_PAGES: u64 = 6;
/// The trampoline page: GDT, its pointer, then the code at [`CODE_OFFSET`].
pub const TRAMPOLINE_GPA: u64 = TABLES_GPA + TABLE_PAGES * 4096;
/// Where the trampoline's code starts in its page (the vCPU's 32-bit entry point).
pub const CODE_OFFSET: u64 = 0x40;
/// The 64-bit entry's offset from the kernel's load address (boot.rst: "at offset 0x200").
pub const STARTUP_64: u64 = 0x200;
/// `__BOOT_CS` and `__BOOT_DS`.
pub const BOOT_CS: u16 = 0x10;
/// Flat data.
pub const BOOT_DS: u16 = 0x18;

const PRESENT_WRITE: u64 = 0b11;
const PS: u64 = 1 << 7;

/// Identity page tables for [0, 4 GiB) with 2 MiB pages, for [`TABLES_GPA`].
pub fn tables() -> Vec<u8> {
    let mut t = alloc::vec![0u8; (TABLE_PAGES * 4096) as usize];
    let mut put = |page: u64, index: u64, v: u64| {
        let o = (page * 4096 + index * 8) as usize;
        t[o..o + 8].copy_from_slice(&v.to_le_bytes());
    };
    put(0, 0, (TABLES_GPA + 4096) | PRESENT_WRITE);
    for gib in 0..4 {
        let pd = TABLES_GPA + (2 + gib) * 4096;
        put(1, gib, pd | PRESENT_WRITE);
        for j in 0..512 {
            put(2 + gib, j, (gib << 30) | (j << 21) | PS | PRESENT_WRITE);
        }
    }
    t
}

/// The GDT: null, a flat 32-bit code segment (0x08, what the vCPU enters with), `__BOOT_CS`
/// (64-bit code) and `__BOOT_DS` (flat data); SDM Vol. 3A §3.4.5.
pub const GDT: [u64; 4] = [0, 0x00CF_9A00_0000_FFFF, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];

/// The trampoline page for a kernel loaded at `kernel` with boot_params at `boot_params`:
/// the GDT at offset 0, its pointer at 0x20, the code at [`CODE_OFFSET`].
pub fn trampoline(kernel: u64, boot_params: u64) -> Vec<u8> {
    let base = TRAMPOLINE_GPA;
    let mut p = Vec::with_capacity(0x100);
    for d in GDT {
        p.extend_from_slice(&d.to_le_bytes());
    }
    // The pointer lgdt loads: limit, then the 32-bit base.
    p.extend_from_slice(&((GDT.len() * 8 - 1) as u16).to_le_bytes());
    p.extend_from_slice(&(base as u32).to_le_bytes());
    p.resize(CODE_OFFSET as usize, 0);
    let abs = |p: &Vec<u8>| base as u32 + p.len() as u32;
    // 32-bit protected mode, paging off.
    p.extend_from_slice(&[0x0F, 0x01, 0x15]); // lgdt [gdtr]
    p.extend_from_slice(&(base as u32 + 0x20).to_le_bytes());
    p.extend_from_slice(&[0x0F, 0x20, 0xE0, 0x83, 0xC8, 0x20, 0x0F, 0x22, 0xE0]); // CR4.PAE
    p.push(0xB8); // mov eax, PML4
    p.extend_from_slice(&(TABLES_GPA as u32).to_le_bytes());
    p.extend_from_slice(&[0x0F, 0x22, 0xD8]); // mov cr3, eax
    p.extend_from_slice(&[0xB9, 0x80, 0x00, 0x00, 0xC0, 0x0F, 0x32]); // rdmsr EFER
    p.extend_from_slice(&[0x0D, 0x00, 0x01, 0x00, 0x00, 0x0F, 0x30]); // LME, wrmsr
    p.extend_from_slice(&[0x0F, 0x20, 0xC0, 0x0D, 0x01, 0x00, 0x00, 0x80, 0x0F, 0x22, 0xC0]); // PG|PE
                                                                                              // jmp far __BOOT_CS:long (7 bytes; `long` follows it).
    let long = abs(&p) + 7;
    p.push(0xEA);
    p.extend_from_slice(&long.to_le_bytes());
    p.extend_from_slice(&BOOT_CS.to_le_bytes());
    // 64-bit mode.
    p.push(0xB8); // mov eax, __BOOT_DS
    p.extend_from_slice(&u32::from(BOOT_DS).to_le_bytes());
    p.extend_from_slice(&[0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xD0, 0x8E, 0xE0, 0x8E, 0xE8]); // ds es ss fs gs
    p.extend_from_slice(&[0x48, 0xBE]); // mov rsi, boot_params
    p.extend_from_slice(&boot_params.to_le_bytes());
    p.extend_from_slice(&[0x48, 0xB8]); // mov rax, startup_64
    p.extend_from_slice(&(kernel + STARTUP_64).to_le_bytes());
    p.extend_from_slice(&[0xFF, 0xE0]); // jmp rax
    p
}
