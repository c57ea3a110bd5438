//! The IDT: every CPU exception prints a diagnostic (vector, error code, RIP, CR2 and a
//! frame-pointer backtrace) and stops the CPU, or the emulator in test mode; plus the IPI
//! vectors the node uses (SDM Vol. 3A §7.15 exception list).

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use super::gdt::DOUBLE_FAULT_IST;
use crate::console::serial::print_forced;

/// Vector of the wake-up IPI between CPUs of a node.
pub const WAKE_VECTOR: u8 = 0xF0;
/// Vector the local APIC uses for spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

static IDT: Once<InterruptDescriptorTable> = Once::new();

/// Highest address the backtrace walker may read (what is identity-mapped).
pub static MAPPED_LIMIT: AtomicU64 = AtomicU64::new(1 << 32);

macro_rules! plain {
    ($name:ident, $vec:expr, $mn:expr, $desc:expr) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            let rbp: u64;
            // SAFETY: reads this function's frame pointer; no memory access.
            unsafe { asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
            fatal($vec, $mn, $desc, 0, &frame, rbp);
        }
    };
}

macro_rules! with_code {
    ($name:ident, $vec:expr, $mn:expr, $desc:expr) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            let rbp: u64;
            // SAFETY: reads this function's frame pointer; no memory access.
            unsafe { asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
            fatal($vec, $mn, $desc, code, &frame, rbp);
        }
    };
}

plain!(divide_error, 0, "#DE", "divide error");
plain!(debug, 1, "#DB", "debug");
plain!(nmi, 2, "NMI", "non-maskable interrupt");
plain!(breakpoint, 3, "#BP", "breakpoint");
plain!(overflow, 4, "#OF", "overflow");
plain!(bound_range, 5, "#BR", "bound range exceeded");
plain!(invalid_opcode, 6, "#UD", "invalid opcode");
plain!(device_not_available, 7, "#NM", "device not available");
with_code!(invalid_tss, 10, "#TS", "invalid TSS");
with_code!(segment_not_present, 11, "#NP", "segment not present");
with_code!(stack_segment, 12, "#SS", "stack-segment fault");
with_code!(general_protection, 13, "#GP", "general protection");
plain!(x87_fp, 16, "#MF", "x87 floating point");
with_code!(alignment_check, 17, "#AC", "alignment check");
plain!(simd_fp, 19, "#XM", "SIMD floating point");
plain!(virtualization, 20, "#VE", "virtualization exception");

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let rbp: u64;
    // SAFETY: reads this function's frame pointer; no memory access.
    unsafe { asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
    fatal(14, "#PF", "page fault", code.bits(), &frame, rbp);
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    let rbp: u64;
    // SAFETY: reads this function's frame pointer; no memory access.
    unsafe { asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
    fatal(8, "#DF", "double fault", code, &frame, rbp);
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal(18, "#MC", "machine check", 0, &frame, 0);
}

extern "x86-interrupt" fn wake(_frame: InterruptStackFrame) {
    super::apic::eoi();
}

extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {}

fn readable(addr: u64) -> bool {
    addr >= 0x1000 && addr.is_multiple_of(8) && addr + 16 <= MAPPED_LIMIT.load(Ordering::Relaxed)
}

/// Prints the diagnostic and never returns.
fn fatal(
    vector: u8,
    mnemonic: &str,
    desc: &str,
    code: u64,
    frame: &InterruptStackFrame,
    rbp: u64,
) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let rip = frame.instruction_pointer.as_u64();
    // One timestamp for the whole report: it describes one moment.
    let us = super::time::uptime_us();
    let line = |args: core::fmt::Arguments<'_>| {
        print_forced(format_args!(
            "[{:5}.{:06}] ERROR exception: {args}\n",
            us / 1_000_000,
            us % 1_000_000
        ));
    };
    line(format_args!(
        "{mnemonic} {desc} (vector {vector}) error {code:#x} rip {rip:#x} cr2 {cr2:#x} rsp {:#x} cpu {}",
        frame.stack_pointer.as_u64(),
        super::apic::id(),
    ));
    line(format_args!("backtrace"));
    line(format_args!("  {rip:#x}"));
    // [rbp] is the interrupted code's frame pointer: this handler pushed it in its prologue.
    let mut fp = if readable(rbp) {
        // SAFETY: `readable` checked the address is aligned and identity-mapped.
        unsafe { *(rbp as *const u64) }
    } else {
        0
    };
    for _ in 0..16 {
        if !readable(fp) {
            break;
        }
        // SAFETY: `readable` checked both words of the frame record are mapped.
        let (next, ret) = unsafe { (*(fp as *const u64), *((fp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        line(format_args!("  {ret:#x}"));
        if next <= fp {
            break;
        }
        fp = next;
    }
    line(format_args!("halted"));
    super::power::stop(false)
}

/// Builds the IDT once and loads it on this CPU.
pub fn init_this_cpu() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        idt.divide_error.set_handler_fn(divide_error);
        idt.debug.set_handler_fn(debug);
        idt.non_maskable_interrupt.set_handler_fn(nmi);
        idt.breakpoint.set_handler_fn(breakpoint);
        idt.overflow.set_handler_fn(overflow);
        idt.bound_range_exceeded.set_handler_fn(bound_range);
        idt.invalid_opcode.set_handler_fn(invalid_opcode);
        idt.device_not_available.set_handler_fn(device_not_available);
        // SAFETY: DOUBLE_FAULT_IST is set up in every CPU's TSS by gdt::init_this_cpu.
        unsafe {
            idt.double_fault.set_handler_fn(double_fault).set_stack_index(DOUBLE_FAULT_IST);
        }
        idt.invalid_tss.set_handler_fn(invalid_tss);
        idt.segment_not_present.set_handler_fn(segment_not_present);
        idt.stack_segment_fault.set_handler_fn(stack_segment);
        idt.general_protection_fault.set_handler_fn(general_protection);
        idt.page_fault.set_handler_fn(page_fault);
        idt.x87_floating_point.set_handler_fn(x87_fp);
        idt.alignment_check.set_handler_fn(alignment_check);
        idt.machine_check.set_handler_fn(machine_check);
        idt.simd_floating_point.set_handler_fn(simd_fp);
        idt.virtualization.set_handler_fn(virtualization);
        idt[WAKE_VECTOR].set_handler_fn(wake);
        idt[SPURIOUS_VECTOR].set_handler_fn(spurious);
        idt
    });
    idt.load();
}
