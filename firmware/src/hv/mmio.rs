//! MMIO emulation's pure half: decodes the guest instruction that faulted on a device page
//! (iced-x86's decoder) into a load or store of 1, 2, 4 or 8 bytes, and applies it to the
//! guest's registers with the architecture's rules for partial writes (SDM Vol. 1 §3.4.1.1:
//! a 32-bit destination zero-extends into the 64-bit register, 8- and 16-bit ones merge).
//! Only the MOV forms compilers emit for `readl`/`writel`-style accessors are accepted (MOV
//! to and from a register, MOV of an immediate, MOVZX); anything else is an error the caller
//! reports, never a guess.

use core::fmt;

use iced_x86::{Code, Decoder, DecoderOptions, OpKind, Register};

use super::Regs;

/// A general-purpose register as an operand: index in encoding order (RAX = 0 .. R15 = 15)
/// and, for AH/CH/DH/BH, the high byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpr {
    /// 0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8.. = R8..
    pub index: u8,
    /// Bits 15:8 of the register (AH, CH, DH, BH).
    pub high: bool,
}

/// What the instruction does to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reads `size` bytes into `dst`, written `dst_size` wide (wider for MOVZX, zero-filled).
    Load {
        /// Destination register.
        dst: Gpr,
        /// Bytes of the destination written (1, 2, 4, 8).
        dst_size: u8,
    },
    /// Writes the low `size` bytes of a register.
    StoreReg(Gpr),
    /// Writes an immediate (already sign-extended where the encoding does).
    StoreImm(u64),
}

/// One decoded MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The instruction's length (RIP moves by it).
    pub len: u8,
    /// Bytes accessed on the device: 1, 2, 4 or 8.
    pub size: u8,
    /// The operation.
    pub op: Op,
}

/// Why an instruction cannot be emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// The bytes do not decode (or are cut off).
    Invalid,
    /// A valid instruction this emulation does not do (a string move, a read-modify-write,
    /// a vector load...).
    Unsupported,
    /// The CPU mode's code size is not 16, 32 or 64 bits.
    Mode,
}

impl MmioError {
    /// The reason as a static string (for the guest's fatal verdict).
    pub fn what(self) -> &'static str {
        match self {
            MmioError::Invalid => "MMIO: the faulting instruction does not decode",
            MmioError::Unsupported => "MMIO: the faulting instruction is not a MOV load or store",
            MmioError::Mode => "MMIO: the guest's code size is not 16, 32 or 64 bits",
        }
    }
}

impl fmt::Display for MmioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmioError::Invalid => write!(f, "the faulting instruction does not decode"),
            MmioError::Unsupported => {
                write!(f, "the faulting instruction is not a MOV load or store (not emulated)")
            }
            MmioError::Mode => write!(f, "the guest's code size is not 16, 32 or 64 bits"),
        }
    }
}

fn gpr(r: Register) -> Option<(Gpr, u8)> {
    // iced numbers the GPRs AL..R15L (1..=20, with AH..BH at 5..=8), AX..R15W (21..=36),
    // EAX..R15D (37..=52), RAX..R15 (53..=68), each group in encoding order.
    let n = r as u32;
    let g = |index: u32, high: bool| Gpr { index: index as u8, high };
    Some(match n {
        1..=4 => (g(n - 1, false), 1),
        5..=8 => (g(n - 5, true), 1),
        9..=20 => (g(n - 5, false), 1),
        21..=36 => (g(n - 21, false), 2),
        37..=52 => (g(n - 37, false), 4),
        53..=68 => (g(n - 53, false), 8),
        _ => return None,
    })
}

