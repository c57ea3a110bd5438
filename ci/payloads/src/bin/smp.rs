//! SMP payload: starts every vCPU with x2APIC INIT/SIPI, runs an atomic counter and a memory
//! sweep on each, checks fixed IPIs between vCPUs, the APIC timer (one-shot and TSC-deadline)
//! and reports hypercall/CPUID round trips in TSC ticks. Exit code 0 when all PASS.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use gestalt_payloads::*;

const ITER: u64 = 20_000;
const SWEEP: u64 = 1 << 20;
static COUNTER: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);
static SWEEP_FAIL: AtomicU32 = AtomicU32::new(0);
static TICKS: AtomicU32 = AtomicU32::new(0);
static IPIS: AtomicU32 = AtomicU32::new(0);

extern "x86-interrupt" fn timer(_f: Frame) {
    TICKS.fetch_add(1, Ordering::SeqCst);
    eoi();
}

extern "x86-interrupt" fn ipi(_f: Frame) {
    IPIS.fetch_add(1, Ordering::SeqCst);
    eoi();
}

fn work(id: u32) {
    for _ in 0..ITER {
        COUNTER.fetch_add(1, Ordering::SeqCst);
    }
    // Each vCPU sweeps its own MiB: write a pattern naming vCPU and address, read it back.
    let base = (16 << 20) + u64::from(id) * (2 << 20);
    let pat = |a: u64| a ^ (u64::from(id) << 56) ^ 0x5a5a_0000_0000_5a5a;
    for a in (base..base + SWEEP).step_by(8) {
        // SAFETY: [16 MiB, 16 MiB + 2 MiB * vCPUs) is guest RAM nobody else uses.
        unsafe { core::ptr::write_volatile(a as *mut u64, pat(a)) };
    }
    let mut bad = 0;
    for a in (base..base + SWEEP).step_by(8) {
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(a as *const u64) } != pat(a) {
            bad += 1;
        }
    }
    if bad != 0 {
        SWEEP_FAIL.fetch_add(1, Ordering::SeqCst);
        println!("smp: FAIL memory sweep on vcpu {id}: {bad} words wrong");
    }
}

extern "C" fn ap_main(id: u64) -> ! {
    ap_arrived(id);
    x2apic_enable();
    load_idt();
    let id = id as u32;
    println!("smp: vcpu {id} up (x2APIC id {})", apic_id());
    work(id);
    DONE.fetch_add(1, Ordering::SeqCst);
    // Wait for the BSP's fixed IPI, halted.
    while IPIS.load(Ordering::SeqCst) & (1 << 16) == 0 {
        wait_for_interrupt();
    }
    loop {
        wait_for_interrupt();
    }
}

fn timer_test(name: &str, arm: impl Fn(u64)) -> bool {
    let hz = tsc_hz();
    let before = TICKS.load(Ordering::SeqCst);
    let t0 = rdtsc();
    arm(hz / 1000);
    let limit = t0 + hz;
    while TICKS.load(Ordering::SeqCst) == before && rdtsc() < limit {
        wait_for_interrupt();
    }
    let dt = rdtsc() - t0;
    let ok = TICKS.load(Ordering::SeqCst) != before;
    if ok {
        println!("smp: PASS {name} timer interrupt after {dt} TSC ticks (armed for {})", hz / 1000);
    } else {
        println!("smp: FAIL {name} timer never fired");
    }
    ok
}

