//! Cluster payload: one guest across the nodes. vCPU 0 starts every vCPU with INIT/SIPI (the
//! ones on other nodes through the hypervisors' messages); each reports the node that runs it.
//! Then, on all vCPUs at once: a LOCK-prefixed counter that must end at the exact sum, with a
//! check that vCPUs on different nodes really incremented it in overlapping time; an integrity
//! sweep in rounds, each vCPU writing pages homed on another node and every vCPU verifying
//! every other's pages (so pages change owner many times); fixed IPIs to every other vCPU and a
//! broadcast, each delivered exactly once; and guest time: vCPU 0 publishes its TSC through
//! memory while the vCPUs on other nodes read it and then their own TSC, which must never be
//! smaller. Then the same counter once more on page tables every node walks. Exit code 0 when
//! all PASS.
//!
//! Page tables: each vCPU runs the phases above on its own (an identity map of 4 GiB in 2 MiB
//! pages, accessed and dirty bits preset), which only it touches, so they settle on its node,
//! as a NUMA-aware kernel replicates its tables per node. That is a workaround for QEMU 7.2
//! TCG, whose nested walk accesses the guest's page tables as writes and whose every VMRUN
//! and #VMEXIT flush its TLB (docs/design.md §9): on tables shared across nodes every vCPU
//! needs them writable after every exit, so they move between the nodes all the time,
//! correctly but too slowly for the timing checks. The last phase runs on the boot tables,
//! shared and homed on node 0 as a kernel's shared tables are, and checks only the count (its
//! time is printed).
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use gestalt_payloads::*;

const MAX: usize = 16;
const ITER: u64 = 300;
const ROUNDS: u64 = 3;
const PAGES: u64 = 8;

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Per vCPU: the counter value it saw at its first and its last increment.
static FIRST: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static LAST: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static NODE: [AtomicU32; MAX] = [const { AtomicU32::new(u32::MAX) }; MAX];
static BARRIER: AtomicU32 = AtomicU32::new(0);
static BAD: AtomicU32 = AtomicU32::new(0);
static IPIS: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
static NMIS: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
static RAM: AtomicU64 = AtomicU64::new(0);
static VCPUS: AtomicU32 = AtomicU32::new(1);
static GO: AtomicU32 = AtomicU32::new(0);
/// TSC ticks vCPU 0 spent on its increments.
static COUNTER_TICKS: AtomicU64 = AtomicU64::new(0);
/// vCPU 0's TSC as it publishes it; the phase ends when `PUBLISH_DONE` is set.
static PUBLISHED: AtomicU64 = AtomicU64::new(0);
static PUBLISH_DONE: AtomicU32 = AtomicU32::new(0);
/// Per vCPU: published values it saw change, and how many of them were ahead of its own TSC.
static TSC_SEEN: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
static TSC_AHEAD: AtomicU32 = AtomicU32::new(0);
/// Smallest and largest (own TSC - published) over every read, in ticks.
static LAG_MIN: AtomicU64 = AtomicU64::new(u64::MAX);
static LAG_MAX: AtomicU64 = AtomicU64::new(0);
const PUBLISH: u32 = 30;
/// The boot page tables (shared by every vCPU), and each vCPU's own.
static BOOT_CR3: AtomicU64 = AtomicU64::new(0);
static OWN_CR3: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
/// The counter of the last phase, on the shared tables, and the phase's ticks (vCPU 0's).
static SHARED: AtomicU64 = AtomicU64::new(0);
static SHARED_TICKS: AtomicU64 = AtomicU64::new(0);
const SHARED_ITER: u64 = 10;
/// vCPUs whose AMD topology leaves (Fn8000_0008, Fn8000_001E) disagree with their x2APIC id.
static BAD_TOPOLOGY: AtomicU32 = AtomicU32::new(0);
/// Builds this vCPU's own page tables (`own_page_tables`) and switches to them.
fn own_tables(id: u32) {
    let base = own_page_tables(id);
    OWN_CR3[id as usize].store(base, Ordering::SeqCst);
}

