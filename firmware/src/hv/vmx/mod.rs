//! The Intel VMX backend (SDM Vol. 3C ch. 24-33): capability detection, VMXON on every core,
//! one VMCS per vCPU with controls computed from the TRUE capability MSRs, the entry/exit path,
//! and the translation of exit reasons into the neutral [`crate::hv::Exit`].

pub mod controls;
pub mod fields;

#[cfg(target_os = "none")]
pub mod hw;
#[cfg(target_os = "none")]
pub mod root;
