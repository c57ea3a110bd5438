//! The AMD SVM backend (AMD APM Vol. 2 ch. 15): detection, EFER.SVME and a host save area on
//! every core, one VMCB per vCPU with nested paging (`npt`), the CLGI/VMRUN/STGI entry, and
//! the translation of exit codes into the neutral [`crate::hv::Exit`]. Where the CPU does not
//! report the next RIP (no NRIPS, as in QEMU TCG) it is decoded from the guest's bytes
//! (`decode`).

pub mod decode;
pub mod vmcb;

#[cfg(target_os = "none")]
pub mod hw;
