//! Triple-fault payload: says what it is about to do, loads an empty IDT and executes UD2.
//! #UD cannot be delivered → #GP → #DF → shutdown, which the hypervisor must diagnose.
#![no_std]
#![no_main]

use gestalt_payloads::*;

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    println!("triple: loading an empty IDT and executing UD2: expect a triple fault");
    load_empty_idt();
    // SAFETY: deliberately faults; this payload exists to triple-fault.
    unsafe { core::arch::asm!("ud2") };
    println!("triple: FAIL still running after UD2");
    exit(1)
}