/// On an AMD CPU each vCPU's extended APIC id (Fn8000_001E EAX) is its x2APIC id and NC + 1
/// (Fn8000_0008 ECX[7:0]) the vCPU count; returns whether this is an AMD CPU.
fn check_amd_topology() -> bool {
    if cpuid(0, 0).1 != u32::from_le_bytes(*b"Auth") {
        return false;
    }
    let max = cpuid(0x8000_0000, 0).0;
    let n = (cpuid(0x8000_0008, 0).2 & 0xff) + 1;
    if max < 0x8000_001e || cpuid(0x8000_001e, 0).0 != apic_id() || n != vcpus() {
        BAD_TOPOLOGY.fetch_add(1, Ordering::SeqCst);
    }
    true
}

/// RDTSC after every earlier instruction completed (LFENCE orders it, SDM Vol. 2B RDTSC).
fn rdtsc_after_loads() -> u64 {
    // SAFETY: LFENCE only orders; it touches no memory or register.
    unsafe { core::arch::asm!("lfence", options(nostack, preserves_flags)) };
    rdtsc()
}

/// vCPU 0 publishes its TSC; every other vCPU reads it, then its own.
fn clock(id: u32) {
    if id == 0 {
        // Until every other vCPU saw the value change PUBLISH times (or 20 s passed).
        let (n, t0) = (VCPUS.load(Ordering::SeqCst) as usize, rdtsc());
        while (1..n).any(|i| TSC_SEEN[i].load(Ordering::SeqCst) < PUBLISH)
            && rdtsc() - t0 < 20 * tsc_hz()
        {
            PUBLISHED.store(rdtsc(), Ordering::SeqCst);
            delay_us(500);
        }
        PUBLISH_DONE.store(1, Ordering::SeqCst);
        return;
    }
    let (mut last, mut seen) = (0, 0);
    while PUBLISH_DONE.load(Ordering::SeqCst) == 0 {
        let p = PUBLISHED.load(Ordering::SeqCst);
        let t = rdtsc_after_loads();
        if p == last {
            continue;
        }
        last = p;
        seen += 1;
        TSC_SEEN[id as usize].store(seen, Ordering::SeqCst);
        if t < p {
            TSC_AHEAD.fetch_add(1, Ordering::SeqCst);
        } else {
            LAG_MIN.fetch_min(t - p, Ordering::SeqCst);
            LAG_MAX.fetch_max(t - p, Ordering::SeqCst);
        }
    }
}

extern "x86-interrupt" fn nmi(_f: Frame) {
    NMIS[apic_id() as usize % MAX].fetch_add(1, Ordering::SeqCst);
}

extern "x86-interrupt" fn ipi(_f: Frame) {
    IPIS[apic_id() as usize % MAX].fetch_add(1, Ordering::SeqCst);
    eoi();
}

/// Every vCPU arrives before any leaves (the `k`-th barrier of the run).
fn barrier(k: u32) {
    let n = VCPUS.load(Ordering::SeqCst);
    BARRIER.fetch_add(1, Ordering::SeqCst);
    while BARRIER.load(Ordering::SeqCst) < k * n {
        core::hint::spin_loop();
    }
}

/// The page vCPU `writer` owns in round `round`: in the home range of the node after its own.
fn page_of(writer: u32, round: u64, i: u64) -> u64 {
    let nodes = u64::from(
        NODE.iter()
            .filter_map(|n| {
                let v = n.load(Ordering::SeqCst);
                (v != u32::MAX).then_some(v)
            })
            .max()
            .unwrap_or(0),
    ) + 1;
    let ram = RAM.load(Ordering::SeqCst);
    let each = ram / nodes;
    let node = u64::from(NODE[writer as usize].load(Ordering::SeqCst));
    let home = (node + 1 + round) % nodes;
    // Above the payload's own memory in node 0's range; slots by writer.
    let base = home * each + if home == 0 { 16 << 20 } else { 0 };
    base + (u64::from(writer) * PAGES + i) * 4096
}

