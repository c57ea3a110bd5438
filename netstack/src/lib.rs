//! NIC drivers, smoltcp adapter and transport (work in progress).
#![cfg_attr(not(test), no_std)]
