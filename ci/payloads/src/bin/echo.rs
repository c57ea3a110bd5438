//! Console-input payload: reads one line from its UART (the node console, after Ctrl-]) and
//! prints it back, then exits with code 0.
#![no_std]
#![no_main]

use gestalt_payloads::*;

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    println!("echo: type a line (Ctrl-] gives the console to this guest)");
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
