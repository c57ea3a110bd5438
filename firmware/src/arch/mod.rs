//! x86-64 machinery: CPU features, descriptor tables, exceptions, the local APIC, time,
//! application-processor start-up, and the ways out (reboot, power-off, emulator exit).

pub mod apic;
pub mod cpu;
pub mod gdt;
pub mod idle;
pub mod idt;
pub mod paging;
pub mod pic;
pub mod power;
pub mod rand;
pub mod smp;
pub mod time;
