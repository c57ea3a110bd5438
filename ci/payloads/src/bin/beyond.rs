//! Memory beyond one node: a guest whose RAM is larger than any node's pool (each node homes
//! part of it and caches only a few pages homed elsewhere). vCPU 0 (node 0) writes every page
//! of node 1's range, vCPU 1 (node 1) every free page of node 0's, each page a pattern naming
//! its writer and address; then each verifies the pages the other wrote — contents that went
//! home through evictions or still sit in the other node's cache. Exit code 0 when all PASS.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use gestalt_payloads::*;

/// Node 0's range from here up is free for the sweep (the payload, its stacks and tables lie
/// below).
const FREE_FROM: u64 = 2 << 20;

static RAM: AtomicU64 = AtomicU64::new(0);
static BARRIER: AtomicU32 = AtomicU32::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);
static PAGES: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static NODE: [AtomicU32; 2] = [const { AtomicU32::new(u32::MAX) }; 2];

fn barrier(k: u32) {
    BARRIER.fetch_add(1, Ordering::SeqCst);
    while BARRIER.load(Ordering::SeqCst) < 2 * k {
        core::hint::spin_loop();
    }
}

/// The range vCPU `id` writes: the other node's home range (node 0's above `FREE_FROM`).
/// Node 0 homes [0, split), node 1 the rest; `split` comes from the hypervisor's layout,
/// which gives node 0 the first range.
fn range(id: u32, split: u64) -> (u64, u64) {
    if id == 0 {
        (split, RAM.load(Ordering::SeqCst))
    } else {
        (FREE_FROM, split)
    }
}

fn pattern(writer: u32, a: u64) -> u64 {
    a ^ (u64::from(writer) << 52) ^ 0x0bad_cafe_0000_0000
}

fn work(id: u32, split: u64) {
    let (lo, hi) = range(id, split);
    for a in (lo..hi).step_by(8) {
        // SAFETY: guest RAM; each vCPU writes only its own range.
        unsafe { core::ptr::write_volatile(a as *mut u64, pattern(id, a)) };
    }
    PAGES[id as usize].store((hi - lo) / 4096, Ordering::SeqCst);
    barrier(1);
    let other = 1 - id;
    let (lo, hi) = range(other, split);
    let mut bad = 0;
    for a in (lo..hi).step_by(8) {
        // SAFETY: guest RAM the other vCPU wrote before the barrier.
        if unsafe { core::ptr::read_volatile(a as *const u64) } != pattern(other, a) {
            bad += 1;
        }
    }
    BAD.fetch_add(bad, Ordering::SeqCst);
    barrier(2);
}

static SPLIT: AtomicU64 = AtomicU64::new(0);

extern "C" fn ap_main(id: u64) -> ! {
    ap_arrived(id);
    own_page_tables(id as u32);
    NODE[1].store(vmcall(hc::NODE, 0, 0) as u32, Ordering::SeqCst);
    work(id as u32, SPLIT.load(Ordering::SeqCst));
    loop {
        wait_for_interrupt();
    }
}

#[unsafe(no_mangle)]
extern "C" fn payload_main(mbi: u32) -> ! {
    // SAFETY: the loader's Multiboot info: flags, mem_lower, mem_upper (KiB above 1 MiB).
    let upper = unsafe { core::ptr::read_volatile((u64::from(mbi) + 8) as *const u32) };
    let ram = (u64::from(upper) + 1024) * 1024;
    RAM.store(ram, Ordering::SeqCst);
    // Equal pools: node 0 homes the first half.
    SPLIT.store(ram / 2, Ordering::SeqCst);
    NODE[0].store(vmcall(hc::NODE, 0, 0) as u32, Ordering::SeqCst);
    println!("beyond: {} MiB of guest RAM on 2 vCPUs", ram >> 20);
    if vcpus() < 2 || start_aps_within(2, ap_main, 20_000_000) != 1 {
        println!("beyond: FAIL vcpu 1 did not start");
        exit(1)
    }
    own_page_tables(0);
    work(0, ram / 2);
    let (p0, p1) = (PAGES[0].load(Ordering::SeqCst), PAGES[1].load(Ordering::SeqCst));
    let bad = BAD.load(Ordering::SeqCst);
    let nodes = (NODE[0].load(Ordering::SeqCst), NODE[1].load(Ordering::SeqCst));
    if bad == 0 && nodes == (0, 1) {
        println!(
            "beyond: PASS {p0} pages written on node 0 and {p1} on node 1, each verified on the other node"
        );
        exit(0)
    }
    println!("beyond: FAIL {bad} words wrong (vCPUs on nodes {nodes:?})");
    exit(1)
}
