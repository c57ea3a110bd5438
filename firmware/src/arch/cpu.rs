//! CPUID feature bits and MSR access (SDM Vol. 2A CPUID, Vol. 4 MSRs).

use core::arch::x86_64::{__cpuid_count, CpuidResult};

/// CPUID leaf/subleaf.
pub fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    __cpuid_count(leaf, sub)
}

/// Highest extended leaf.
fn max_ext() -> u32 {
    cpuid(0x8000_0000, 0).eax
}

/// x2APIC mode available (CPUID.01H:ECX[21]).
pub fn has_x2apic() -> bool {
    cpuid(1, 0).ecx & (1 << 21) != 0
}

/// Execute-disable available (CPUID.80000001H:EDX[20]).
pub fn has_nx() -> bool {
    max_ext() >= 0x8000_0001 && cpuid(0x8000_0001, 0).edx & (1 << 20) != 0
}

/// 1 GiB pages available (CPUID.80000001H:EDX[26]).
pub fn has_1g_pages() -> bool {
    max_ext() >= 0x8000_0001 && cpuid(0x8000_0001, 0).edx & (1 << 26) != 0
}

/// VMX available (CPUID.01H:ECX[5]).
pub fn has_vmx() -> bool {
    cpuid(1, 0).ecx & (1 << 5) != 0
}

/// The CPU's brand string, when it has one.
pub fn brand(buf: &mut [u8; 48]) -> &str {
    if max_ext() < 0x8000_0004 {
        return "unknown CPU";
    }
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let r = cpuid(leaf, 0);
        for (j, reg) in [r.eax, r.ebx, r.ecx, r.edx].into_iter().enumerate() {
            buf[i * 16 + j * 4..i * 16 + j * 4 + 4].copy_from_slice(&reg.to_le_bytes());
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(48);
    core::str::from_utf8(&buf[..end]).unwrap_or("unknown CPU").trim()
}

/// Reads an MSR.
///
/// # Safety
/// The MSR must exist on this CPU (else #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

/// Writes an MSR.
///
/// # Safety
/// The MSR must exist and the value must be valid and harmless for it.
pub unsafe fn wrmsr(msr: u32, val: u64) {
    // SAFETY: the caller guarantees MSR and value are valid.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).write(val) }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is available on every x86-64 CPU and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// IA32_EFER.
pub const MSR_EFER: u32 = 0xC000_0080;
