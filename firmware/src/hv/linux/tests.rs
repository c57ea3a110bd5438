use super::*;

/// A synthetic bzImage: `sects` setup sectors, protocol `version`, then `kernel` bytes of
/// protected-mode kernel; header fields as Debian's 6.x kernels carry them.
fn bzimage(sects: u8, version: u16, kernel: usize) -> Vec<u8> {
    let setup = (usize::from(if sects == 0 { 4 } else { sects }) + 1) * 512;
    let mut b = vec![0u8; setup + kernel];
    b[0x1f1] = sects;
    b[0x1fe..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    b[0x201] = 0x6a; // header ends at 0x26c
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    b[0x211] = LOADED_HIGH | (1 << 5);
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    b[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    b[0x234] = 1;
    b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    b[0x260..0x264].copy_from_slice(&(40u32 << 20).to_le_bytes());
    b[0x26b] = 0x5a; // last header byte, to see the copy reaches the end
    b
}

#[test]
fn a_bzimage_header_is_parsed() {
    let img = bzimage(27, 0x020f, 8 << 20);
    let b = parse(&img).unwrap();
    assert_eq!(b.version, 0x020f);
    assert_eq!(b.kernel_offset, 28 * 512);
    assert_eq!(b.kernel_len, 8 << 20);
    assert_eq!((b.initrd_addr_max, b.cmdline_size), (0x7fff_ffff, 2047));
    assert_eq!((b.pref_address, b.init_size), (0x100_0000, 40 << 20));
    assert_eq!(b.header.len(), 0x26c - 0x1f1);
    assert_eq!(*b.header.last().unwrap(), 0x5a);
    // setup_sects = 0 means 4 (boot.rst).
    assert_eq!(parse(&bzimage(0, 0x020f, 4096)).unwrap().kernel_offset, 5 * 512);
}

#[test]
fn non_bzimages_and_old_or_damaged_headers_are_errors_not_panics() {
    assert_eq!(parse(&[0u8; 100]), Err(LinuxError::NotBzImage));
    let mut multiboot = vec![0u8; 8192];
    multiboot[0..4].copy_from_slice(&0x1BAD_B002u32.to_le_bytes());
    assert!(!is_bzimage(&multiboot));
    assert_eq!(parse(&bzimage(4, 0x0205, 4096)), Err(LinuxError::TooOld(0x0205)));
    let mut low = bzimage(4, 0x020f, 4096);
    low[0x211] = 0;
    assert_eq!(parse(&low), Err(LinuxError::NotHigh));
    let full = bzimage(60, 0x020f, 0);
    assert_eq!(parse(&full[..40 * 512]), Err(LinuxError::Truncated));
    for n in 0..0x300 {
        let _ = parse(&full[..n]);
    }
}

#[test]
fn the_kernel_goes_to_its_preferred_address_and_the_initrd_high_under_the_limit() {
    let b = parse(&bzimage(27, 0x020f, 8 << 20)).unwrap();
    let ram = 256 << 20;
    let l = plan(&b, ram, Some(3 * 4096 + 5)).unwrap();
    assert_eq!(l.kernel, 0x100_0000);
    let (at, len) = l.initrd.unwrap();
    assert_eq!(at % 4096, 0);
    assert!(at + len <= ram);
    assert!(ram - (at + len) < 4096, "as high as RAM allows");
    assert!(at >= l.kernel + (40 << 20), "above the kernel's working area");
    assert_eq!(plan(&b, ram, None).unwrap().initrd, None);
}

#[test]
fn initrd_addr_max_caps_the_initrd_below_ram() {
    let mut img = bzimage(27, 0x020f, 1 << 20);
    img[0x22c..0x230].copy_from_slice(&(0x400_0000u32 - 1).to_le_bytes());
    let b = parse(&img).unwrap();
    let (at, len) = plan(&b, 1 << 30, Some(1 << 20)).unwrap().initrd.unwrap();
    assert!(at + len <= 0x400_0000);
    assert_eq!(at, 0x400_0000 - (1 << 20));
}

#[test]
fn without_room_the_layout_is_an_error() {
    let b = parse(&bzimage(27, 0x020f, 1 << 20)).unwrap();
    // 40 MiB init_size at 16 MiB needs 56 MiB; at 1 MiB it needs 41.
    assert_eq!(plan(&b, 48 << 20, None).unwrap().kernel, HIGH);
    assert_eq!(plan(&b, 32 << 20, None), Err(LinuxError::NoRoom));
    assert_eq!(plan(&b, 64 << 20, Some(32 << 20)), Err(LinuxError::InitrdNoRoom));
    assert_eq!(plan(&b, 64 << 20, Some(u64::MAX)), Err(LinuxError::InitrdNoRoom));
}

#[test]
fn a_kernel_that_is_not_relocatable_loads_at_one_mib() {
    let mut img = bzimage(27, 0x020f, 1 << 20);
    img[0x234] = 0;
    let b = parse(&img).unwrap();
    assert_eq!(plan(&b, 256 << 20, None).unwrap().kernel, HIGH);
}

#[test]
fn e820_keeps_low_ram_reserves_the_legacy_hole_and_ends_at_ram() {
    let m = e820(128 << 20);
    assert_eq!(
        m,
        vec![
            E820 { addr: 0, size: 0x9f000, kind: E820_RAM },
            E820 { addr: 0x9f000, size: 0x61000, kind: E820_RESERVED },
            E820 { addr: 0x10_0000, size: (128 << 20) - 0x10_0000, kind: E820_RAM },
        ]
    );
    let ram: u64 = m.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
    assert_eq!(ram, (128 << 20) - 0x61000);
}

fn rd32(p: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(p[o..o + 4].try_into().unwrap())
}

#[test]
fn boot_params_carry_the_header_the_layout_the_map_and_the_rsdp() {
    let img = bzimage(27, 0x020f, 8 << 20);
    let b = parse(&img).unwrap();
    let ram = 256 << 20;
    let l = plan(&b, ram, Some(5 << 20)).unwrap();
    let p = boot_params(&b, &l, ram, 0xe_0000);
    assert_eq!(p.len(), 4096);
    assert_eq!(&p[0x202..0x206], b"HdrS");
    assert_eq!(p[0x26b], 0x5a);
    assert_eq!(p[0x210], 0xff, "type_of_loader");
    assert_eq!(p[0x211] & 1, 1, "LOADED_HIGH kept");
    assert_eq!(u64::from(rd32(&p, 0x214)), l.kernel);
    assert_eq!(u64::from(rd32(&p, 0x228)), CMDLINE_GPA);
    let (at, len) = l.initrd.unwrap();
    assert_eq!((u64::from(rd32(&p, 0x218)), u64::from(rd32(&p, 0x21c))), (at, len));
    assert_eq!(u64::from_le_bytes(p[0x70..0x78].try_into().unwrap()), 0xe_0000);
    assert_eq!(p[0x1e8], 3);
    let e2 = 0x2d0 + 40;
    assert_eq!(u64::from_le_bytes(p[e2..e2 + 8].try_into().unwrap()), 0x10_0000);
    assert_eq!(rd32(&p, e2 + 16), E820_RAM);
    assert_eq!(p[0x1ef], 0, "sentinel clear: the kernel keeps the fields");
}

#[test]
fn the_command_line_is_cut_to_the_kernels_limit_and_terminated() {
    let mut img = bzimage(27, 0x020f, 4096);
    img[0x238..0x23c].copy_from_slice(&4u32.to_le_bytes());
    let b = parse(&img).unwrap();
    assert_eq!(cmdline_bytes(&b, "console=ttyS0"), b"cons\0");
    let b = parse(&bzimage(27, 0x020f, 4096)).unwrap();
    assert_eq!(cmdline_bytes(&b, "a b"), b"a b\0");
}

#[test]
fn the_module_name_is_dropped_from_the_kernel_command_line() {
    assert_eq!(kernel_cmdline("vmlinuz console=ttyS0 quiet"), "console=ttyS0 quiet");
    assert_eq!(kernel_cmdline("console=ttyS0 quiet"), "console=ttyS0 quiet");
    assert_eq!(kernel_cmdline("vmlinuz"), DEFAULT_CMDLINE);
    assert_eq!(kernel_cmdline("  "), DEFAULT_CMDLINE);
}

#[test]
fn a_prepared_guest_writes_kernel_params_cmdline_tables_and_initrd_without_overlap() {
    let img = bzimage(27, 0x020f, 3 << 20);
    let initrd = vec![7u8; 5000];
    let ram = 256 << 20;
    let d = [super::acpi::Domain { first_vcpu: 0, vcpus: 2, ram_base: 0, ram_bytes: ram }];
    let boot = prepare(&img, &initrd, "console=ttyS0", ram, ram, &d).unwrap();
    assert_eq!(boot.entry, 0x100_0000);
    assert_eq!(boot.boot_params, BOOT_PARAMS_GPA);
    let mut spans: Vec<(u64, u64)> =
        boot.writes.iter().map(|(at, b)| (*at, *at + b.len() as u64)).collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "{spans:x?} overlap");
    }
    assert!(spans.iter().all(|s| s.1 <= ram));
    let kernel = &boot.writes[0];
    assert_eq!(kernel.1.len(), 3 << 20);
    assert_eq!(kernel.1.as_ptr(), img[28 * 512..].as_ptr(), "borrowed, not copied");
    let params = &boot.writes[1].1;
    assert_eq!(u64::from_le_bytes(params[0x70..0x78].try_into().unwrap()), super::acpi::BASE);
    assert!(boot.writes.iter().any(|(at, b)| *at == super::acpi::BASE && &b[..8] == b"RSD PTR "));
    assert_eq!(boot.writes.len(), 6);
    let none = prepare(&img, &[], "", ram, ram, &d).unwrap();
    assert_eq!(none.writes.len(), 5, "no initrd written");
    assert_eq!(
        prepare(&img, &[], "", ram, ram, &[]),
        Err(BootError::Acpi(super::acpi::AcpiError::Empty))
    );
    assert_eq!(
        prepare(&[0u8; 10], &[], "", ram, ram, &d),
        Err(BootError::Linux(LinuxError::NotBzImage))
    );
}