/// Decodes the instruction at the start of `bytes`, executed with a `bitness`-bit code size.
pub fn decode(bytes: &[u8], bitness: u32) -> Result<Access, MmioError> {
    if !matches!(bitness, 16 | 32 | 64) {
        return Err(MmioError::Mode);
    }
    let mut d = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        return Err(MmioError::Invalid);
    }
    let len = i.len() as u8;
    let reg = |n: u32| gpr(i.op_register(n)).ok_or(MmioError::Unsupported);
    let mem = |n: u32| i.op_kind(n) == OpKind::Memory;
    let (size, op) = match i.code() {
        Code::Mov_rm8_r8 | Code::Mov_rm16_r16 | Code::Mov_rm32_r32 | Code::Mov_rm64_r64
            if mem(0) =>
        {
            let (r, size) = reg(1)?;
            (size, Op::StoreReg(r))
        }
        Code::Mov_r8_rm8 | Code::Mov_r16_rm16 | Code::Mov_r32_rm32 | Code::Mov_r64_rm64
            if mem(1) =>
        {
            let (r, size) = reg(0)?;
            (size, Op::Load { dst: r, dst_size: size })
        }
        Code::Movzx_r16_rm8 | Code::Movzx_r32_rm8 | Code::Movzx_r64_rm8 if mem(1) => {
            let (r, size) = reg(0)?;
            (1, Op::Load { dst: r, dst_size: size })
        }
        Code::Movzx_r16_rm16 | Code::Movzx_r32_rm16 | Code::Movzx_r64_rm16 if mem(1) => {
            let (r, size) = reg(0)?;
            (2, Op::Load { dst: r, dst_size: size })
        }
        Code::Mov_rm8_imm8 if mem(0) => (1, Op::StoreImm(i.immediate(1) & 0xff)),
        Code::Mov_rm16_imm16 if mem(0) => (2, Op::StoreImm(i.immediate(1) & 0xffff)),
        Code::Mov_rm32_imm32 if mem(0) => (4, Op::StoreImm(i.immediate(1) & 0xffff_ffff)),
        // imm32 sign-extended to 64 bits (the decoder's immediate is already extended).
        Code::Mov_rm64_imm32 if mem(0) => (8, Op::StoreImm(i.immediate(1))),
        _ => return Err(MmioError::Unsupported),
    };
    Ok(Access { len, size, op })
}

fn slot(regs: &mut Regs, index: u8) -> &mut u64 {
    match index {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        // RSP lives in the backend's guest state; `decode` callers refuse it (see `uses_rsp`).
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    }
}

fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

impl Access {
    /// True when the register operand is RSP/ESP/SP/SPL, which [`Regs`] does not hold.
    pub fn uses_rsp(&self) -> bool {
        let r = match self.op {
            Op::Load { dst, .. } | Op::StoreReg(dst) => dst,
            Op::StoreImm(_) => return false,
        };
        r.index == 4 && !r.high
    }

    /// The value a store writes (`size` bytes), None for a load.
    pub fn store_value(&self, regs: &mut Regs) -> Option<u64> {
        match self.op {
            Op::Load { .. } => None,
            Op::StoreImm(v) => Some(v & mask(self.size)),
            Op::StoreReg(r) => {
                let v = *slot(regs, r.index);
                Some(if r.high { (v >> 8) & 0xff } else { v & mask(self.size) })
            }
        }
    }

    /// Completes a load with `value` read from the device (nothing for a store).
    pub fn complete(&self, regs: &mut Regs, value: u64) {
        let Op::Load { dst, dst_size } = self.op else { return };
        let v = value & mask(self.size);
        let r = slot(regs, dst.index);
        *r = match (dst_size, dst.high) {
            (1, true) => (*r & !0xff00) | (v << 8),
            (4, _) => v,
            (8, _) => v,
            (n, _) => (*r & !mask(n)) | v,
        };
    }
}

/// The code size (16, 32, 64) of a guest running with `efer` and CS access rights `cs_ar`
/// (VMX format: L is bit 13, D/B bit 14).
pub fn bitness(efer: u64, cs_ar: u32) -> u32 {
    if efer & (1 << 10) != 0 && cs_ar & (1 << 13) != 0 {
        64
    } else if cs_ar & (1 << 14) != 0 {
        32
    } else {
        16
    }
}