/// An interrupt that becomes due while IF=0 must wait (the hypervisor asks for an interrupt
/// window) and arrive right after STI.
fn window_test() -> bool {
    let before = TICKS.load(Ordering::SeqCst);
    wrmsr(0x832, 0x41 | (2 << 17));
    wrmsr(0x6E0, rdtsc() + 100);
    let t0 = rdtsc();
    while rdtsc() - t0 < tsc_hz() / 100 {
        core::hint::spin_loop();
    }
    let held = TICKS.load(Ordering::SeqCst) == before;
    // SAFETY: opens a two-instruction interrupt window; handlers are installed.
    unsafe { core::arch::asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
    let got = TICKS.load(Ordering::SeqCst) != before;
    if held && got {
        println!("smp: PASS interrupt held while IF=0 and delivered in the window after STI");
    } else {
        println!("smp: FAIL interrupt window: held {held} delivered {got}");
    }
    held && got
}

fn round_trip(name: &str, f: impl Fn()) {
    const N: u64 = 2000;
    let t0 = rdtsc();
    for _ in 0..N {
        f();
    }
    let per = (rdtsc() - t0) / N;
    let hz = tsc_hz();
    println!("smp: {name} round trip {per} TSC ticks = {} exits/s of guest time", hz / per.max(1));
}

/// XSETBV as an OS runs it at boot: CR4.OSXSAVE, then XCR0 = x87|SSE (and AVX when the CPU
/// has it), read back with XGETBV (which does not exit: it sees what the hypervisor loaded).
fn xsetbv_test() -> bool {
    let (_, _, c, _) = cpuid(1, 0);
    if c & (1 << 26) == 0 {
        println!("smp: XSAVE not offered: XSETBV not tested");
        return true;
    }
    let want: u64 = if c & (1 << 28) != 0 { 0b111 } else { 0b11 };
    let got: u64;
    // SAFETY: CPUID offers XSAVE, so CR4.OSXSAVE may be set and XCR0 loaded with components
    // the CPU supports (x87, SSE, AVX).
    unsafe {
        core::arch::asm!(
            "mov rax, cr4", "bts rax, 18", "mov cr4, rax",
            "xor ecx, ecx", "mov eax, {lo:e}", "xor edx, edx", "xsetbv",
            "xor ecx, ecx", "xgetbv", "shl rdx, 32", "or rax, rdx",
            lo = in(reg) want as u32, out("rax") got, out("rcx") _, out("rdx") _,
        );
    }
    if got == want {
        println!("smp: PASS XSETBV loaded XCR0 {want:#x}");
        true
    } else {
        println!("smp: FAIL XCR0 reads {got:#x} after XSETBV {want:#x}");
        false
    }
}

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    x2apic_enable();
    set_gate(0x40, timer);
    set_gate(0x41, timer);
    set_gate(0x42, ipi);
    load_idt();
    let n = vcpus();
    let (_, b, c, d) = cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..].copy_from_slice(&d.to_le_bytes());
    println!(
        "smp: Gestalt SMP payload on {} ({} vCPUs, hypercall ABI {}, TSC {} Hz)",
        core::str::from_utf8(&sig[..9]).unwrap_or("?"),
        n,
        vmcall(hc::VERSION, 0, 0),
        tsc_hz()
    );
    let mut ok = true;
    round_trip("hypercall", || {
        vmcall(hc::NOP, 0, 0);
    });
    round_trip("cpuid", || {
        cpuid(0, 0);
    });
    // One-shot APIC timer, divide by 1, then TSC-deadline mode.
    ok &= timer_test("one-shot", |ticks| {
        wrmsr(0x83E, 0xB);
        wrmsr(0x832, 0x40);
        wrmsr(0x838, ticks);
    });
    ok &= timer_test("TSC-deadline", |ticks| {
        wrmsr(0x832, 0x41 | (2 << 17));
        wrmsr(0x6E0, rdtsc() + ticks);
    });

    ok &= window_test();
    ok &= xsetbv_test();

    let up = start_aps(n, ap_main);
    println!("smp: {}/{} vCPUs started with INIT/SIPI", up + 1, n);
    ok &= up + 1 == n;
    work(0);
    let t0 = rdtsc();
    while DONE.load(Ordering::SeqCst) < up && rdtsc() - t0 < 60 * tsc_hz() {
        core::hint::spin_loop();
    }
    let total = COUNTER.load(Ordering::SeqCst);
    let want = ITER * u64::from(up + 1);
    if total == want {
        println!("smp: PASS atomic counter {total} = {} vCPUs x {ITER}", up + 1);
    } else {
        println!("smp: FAIL atomic counter {total}, expected {want}");
        ok = false;
    }
    if SWEEP_FAIL.load(Ordering::SeqCst) == 0 && DONE.load(Ordering::SeqCst) == up {
        println!("smp: PASS memory sweep on {} vCPUs", up + 1);
    } else {
        println!("smp: FAIL memory sweep");
        ok = false;
    }
    // Fixed IPIs to every AP (halted), which count them in IPIS' low half; then release.
    let before = IPIS.load(Ordering::SeqCst);
    for id in 1..=up {
        send_ipi(id, 0x42);
    }
    let t0 = rdtsc();
    while IPIS.load(Ordering::SeqCst) - before < up && rdtsc() - t0 < 10 * tsc_hz() {
        core::hint::spin_loop();
    }
    let got = IPIS.load(Ordering::SeqCst) - before;
    if got == up {
        println!("smp: PASS fixed IPIs delivered to {up} halted vCPUs");
    } else {
        println!("smp: FAIL {got} of {up} IPIs delivered");
        ok = false;
    }
    IPIS.fetch_or(1 << 16, Ordering::SeqCst);
    println!("smp: {}", if ok { "PASS all" } else { "FAIL some checks" });
    exit(if ok { 0 } else { 1 })
}
