//! Time slices for a backend without a preemption timer (SVM, and VMX CPUs that lack one): the
//! core's local-APIC timer in one-shot mode makes the guest exit with a host interrupt when the
//! slice ends; that exit is then reported as [`Exit::Preempted`].

use super::Exit;
use crate::arch::cpu::rdtsc;
use crate::arch::{apic, idt::WAKE_VECTOR, time};

/// Slices longer than this are not timed (the dispatch asks for "no slice" with huge values).
const MAX_US: u64 = 1_000_000;

/// One armed (or not) slice.
pub struct ApicSlice {
    start: u64,
    ticks: u64,
    armed: bool,
}

impl ApicSlice {
    /// Arms this core's APIC timer for `ticks` TSC ticks, when it can (not on the core whose
    /// timer ticks periodically: that tick preempts its guest already).
    pub fn arm(ticks: u64) -> ApicSlice {
        let start = rdtsc();
        let us = ticks.saturating_mul(1_000_000) / time::tsc_hz().max(1);
        let armed = us < MAX_US && apic::arm_one_shot(WAKE_VECTOR, us.max(1));
        ApicSlice { start, ticks, armed }
    }

    /// After the exit `e`: stops the timer; once the slice is over its interrupt is taken here
    /// and a host-interrupt exit becomes [`Exit::Preempted`].
    pub fn end(self, e: Exit) -> Exit {
        if !self.armed {
            return e;
        }
        apic::arm_one_shot(WAKE_VECTOR, 0);
        if rdtsc().wrapping_sub(self.start) < self.ticks {
            return e;
        }
        x86_64::instructions::interrupts::enable();
        core::hint::spin_loop();
        x86_64::instructions::interrupts::disable();
        if e == Exit::Interrupt {
            Exit::Preempted
        } else {
            e
        }
    }
}
