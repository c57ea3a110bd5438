//! The vCPUs of this node as other cores see them: their virtual-APIC inboxes, counters, host
//! CPUs, and the flags that park, wake and fence them — the parked-until-resumed flag a served
//! page fault sets, and the in-guest/flushed pair behind the nested-paging flush barrier.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::stats::VcpuStats;
use super::vlapic;
use crate::arch::{apic, idt::WAKE_VECTOR};

/// One node's vCPUs.
pub struct VcpuSet {
    /// Virtual-APIC state other vCPUs write.
    pub shared: Vec<vlapic::Shared>,
    /// Counters for `vcpu`.
    pub stats: Vec<VcpuStats>,
    host_apic: Vec<AtomicU32>,
    in_guest: Vec<AtomicBool>,
    flushed: Vec<AtomicU64>,
    resumed: Vec<AtomicBool>,
    generation: AtomicU64,
}

impl VcpuSet {
    /// `n` vCPUs, none placed on a host CPU yet.
    pub fn new(n: usize) -> VcpuSet {
        VcpuSet {
            shared: (0..n).map(|_| vlapic::Shared::NEW).collect(),
            stats: (0..n).map(|_| VcpuStats::NEW).collect(),
            host_apic: (0..n).map(|_| AtomicU32::new(0)).collect(),
            in_guest: (0..n).map(|_| AtomicBool::new(false)).collect(),
            flushed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            resumed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            generation: AtomicU64::new(0),
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Never: a guest has at least one vCPU.
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty()
    }

    /// `vcpu` runs on the host CPU with this APIC id.
    pub fn place(&self, vcpu: usize, host_apic_id: u32) {
        if let Some(a) = self.host_apic.get(vcpu) {
            a.store(host_apic_id, Ordering::SeqCst);
        }
    }

    /// An IPI to `vcpu`'s core: it leaves the guest, or its sleep, soon.
    pub fn kick(&self, vcpu: usize) {
        if let Some(a) = self.host_apic.get(vcpu) {
            apic::send_ipi(a.load(Ordering::SeqCst), WAKE_VECTOR);
        }
    }

    /// Kicks every vCPU but `me`.
    pub fn kick_others(&self, me: usize) {
        for i in (0..self.len()).filter(|i| *i != me) {
            self.kick(i);
        }
    }

    /// `vcpu` is about to enter the guest: the nested-paging generation it must have flushed.
    /// Marking it in guest before reading the generation is what makes the barrier sound.
    pub fn entering(&self, vcpu: usize) -> u64 {
        self.in_guest[vcpu].store(true, Ordering::SeqCst);
        self.generation.load(Ordering::SeqCst)
    }

    /// `vcpu` has flushed its nested translations up to `generation`.
    pub fn flushed(&self, vcpu: usize, generation: u64) {
        self.flushed[vcpu].store(generation, Ordering::SeqCst);
    }

    /// `vcpu` left the guest (it flushes before entering again if the generation moved).
    pub fn left(&self, vcpu: usize) {
        self.in_guest[vcpu].store(false, Ordering::SeqCst);
    }

    /// Rights went down: returns once no vCPU can still use an older translation — each is
    /// out of the guest (and flushes before entering) or has flushed the new generation.
    pub fn flush_barrier(&self) {
        let target = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.kick_others(usize::MAX);
        for i in 0..self.len() {
            while self.in_guest[i].load(Ordering::SeqCst)
                && self.flushed[i].load(Ordering::SeqCst) < target
            {
                core::hint::spin_loop();
            }
        }
    }

    /// The page `vcpu` waits for is mapped: wake it.
    pub fn resume(&self, vcpu: usize) {
        if let Some(r) = self.resumed.get(vcpu) {
            r.store(true, Ordering::SeqCst);
            self.kick(vcpu);
        }
    }

    /// Takes `vcpu`'s wake-up, if one came.
    pub fn take_resume(&self, vcpu: usize) -> bool {
        self.resumed[vcpu].swap(false, Ordering::SeqCst)
    }

    /// A wake-up is waiting for `vcpu`.
    pub fn resume_pending(&self, vcpu: usize) -> bool {
        self.resumed[vcpu].load(Ordering::SeqCst)
    }
}
