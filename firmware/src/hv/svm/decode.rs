//! The next RIP where the CPU does not give it (no NRIPS, e.g. QEMU TCG): the guest's
//! instruction bytes fetched through its own paging and the nested tables, and the length of
//! the few instructions the backend intercepts, prefixes included (SDM Vol. 2A §2.1: legacy
//! prefixes, then REX in 64-bit mode, then the opcode). Pure, so host tests drive it.

/// The intercepted instructions whose length the backend needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// CPUID (0F A2).
    Cpuid,
    /// HLT (F4).
    Hlt,
    /// RDMSR (0F 32) or WRMSR (0F 30).
    Msr,
    /// VMMCALL (0F 01 D9).
    Vmmcall,
    /// VMCALL (0F 01 C1): #UD on AMD, taken as a hypercall for payloads built for Intel.
    Vmcall,
    /// XSETBV (0F 01 D1).
    Xsetbv,
    /// INVD (0F 08).
    Invd,
}

impl Insn {
    /// The shortest encoding's length: the answer when the bytes cannot be read.
    pub fn min_len(self) -> u64 {
        match self {
            Insn::Hlt => 1,
            Insn::Cpuid | Insn::Msr | Insn::Invd => 2,
            Insn::Vmmcall | Insn::Vmcall | Insn::Xsetbv => 3,
        }
    }

    /// Whether `op`, opcode bytes cut short, may be the start of this instruction.
    fn could_start(self, op: &[u8]) -> bool {
        let full: &[&[u8]] = match self {
            Insn::Hlt => &[&[0xF4]],
            Insn::Cpuid => &[&[0x0F, 0xA2]],
            Insn::Msr => &[&[0x0F, 0x30], &[0x0F, 0x32]],
            Insn::Vmmcall => &[&[0x0F, 0x01, 0xD9]],
            Insn::Vmcall => &[&[0x0F, 0x01, 0xC1]],
            Insn::Xsetbv => &[&[0x0F, 0x01, 0xD1]],
            Insn::Invd => &[&[0x0F, 0x08]],
        };
        full.iter().any(|f| f.starts_with(op))
    }

    fn matches(self, op: &[u8]) -> bool {
        matches!(
            (self, op),
            (Insn::Hlt, [0xF4, ..])
                | (Insn::Cpuid, [0x0F, 0xA2, ..])
                | (Insn::Msr, [0x0F, 0x30 | 0x32, ..])
                | (Insn::Invd, [0x0F, 0x08, ..])
                | (Insn::Vmmcall, [0x0F, 0x01, 0xD9, ..])
                | (Insn::Vmcall, [0x0F, 0x01, 0xC1, ..])
                | (Insn::Xsetbv, [0x0F, 0x01, 0xD1, ..])
        )
    }
}

/// Longest x86 instruction (SDM Vol. 2A §2.3.11).
pub const MAX_LEN: usize = 15;

/// The length of `insn` at the start of `bytes` (in 64-bit mode when `long64`), or None when
/// the bytes are not that instruction.
pub fn length(bytes: &[u8], long64: bool, insn: Insn) -> Option<u64> {
    let i = prefixes(bytes, long64);
    let op = bytes.get(i..)?;
    let len = i as u64 + insn.min_len();
    (insn.matches(op) && len as usize <= MAX_LEN).then_some(len)
}

/// The legacy prefixes and the REX prefix at the start of `bytes`.
fn prefixes(bytes: &[u8], long64: bool) -> usize {
    let mut i = 0;
    while i < bytes.len().min(MAX_LEN) {
        match bytes[i] {
            0xF0 | 0xF2 | 0xF3 | 0x2E | 0x36 | 0x3E | 0x26 | 0x64 | 0x65 | 0x66 | 0x67 => i += 1,
            _ => break,
        }
    }
    if long64 && bytes.get(i).is_some_and(|b| b & 0xF0 == 0x40) {
        i += 1;
    }
    i
}

