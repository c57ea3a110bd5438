//! Failed-entry payload: asks the hypervisor (test hypercall 6) to break a VM-execution
//! control; the entry instruction fails and the hypervisor must decode the VM-instruction error.
#![no_std]
#![no_main]

use gestalt_payloads::*;

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    println!("badctl: breaking a VM-execution control: expect a decoded VM-instruction error");
    vmcall(hc::BREAK, 1, 0);
    println!("badctl: FAIL still running with a broken control");
    exit(1)
}