/// Translates guest-linear `la` to guest-physical through the guest's own page tables (SDM
/// Vol. 3A §4.3 32-bit, §4.4 PAE, §4.5 4-level paging), reading entries with `read`
/// (guest-physical address, bytes: 4 or 8). None when an entry is not present or unreadable.
/// Rights are not checked: the CPU already fetched the instruction through this walk.
pub fn translate(
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    la: u64,
    mut read: impl FnMut(u64, usize) -> Option<u64>,
) -> Option<u64> {
    const P: u64 = 1;
    const PS: u64 = 1 << 7;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    if cr0 & (1 << 31) == 0 {
        return Some(la & 0xffff_ffff);
    }
    if efer & (1 << 10) != 0 {
        let mut table = cr3 & ADDR;
        for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
            let e = read(table + ((la >> shift) & 0x1ff) * 8, 8)?;
            if e & P == 0 {
                return None;
            }
            if (level == 3 || level == 2) && e & PS != 0 {
                let size = 1u64 << shift;
                return Some((e & ADDR & !(size - 1)) | (la & (size - 1)));
            }
            table = e & ADDR;
        }
        return Some(table | (la & 0xfff));
    }
    if cr4 & (1 << 5) != 0 {
        let pdpte = read((cr3 & 0xffff_ffe0) + ((la >> 30) & 3) * 8, 8)?;
        if pdpte & P == 0 {
            return None;
        }
        let pde = read((pdpte & ADDR) + ((la >> 21) & 0x1ff) * 8, 8)?;
        if pde & P == 0 {
            return None;
        }
        if pde & PS != 0 {
            return Some((pde & ADDR & !0x1f_ffff) | (la & 0x1f_ffff));
        }
        let pte = read((pde & ADDR) + ((la >> 12) & 0x1ff) * 8, 8)?;
        return (pte & P != 0).then_some((pte & ADDR) | (la & 0xfff));
    }
    let la = la & 0xffff_ffff;
    let pde = read((cr3 & 0xffff_f000) + (la >> 22) * 4, 4)?;
    if pde & P == 0 {
        return None;
    }
    if pde & PS != 0 && cr4 & (1 << 4) != 0 {
        // 4 MiB page: bits 31:22 from the PDE, 39:32 from its bits 20:13 (PSE-36).
        return Some((pde & 0xffc0_0000) | ((pde & 0x1f_e000) << 19) | (la & 0x3f_ffff));
    }
    let pte = read((pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4, 4)?;
    (pte & P != 0).then_some((pte & 0xffff_f000) | (la & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> Regs {
        Regs { rax: 0x1111_2222_3333_4444, rcx: 0xaaaa_bbbb_cccc_dd11, ..Regs::default() }
    }

    #[test]
    fn stores_from_registers_of_every_width() {
        // mov [rdx], eax / mov [rdx], rax / mov [rdx], ax / mov [rdx], al / mov [rdx], ch
        let cases: [(&[u8], u8, u64); 5] = [
            (&[0x89, 0x02], 4, 0x3333_4444),
            (&[0x48, 0x89, 0x02], 8, 0x1111_2222_3333_4444),
            (&[0x66, 0x89, 0x02], 2, 0x4444),
            (&[0x88, 0x02], 1, 0x44),
            (&[0x88, 0x2a], 1, 0xdd),
        ];
        for (bytes, size, value) in cases {
            let a = decode(bytes, 64).unwrap();
            assert_eq!((a.len as usize, a.size), (bytes.len(), size), "{bytes:x?}");
            let mut r = regs();
            assert_eq!(a.store_value(&mut r), Some(value), "{bytes:x?}");
        }
    }

    #[test]
    fn loads_merge_or_zero_extend_as_the_architecture_says() {
        let load = |bytes: &[u8], value: u64| {
            let a = decode(bytes, 64).unwrap();
            assert_eq!(a.store_value(&mut regs()), None);
            let mut r = regs();
            a.complete(&mut r, value);
            (a.size, r.rax)
        };
        // mov eax, [rdx]: 32-bit destinations clear bits 63:32.
        assert_eq!(load(&[0x8b, 0x02], 0x1_0000_0017), (4, 0x17));
        // mov rax, [rdx]
        assert_eq!(load(&[0x48, 0x8b, 0x02], u64::MAX), (8, u64::MAX));
        // mov ax, [rdx] / mov al, [rdx] / mov ah, [rdx]: merge.
        assert_eq!(load(&[0x66, 0x8b, 0x02], 0xbeef), (2, 0x1111_2222_3333_beef));
        assert_eq!(load(&[0x8a, 0x02], 0x5a), (1, 0x1111_2222_3333_445a));
        assert_eq!(load(&[0x8a, 0x22], 0x5a), (1, 0x1111_2222_3333_5a44));
        // movzx eax, byte [rdx] / movzx eax, word [rdx]: 1 or 2 bytes read, register zeroed.
        assert_eq!(load(&[0x0f, 0xb6, 0x02], 0xff), (1, 0xff));
        assert_eq!(load(&[0x0f, 0xb7, 0x02], 0x1234), (2, 0x1234));
    }

    #[test]
    fn high_registers_and_displacements_are_decoded() {
        // mov r9d, [rdi+0x10] (44 8b 4f 10): a REX register and an 8-bit displacement.
        let a = decode(&[0x44, 0x8b, 0x4f, 0x10], 64).unwrap();
        assert_eq!(a.len, 4);
        let mut r = Regs { r9: u64::MAX, ..Regs::default() };
        a.complete(&mut r, 0x20);
        assert_eq!(r.r9, 0x20);
        // mov [r12], r15 (4d 89 3c 24)
        let a = decode(&[0x4d, 0x89, 0x3c, 0x24], 64).unwrap();
        let mut r = Regs { r15: 7, ..Regs::default() };
        assert_eq!((a.len, a.size, a.store_value(&mut r)), (4, 8, Some(7)));
    }

    #[test]
    fn immediate_stores_keep_their_width_and_sign_extension() {
        // mov dword [rdx], 0x12345678
        let a = decode(&[0xc7, 0x02, 0x78, 0x56, 0x34, 0x12], 64).unwrap();
        assert_eq!((a.len, a.size, a.store_value(&mut regs())), (6, 4, Some(0x1234_5678)));
        // mov qword [rdx], -1 (sign-extended imm32)
        let a = decode(&[0x48, 0xc7, 0x02, 0xff, 0xff, 0xff, 0xff], 64).unwrap();
        assert_eq!((a.size, a.store_value(&mut regs())), (8, Some(u64::MAX)));
        // mov byte [rdx], 0x80 / mov word [rdx], 0x8000
        let a = decode(&[0xc6, 0x02, 0x80], 64).unwrap();
        assert_eq!((a.size, a.store_value(&mut regs())), (1, Some(0x80)));
        let a = decode(&[0x66, 0xc7, 0x02, 0x00, 0x80], 64).unwrap();
        assert_eq!((a.size, a.store_value(&mut regs())), (2, Some(0x8000)));
    }

    #[test]
    fn thirty_two_bit_code_decodes_too() {
        // mov [edx], eax in 32-bit code; 0x48 would be DEC EAX there, not REX.W.
        let a = decode(&[0x89, 0x02], 32).unwrap();
        assert_eq!((a.len, a.size), (2, 4));
        assert_eq!(decode(&[0x89, 0x02], 8), Err(MmioError::Mode));
    }

    #[test]
    fn everything_else_is_refused_not_guessed() {
        // add [rdx], eax / movsd / movaps xmm0, [rdx] / mov eax, ebx (no memory)
        for bytes in [&[0x01, 0x02][..], &[0xa5], &[0x0f, 0x28, 0x02], &[0x89, 0xd8]] {
            assert_eq!(decode(bytes, 64), Err(MmioError::Unsupported), "{bytes:x?}");
        }
        assert_eq!(decode(&[], 64), Err(MmioError::Invalid));
        assert_eq!(decode(&[0x8b], 64), Err(MmioError::Invalid), "cut off");
        assert_eq!(decode(&[0x0f, 0xff], 64), Err(MmioError::Invalid));
        // mov [rdx], esp names RSP, which the register file does not hold.
        assert!(decode(&[0x89, 0x22], 64).unwrap().uses_rsp());
        for n in 0..=255u8 {
            let _ = decode(&[n, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07], 64);
        }
    }

    use std::collections::BTreeMap;

    fn mem_reader(m: &BTreeMap<u64, u64>) -> impl FnMut(u64, usize) -> Option<u64> + '_ {
        |a, n| m.get(&a).map(|v| if n == 4 { v & 0xffff_ffff } else { *v })
    }

    #[test]
    fn four_level_walks_find_4k_2m_and_1g_pages() {
        let efer = (1 << 8) | (1 << 10);
        let (cr0, cr4) = (1 << 31 | 1, 1 << 5);
        let la: u64 = 0xffff_8000_1234_5678;
        let (i4, i3, i2, i1) =
            ((la >> 39) & 511, (la >> 30) & 511, (la >> 21) & 511, (la >> 12) & 511);
        let mut m = BTreeMap::new();
        m.insert(0x1000 + i4 * 8, 0x2000 | 3);
        m.insert(0x2000 + i3 * 8, 0x3000 | 3);
        m.insert(0x3000 + i2 * 8, 0x4000 | 3);
        m.insert(0x4000 + i1 * 8, 0xabc_d000 | 3);
        assert_eq!(translate(cr0, 0x1000, cr4, efer, la, mem_reader(&m)), Some(0xabc_d678));
        m.insert(0x3000 + i2 * 8, 0x4020_0000 | 0x83);
        assert_eq!(
            translate(cr0, 0x1000, cr4, efer, la, mem_reader(&m)),
            Some(0x4020_0000 | (la & 0x1f_ffff))
        );
        m.insert(0x2000 + i3 * 8, 0x8000_0000 | 0x83);
        assert_eq!(
            translate(cr0, 0x1000, cr4, efer, la, mem_reader(&m)),
            Some(0x8000_0000 | (la & 0x3fff_ffff))
        );
        m.insert(0x1000 + i4 * 8, 0x2000);
        assert_eq!(translate(cr0, 0x1000, cr4, efer, la, mem_reader(&m)), None, "not present");
        assert_eq!(translate(cr0, 0x9000, cr4, efer, la, mem_reader(&m)), None, "unreadable");
    }

    #[test]
    fn pae_32_bit_and_unpaged_walks() {
        let mut m = BTreeMap::new();
        // PAE: PDPTE 0 -> PD at 0x5000, PDE 1 -> 2 MiB page at 0x60_0000.
        m.insert(0x1000, 0x5000 | 1);
        m.insert(0x5008, 0x60_0000 | 0x83);
        assert_eq!(
            translate(1 << 31, 0x1000, 1 << 5, 0, 0x20_1234, mem_reader(&m)),
            Some(0x60_1234)
        );
        // 32-bit: PDE 0 -> PT at 0x7000, PTE 2 -> 0x9000.
        m.insert(0x3000, 0x7000 | 1);
        m.insert(0x7008, 0x9000 | 1);
        assert_eq!(translate(1 << 31, 0x3000, 0, 0, 0x2abc, mem_reader(&m)), Some(0x9abc));
        // 4 MiB page with PSE.
        m.insert(0x3004, 0x0c00_0000 | 0x81);
        assert_eq!(
            translate(1 << 31, 0x3000, 1 << 4, 0, 0x40_0010, mem_reader(&m)),
            Some(0x0c00_0010)
        );
        assert_eq!(translate(1, 0, 0, 0, 0xfec0_0010, mem_reader(&m)), Some(0xfec0_0010));
    }

    #[test]
    fn code_size_follows_lma_and_cs() {
        assert_eq!(bitness(1 << 10, 1 << 13), 64);
        assert_eq!(bitness(0, 1 << 13 | 1 << 14), 32, "L without LMA is not 64-bit");
        assert_eq!(bitness(1 << 10, 1 << 14), 32, "compatibility mode");
        assert_eq!(bitness(0, 0), 16);
    }
}
