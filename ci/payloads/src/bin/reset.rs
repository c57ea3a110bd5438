//! Reset payload: asks for a reset through port 0xCF9 (the PCI reset control) and must come
//! back at its entry with its image loaded again: its data as linked, its bss zero. Guest RAM
//! outside the image survives a reset, as on a PC: a marker there tells the boots apart.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use gestalt_payloads::*;

/// The marker's address: 16 MiB, far above the image (linked at 1 MiB), inside 32 MiB of RAM.
const MARK: u64 = 0x100_0000;
/// "RSET" and the boot it was written in.
const FIRST: u64 = 0x5253_4554_0000_0001;
const LINKED: u32 = 0x1234_5678;

/// In .data: written before the reset, must read as linked after it.
static DATA: AtomicU32 = AtomicU32::new(LINKED);
/// In .bss: written before the reset, must read zero after it.
static BSS: AtomicU32 = AtomicU32::new(0);

fn mark() -> u64 {
    // SAFETY: identity-mapped guest RAM the image does not occupy.
    unsafe { core::ptr::read_volatile(MARK as *const u64) }
}

fn set_mark(v: u64) {
    // SAFETY: as in `mark`.
    unsafe { core::ptr::write_volatile(MARK as *mut u64, v) }
}

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    let (data, bss) = (DATA.load(Ordering::SeqCst), BSS.load(Ordering::SeqCst));
    if mark() != FIRST {
        println!("reset: first boot (data {data:#x}, bss {bss}); asking for a reset at 0xCF9");
        DATA.store(0xDEAD, Ordering::SeqCst);
        BSS.store(7, Ordering::SeqCst);
        set_mark(FIRST);
        outb(0xCF9, 6);
        // The reset takes the vCPU at its next exit; a slice's end is one.
        let t0 = rdtsc();
        while rdtsc().wrapping_sub(t0) < 10 * tsc_hz() {
            core::hint::spin_loop();
        }
        println!("reset: FAIL still running 10 s after the reset request");
        exit(1);
    }
    set_mark(0);
    let ok = data == LINKED && bss == 0;
    println!(
        "reset: second boot: data {data:#x} (linked {LINKED:#x}), bss {bss} (0): {}",
        if ok { "PASS" } else { "FAIL" }
    );
    exit(u32::from(!ok))
}