/// What the bytes read at the guest's RIP tell of an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// It is there, this long.
    Len(u64),
    /// Something else is.
    Other,
    /// The read stopped before the opcode was whole: its page, or a guest page table on the
    /// way to it, is not mapped here now (on a cluster node, taken by another since the CPU
    /// fetched the instruction).
    Unreadable,
}

/// [`length`] of `insn` in `bytes`, read from the guest's RIP by [`fetch`]; `whole` when
/// the read got all [`MAX_LEN`] bytes.
pub fn find(bytes: &[u8], whole: bool, long64: bool, insn: Insn) -> Found {
    if let Some(n) = length(bytes, long64, insn) {
        return Found::Len(n);
    }
    let op = &bytes[prefixes(bytes, long64)..];
    if !whole && op.len() < insn.min_len() as usize && insn.could_start(op) {
        Found::Unreadable
    } else {
        Found::Other
    }
}

/// The guest's paging registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

impl Paging {
    /// The guest runs 64-bit code when `cs_l` (CS.L) is set in long mode.
    pub fn long64(&self, cs_l: bool) -> bool {
        self.efer & EFER_LMA != 0 && cs_l
    }

    /// The guest-physical address of linear `lin` by the guest's own tables (SDM Vol. 3A
    /// §4.3-4.5), reading table entries with `read(gpa, bytes)`; None when not mapped.
    pub fn translate(&self, lin: u64, read: &mut dyn FnMut(u64, u8) -> Option<u64>) -> Option<u64> {
        if self.cr0 & CR0_PG == 0 {
            return Some(lin & 0xffff_ffff);
        }
        if self.efer & EFER_LMA != 0 {
            return walk(self.cr3 & ADDR, lin, &[39, 30, 21, 12], 8, read);
        }
        if self.cr4 & CR4_PAE != 0 {
            let lin = lin & 0xffff_ffff;
            let pdpte = read((self.cr3 & 0xffff_ffe0) + ((lin >> 30) & 3) * 8, 8)?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            return walk(pdpte & ADDR, lin, &[21, 12], 8, read);
        }
        // 32-bit paging: 4-byte entries, 4 MiB pages with CR4.PSE (bits 39:32 of a 4 MiB
        // frame's address are ignored here: guests that use them are not ours to run).
        let lin = lin & 0xffff_ffff;
        let pde = read((self.cr3 & 0xffff_f000) + ((lin >> 22) & 0x3ff) * 4, 4)?;
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & PS != 0 && self.cr4 & CR4_PSE != 0 {
            return Some((pde & 0xffc0_0000) | (lin & 0x3f_ffff));
        }
        let pte = read((pde & 0xffff_f000) + ((lin >> 12) & 0x3ff) * 4, 4)?;
        (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (lin & 0xfff))
    }
}

/// A walk with 8-byte entries from `table`, one level per shift (large pages above 4 KiB).
fn walk(
    mut table: u64,
    lin: u64,
    shifts: &[u32],
    size: u8,
    read: &mut dyn FnMut(u64, u8) -> Option<u64>,
) -> Option<u64> {
    for (i, &s) in shifts.iter().enumerate() {
        let e = read(table + ((lin >> s) & 0x1ff) * u64::from(size), size)?;
        if e & PRESENT == 0 {
            return None;
        }
        let last = i + 1 == shifts.len();
        if last || (e & PS != 0 && s <= 30) {
            let mask = (1u64 << s) - 1;
            return Some((e & ADDR & !mask) | (lin & mask));
        }
        table = e & ADDR;
    }
    None
}