/// The bug: Linux on our hardware-reduced FADT reboots through EFI, then the BIOS (a real-mode
/// jump to F000:FFF0), which was zeroed RAM: the guest ran off the end of its code segment
/// instead of resetting.
#[test]
fn the_reset_vector_holds_real_mode_code_that_writes_the_reset_register() {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let img = bzimage(27, 0x020f, 3 << 20);
    let ram = 256 << 20;
    let d = [super::acpi::Domain { first_vcpu: 0, vcpus: 1, ram_base: 0, ram_bytes: ram }];
    let boot = prepare(&img, &[], "", ram, ram, &d).unwrap();
    let stub = boot.writes.iter().find(|(at, _)| *at == RESET_VECTOR_GPA).expect("a stub");
    // The vector's 16 bytes end at 1 MiB, in the legacy hole the e820 map reserves.
    assert!(RESET_VECTOR_GPA + stub.1.len() as u64 <= HIGH);
    assert!(e820(ram).iter().any(|e| e.kind == E820_RESERVED
        && e.addr <= RESET_VECTOR_GPA
        && RESET_VECTOR_GPA + 16 <= e.addr + e.size));
    let mut dec = Decoder::with_ip(16, &stub.1, 0xFFF0, DecoderOptions::NONE);
    let ins: Vec<_> = (0..5).map(|_| dec.decode()).collect();
    let m: Vec<Mnemonic> = ins.iter().map(iced_x86::Instruction::mnemonic).collect();
    assert_eq!(m, [Mnemonic::Mov, Mnemonic::Mov, Mnemonic::Out, Mnemonic::Hlt, Mnemonic::Jmp]);
    assert_eq!(ins[0].immediate8(), super::acpi::RESET_VALUE);
    assert_eq!(ins[1].immediate16(), super::acpi::RESET_PORT);
    assert_eq!(ins[4].near_branch16(), ins[3].ip16(), "spins on the hlt");
    // The value resets through the devices' reset control.
    let mut dev = crate::hv::devices::Devices::default();
    let v = u32::from(ins[0].immediate8());
    let effect = dev.access(ins[1].immediate16(), 1, crate::hv::IoDir::Out, v).1;
    assert_eq!(effect, crate::hv::devices::PortEffect::Reset);
}

