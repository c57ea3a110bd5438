//! The local APIC in x2APIC mode (MSRs) where the CPU has it, else xAPIC (MMIO): enable,
//! id, IPIs and EOI (SDM Vol. 3A ch. 11, §11.12 for x2APIC).

use core::sync::atomic::{AtomicBool, Ordering};

use super::cpu::{has_x2apic, rdmsr, wrmsr};
use super::idt::SPURIOUS_VECTOR;

const MSR_APIC_BASE: u32 = 0x1B;
const XAPIC_BASE: u64 = 0xFEE0_0000;
static X2: AtomicBool = AtomicBool::new(false);

// xAPIC register offsets; the x2APIC MSR is 0x800 + offset / 16 (SDM Vol. 3A Table 11-6).
const REG_ID: u32 = 0x20;
const REG_EOI: u32 = 0xB0;
const REG_SVR: u32 = 0xF0;
const REG_ICR_LO: u32 = 0x300;
const REG_ICR_HI: u32 = 0x310;

fn read(reg: u32) -> u32 {
    if X2.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is on, so the APIC MSR range exists.
        unsafe { rdmsr(0x800 + reg / 16) as u32 }
    } else {
        // SAFETY: the xAPIC page is identity-mapped uncached; registers are 32-bit aligned.
        unsafe { core::ptr::read_volatile((XAPIC_BASE + u64::from(reg)) as *const u32) }
    }
}

fn write(reg: u32, val: u32) {
    if X2.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is on, so the APIC MSR range exists.
        unsafe { wrmsr(0x800 + reg / 16, u64::from(val)) }
    } else {
        // SAFETY: the xAPIC page is identity-mapped uncached; registers are 32-bit aligned.
        unsafe { core::ptr::write_volatile((XAPIC_BASE + u64::from(reg)) as *mut u32, val) }
    }
}

/// Enables this CPU's local APIC (x2APIC when available) with the spurious vector set.
pub fn init_this_cpu() -> &'static str {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; setting EN (bit 11) and EXTD (bit 10)
    // is the documented way into x2APIC mode (SDM Vol. 3A §11.12.1).
    unsafe {
        let base = rdmsr(MSR_APIC_BASE);
        if has_x2apic() {
            wrmsr(MSR_APIC_BASE, base | (1 << 11) | (1 << 10));
            X2.store(true, Ordering::Relaxed);
        } else {
            wrmsr(MSR_APIC_BASE, base | (1 << 11));
        }
    }
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    if X2.load(Ordering::Relaxed) {
        "x2APIC"
    } else {
        "xAPIC"
    }
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    if X2.load(Ordering::Relaxed) {
        read(REG_ID)
    } else {
        read(REG_ID) >> 24
    }
}

/// Signals end of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

fn send(dest: u32, low: u32) {
    if X2.load(Ordering::Relaxed) {
        // SAFETY: ICR is MSR 0x830 in x2APIC mode; one 64-bit write sends (SDM §11.12.9).
        unsafe { wrmsr(0x830, u64::from(dest) << 32 | u64::from(low)) };
        return;
    }
    write(REG_ICR_HI, dest << 24);
    write(REG_ICR_LO, low);
    // Delivery status (bit 12) clears once the APIC has sent it.
    for _ in 0..1_000_000 {
        if read(REG_ICR_LO) & (1 << 12) == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// INIT IPI, level assert (SDM Vol. 3A §11.6.1).
pub fn send_init(dest: u32) {
    send(dest, 0x4500);
}

/// Start-up IPI: the AP starts in real mode at `vector << 12`.
pub fn send_sipi(dest: u32, vector: u8) {
    send(dest, 0x4600 | u32::from(vector));
}

/// A fixed IPI.
pub fn send_ipi(dest: u32, vector: u8) {
    send(dest, 0x4000 | u32::from(vector));
}
