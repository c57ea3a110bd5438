//! The firmware binary: Multiboot 1 header, the 32→64-bit trampoline, the AP real-mode
//! trampoline, and the jump into `gestalt_firmware::kmain`. Everything else lives in the lib.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("gestalt-firmware runs on bare metal: build it with `cargo firmware` (see README)");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod boot {
    // Multiboot 1 header with the a.out kludge (Multiboot spec 0.6.96 §3.1.1–3.1.3): flags bit 0
    // (page-aligned modules), bit 1 (memory map), bit 16 (address fields valid). The loader
    // enters `_start32` in 32-bit protected mode, paging off, EAX = 0x2BADB002, EBX = info.
    core::arch::global_asm!(
        r#"
.section .multiboot, "a"
.balign 4
mb_header:
    .long 0x1BADB002
    .long 0x00010003
    .long -(0x1BADB002 + 0x00010003)
    .long mb_header
    .long __image_start
    .long __load_end
    .long __bss_end
    .long _start32

.section .data.boot_args, "aw"
.balign 4
boot_magic: .long 0
boot_mbi:   .long 0

.section .rodata.boot_gdt, "a"
.balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_ptr:
    .word 23
    .long boot_gdt
boot_msg_no_lm:
    .asciz "gestalt: this CPU has no long mode (x86-64); halted\r\n"

.section .bss.boot_tables, "aw", @nobits
.balign 4096
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 16384
.balign 16
.global boot_stack_bottom
boot_stack_bottom: .skip 65536
.global boot_stack_top
boot_stack_top:

.section .text.boot32, "ax"
.code32
.global _start32
_start32:
    cli
    cld
    movl %eax, boot_magic
    movl %ebx, boot_mbi
    # Zero .bss ourselves: a chain of loaders may not.
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl
    movl $boot_stack_top, %esp

    # Long mode present? (SDM Vol. 2A CPUID 80000001h: EDX bit 29 LM, bit 20 NX)
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb 90f
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz 90f
    movl %edx, %ebx

    # Identity-map the first 4 GiB with 2 MiB pages; Rust builds the real tables later.
    movl $boot_pdpt, %eax
    orl $3, %eax
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $3, %eax
    movl $boot_pdpt, %edi
    movl $4, %ecx
1:  movl %eax, (%edi)
    addl $4096, %eax
    addl $8, %edi
    loop 1b
    movl $boot_pd, %edi
    movl $0x83, %eax
    movl $2048, %ecx
2:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b

    # PAE, CR3, EFER.LME (+NXE when present), paging (SDM Vol. 3A §10.8.5).
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    testl $(1 << 20), %ebx
    jz 3f
    orl $(1 << 11), %eax
3:  wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $start64

90: movl $boot_msg_no_lm, %esi
91: lodsb
    testb %al, %al
    jz 92f
    movw $0x3F8, %dx
    outb %al, %dx
    jmp 91b
92: hlt
    jmp 92b

.code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl boot_magic(%rip), %edi
    movl boot_mbi(%rip), %esi
    call rust_entry
93: hlt
    jmp 93b
"#,
        options(att_syntax)
    );

    // The application-processor trampoline, copied to physical 0x8000 and started by SIPI
    // vector 0x08 (SDM Vol. 3A §9.4.4.1). Real mode → protected mode → long mode with the BSP's
    // CR3, then a call to the entry the BSP left in the data block at the end.
    core::arch::global_asm!(include_str!("arch/ap_trampoline.s"), options(att_syntax));

    /// Called by `start64` on the boot stack with the loader's EAX and EBX.
    #[unsafe(no_mangle)]
    extern "C" fn rust_entry(magic: u32, info_addr: u32) -> ! {
        gestalt_firmware::kmain(magic, info_addr)
    }
}
