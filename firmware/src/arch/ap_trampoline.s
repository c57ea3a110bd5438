# The application-processor trampoline (SDM Vol. 3A §9.4.4.1), shared by the firmware (its own
# APs) and the guest test payloads (theirs). It is copied to physical 0x8000 and started by SIPI
# vector 0x08: real mode → protected mode → long mode with the CR3 and EFER bits left in the
# data block at its end, then a call to `entry(arg)` on `stack`. AT&T syntax.
.section .text.ap_trampoline, "ax"
.code16
.global ap_trampoline_start
ap_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl AP_GDTR
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x18, $AP_PM32

.code32
ap_pm32:
    movw $0x20, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl AP_CR3, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl AP_EFER, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmp $0x08, $AP_LM64

.code64
ap_lm64:
    movw $0x20, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq AP_STACK, %rsp
    movq AP_ARG, %rdi
    movq AP_ENTRY, %rax
    xorl %ebp, %ebp
    callq *%rax
1:  hlt
    jmp 1b

.balign 8
ap_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
ap_gdtr:
    .word 39
    .long 0x8000 + (ap_gdt - ap_trampoline_start)
    .word 0
.balign 8
.global ap_data_cr3
ap_data_cr3:   .long 0
.global ap_data_efer
ap_data_efer:  .long 0
.global ap_data_stack
ap_data_stack: .quad 0
.global ap_data_entry
ap_data_entry: .quad 0
.global ap_data_arg
ap_data_arg:   .quad 0
.global ap_trampoline_end
ap_trampoline_end:

.set AP_GDTR,  0x8000 + (ap_gdtr - ap_trampoline_start)
.set AP_PM32,  0x8000 + (ap_pm32 - ap_trampoline_start)
.set AP_LM64,  0x8000 + (ap_lm64 - ap_trampoline_start)
.set AP_CR3,   0x8000 + (ap_data_cr3 - ap_trampoline_start)
.set AP_EFER,  0x8000 + (ap_data_efer - ap_trampoline_start)
.set AP_STACK, 0x8000 + (ap_data_stack - ap_trampoline_start)
.set AP_ENTRY, 0x8000 + (ap_data_entry - ap_trampoline_start)
.set AP_ARG,   0x8000 + (ap_data_arg - ap_trampoline_start)