fn pattern(writer: u32, round: u64, a: u64) -> u64 {
    a ^ (u64::from(writer) << 48) ^ (round << 40) ^ 0x5a5a_0000_0000_a5a5
}

fn work(id: u32) {
    let n = VCPUS.load(Ordering::SeqCst);
    barrier(1);
    let t0 = rdtsc();
    for k in 0..ITER {
        let v = COUNTER.fetch_add(1, Ordering::SeqCst);
        if k == 0 {
            FIRST[id as usize].store(v, Ordering::SeqCst);
        }
        LAST[id as usize].store(v, Ordering::SeqCst);
        // Spread the increments over longer than a page's round trip between nodes, so the
        // other node's vCPU gets the counter in between (else one node could do all of its
        // increments while it holds the page, and the count would prove nothing).
        delay_us(50);
    }
    if id == 0 {
        COUNTER_TICKS.store(rdtsc() - t0, Ordering::SeqCst);
    }
    barrier(2);
    for round in 0..ROUNDS {
        for i in 0..PAGES {
            let p = page_of(id, round, i);
            for a in (p..p + 4096).step_by(8) {
                // SAFETY: guest RAM; each vCPU writes only its own slot of pages.
                unsafe { core::ptr::write_volatile(a as *mut u64, pattern(id, round, a)) };
            }
        }
        barrier(3 + 2 * round as u32);
        for w in (0..n).filter(|w| *w != id) {
            for i in 0..PAGES {
                let p = page_of(w, round, i);
                for a in (p..p + 4096).step_by(8) {
                    // SAFETY: guest RAM written by vCPU `w` before the barrier.
                    if unsafe { core::ptr::read_volatile(a as *const u64) } != pattern(w, round, a)
                    {
                        BAD.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
        barrier(4 + 2 * round as u32);
    }
    clock(id);
    barrier(3 + 2 * ROUNDS as u32);
    // Shared page tables: every node walks them (slowly on QEMU 7.2, see the top).
    set_cr3(BOOT_CR3.load(Ordering::SeqCst));
    barrier(4 + 2 * ROUNDS as u32);
    let t0 = rdtsc();
    for _ in 0..SHARED_ITER {
        SHARED.fetch_add(1, Ordering::SeqCst);
        delay_us(50);
    }
    barrier(5 + 2 * ROUNDS as u32);
    if id == 0 {
        SHARED_TICKS.store(rdtsc() - t0, Ordering::SeqCst);
    }
    set_cr3(OWN_CR3[id as usize].load(Ordering::SeqCst));
}

extern "C" fn ap_main(id: u64) -> ! {
    ap_arrived(id);
    own_tables(id as u32);
    x2apic_enable();
    load_idt();
    let id = id as u32;
    let node = vmcall(hc::NODE, 0, 0) as u32;
    // The line first: vCPU 0 prints its own once it sees the node, so the primary's console
    // must show this one before that one (guest order across nodes).
    println!("span: vcpu {id} up on node {node} (x2APIC id {})", apic_id());
    check_amd_topology();
    NODE[id as usize].store(node, Ordering::SeqCst);
    while GO.load(Ordering::SeqCst) == 0 {
        core::hint::spin_loop();
    }
    work(id);
    loop {
        wait_for_interrupt();
    }
}

#[unsafe(no_mangle)]
extern "C" fn payload_main(mbi: u32) -> ! {
    x2apic_enable();
    set_gate(0x42, ipi);
    set_gate(2, nmi);
    load_idt();
    // SAFETY: the loader's Multiboot info: flags, mem_lower, mem_upper (KiB above 1 MiB).
    let upper = unsafe { core::ptr::read_volatile((u64::from(mbi) + 8) as *const u32) };
    RAM.store((u64::from(upper) + 1024) * 1024, Ordering::SeqCst);
    let n = vcpus().min(MAX as u32);
    VCPUS.store(n, Ordering::SeqCst);
    let node = vmcall(hc::NODE, 0, 0) as u32;
    NODE[0].store(node, Ordering::SeqCst);
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    BOOT_CR3.store(cr3, Ordering::SeqCst);
    let amd = check_amd_topology();
    println!(
        "span: {n} vCPUs, {} MiB RAM; vcpu 0 on node {node}",
        RAM.load(Ordering::SeqCst) >> 20
    );
    // The APs start on the boot tables (the trampoline loads this CR3), then take their own.
    let up = start_aps_within(n, ap_main, 20_000_000);
    own_tables(0);
    let mut ok = up + 1 == n;
    println!("span: {}/{n} vCPUs started with INIT/SIPI", up + 1);
    let t0 = rdtsc();
    while (0..n as usize).any(|i| NODE[i].load(Ordering::SeqCst) == u32::MAX)
        && rdtsc() - t0 < 60 * tsc_hz()
    {
        core::hint::spin_loop();
    }
    let nodes: u32 = (0..n as usize).map(|i| NODE[i].load(Ordering::SeqCst)).max().unwrap_or(0) + 1;
    println!("span: every vCPU reported its node: {nodes} nodes");
    GO.store(1, Ordering::SeqCst);
    work(0);

    let total = COUNTER.load(Ordering::SeqCst);
    let want = ITER * u64::from(n);
    // Overlap: some pair of vCPUs on different nodes each incremented inside the other's span.
    let overlapped = (0..n as usize).any(|a| {
        (0..n as usize).any(|b| {
            NODE[a].load(Ordering::SeqCst) != NODE[b].load(Ordering::SeqCst)
                && FIRST[a].load(Ordering::SeqCst) < LAST[b].load(Ordering::SeqCst)
                && FIRST[b].load(Ordering::SeqCst) < LAST[a].load(Ordering::SeqCst)
        })
    });
    if total == want && (overlapped || nodes == 1) {
        println!("span: PASS atomic counter {total} = {n} vCPUs x {ITER} on {nodes} nodes, increments overlapped across nodes");
    } else {
        println!(
            "span: FAIL atomic counter {total} of {want}, overlapped across nodes: {overlapped}"
        );
        ok = false;
    }
    let us = COUNTER_TICKS.load(Ordering::SeqCst) * 1_000_000 / tsc_hz();
    println!("span: vcpu 0's {ITER} increments took {us} us of its time");
    let bad = BAD.load(Ordering::SeqCst);
    if bad == 0 {
        println!(
            "span: PASS integrity: {ROUNDS} rounds of {PAGES} pages per vCPU homed on another node, verified by every other vCPU"
        );
    } else {
        println!("span: FAIL integrity: {bad} words wrong");
        ok = false;
    }

    // Guest time: each vCPU on another node must have seen vCPU 0's clock move (else nothing
    // travelled), and never a value ahead of its own.
    let remote: usize = (1..n as usize).filter(|&i| NODE[i].load(Ordering::SeqCst) != node).count();
    let seen: u32 = (1..n as usize).map(|i| TSC_SEEN[i].load(Ordering::SeqCst)).sum();
    let few = (1..n as usize).any(|i| {
        NODE[i].load(Ordering::SeqCst) != node && TSC_SEEN[i].load(Ordering::SeqCst) < PUBLISH
    });
    let ahead = TSC_AHEAD.load(Ordering::SeqCst);
    let us = |t: u64| t * 1_000_000 / tsc_hz();
    if ahead == 0 && !few && (remote > 0 || nodes == 1) {
        println!(
            "span: PASS guest TSC: {remote} vCPUs on other nodes read {seen} TSC values vCPU 0 published through memory, none ahead of their own clock (lag {}-{} us)",
            us(LAG_MIN.load(Ordering::SeqCst).min(LAG_MAX.load(Ordering::SeqCst))),
            us(LAG_MAX.load(Ordering::SeqCst))
        );
    } else {
        println!(
            "span: FAIL guest TSC: {ahead} of {seen} published values were ahead of the reader's clock (some reader saw fewer than {PUBLISH}: {few})"
        );
        ok = false;
    }

    // Fixed IPIs to each other vCPU, then one broadcast (all excluding self): each vCPU
    // must count exactly two.
    for id in 1..n {
        send_ipi(id, 0x42);
    }
    // Two IPIs of one vector pending at once are one (one IRR bit): broadcast only after each
    // vCPU took the first.
    let t0 = rdtsc();
    while (1..n as usize).any(|i| IPIS[i].load(Ordering::SeqCst) < 1)
        && rdtsc() - t0 < 30 * tsc_hz()
    {
        core::hint::spin_loop();
    }
    send_ipi(0, (3 << 18) | 0x42);
    let t0 = rdtsc();
    while (1..n as usize).any(|i| IPIS[i].load(Ordering::SeqCst) < 2)
        && rdtsc() - t0 < 30 * tsc_hz()
    {
        core::hint::spin_loop();
    }
    delay_us(100_000);
    let counts: [u32; MAX] = core::array::from_fn(|i| IPIS[i].load(Ordering::SeqCst));
    if (1..n as usize).all(|i| counts[i] == 2) && counts[0] == 0 {
        println!(
            "span: PASS fixed and broadcast IPIs reached each of {} other vCPUs exactly once each",
            n - 1
        );
    } else {
        println!("span: FAIL IPI counts {:?}", &counts[..n as usize]);
        ok = false;
    }
    // Logical destination (x2APIC cluster 0, one bit per vCPU: SDM Vol. 3A §11.12.10.2) and
    // an NMI, to every other vCPU.
    let others: u32 = (1..n.min(16)).map(|i| 1u32 << i).sum();
    send_ipi(others, (1 << 11) | 0x42);
    for id in 1..n {
        send_ipi(id, 4 << 8);
    }
    let t0 = rdtsc();
    while (1..n as usize)
        .any(|i| IPIS[i].load(Ordering::SeqCst) < 3 || NMIS[i].load(Ordering::SeqCst) < 1)
        && rdtsc() - t0 < 30 * tsc_hz()
    {
        core::hint::spin_loop();
    }
    delay_us(100_000);
    let fixed: [u32; MAX] = core::array::from_fn(|i| IPIS[i].load(Ordering::SeqCst));
    let nmis: [u32; MAX] = core::array::from_fn(|i| NMIS[i].load(Ordering::SeqCst));
    if (1..n as usize).all(|i| fixed[i] == 3 && nmis[i] == 1) && nmis[0] == 0 {
        println!("span: PASS a logical-destination IPI and an NMI reached each other vCPU once");
    } else {
        println!(
            "span: FAIL logical/NMI counts {:?} / {:?}",
            &fixed[..n as usize],
            &nmis[..n as usize]
        );
        ok = false;
    }
    let shared = SHARED.load(Ordering::SeqCst);
    let ms = SHARED_TICKS.load(Ordering::SeqCst) * 1000 / tsc_hz();
    if shared == SHARED_ITER * u64::from(n) {
        println!("span: PASS atomic counter {shared} on page tables shared by {nodes} nodes (the phase took {ms} ms)");
    } else {
        println!(
            "span: FAIL atomic counter {shared} of {} on shared page tables",
            SHARED_ITER * u64::from(n)
        );
        ok = false;
    }
    let bad = BAD_TOPOLOGY.load(Ordering::SeqCst);
    if !amd {
        println!("span: not an AMD CPU: its topology leaves are not checked");
    } else if bad == 0 {
        println!("span: PASS AMD topology leaves: extended APIC id = x2APIC id and NC + 1 = {n} on every vCPU");
    } else {
        println!("span: FAIL AMD topology leaves wrong on {bad} vCPUs");
        ok = false;
    }
    println!("span: {}", if ok { "PASS all" } else { "FAIL some checks" });
    exit(if ok { 0 } else { 1 })
}
