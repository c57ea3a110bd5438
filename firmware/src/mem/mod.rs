//! Physical memory: usable regions from the loader's map, the frame allocator for the
//! hypervisor's own memory, and the split between hypervisor reserve and guest pool.

pub mod frames;
pub mod regions;

/// Bytes in a 4 KiB frame.
pub const PAGE: u64 = 4096;
/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;

#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_os = "none")]
pub mod tables;
