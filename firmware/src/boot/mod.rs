//! What the boot loader hands over: the Multiboot 1 information structure.

pub mod multiboot;
