//! Sleeping when there is nothing to do: a periodic local-APIC tick on the boot CPU bounds how
//! long it sleeps (the NICs are polled, not interrupt-driven), and other cores wake it at once
//! when they hand it work. The share of time spent asleep is kept for `status`.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::cpu::rdtsc;
use super::{apic, idt::WAKE_VECTOR, time};

/// The longest the boot CPU sleeps before it polls again.
pub const TICK_US: u64 = 1000;

static SERVICE_APIC: AtomicU32 = AtomicU32::new(u32::MAX);
static ASLEEP: AtomicBool = AtomicBool::new(false);
static SLEPT_TICKS: AtomicU64 = AtomicU64::new(0);
static STARTED_TSC: AtomicU64 = AtomicU64::new(0);

/// Starts the boot CPU's tick (masking the legacy PICs first: interrupts get enabled here).
pub fn init() -> Result<(), &'static str> {
    super::pic::mask();
    apic::start_periodic_timer(WAKE_VECTOR, TICK_US)?;
    SERVICE_APIC.store(apic::id(), Ordering::SeqCst);
    STARTED_TSC.store(rdtsc(), Ordering::SeqCst);
    Ok(())
}

/// Sleeps until the next interrupt: the tick, a wake-up from another core, an IPI.
pub fn sleep() {
    if SERVICE_APIC.load(Ordering::Relaxed) == u32::MAX {
        return;
    }
    let t0 = rdtsc();
    ASLEEP.store(true, Ordering::SeqCst);
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
    ASLEEP.store(false, Ordering::SeqCst);
    SLEPT_TICKS.fetch_add(rdtsc().wrapping_sub(t0), Ordering::Relaxed);
}

/// Another core queued work for the boot CPU: wake it if it sleeps.
pub fn wake_service_core() {
    let id = SERVICE_APIC.load(Ordering::Relaxed);
    if id != u32::MAX && ASLEEP.load(Ordering::SeqCst) {
        apic::send_ipi(id, WAKE_VECTOR);
    }
}

/// Per mille of the time since `init` the boot CPU slept.
pub fn asleep_per_mille() -> Option<u64> {
    let t0 = STARTED_TSC.load(Ordering::Relaxed);
    if t0 == 0 || time::tsc_hz() == 0 {
        return None;
    }
    let total = rdtsc().wrapping_sub(t0).max(1);
    Some(SLEPT_TICKS.load(Ordering::Relaxed).saturating_mul(1000) / total)
}
