//! Console-input payload: reads one line from its UART (the node console, after Ctrl-]) and
//! prints it back, then exits with code 0.
//!
//! With more than one vCPU, vCPU 1 does it, wherever it runs: on a cluster that is a vCPU
//! on another node than the primary, whose UART and debug-exit port are the primary's. First it
//! writes the UART's scratch register and an I/O APIC redirection entry, which vCPU 0 must then
//! read back: one UART and one I/O APIC for the whole guest, not one per node.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use gestalt_payloads::*;

/// The 16550's scratch register (no function but to hold what was written).
const SCR: u16 = 0x3FF;
/// The I/O APIC's select and window registers (MMIO), and redirection entry 2's low half
/// (masked, vector 0x37: nothing is ever raised on pin 2).
const IOREGSEL: u64 = 0xFEC0_0000;
const IOWIN: u64 = 0xFEC0_0010;
const RTE2: u32 = 0x10 + 2 * 2;
const RTE2_VALUE: u32 = 0x1_0037;
/// 1: the reader wrote SCR and RTE 2; 2: vCPU 0 checked them and the reader may go on.
static STEP: AtomicU32 = AtomicU32::new(0);

fn ioapic(reg: u32, write: Option<u32>) -> u32 {
    // SAFETY: the payload identity-maps the I/O APIC's page; 32-bit accesses as it requires.
    unsafe {
        core::ptr::write_volatile(IOREGSEL as *mut u32, reg);
        match write {
            Some(v) => {
                core::ptr::write_volatile(IOWIN as *mut u32, v);
                v
            }
            None => core::ptr::read_volatile(IOWIN as *const u32),
        }
    }
}

fn echo(who: &str) -> ! {
    println!("echo: type a line (Ctrl-] gives the console to this guest){who}");
    let mut buf = [0u8; 80];
    let mut n = 0;
    loop {
        while inb(0x3FD) & 1 == 0 {
            core::hint::spin_loop();
        }
        let b = inb(0x3F8);
        if b == b'\r' || b == b'\n' {
            if n > 0 {
                break;
            }
            continue;
        }
        if n < buf.len() {
            buf[n] = b;
            n += 1;
        }
    }
    println!("echo: {}", core::str::from_utf8(&buf[..n]).unwrap_or("<not UTF-8>"));
    exit(0)
}

extern "C" fn reader(id: u64) -> ! {
    ap_arrived(id);
    x2apic_enable();
    let node = vmcall(hc::NODE, 0, 0);
    // A value the reset state (0) and a per-node model cannot show vCPU 0.
    outb(SCR, 0xA5 ^ id as u8);
    ioapic(RTE2, Some(RTE2_VALUE));
    STEP.store(1, Ordering::SeqCst);
    while STEP.load(Ordering::SeqCst) != 2 {
        core::hint::spin_loop();
    }
    // The same port read back here goes through the same UART.
    if inb(SCR) != 0xA5 ^ id as u8 || ioapic(RTE2, None) != RTE2_VALUE {
        println!("echo: FAIL vcpu {id} reads its own scratch or I/O APIC write back wrong");
        exit(1);
    }
    let mut who = Who { b: [0; 40], n: 0 };
    let _ = core::fmt::write(&mut who, format_args!(" (vcpu {id} on node {node})"));
    echo(who.as_str())
}

/// A short line without a heap.
struct Who {
    b: [u8; 40],
    n: usize,
}

impl Who {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.b[..self.n]).unwrap_or("")
    }
}

impl core::fmt::Write for Who {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = (self.n + s.len()).min(self.b.len());
        self.b[self.n..end].copy_from_slice(&s.as_bytes()[..end - self.n]);
        self.n = end;
        Ok(())
    }
}

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    let n = vcpus();
    if n < 2 {
        echo("")
    }
    x2apic_enable();
    // An AP on another node fetches its first pages across the network: wait long enough.
    let up = start_aps_within(n.min(2), reader, 20_000_000);
    if up != 1 {
        println!("echo: FAIL vcpu 1 did not start");
        exit(1);
    }
    while STEP.load(Ordering::SeqCst) != 1 {
        core::hint::spin_loop();
    }
    let got = inb(SCR);
    if got != 0xA5 ^ 1 {
        println!("echo: FAIL the scratch register vcpu 1 wrote reads {got:#x} on vcpu 0");
        exit(1);
    }
    println!("echo: PASS the UART scratch register vcpu 1 wrote reads back on vcpu 0");
    let rte = ioapic(RTE2, None);
    if rte != RTE2_VALUE {
        println!("echo: FAIL the I/O APIC entry vcpu 1 wrote reads {rte:#x} on vcpu 0");
        exit(1);
    }
    println!("echo: PASS the I/O APIC entry vcpu 1 wrote reads back on vcpu 0");
    STEP.store(2, Ordering::SeqCst);
    loop {
        // SAFETY: halts with interrupts off: the reader ends the guest; nothing is delivered.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
