//! Litmus tests under x86-TSO with the sides on different nodes, each variable on its own page
//! homed on a different node (X on node 0, Y on node 1): message passing (MP), store buffering
//! without and with MFENCE (SB, SB+mfence) and load buffering (LB) between vCPU 0 and the first
//! vCPU of another node; with two vCPUs on each of two nodes also independent reads of
//! independent writes (IRIW: the writers on different nodes, each reader on the other writer's
//! node). Every iteration the sides start at staggered times (vCPU 0 0-56 ms later each round,
//! the IRIW sides 0-10 ms), so the sides meet in different orders. A forbidden outcome must
//! never occur and at least three outcomes must (else the test saw too few interleavings to
//! mean anything); the counts of each are printed. `runs=N` on the module command line sets
//! the iterations per test (default 100). Exit code 0 when all PASS.
#![no_std]
#![no_main]

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use gestalt_payloads::*;

const MAX: usize = 16;
const DEFAULT_RUNS: u32 = 100;

/// The page of each variable: X homed on node 0, Y on node 1 (equal halves of RAM).
static X_AT: AtomicU64 = AtomicU64::new(0);
static Y_AT: AtomicU64 = AtomicU64::new(0);
/// Round the sides may start (vCPU 0 sets it once X and Y are reset), and how many AP sides
/// finished so far.
static ROUND: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);
/// What each side read, by role.
static R: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static TEST: AtomicU32 = AtomicU32::new(0);
/// The test vCPUs without a side wait for, on a page of its own: spinning on ROUND's page they
/// would take it from the sides each time and slow every round.
#[repr(C, align(4096))]
struct OwnPage(AtomicU32);
static WAKE_TEST: OwnPage = OwnPage(AtomicU32::new(0));
/// Each vCPU's role in the tests (0: vCPU 0; 1: the other writer; 2, 3: the IRIW readers).
static ROLE: [AtomicU32; MAX] = [const { AtomicU32::new(u32::MAX) }; MAX];
static NODE: [AtomicU32; MAX] = [const { AtomicU32::new(u32::MAX) }; MAX];

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
    Iriw,
}

impl Test {
    fn sides(self) -> u32 {
        if matches!(self, Test::Iriw) {
            4
        } else {
            2
        }
    }
}

const TESTS: [Test; 5] = [Test::Mp, Test::Sb, Test::SbFence, Test::Lb, Test::Iriw];

/// One side (`role`) of one test; returns what it read.
fn side(t: Test, role: u32) -> u64 {
    let (x, y) = (var(&X_AT), var(&Y_AT));
    // Relaxed atomics compile to plain MOVs: the hardware's (TSO) ordering is what is tested.
    match (t, role) {
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
        (Test::Iriw, 0) => {
            x.store(1, Ordering::Relaxed);
            0
        }
        (Test::Iriw, 1) => {
            y.store(1, Ordering::Relaxed);
            0
        }
        (Test::Iriw, 2) => {
            let a = x.load(Ordering::Relaxed);
            let b = y.load(Ordering::Relaxed);
            (a << 1) | b
        }
        (Test::Iriw, _) => {
            let a = y.load(Ordering::Relaxed);
            let b = x.load(Ordering::Relaxed);
            (a << 1) | b
        }
    }
}

/// Each IRIW side but vCPU 0 starts 0-10 ms into the round, differently every round.
fn stagger(t: Test, role: u32, round: u32) {
    if matches!(t, Test::Iriw) {
        delay_us(u64::from((round * 7 + role * 3) % 6) * 2000);
    }
}