/// `bzimage` with `XLF_KERNEL_64` set (Debian's kernels have it).
fn bzimage_64() -> Vec<u8> {
    let mut img = bzimage(27, 0x020f, 3 << 20);
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
    img
}

#[test]
fn the_64_bit_entry_is_taken_only_when_the_kernel_declares_it() {
    assert!(parse(&bzimage_64()).unwrap().kernel_64);
    assert!(!parse(&bzimage(27, 0x020f, 4096)).unwrap().kernel_64);
    // Before protocol 2.12 the field is not xloadflags.
    let mut old = bzimage(27, 0x020b, 4096);
    old[0x236] = 1;
    assert!(!parse(&old).unwrap().kernel_64);
}

#[test]
fn a_64_bit_kernel_starts_at_the_trampoline_with_tables_and_gdt_written_apart() {
    let img = bzimage_64();
    let ram = 256 << 20;
    let d = [super::acpi::Domain { first_vcpu: 0, vcpus: 1, ram_base: 0, ram_bytes: ram }];
    let boot = prepare(&img, &[1; 100], "console=ttyS0", ram, ram, &d).unwrap();
    assert!(boot.long_mode);
    assert_eq!(u64::from(boot.entry), long::TRAMPOLINE_GPA + long::CODE_OFFSET);
    let mut spans: Vec<(u64, u64)> =
        boot.writes.iter().map(|(at, b)| (*at, *at + b.len() as u64)).collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "{spans:x?} overlap");
    }
    // All of it in the low RAM the e820 map gives (the kernel keeps its first 64 KiB).
    let low = |gpa: u64| boot.writes.iter().find(|(at, _)| *at == gpa).map(|(_, b)| b.len());
    let tables = low(long::TABLES_GPA).unwrap() as u64;
    let tramp = low(long::TRAMPOLINE_GPA).unwrap() as u64;
    assert!(long::TRAMPOLINE_GPA + tramp <= 0x10000 && long::TABLES_GPA + tables <= 0x10000);
    assert!(CMDLINE_GPA + CMDLINE_ROOM as u64 <= long::TABLES_GPA);
}

