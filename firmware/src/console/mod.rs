//! The management console on COM1: leveled log lines, the bounded log buffer and the refusal
//! rate limit in front of it, and the shell's line editor and command parser. The UART itself
//! is in `serial` (bare metal only).

pub mod log;
pub mod ratelimit;
pub mod ring;
pub mod shell;

#[cfg(target_os = "none")]
pub mod serial;
