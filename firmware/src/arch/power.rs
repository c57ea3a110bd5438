//! The ways out: emulator exit (test mode), power-off, reboot, halt.

use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::instructions::port::Port;

/// Set when the command line selected a test: fatal errors then end the emulator.
pub static TEST_MODE: AtomicBool = AtomicBool::new(false);

/// Ends the emulator with pass/fail: QEMU isa-debug-exit at 0xf4 (exit code (v<<1)|1, so
/// 33 = pass, 35 = fail), then Bochs' 0x8900 "Shutdown", then ACPI power-off.
pub fn exit_emulator(pass: bool) -> ! {
    crate::console::serial::flush();
    // SAFETY: 0xf4 is only decoded when the harness adds isa-debug-exit; elsewhere the write
    // goes nowhere.
    unsafe { Port::<u32>::new(0xf4).write(if pass { 0x10 } else { 0x11 }) };
    poweroff()
}

/// Powers off: Bochs' shutdown port, then the PIIX4 PM1a control port SeaBIOS programs
/// (0x604, SLP_TYP=0 | SLP_EN), then halts.
pub fn poweroff() -> ! {
    crate::console::serial::flush();
    // SAFETY: 0x8900 is Bochs' shutdown port and 0x604 the PM1a control port on QEMU's and
    // Bochs' chipsets; on other machines these writes are ignored.
    unsafe {
        let mut p = Port::<u8>::new(0x8900);
        for b in b"Shutdown" {
            p.write(*b);
        }
        Port::<u16>::new(0x604).write(0x2000);
        Port::<u16>::new(0xB004).write(0x2000);
    }
    halt()
}

/// Resets the machine: PCI reset control (0xCF9), then the keyboard controller (0x64).
pub fn reboot() -> ! {
    crate::console::serial::flush();
    // SAFETY: 0xCF9 reset control and the 8042's pulse-reset command are the standard PC
    // reset paths.
    unsafe {
        Port::<u8>::new(0xCF9).write(0x06);
        Port::<u8>::new(0x64).write(0xFE);
    }
    halt()
}

/// Stops this CPU for good.
pub fn halt() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// After a fatal error: ends the emulator in test mode, else halts so the console stays.
pub fn stop(pass: bool) -> ! {
    if TEST_MODE.load(Ordering::Relaxed) {
        exit_emulator(pass)
    }
    halt()
}