#[test]
fn the_page_tables_map_the_first_4_gib_onto_itself_and_nothing_above() {
    let t = long::tables();
    let read = |gpa: u64, n: usize| {
        let o = gpa.checked_sub(long::TABLES_GPA)? as usize;
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(t.get(o..o + n)?);
        Some(u64::from_le_bytes(b))
    };
    let (cr0, cr4, efer) = ((1 << 31) | 1, 1 << 5, (1 << 8) | (1 << 10));
    let walk = |la: u64| crate::hv::mmio::translate(cr0, long::TABLES_GPA, cr4, efer, la, read);
    for la in [0, 0x7000, 0x1000_0200, 0x0be1_b000, 0x7fff_ffff, 0xfec0_0000, 0xffff_ffff] {
        assert_eq!(walk(la), Some(la), "{la:#x}");
    }
    assert_eq!(walk(1 << 32), None, "nothing above 4 GiB");
    assert_eq!(walk(0xffff_ffff_8100_0000), None, "no kernel mapping: startup_64 builds its own");
}

#[test]
fn the_trampoline_enters_long_mode_and_jumps_to_startup_64_with_boot_params() {
    use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, Register};
    let kernel = 0x100_0000;
    let p = long::trampoline(kernel, BOOT_PARAMS_GPA);
    // The GDT: __BOOT_CS a present 64-bit code segment (L=1, D=0), __BOOT_DS flat
    // read/write data (SDM Vol. 3A §3.4.5).
    let desc = |sel: u16| u64::from_le_bytes(p[usize::from(sel)..][..8].try_into().unwrap());
    let cs = desc(long::BOOT_CS);
    assert_eq!((cs >> 40) & 0x9f, 0x9a, "present, code, readable");
    assert_eq!((cs >> 53) & 3, 1, "L=1, D=0");
    let ds = desc(long::BOOT_DS);
    assert_eq!((ds >> 40) & 0x9f, 0x92, "present, data, writable");
    assert_eq!(u16::from_le_bytes([p[0x20], p[0x21]]), 31, "GDTR limit");
    assert_eq!(
        u64::from(u32::from_le_bytes(p[0x22..0x26].try_into().unwrap())),
        long::TRAMPOLINE_GPA
    );
    let code = long::TRAMPOLINE_GPA + long::CODE_OFFSET;
    let mut dec =
        Decoder::with_ip(32, &p[long::CODE_OFFSET as usize..], code, DecoderOptions::NONE);
    let mut ins = Vec::new();
    while ins.last().is_none_or(|i: &iced_x86::Instruction| i.code() != Code::Jmp_ptr1632) {
        let i = dec.decode();
        assert!(!i.is_invalid(), "{ins:?}");
        ins.push(i);
    }
    let m: Vec<Mnemonic> = ins.iter().map(iced_x86::Instruction::mnemonic).collect();
    use Mnemonic::*;
    assert_eq!(m, [Lgdt, Mov, Or, Mov, Mov, Mov, Mov, Rdmsr, Or, Wrmsr, Mov, Or, Mov, Jmp]);
    assert_eq!(ins[0].memory_displacement64(), long::TRAMPOLINE_GPA + 0x20);
    assert_eq!((ins[1].op1_register(), ins[3].op0_register()), (Register::CR4, Register::CR4));
    assert_eq!(ins[2].immediate32(), 0x20, "CR4.PAE");
    assert_eq!(
        (u64::from(ins[4].immediate32()), ins[5].op0_register()),
        (long::TABLES_GPA, Register::CR3)
    );
    assert_eq!(ins[6].immediate32(), 0xC000_0080, "EFER");
    assert_eq!(ins[8].immediate32(), 1 << 8, "EFER.LME");
    assert_eq!(ins[11].immediate32(), (1 << 31) | 1, "CR0.PG | PE");
    assert_eq!(ins[12].op0_register(), Register::CR0);
    let far = ins[13];
    assert_eq!(far.far_branch_selector(), long::BOOT_CS);
    let long64 = u64::from(far.far_branch32());
    assert_eq!(long64, far.next_ip(), "the 64-bit code follows the jump");
    let rest = &p[(long64 - long::TRAMPOLINE_GPA) as usize..];
    let mut dec = Decoder::with_ip(64, rest, long64, DecoderOptions::NONE);
    let ins: Vec<_> = core::iter::from_fn(|| dec.can_decode().then(|| dec.decode())).collect();
    let segs: Vec<Register> = ins[1..6].iter().map(iced_x86::Instruction::op0_register).collect();
    assert_eq!(ins[0].immediate32(), u32::from(long::BOOT_DS));
    assert_eq!(segs, [Register::DS, Register::ES, Register::SS, Register::FS, Register::GS]);
    assert_eq!((ins[6].op0_register(), ins[6].immediate64()), (Register::RSI, BOOT_PARAMS_GPA));
    assert_eq!((ins[7].op0_register(), ins[7].immediate64()), (Register::RAX, kernel + 0x200));
    assert_eq!((ins[8].mnemonic(), ins[8].op0_register()), (Jmp, Register::RAX));
    assert_eq!(ins.len(), 9);
}