extern "C" fn ap_main(id: u64) -> ! {
    ap_arrived(id);
    // Tables no other vCPU walks (QEMU 7.2 walks page tables as writes: shared ones would
    // move between the nodes with every walk).
    own_page_tables(id as u32);
    NODE[id as usize % MAX].store(vmcall(hc::NODE, 0, 0) as u32, Ordering::SeqCst);
    let mut round = 1;
    loop {
        // A vCPU with no side in the two-sided tests sleeps on its own page until IRIW.
        let role = ROLE[id as usize % MAX].load(Ordering::SeqCst);
        if role >= 2 && role & 0x100 == 0 {
            while WAKE_TEST.0.load(Ordering::SeqCst) != Test::Iriw as u32 {
                delay_us(1000);
            }
            round = ROUND.load(Ordering::SeqCst) + 1;
            ROLE[id as usize % MAX].store(role | 0x100, Ordering::SeqCst);
        }
        while ROUND.load(Ordering::SeqCst) < round {
            core::hint::spin_loop();
        }
        let t = TESTS[TEST.load(Ordering::SeqCst) as usize % TESTS.len()];
        let role = ROLE[id as usize % MAX].load(Ordering::SeqCst) & 0xff;
        if role < t.sides() {
            stagger(t, role, round);
            R[role as usize].store(side(t, role), Ordering::SeqCst);
            DONE.fetch_add(1, Ordering::SeqCst);
        }
        round += 1;
    }
}

/// `runs=N` from the Multiboot command line (flags bit 2, Multiboot §3.3).
fn runs(mbi: u64) -> u32 {
    // SAFETY: the loader's Multiboot info: flags at 0, cmdline address at 16.
    let (flags, at) = unsafe {
        (
            core::ptr::read_volatile(mbi as *const u32),
            core::ptr::read_volatile((mbi + 16) as *const u32),
        )
    };
    if flags & 4 == 0 {
        return DEFAULT_RUNS;
    }
    let mut buf = [0u8; 256];
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: a NUL-terminated string the loader wrote; we stop at its end.
        *b = unsafe { core::ptr::read_volatile((u64::from(at) + i as u64) as *const u8) };
        if *b == 0 {
            break;
        }
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    core::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|s| s.split_whitespace().find_map(|w| w.strip_prefix("runs=")))
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_RUNS)
}

