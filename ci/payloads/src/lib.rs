//! Shared runtime of the guest payloads: the Multiboot 1 entry (32-bit protected mode → long
//! mode with identity-mapped 4 GiB), serial output on COM1, x2APIC (MSR) access, starting the
//! other vCPUs with INIT/SIPI through a real-mode trampoline at 0x8000, an IDT, hypercalls and
//! the debug-exit port. Each binary in `src/bin/` is one test and prints PASS/FAIL lines.
#![no_std]
#![feature(abi_x86_interrupt)]

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

global_asm!(
    r#"
.section .multiboot, "a"
.balign 4
    .long 0x1BADB002
    .long 0x00000003
    .long -(0x1BADB002 + 0x00000003)

.section .bss.boot, "aw", @nobits
.balign 4096
pl_pml4: .skip 4096
pl_pdpt: .skip 4096
pl_pd:   .skip 16384
.balign 16
pl_stack: .skip 65536
pl_stack_top:

.section .data.boot, "aw"
.balign 8
pl_mbi: .long 0
.balign 16
pl_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
pl_gdt_ptr:
    .word 23
    .long pl_gdt

.section .text.boot32, "ax"
.code32
.global _start32
_start32:
    cli
    cld
    movl %ebx, pl_mbi
    movl $pl_stack_top, %esp
    movl $pl_pdpt, %eax
    orl $3, %eax
    movl %eax, pl_pml4
    movl $pl_pd, %eax
    orl $3, %eax
    movl $pl_pdpt, %edi
    movl $4, %ecx
1:  movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $4096, %eax
    addl $8, %edi
    loop 1b
    movl $pl_pd, %edi
    movl $0x83, %eax
    movl $2048, %ecx
2:  movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl $pl_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr
    # Paging on the way Linux's 32-bit entry does it: one constant CR0 (PE|MP|ET|NE|WP|AM|PG)
    # with EFER.LME already set. NE differs from the shadow, so the write exits and the
    # hypervisor itself must activate IA-32e mode (EFER.LMA and the entry control).
    movl $0x80050033, %eax
    movl %eax, %cr0
    lgdt pl_gdt_ptr
    ljmp $0x08, $pl_start64

.code64
pl_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $pl_stack_top, %rsp
    xorl %ebp, %ebp
    movl pl_mbi(%rip), %edi
    call payload_main
3:  hlt
    jmp 3b

"#,
    options(att_syntax)
);

// The firmware's own AP trampoline, shared: the payload starts its APs the same way.
global_asm!(include_str!("../../../firmware/src/arch/ap_trampoline.s"), options(att_syntax));

/// Port output.
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O in our own guest.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

/// Port input.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O in our own guest.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack)) };
    v
}

/// 32-bit port output.
pub fn outl(port: u16, v: u32) {
    // SAFETY: port I/O in our own guest.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) };
}

static PRINT: AtomicBool = AtomicBool::new(false);

struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            while inb(0x3FD) & 0x20 == 0 {}
            outb(0x3F8, b);
        }
        Ok(())
    }
}

/// Prints one whole line (other vCPUs wait).
pub fn print_line(args: fmt::Arguments<'_>) {
    while PRINT.swap(true, Ordering::Acquire) {
        core::hint::spin_loop();
    }
    let _ = Com1.write_fmt(args);
    let _ = Com1.write_str("\n");
    PRINT.store(false, Ordering::Release);
}

/// Prints a line on COM1.
#[macro_export]
macro_rules! println { ($($t:tt)*) => { $crate::print_line(format_args!($($t)*)) } }

