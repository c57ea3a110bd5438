//! The local APIC in x2APIC mode (MSRs) where the CPU has it, else xAPIC (MMIO): enable,
//! id, IPIs and EOI (SDM Vol. 3A ch. 11, §11.12 for x2APIC).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use gestalt_netstack::hal::{Block, Reg, Window};

use super::cpu::{has_x2apic, rdmsr, wrmsr};
use super::idt::SPURIOUS_VECTOR;

const MSR_APIC_BASE: u32 = 0x1B;
static X2: AtomicBool = AtomicBool::new(false);

/// The xAPIC register page (SDM Vol. 3A §11.4.1, Table 11-1).
struct XApicPage;

impl Block for XApicPage {
    const SIZE: usize = 4096;
    const ALIGN: usize = 4096;
}

// SAFETY: the xAPIC page sits at its reset base 0xFEE0_0000 (SDM Vol. 3A §11.4.4; we never move
// it), identity-mapped uncached by the boot tables, and only this CPU's own APIC answers there.
const XAPIC: Window<XApicPage> = unsafe { Window::new(0xFEE0_0000) };

type R = Reg<XApicPage, u32>;
// xAPIC registers; the x2APIC MSR is 0x800 + offset / 16 (SDM Vol. 3A Table 11-6).
const REG_ID: R = Reg::at::<0x20>();
const REG_EOI: R = Reg::at::<0xB0>();
const REG_SVR: R = Reg::at::<0xF0>();
const REG_ICR_LO: R = Reg::at::<0x300>();
const REG_ICR_HI: R = Reg::at::<0x310>();
const REG_LVT_TIMER: R = Reg::at::<0x320>();
const REG_TIMER_INIT: R = Reg::at::<0x380>();
const REG_TIMER_CURRENT: R = Reg::at::<0x390>();
const REG_TIMER_DIVIDE: R = Reg::at::<0x3E0>();

fn msr(reg: R) -> u32 {
    0x800 + (reg.offset() / 16) as u32
}

fn read(reg: R) -> u32 {
    if X2.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is on, so the APIC MSR range exists.
        unsafe { rdmsr(msr(reg)) as u32 }
    } else {
        XAPIC.get(reg)
    }
}

fn write(reg: R, val: u32) {
    if X2.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is on, so the APIC MSR range exists.
        unsafe { wrmsr(msr(reg), u64::from(val)) }
    } else {
        XAPIC.set(reg, val);
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

/// APIC timer counts per 10 ms at divide 16, as the periodic timer's set-up measured them (the
/// input clock is the same on every core); 0 until then.
static COUNTS_PER_10MS: AtomicU64 = AtomicU64::new(0);
/// The APIC id of the core whose timer runs periodically (its tick is not ours to re-arm).
static PERIODIC_CORE: AtomicU32 = AtomicU32::new(u32::MAX);

/// Arms this CPU's APIC timer once: `vector` after about `us` microseconds (one-shot mode,
/// divide 16, SDM Vol. 3A §11.5.4), from the rate the periodic timer's set-up measured; 0
/// stops it. False (nothing armed) before that measurement, on the core whose timer is
/// periodic, or beyond the counter's range.
pub fn arm_one_shot(vector: u8, us: u64) -> bool {
    let per_10ms = COUNTS_PER_10MS.load(Ordering::Relaxed);
    if per_10ms == 0 || PERIODIC_CORE.load(Ordering::Relaxed) == id() {
        return false;
    }
    let count = (per_10ms.saturating_mul(us) / 10_000).max(u64::from(us > 0));
    let Ok(count) = u32::try_from(count) else { return false };
    write(REG_TIMER_DIVIDE, 0b0011);
    write(REG_LVT_TIMER, u32::from(vector));
    write(REG_TIMER_INIT, count);
    true
}

/// Starts this CPU's APIC timer in periodic mode with `vector` every `period_us`, after
/// measuring its rate against the TSC (the APIC timer's input clock is not architectural,
/// SDM Vol. 3A §11.5.4). Divide by 16.
pub fn start_periodic_timer(vector: u8, period_us: u64) -> Result<(), &'static str> {
    const MASKED: u32 = 1 << 16;
    const PERIODIC: u32 = 1 << 17;
    write(REG_TIMER_DIVIDE, 0b0011);
    write(REG_LVT_TIMER, MASKED | u32::from(vector));
    write(REG_TIMER_INIT, u32::MAX);
    super::time::delay_us(10_000);
    let per_10ms = u64::from(u32::MAX - read(REG_TIMER_CURRENT));
    write(REG_TIMER_INIT, 0);
    let count = per_10ms.saturating_mul(period_us) / 10_000;
    if count == 0 || count > u64::from(u32::MAX) {
        return Err("the APIC timer did not count");
    }
    COUNTS_PER_10MS.store(per_10ms, Ordering::Relaxed);
    PERIODIC_CORE.store(id(), Ordering::Relaxed);
    write(REG_LVT_TIMER, PERIODIC | u32::from(vector));
    write(REG_TIMER_INIT, count as u32);
    Ok(())
}
