//! Invalid-guest-state payload: asks the hypervisor (test hypercall 6) to break its guest state;
//! the next VM entry fails and the hypervisor must decode and dump it, not hang.
#![no_std]
#![no_main]

use gestalt_payloads::*;

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    println!("badstate: breaking the guest state: expect an invalid-guest-state diagnosis");
    vmcall(hc::BREAK, 0, 0);
    println!("badstate: FAIL still running with a broken guest state");
    exit(1)
}
