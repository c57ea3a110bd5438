//! Gestalt node firmware: boot, memory, console and shell, PCI, APIC/SMP — and later the
//! hypervisor and the node loop that glue transport ↔ coherence ↔ EPT.
//!
//! Pure logic (command line, multiboot and ACPI parsing, memory regions, page-table building,
//! shell line editing, PCI decoding) compiles and is unit-tested on the host; the modules that
//! touch hardware are built only for the bare-metal target (`target_os = "none"`).
#![cfg_attr(not(test), no_std)]
#![cfg_attr(target_os = "none", feature(abi_x86_interrupt))]
#![warn(missing_docs)]

extern crate alloc;

pub mod acpi;
pub mod boot;
pub mod cmdline;
pub mod console;
pub mod hv;
pub mod info;
pub mod mem;
pub mod net;
pub mod paging;
pub mod pci;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod node;

#[cfg(target_os = "none")]
pub use node::kmain;

/// Reads physical memory. The firmware identity-maps RAM and reads it directly; host tests
/// hand the parsers a fake memory.
pub trait PhysRead {
    /// Fills `buf` from physical address `addr`; `false` when the range is not readable.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// Reads a little-endian u32 (`None` when unreadable).
    fn read_u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b).then(|| u32::from_le_bytes(b))
    }

    /// Reads a little-endian u64 (`None` when unreadable).
    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

#[cfg(test)]
pub(crate) mod testmem {
    //! A sparse fake physical memory for parser tests.
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct FakeMem(pub BTreeMap<u64, u8>);

    impl FakeMem {
        pub fn put(&mut self, addr: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
        }
    }

    impl crate::PhysRead for FakeMem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                match self.0.get(&(addr + i as u64)) {
                    Some(v) => *b = *v,
                    None => return false,
                }
            }
            true
        }
    }
}
