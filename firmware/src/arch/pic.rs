//! The PC's two legacy 8259 interrupt controllers, which the firmware does not use.

/// Before any CPU takes interrupts: move the 8259 PICs off the exception vectors (to
/// 0x20-0x2F) and mask them, so a BIOS-left PIT tick is never mistaken for a double fault
/// (8259A datasheet, ICW1-ICW4). Idempotent.
pub fn mask() {
    use x86_64::instructions::port::Port;
    // SAFETY: 0x20/0x21 and 0xA0/0xA1 are the PC's two 8259s; the firmware uses the local APIC
    // only, so remapping and masking them takes nothing away.
    unsafe {
        let (mut c1, mut d1) = (Port::<u8>::new(0x20), Port::<u8>::new(0x21));
        let (mut c2, mut d2) = (Port::<u8>::new(0xA0), Port::<u8>::new(0xA1));
        c1.write(0x11);
        c2.write(0x11);
        d1.write(0x20);
        d2.write(0x28);
        d1.write(4);
        d2.write(2);
        d1.write(1);
        d2.write(1);
        d1.write(0xff);
        d2.write(0xff);
    }
}