#[unsafe(no_mangle)]
extern "C" fn payload_main(mbi: u32) -> ! {
    // SAFETY: the loader's Multiboot info: flags, mem_lower, mem_upper (KiB above 1 MiB).
    let upper = unsafe { core::ptr::read_volatile((u64::from(mbi) + 8) as *const u32) };
    let ram = (u64::from(upper) + 1024) * 1024;
    let iters = runs(u64::from(mbi));
    X_AT.store(3 << 20, Ordering::SeqCst);
    Y_AT.store(ram / 2 + (1 << 20), Ordering::SeqCst);
    let node = vmcall(hc::NODE, 0, 0) as u32;
    NODE[0].store(node, Ordering::SeqCst);
    let n = vcpus().min(MAX as u32);
    if n < 2 || start_aps_within(n, ap_main, 20_000_000) + 1 != n {
        println!("litmus: FAIL not every vCPU started");
        exit(1)
    }
    own_page_tables(0);
    let t0 = rdtsc();
    while (1..n as usize).any(|i| NODE[i].load(Ordering::SeqCst) == u32::MAX)
        && rdtsc() - t0 < 60 * tsc_hz()
    {
        core::hint::spin_loop();
    }
    let nodes: [u32; MAX] = core::array::from_fn(|i| NODE[i].load(Ordering::SeqCst));
    // Role 1: the first vCPU on another node; IRIW readers: another on that node (role 2),
    // another on vCPU 0's (role 3).
    let Some(peer) = (1..n as usize).find(|&i| nodes[i] != node) else {
        println!("litmus: FAIL no vCPU on another node");
        exit(1)
    };
    let reader_there = (1..n as usize).find(|&i| i != peer && nodes[i] == nodes[peer]);
    let reader_here = (1..n as usize).find(|&i| nodes[i] == node);
    ROLE[0].store(0, Ordering::SeqCst);
    ROLE[peer].store(1, Ordering::SeqCst);
    let iriw = match (reader_there, reader_here) {
        (Some(a), Some(b)) => {
            ROLE[a].store(2, Ordering::SeqCst);
            ROLE[b].store(3, Ordering::SeqCst);
            true
        }
        _ => false,
    };
    println!(
        "litmus: {iters} runs per test; vcpu 0 on node {node}, vcpu {peer} on node {}; X at {:#x}, Y at {:#x}{}",
        nodes[peer],
        3 << 20,
        ram / 2 + (1 << 20),
        if iriw { "" } else { "; IRIW needs two vCPUs on each of two nodes: not run" }
    );
    let mut ok = true;
    let (mut round, mut done) = (0, 0);
    for (ti, t) in TESTS.iter().enumerate() {
        if matches!(t, Test::Iriw) && !iriw {
            continue;
        }
        TEST.store(ti as u32, Ordering::SeqCst);
        if matches!(t, Test::Iriw) {
            // The readers join from the next round on: wait until both are watching ROUND.
            WAKE_TEST.0.store(Test::Iriw as u32, Ordering::SeqCst);
            while (0..n as usize).any(|i| {
                let r = ROLE[i].load(Ordering::SeqCst);
                r & 0xff >= 2 && r != u32::MAX && r & 0x100 == 0
            }) {
                core::hint::spin_loop();
            }
        }
        let mut seen = [0u32; 16];
        for _ in 0..iters {
            var(&X_AT).store(0, Ordering::SeqCst);
            var(&Y_AT).store(0, Ordering::SeqCst);
            round += 1;
            done += t.sides() - 1;
            ROUND.store(round, Ordering::SeqCst);
            // The other sides see the round only after fetching its page from this node (one
            // or more remote faults): starting this side 0-56 ms later lets either side go
            // first, or both at once.
            delay_us(u64::from(round % 8) * 8000);
            let r0 = side(*t, 0);
            while DONE.load(Ordering::SeqCst) < done {
                core::hint::spin_loop();
            }
            let r = |k: usize| R[k].load(Ordering::SeqCst);
            let outcome = match t {
                Test::Mp => r(1) as usize,
                Test::Iriw => ((r(2) << 2) | r(3)) as usize,
                _ => ((r0 << 1) | r(1)) as usize,
            };
            seen[outcome & 15] += 1;
        }
        // Outcome index: MP (r1, r2) as 2*r1 + r2 on the reader; IRIW the readers' (first,
        // second) loads as 8*a + 4*b + 2*c + d (reader 2: X then Y, reader 3: Y then X); the
        // others (r0, r1) as 2*r0 + r1.
        let (name, forbidden) = match t {
            Test::Mp => ("MP", 2),          // r1 = 1 (flag seen), r2 = 0 (data not seen)
            Test::Sb => ("SB", usize::MAX), // (0, 0) is allowed under TSO
            Test::SbFence => ("SB+mfence", 0),
            Test::Lb => ("LB", 3),
            // Reader 2 saw X=1 before Y=0 and reader 3 saw Y=1 before X=0: the two writes in
            // different orders, which TSO's single memory order forbids.
            Test::Iriw => ("IRIW", 0b1010),
        };
        let bad = seen.get(forbidden).copied().unwrap_or(0);
        // A pass means something only if the sides met in several orders.
        let distinct = seen.iter().filter(|n| **n > 0).count();
        let pass = bad == 0 && distinct >= 3;
        let bits = if matches!(t, Test::Iriw) { 4 } else { 2 };
        println!(
            "litmus: {} {name}: {iters} runs, outcomes{}",
            if pass { "PASS" } else { "FAIL" },
            Outcomes(&seen, bits)
        );
        ok &= pass;
    }
    println!("litmus: {}", if ok { "PASS all" } else { "FAIL some checks" });
    exit(if ok { 0 } else { 1 })
}

/// The outcomes seen, as ` 0101:n` for each with n > 0 (`bits` digits each).
struct Outcomes<'a>(&'a [u32; 16], usize);

impl core::fmt::Display for Outcomes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let bits = self.1;
        for (i, c) in self.0.iter().enumerate().filter(|(_, c)| **c > 0) {
            write!(f, " {i:0bits$b}:{c}")?;
        }
        Ok(())
    }
}
