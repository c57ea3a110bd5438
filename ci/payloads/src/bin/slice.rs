//! Time-slice payload: vCPU 1 (on an AP) arms its TSC-deadline timer and spins with IF=1 in a
//! loop that makes no VM exit. The virtual timer is delivered only at a VM entry, so the
//! interrupt arrives only if the hypervisor takes the vCPU out of the guest by itself when the
//! deadline comes (a time slice: the VMX preemption timer, or on SVM the core's local-APIC
//! timer). Exit code 0 when it did.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use gestalt_payloads::*;

static TICKS: AtomicU32 = AtomicU32::new(0);
/// TSC ticks from arming to the interrupt, + 1 (0: not yet; u64::MAX: it never came).
static LATENCY: AtomicU64 = AtomicU64::new(0);

extern "x86-interrupt" fn timer(_f: Frame) {
    TICKS.fetch_add(1, Ordering::SeqCst);
    eoi();
}

extern "C" fn ap_main(id: u64) -> ! {
    ap_arrived(id);
    x2apic_enable();
    load_idt();
    let hz = tsc_hz();
    // SAFETY: the timer's gate is installed; interrupts are what this test waits for.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    let t0 = rdtsc();
    wrmsr(0x832, 0x41 | (2 << 17));
    wrmsr(0x6E0, t0 + hz / 200);
    // RDTSC and PAUSE do not exit: only the hypervisor's own slice ends this loop early.
    while TICKS.load(Ordering::SeqCst) == 0 && rdtsc() - t0 < 2 * hz {
        core::hint::spin_loop();
    }
    let got = TICKS.load(Ordering::SeqCst) != 0;
    LATENCY.store(if got { rdtsc() - t0 + 1 } else { u64::MAX }, Ordering::SeqCst);
    loop {
        wait_for_interrupt();
    }
}

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    x2apic_enable();
    set_gate(0x41, timer);
    load_idt();
    if vcpus() < 2 {
        println!("slice: FAIL needs 2 vCPUs");
        exit(1);
    }
    let up = start_aps(2, ap_main);
    let t0 = rdtsc();
    while LATENCY.load(Ordering::SeqCst) == 0 && rdtsc() - t0 < 10 * tsc_hz() {
        core::hint::spin_loop();
    }
    match LATENCY.load(Ordering::SeqCst) {
        0 => println!("slice: FAIL vcpu 1 never reported ({up} APs started)"),
        u64::MAX => println!("slice: FAIL vcpu 1's deadline timer never fired while it spun"),
        t => {
            let us = (t - 1) * 1_000_000 / tsc_hz();
            println!("slice: PASS vcpu 1 spinning without exits took its timer after {us} us (armed for 5000)");
            exit(0);
        }
    }
    exit(1)
}