/// Up to [`MAX_LEN`] bytes at linear `lin` (stopping at the first byte that cannot be read),
/// with guest-physical bytes from `byte`.
pub fn fetch(
    p: &Paging,
    lin: u64,
    read: &mut dyn FnMut(u64, u8) -> Option<u64>,
    out: &mut [u8; MAX_LEN],
) -> usize {
    let mut n = 0;
    let mut page = None;
    while n < MAX_LEN {
        let l = lin.wrapping_add(n as u64);
        let base = match page {
            Some((lp, gp)) if lp == l >> 12 => gp,
            _ => {
                let Some(g) = p.translate(l & !0xfff, read) else { break };
                page = Some((l >> 12, g & !0xfff));
                g & !0xfff
            }
        };
        let Some(b) = read(base | (l & 0xfff), 1) else { break };
        out[n] = b as u8;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn lengths_count_prefixes_and_rex_only_in_64_bit_mode() {
        assert_eq!(length(&[0x0F, 0xA2, 0x90], true, Insn::Cpuid), Some(2));
        assert_eq!(length(&[0xF4], false, Insn::Hlt), Some(1));
        assert_eq!(length(&[0x66, 0x0F, 0x30], false, Insn::Msr), Some(3));
        assert_eq!(length(&[0x48, 0x0F, 0x32], true, Insn::Msr), Some(3));
        // Outside 64-bit mode 0x48 is DEC EAX, not a prefix.
        assert_eq!(length(&[0x48, 0x0F, 0x32], false, Insn::Msr), None);
        assert_eq!(length(&[0x2E, 0x3E, 0x0F, 0x01, 0xD9], true, Insn::Vmmcall), Some(5));
        assert_eq!(length(&[0x0F, 0x01, 0xC1], false, Insn::Vmcall), Some(3));
        assert_eq!(length(&[0x0F, 0x01, 0xD1], true, Insn::Xsetbv), Some(3));
        assert_eq!(length(&[0x0F, 0x08], true, Insn::Invd), Some(2));
    }

    #[test]
    fn a_read_cut_short_before_the_opcode_is_whole_is_unreadable_not_another_instruction() {
        let v = Insn::Vmcall;
        assert_eq!(find(&[], false, true, v), Found::Unreadable);
        assert_eq!(find(&[0x0F, 0x01], false, true, v), Found::Unreadable);
        assert_eq!(find(&[0x66, 0x48], false, true, v), Found::Unreadable, "prefixes only");
        assert_eq!(find(&[0x0F, 0x01, 0xC1], false, true, v), Found::Len(3));
        assert_eq!(find(&[0x48, 0x0F, 0x01, 0xC1], false, true, v), Found::Len(4));
        assert_eq!(find(&[0x0F, 0x0B], false, true, v), Found::Other, "UD2 at a page end");
        assert_eq!(find(&[0x0F, 0x01, 0xD9], false, true, v), Found::Other);
        assert_eq!(find(&[0x0F; MAX_LEN], true, true, v), Found::Other);
        assert_eq!(find(&[0x0F], false, true, Insn::Msr), Found::Unreadable);
        assert_eq!(find(&[0x0F, 0x32], false, true, Insn::Msr), Found::Len(2));
    }

    #[test]
    fn other_instructions_are_not_taken_for_the_intercepted_one() {
        assert_eq!(length(&[0x0F, 0x0B], true, Insn::Vmcall), None); // UD2
        assert_eq!(length(&[0x0F, 0x01, 0xD9], true, Insn::Vmcall), None);
        assert_eq!(length(&[0x0F], true, Insn::Cpuid), None);
        assert_eq!(length(&[], true, Insn::Hlt), None);
        // Fourteen prefixes and the opcode are the longest instruction; fifteen are too many.
        let mut long = [0x66u8; 16];
        long[14] = 0xF4;
        assert_eq!(length(&long, false, Insn::Hlt), Some(15));
        long[14] = 0x66;
        long[15] = 0xF4;
        assert_eq!(length(&long, false, Insn::Hlt), None);
    }

    /// Guest-physical memory as a map of bytes.
    struct Mem(HashMap<u64, u8>);

    impl Mem {
        fn put(&mut self, gpa: u64, v: u64, size: u8) {
            for i in 0..u64::from(size) {
                self.0.insert(gpa + i, (v >> (8 * i)) as u8);
            }
        }
        fn read(&self, gpa: u64, size: u8) -> Option<u64> {
            let mut v = 0;
            for i in 0..u64::from(size) {
                v |= u64::from(*self.0.get(&(gpa + i))?) << (8 * i);
            }
            Some(v)
        }
    }

    #[test]
    fn long_mode_walks_four_levels_and_2mib_pages() {
        let mut m = Mem(HashMap::new());
        // PML4 at 0x1000 -> PDPT at 0x2000 -> PD at 0x3000; PD[1] a 2 MiB page at 0x80_0000,
        // PD[0] -> PT at 0x4000, PT[5] = 0x9000.
        m.put(0x1000, 0x2003, 8);
        m.put(0x2000, 0x3003, 8);
        m.put(0x3008, 0x80_0083, 8);
        m.put(0x3000, 0x4003, 8);
        m.put(0x4000 + 5 * 8, 0x9003, 8);
        let p = Paging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LMA | (1 << 8) };
        let mut rd = |g, s| m.read(g, s);
        assert_eq!(p.translate(0x20_1234, &mut rd), Some(0x80_1234));
        assert_eq!(p.translate(0x5abc, &mut rd), Some(0x9abc));
        assert_eq!(p.translate(0x6000, &mut rd), None);
        assert!(p.long64(true) && !p.long64(false));
    }

    #[test]
    fn pae_and_32_bit_paging_and_no_paging_translate() {
        let mut m = Mem(HashMap::new());
        m.put(0x1000, 0x2001, 8); // PDPTE 0 -> PD 0x2000
        m.put(0x2000 + 8, 0xa0_0083, 8); // PD[1]: 2 MiB at 0xA0_0000
        let pae = Paging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: 0 };
        assert_eq!(pae.translate(0x20_0010, &mut |g, s| m.read(g, s)), Some(0xa0_0010));
        let mut m = Mem(HashMap::new());
        m.put(0x5000, 0x6001, 4); // PDE 0 -> PT 0x6000
        m.put(0x6000 + 4, 0x7001, 4); // PTE 1 -> 0x7000
        m.put(0x5004, 0x40_0081, 4); // PDE 1: 4 MiB page at 4 MiB
        let p32 = Paging { cr0: CR0_PG | 1, cr3: 0x5000, cr4: CR4_PSE, efer: 0 };
        assert_eq!(p32.translate(0x1008, &mut |g, s| m.read(g, s)), Some(0x7008));
        assert_eq!(p32.translate(0x40_0123, &mut |g, s| m.read(g, s)), Some(0x40_0123));
        let off = Paging { cr0: 1, ..Paging::default() };
        assert_eq!(off.translate(0x1_0000_1234, &mut |_, _| None), Some(0x1234));
    }

    #[test]
    fn fetch_follows_an_instruction_across_a_page_boundary() {
        let mut m = Mem(HashMap::new());
        // Linear 0x0ffe..0x1000 -> physical 0x8ffe; 0x1000.. -> physical 0x3000 (PT entries).
        m.put(0x1000, 0x2003, 8);
        m.put(0x2000, 0x4003, 8);
        m.put(0x4000, 0x5003, 8);
        m.put(0x5000, 0x8003, 8);
        m.put(0x5008, 0x3003, 8);
        m.put(0x8ffe, 0x010f, 2);
        m.put(0x3000, 0xd9, 1);
        let p = Paging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LMA };
        let mut out = [0; MAX_LEN];
        let n = fetch(&p, 0xffe, &mut |g, s| m.read(g, s), &mut out);
        assert_eq!(n, 3, "the bytes stop where guest memory does");
        assert_eq!(length(&out[..n], true, Insn::Vmmcall), Some(3));
    }
}
