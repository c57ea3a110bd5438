//! Hypercall numbers (RAX) of the test ABI; results in RAX, `u64::MAX` for unknown calls.
//! One definition for both sides: the guest payloads include this file (`ci/payloads`).

/// RAX = ABI version.
pub const VERSION: u64 = 0;
/// Ends the guest with exit code RBX.
pub const EXIT: u64 = 1;
/// RAX = TSC ticks per second.
pub const TSC_HZ: u64 = 2;
/// Does nothing (round-trip measurements).
pub const NOP: u64 = 3;
/// Sets the EPT rights (RCX: bit 0 R, 1 W, 2 X) of the 4 KiB page at guest-physical RBX.
pub const PROTECT: u64 = 4;
/// RAX = nested page faults served so far on this node.
pub const FAULTS: u64 = 5;
/// Test hook: RBX = 0 breaks the guest state, 1 a VM-execution control, so the next entry
/// fails and the hypervisor's diagnosis of that can be checked.
pub const BREAK: u64 = 6;
/// RAX = the cluster node that runs the calling vCPU (0 on a single node).
pub const NODE: u64 = 7;
