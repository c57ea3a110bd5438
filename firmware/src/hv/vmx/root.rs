//! VMX root operation on this node: the boot-time probe, VMXON on every core (tracked by full
//! x2APIC id, so ids above 255 never alias), and the MSR bitmap every VMCS shares.

use alloc::vec::Vec;

use spin::Mutex;

use super::hw::{self, VmxError};
use crate::arch::apic;
use crate::mem::frames::FrameAllocator;
use crate::mem::tables::alloc_zeroed;
use crate::{error, info, warn};

/// APIC ids of the cores in VMX root operation.
static IN_ROOT: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Cores in VMX root operation.
pub fn cores() -> usize {
    IN_ROOT.lock().len()
}

/// Boot-time check on the BSP: one line saying whether this node can run guests, and VMXON
/// here when it can.
pub fn probe() -> Result<(), VmxError> {
    let p = hw::detect().inspect_err(|e| {
        warn!("hv: {e}; the console still works, guests are disabled");
    })?;
    let c = p.ctl;
    info!(
        "hv: VMX ready: EPT, unrestricted guest{}{}, VMCS revision {:#x}",
        if c.vpid { ", VPID" } else { "" },
        if c.preemption_timer { ", preemption timer" } else { "" },
        p.revision
    );
    if let Err(e) = vmxon_here() {
        error!("hv: boot CPU: {e}");
    }
    crate::debug!(
        "hv: caps basic {:#x} pin {:#x} proc {:#x} proc2 {:#x} exit {:#x} entry {:#x} misc {:#x} ept {:#x}",
        p.caps.basic, p.caps.pin, p.caps.proc, p.caps.proc2, p.caps.exit, p.caps.entry,
        p.caps.misc, p.caps.ept_vpid
    );
    Ok(())
}

/// Enters VMX root operation on this core once, with a VMXON region from the heap (which is
/// identity-mapped RAM of the reserve, so its address is physical).
pub fn vmxon_here() -> Result<(), VmxError> {
    let id = apic::id();
    if IN_ROOT.lock().contains(&id) {
        return Ok(());
    }
    let p = hw::detect()?;
    let layout =
        core::alloc::Layout::from_size_align(4096, 4096).map_err(|_| VmxError::NoMemory)?;
    // SAFETY: a non-zero-sized layout; the region is leaked: VMX owns it for the core's life.
    let region = unsafe { alloc::alloc::alloc_zeroed(layout) } as u64;
    if region == 0 {
        return Err(VmxError::NoMemory);
    }
    hw::vmxon(p, region)?;
    IN_ROOT.lock().push(id);
    Ok(())
}

/// The MSR bitmap: everything intercepted except the syscall/segment-base MSRs that only the
/// guest uses (one vCPU per core, the host never touches them) (SDM Vol. 3C §25.6.9).
pub fn msr_bitmap(frames: &Mutex<FrameAllocator>) -> Result<u64, VmxError> {
    let page = alloc_zeroed(&mut frames.lock(), 1, 4096).ok_or(VmxError::NoMemory)?;
    // SAFETY: the page is ours and identity-mapped.
    let bm = unsafe { core::slice::from_raw_parts_mut(page as *mut u8, 4096) };
    bm.fill(0xff);
    let mut pass = |msr: u32| {
        let (base, bit) = if msr >= 0xC000_0000 { (1024, msr - 0xC000_0000) } else { (0, msr) };
        for half in [0, 2048] {
            bm[base + half + (bit / 8) as usize] &= !(1 << (bit % 8));
        }
    };
    for msr in [
        0x174,
        0x175,
        0x176,
        0xC000_0081,
        0xC000_0082,
        0xC000_0083,
        0xC000_0084,
        0xC000_0100,
        0xC000_0101,
        0xC000_0102,
        0xC000_0103,
    ] {
        pass(msr);
    }
    Ok(page)
}
