//! EPT payload: touches the top 4 MiB of its RAM, which the hypervisor maps only on first
//! touch, and reports the fault round trip in TSC ticks; write-protects a page through a
//! hypercall and writes it (a rights fault); then reads memory outside its EPT map, which the
//! hypervisor must refuse by stopping the guest with a diagnostic.
#![no_std]
#![no_main]

use gestalt_payloads::*;

const PAGES: u64 = 64;

fn touch(a: u64) -> u64 {
    let t0 = rdtsc();
    // SAFETY: `a` is guest RAM (mapped by our page tables; EPT maps it on demand).
    unsafe { core::ptr::read_volatile(a as *const u64) };
    rdtsc() - t0
}

#[unsafe(no_mangle)]
extern "C" fn payload_main(mbi: u32) -> ! {
    // SAFETY: the loader's Multiboot info: flags, mem_lower, mem_upper (KiB above 1 MiB).
    let upper = unsafe { core::ptr::read_volatile((u64::from(mbi) + 8) as *const u32) };
    let ram = (u64::from(upper) + 1024) * 1024;
    let lazy = ram - (4 << 20);
    println!(
        "ept: {} MiB RAM; touching {PAGES} pages from {lazy:#x} (mapped on demand)",
        ram >> 20
    );
    let mut ok = true;
    let f0 = vmcall(hc::FAULTS, 0, 0);
    let first: u64 = (0..PAGES).map(|i| touch(lazy + i * 4096)).sum();
    let f1 = vmcall(hc::FAULTS, 0, 0);
    let second: u64 = (0..PAGES).map(|i| touch(lazy + i * 4096)).sum();
    let f2 = vmcall(hc::FAULTS, 0, 0);
    if f1 - f0 == PAGES && f2 == f1 {
        println!(
            "ept: PASS {PAGES} first touches took {} nested page faults, second touches none",
            f1 - f0
        );
    } else {
        println!("ept: FAIL faults first {} second {}", f1 - f0, f2 - f1);
        ok = false;
    }
    let (a, b) = (first / PAGES, second / PAGES);
    println!(
        "ept: fault round trip {} TSC ticks (first touch {a}, mapped touch {b}) at {} Hz",
        a.saturating_sub(b),
        tsc_hz()
    );

    // Per-page rights: read-only page, then a write.
    let page = 32u64 << 20;
    // SAFETY: guest RAM.
    unsafe { core::ptr::write_volatile(page as *mut u64, 1) };
    let r = vmcall(hc::PROTECT, page, 0b101);
    // SAFETY: guest RAM, readable after PROTECT.
    let v1 = unsafe { core::ptr::read_volatile(page as *const u64) };
    let f3 = vmcall(hc::FAULTS, 0, 0);
    let t0 = rdtsc();
    // SAFETY: guest RAM; the write faults (rights) and the hypervisor grants it.
    unsafe { core::ptr::write_volatile(page as *mut u64, 2) };
    let dt = rdtsc() - t0;
    let f4 = vmcall(hc::FAULTS, 0, 0);
    // SAFETY: guest RAM.
    let v2 = unsafe { core::ptr::read_volatile(page as *const u64) };
    if r == 0 && v1 == 1 && v2 == 2 && f4 - f3 == 1 {
        println!(
            "ept: PASS write to a read-only page faulted once and was granted ({dt} TSC ticks)"
        );
    } else {
        println!("ept: FAIL rights fault: protect {r:#x} read {v1} after {v2} faults {}", f4 - f3);
        ok = false;
    }
    println!("ept: {}", if ok { "PASS all" } else { "FAIL some checks" });
    println!("ept: reading 0xc0000000, outside guest memory: the hypervisor must stop this guest");
    // SAFETY: deliberately outside guest RAM: the access must never complete.
    let v = unsafe { core::ptr::read_volatile(0xC000_0000u64 as *const u64) };
    println!("ept: FAIL read outside guest memory returned {v:#x}");
    exit(1)
}
