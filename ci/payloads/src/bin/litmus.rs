//! Litmus tests under x86-TSO with the two sides on different nodes (vCPU 0 on node 0, vCPU 1
//! on node 1), each variable on its own page homed on a different node: message passing (MP),
//! store buffering without and with MFENCE (SB, SB+mfence) and load buffering (LB). Every
//! iteration vCPU 0 starts its side a little later than the last (0-28 ms), so either side may
//! go first or both together; the forbidden outcome must never occur and at least three
//! outcomes must (else the test saw too few interleavings to mean anything); the counts of each
//! are printed. Exit code 0 when all PASS.
#![no_std]
#![no_main]

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use gestalt_payloads::*;

const ITERS: u32 = 100;

/// The page of each variable: X homed on node 0, Y on node 1 (equal halves of RAM).
static X_AT: AtomicU64 = AtomicU64::new(0);
static Y_AT: AtomicU64 = AtomicU64::new(0);
/// Round the sides may start (vCPU 0 sets it once X and Y are reset), and how many sides
/// finished each round.
static ROUND: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);
static R1: AtomicU64 = AtomicU64::new(0);
static TEST: AtomicU32 = AtomicU32::new(0);

fn var(at: &AtomicU64) -> &'static AtomicU64 {
    // SAFETY: the address is guest RAM inside our identity map, 8-byte aligned, used only as
    // this atomic for the whole run.
    unsafe { &*(at.load(Ordering::Relaxed) as *const AtomicU64) }
}

#[derive(Clone, Copy)]
enum Test {
    Mp,
    Sb,
    SbFence,
    Lb,
}

const TESTS: [Test; 4] = [Test::Mp, Test::Sb, Test::SbFence, Test::Lb];

/// One side of one test; returns the register it read.
fn side(t: Test, me: u32) -> u64 {
    let (x, y) = (var(&X_AT), var(&Y_AT));
    // Relaxed atomics compile to plain MOVs: the hardware's (TSO) ordering is what is tested.
    match (t, me) {
        (Test::Mp, 0) => {
            x.store(1, Ordering::Relaxed);
            y.store(1, Ordering::Relaxed);
            0
        }
        (Test::Mp, _) => {
            let r1 = y.load(Ordering::Relaxed);
            let r2 = x.load(Ordering::Relaxed);
            (r1 << 1) | r2
        }
        (Test::Sb | Test::SbFence, 0) => {
            x.store(1, Ordering::Relaxed);
            if matches!(t, Test::SbFence) {
                fence(Ordering::SeqCst); // MFENCE
            }
            y.load(Ordering::Relaxed)
        }
        (Test::Sb | Test::SbFence, _) => {
            y.store(1, Ordering::Relaxed);
            if matches!(t, Test::SbFence) {
                fence(Ordering::SeqCst);
            }
            x.load(Ordering::Relaxed)
        }
        (Test::Lb, 0) => {
            let r = x.load(Ordering::Relaxed);
            y.store(1, Ordering::Relaxed);
            r
        }
        (Test::Lb, _) => {
            let r = y.load(Ordering::Relaxed);
            x.store(1, Ordering::Relaxed);
            r
        }
    }
}

extern "C" fn ap_main(id: u64) -> ! {
    ap_arrived(id);
    let mut round = 1;
    loop {
        while ROUND.load(Ordering::SeqCst) < round {
            core::hint::spin_loop();
        }
        let t = TESTS[TEST.load(Ordering::SeqCst) as usize % TESTS.len()];
        R1.store(side(t, 1), Ordering::SeqCst);
        DONE.fetch_add(1, Ordering::SeqCst);
        round += 1;
    }
}

#[unsafe(no_mangle)]
extern "C" fn payload_main(mbi: u32) -> ! {
    // SAFETY: the loader's Multiboot info: flags, mem_lower, mem_upper (KiB above 1 MiB).
    let upper = unsafe { core::ptr::read_volatile((u64::from(mbi) + 8) as *const u32) };
    let ram = (u64::from(upper) + 1024) * 1024;
    X_AT.store(3 << 20, Ordering::SeqCst);
    Y_AT.store(ram / 2 + (1 << 20), Ordering::SeqCst);
    let node = vmcall(hc::NODE, 0, 0);
    if vcpus() < 2 || start_aps_within(2, ap_main, 20_000_000) != 1 {
        println!("litmus: FAIL vcpu 1 did not start");
        exit(1)
    }
    println!("litmus: vcpu 0 on node {node}; X at {:#x}, Y at {:#x}", 3 << 20, ram / 2 + (1 << 20));
    let mut ok = true;
    let mut round = 0;
    for (ti, t) in TESTS.iter().enumerate() {
        TEST.store(ti as u32, Ordering::SeqCst);
        let mut seen = [0u32; 4];
        for _ in 0..ITERS {
            var(&X_AT).store(0, Ordering::SeqCst);
            var(&Y_AT).store(0, Ordering::SeqCst);
            round += 1;
            ROUND.store(round, Ordering::SeqCst);
            // vCPU 1 sees the round only after fetching its page from this node: starting this
            // side 0-28 ms later lets either side go first, or both at once.
            delay_us(u64::from(round % 8) * 4000);
            let r0 = side(*t, 0);
            while DONE.load(Ordering::SeqCst) < round {
                core::hint::spin_loop();
            }
            let r1 = R1.load(Ordering::SeqCst);
            let outcome = match t {
                Test::Mp => r1 as usize,
                _ => ((r0 << 1) | r1) as usize,
            };
            seen[outcome & 3] += 1;
        }
        // Outcome index: MP (r1, r2) as 2*r1 + r2 on vCPU 1; the others (r0, r1) as 2*r0 + r1.
        let (name, forbidden) = match t {
            Test::Mp => ("MP", 2),          // r1 = 1 (flag seen), r2 = 0 (data not seen)
            Test::Sb => ("SB", usize::MAX), // (0, 0) is allowed under TSO
            Test::SbFence => ("SB+mfence", 0),
            Test::Lb => ("LB", 3),
        };
        let bad = seen.get(forbidden).copied().unwrap_or(0);
        // A pass means something only if the sides met in several orders: all three allowed
        // outcomes of a two-sided test need each side first, and both nearly at once.
        let distinct = seen.iter().filter(|n| **n > 0).count();
        let pass = bad == 0 && distinct >= 3;
        println!(
            "litmus: {} {name}: {ITERS} runs, outcomes 00:{} 01:{} 10:{} 11:{}",
            if pass { "PASS" } else { "FAIL" },
            seen[0],
            seen[1],
            seen[2],
            seen[3]
        );
        ok &= pass;
    }
    println!("litmus: {}", if ok { "PASS all" } else { "FAIL some checks" });
    exit(if ok { 0 } else { 1 })
}