/// RDMSR.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the hypervisor emulates or passes the MSRs the payloads use.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// WRMSR.
pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: as for `rdmsr`.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPUID (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Hypercall numbers: the hypervisor's own definition.
#[path = "../../../firmware/src/hv/hypercall.rs"]
pub mod hc;

/// VMCALL with RAX = nr, RBX, RCX.
pub fn vmcall(nr: u64, a: u64, b: u64) -> u64 {
    let ret: u64;
    // SAFETY: VMCALL exits to the hypervisor, which follows the ABI above.
    unsafe {
        asm!("push rbx", "mov rbx, {a}", "vmcall", "pop rbx", a = in(reg) a,
             inlateout("rax") nr => ret, in("rcx") b, options(nostack));
    }
    ret
}

/// Ends the guest through the debug-exit port (0 = success).
pub fn exit(code: u32) -> ! {
    outl(0xf4, code);
    loop {
        // SAFETY: halting is always allowed.
        unsafe { asm!("cli", "hlt") };
    }
}

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// TSC ticks per second, from the hypervisor.
pub fn tsc_hz() -> u64 {
    let mut hz = TSC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        hz = vmcall(hc::TSC_HZ, 0, 0).max(1_000_000);
        TSC_HZ.store(hz, Ordering::Relaxed);
    }
    hz
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    let end = rdtsc() + tsc_hz() / 1_000_000 * us;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// vCPUs in the system (CPUID 0BH, core level).
pub fn vcpus() -> u32 {
    cpuid(0xb, 1).1 & 0xffff
}

/// Switches the local APIC to x2APIC mode (IA32_APIC_BASE EN | EXTD).
pub fn x2apic_enable() {
    wrmsr(0x1B, rdmsr(0x1B) | (1 << 11) | (1 << 10));
    wrmsr(0x80F, 0x1FF);
}

/// This vCPU's x2APIC id.
pub fn apic_id() -> u32 {
    rdmsr(0x802) as u32
}

/// Writes the ICR (destination in the high half).
pub fn send_ipi(dest: u32, low: u32) {
    wrmsr(0x830, (u64::from(dest) << 32) | u64::from(low));
}

/// End of interrupt.
pub fn eoi() {
    wrmsr(0x80B, 0);
}

/// The interrupt frame the CPU pushes.
#[repr(C)]
pub struct Frame {
    /// RIP.
    pub rip: u64,
    /// CS.
    pub cs: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RSP.
    pub rsp: u64,
    /// SS.
    pub ss: u64,
}

/// An interrupt handler.
pub type Handler = extern "x86-interrupt" fn(Frame);

static mut IDT: [u64; 512] = [0; 512];

/// Installs `h` for `vector` (64-bit interrupt gate, code selector 0x08).
pub fn set_gate(vector: u8, h: Handler) {
    let a = h as usize as u64;
    let lo = (a & 0xffff) | (0x08 << 16) | (0x8E00 << 32) | ((a >> 16) & 0xffff) << 48;
    // SAFETY: gates are set by the BSP before any vCPU loads the IDT or enables interrupts.
    unsafe {
        let idt = &raw mut IDT;
        (*idt)[usize::from(vector) * 2] = lo;
        (*idt)[usize::from(vector) * 2 + 1] = a >> 32;
    }
}

#[repr(C, packed)]
struct DescPtr {
    limit: u16,
    base: u64,
}

/// Loads the payload IDT on this vCPU.
pub fn load_idt() {
    let p = DescPtr { limit: 4095, base: &raw const IDT as u64 };
    // SAFETY: the IDT lives forever; its gates point at our handlers.
    unsafe { asm!("lidt [{}]", in(reg) &p, options(nostack)) };
}

/// Loads an empty IDT: the next exception cannot be delivered (→ triple fault).
pub fn load_empty_idt() {
    let p = DescPtr { limit: 0, base: 0 };
    // SAFETY: deliberately breaks exception delivery; only the triple-fault payload calls it.
    unsafe { asm!("lidt [{}]", in(reg) &p, options(nostack)) };
}

/// Enables interrupts and halts until one arrives; returns with interrupts disabled.
pub fn wait_for_interrupt() {
    // SAFETY: STI;HLT is atomic with respect to interrupts (STI shadow); CLI after.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// One vCPU's page tables: a PML4, a PDPT and four page directories.
#[repr(C, align(4096))]
struct Tables([u64; 6 * 512]);
static mut TABLES: [Tables; MAX_APS + 1] = [const { Tables([0; 6 * 512]) }; MAX_APS + 1];

/// Loads CR3 with `v`: the boot tables or tables from [`own_page_tables`].
pub fn set_cr3(v: u64) {
    // SAFETY: `v` is the boot tables or tables built by `own_page_tables`, both identity maps
    // of the same 4 GiB: the code and data this vCPU uses stay where they are.
    unsafe { asm!("mov cr3, {}", in(reg) v, options(nostack)) };
}

/// Builds vCPU `id`'s own identity map of 4 GiB (2 MiB pages, accessed and dirty preset),
/// switches to it and returns its CR3. No other vCPU touches it, so on a cluster its pages
/// move to this vCPU's node once (the first writes) and stay: QEMU 7.2 TCG walks page tables
/// as writes, so tables every node walks would move with every walk.
pub fn own_page_tables(id: u32) -> u64 {
    // SAFETY: slot `id` is this vCPU's alone (ids are below MAX_APS + 1); `TABLES` is
    // zeroed .bss.
    let t = unsafe { &mut (*(&raw mut TABLES))[id as usize].0 };
    let base = t.as_ptr() as u64;
    // Present, writable, accessed (bits 0, 1, 5); 2 MiB leaves also PS and dirty (7, 6).
    let (table, leaf) = (0x23, 0xe3);
    t[0] = (base + 4096) | table;
    for i in 0..4 {
        t[512 + i] = (base + 8192 + i as u64 * 4096) | table;
    }
    for j in 0..2048 {
        t[1024 + j] = ((j as u64) << 21) | leaf;
    }
    set_cr3(base);
    base
}

const AP_STACK: usize = 16 * 1024;
const MAX_APS: usize = 16;
#[repr(align(16))]
struct Stacks([[u8; AP_STACK]; MAX_APS]);
static mut STACKS: Stacks = Stacks([[0; AP_STACK]; MAX_APS]);
static ARRIVED: AtomicU64 = AtomicU64::new(u64::MAX);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_data_cr3: u8;
    static ap_data_efer: u8;
    static ap_data_stack: u8;
    static ap_data_entry: u8;
    static ap_data_arg: u8;
}

/// Marks this AP as arrived (call first thing in the AP entry).
pub fn ap_arrived(id: u64) {
    ARRIVED.store(id, Ordering::SeqCst);
}

/// Starts vCPUs 1..n one by one with INIT-SIPI(-SIPI) through x2APIC ICR writes; each runs
/// `entry(id)`. Returns how many arrived.
pub fn start_aps(n: u32, entry: extern "C" fn(u64) -> !) -> u32 {
    start_aps_within(n, entry, 100_000)
}

/// [`start_aps`], waiting up to `wait_us` for each AP after each SIPI (an AP on another node
/// fetches its first pages across the network).
pub fn start_aps_within(n: u32, entry: extern "C" fn(u64) -> !, wait_us: u64) -> u32 {
    let slot = |s: &u8| 0x8000 + (s as *const u8 as u64) - (&raw const ap_trampoline_start as u64);
    // SAFETY: 0x8000.. is free guest RAM (below our image); the trampoline is position-
    // dependent on exactly that address; slots are written before each SIPI.
    unsafe {
        let start = &raw const ap_trampoline_start as u64;
        let len = (&raw const ap_trampoline_end as u64) - start;
        core::ptr::copy_nonoverlapping(start as *const u8, 0x8000 as *mut u8, len as usize);
        let cr3: u64;
        asm!("mov {}, cr3", out(reg) cr3);
        core::ptr::write_volatile(slot(&ap_data_cr3) as *mut u32, cr3 as u32);
        // EFER.LME only: the payload's page tables use no NX bits.
        core::ptr::write_volatile(slot(&ap_data_efer) as *mut u32, 1 << 8);
        core::ptr::write_volatile(slot(&ap_data_entry) as *mut u64, entry as usize as u64);
    }
    let mut up = 0;
    for id in 1..n.min(MAX_APS as u32 + 1) {
        // SAFETY: one stack per AP, handed out once.
        let top = unsafe { (&raw mut STACKS.0[id as usize - 1]) as u64 + AP_STACK as u64 };
        // SAFETY: the slots are in the trampoline copy no AP is using now.
        unsafe {
            core::ptr::write_volatile(slot(&ap_data_stack) as *mut u64, top);
            core::ptr::write_volatile(slot(&ap_data_arg) as *mut u64, u64::from(id));
        }
        ARRIVED.store(u64::MAX, Ordering::SeqCst);
        send_ipi(id, 0x4500);
        delay_us(1000);
        let mut ok = false;
        for _ in 0..2 {
            send_ipi(id, 0x4608);
            for _ in 0..wait_us / 100 {
                if ARRIVED.load(Ordering::SeqCst) == u64::from(id) {
                    ok = true;
                    break;
                }
                delay_us(100);
            }
            if ok {
                break;
            }
        }
        if ok {
            up += 1;
        } else {
            println!("smp: FAIL vcpu {id} did not start");
        }
    }
    up
}

/// Prints the panic and ends the guest with code 2.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("payload: FAIL panic: {}", info.message());
    exit(2)
}
