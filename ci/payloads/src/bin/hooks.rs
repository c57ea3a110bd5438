//! Test-hook payload, booted WITHOUT `test=`: the test hypercalls (PROTECT, BREAK) must be
//! refused, thousands of PROTECT calls outside guest RAM must not exhaust the hypervisor, and
//! the guest must keep running normally afterwards.
#![no_std]
#![no_main]

use gestalt_payloads::*;

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    let mut bad = 0;
    if vmcall(hc::PROTECT, 0x20_0000, 1) != u64::MAX {
        println!("hooks: FAIL PROTECT was honoured outside test mode");
        bad += 1;
    }
    if vmcall(hc::BREAK, 0, 0) != u64::MAX {
        println!("hooks: FAIL BREAK was honoured outside test mode");
        bad += 1;
    }
    for i in 1..4000u64 {
        if vmcall(hc::PROTECT, i << 30, 7) != u64::MAX {
            println!("hooks: FAIL PROTECT at {:#x} succeeded", i << 30);
            bad += 1;
            break;
        }
    }
    // The hypervisor still maps fresh pages on demand (its reserve was not spent above).
    let p = 0x3E0_0000 as *mut u64; // in the top 4 MiB, mapped on first touch
                                    // SAFETY: guest RAM inside the payload's identity map, used by nothing else.
    unsafe { core::ptr::write_volatile(p, 0x5a5a) };
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(p) } != 0x5a5a {
        println!("hooks: FAIL guest RAM does not hold a write");
        bad += 1;
    }
    if bad == 0 {
        println!("hooks: PASS test hypercalls are refused outside test mode");
    }
    exit(bad)
}
