//! What CPUID tells a guest: a whitelist of the host's leaves and feature bits (everything
//! else reads zero: VMX/SVM, machine checks, MTRRs, the speculation-control MSRs, PMU and
//! power management are hidden), a virtual topology (one core per vCPU, x2APIC id = vCPU
//! index, SDM Vol. 2A CPUID leaves 01H, 04H, 0BH), ARAT and invariant TSC, TSC frequency
//! leaves from the measured rate (Bochs reports the host's, docs/design.md §9), the Gestalt
//! hypervisor leaves at 0x4000_0000 and an empty KVM-compatible range at 0x4000_0100.

/// One CPUID answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs4 {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// The guest's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// vCPUs in the whole system.
    pub vcpus: u32,
    /// TSC ticks per second the guest sees.
    pub tsc_hz: u64,
}

/// Hypervisor vendor signature in leaf 0x4000_0000 EBX, ECX, EDX.
pub const SIGNATURE: &[u8; 12] = b"GestaltHV\0\0\0";
/// Version of the hypercall ABI reported in leaf 0x4000_0001 EAX.
pub const ABI_VERSION: u32 = 1;

/// Bits needed to number `n` things (x2APIC id shift, SDM Vol. 2A CPUID 0BH).
pub fn width(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Hypervisor vendor signature of the KVM-compatible leaves at [`KVM_BASE`] (no KVM features).
pub const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// Where they are: Linux scans 0x4000_0000..0x4001_0000 in steps of 0x100 for that signature
/// and, finding it, keeps the x2APIC the firmware enabled without interrupt remapping
/// (physical destinations, APIC ids below 255); for an unknown hypervisor it would switch to
/// the xAPIC's MMIO page, which the guest does not have. Feature leaf: all zero.
pub const KVM_BASE: u32 = 0x4000_0100;

/// Highest basic leaf the guest sees.
pub const MAX_BASIC: u32 = 0x16;
/// Highest extended leaf the guest sees.
pub const MAX_EXTENDED: u32 = 0x8000_0008;

const fn bits(list: &[u32]) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < list.len() {
        m |= 1 << list[i];
        i += 1;
    }
    m
}

/// Leaf 1 ECX kept from the host (SDM Vol. 2A Table 3-10): SSE3, PCLMULQDQ, SSSE3, FMA, CX16,
/// SSE4.1/4.2, MOVBE, POPCNT, AES, XSAVE, OSXSAVE, AVX, F16C, RDRAND. Gone: MONITOR, VMX,
/// SMX, EST, TM2, DS, PDCM, PCID, DCA and the rest.
const L1_ECX: u32 = bits(&[0, 1, 9, 12, 13, 19, 20, 22, 23, 25, 26, 27, 28, 29, 30]);
/// Leaf 1 ECX set: x2APIC (21), TSC-deadline (24), hypervisor (31).
const L1_ECX_SET: u32 = bits(&[21, 24, 31]);
/// Leaf 1 EDX kept (Table 3-11): FPU, VME, DE, PSE, TSC, MSR, PAE, CX8, APIC, SEP, PGE, CMOV,
/// PAT, PSE-36, CLFSH, MMX, FXSR, SSE, SSE2, SS. Gone: MCE, MCA (no machine checks here),
/// MTRR (no MTRRs modelled), PSN, DS, ACPI thermal, TM, PBE.
const L1_EDX: u32 = bits(&[0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 13, 15, 16, 17, 19, 23, 24, 25, 26, 27]);
/// Leaf 1 EDX set: HTT (EBX[23:16] valid).
const L1_EDX_SET: u32 = bits(&[28]);
/// Leaf 7.0 EBX kept (Table 3-8): FSGSBASE, TSC_ADJUST (with invariant TSC it lets Linux trust
/// the TSC without a jiffies watchdog, which a slow or busy host would trip), BMI1, AVX2,
/// SMEP, BMI2, ERMS, AVX-512 F/DQ/IFMA/CD/BW/VL, RDSEED, ADX, SMAP, CLFLUSHOPT, CLWB, SHA.
/// Gone: TSX, INVPCID, MPX, RDT, SGX, Intel PT.
const L7_EBX: u32 = bits(&[0, 1, 3, 5, 7, 8, 9, 16, 17, 18, 19, 20, 21, 23, 24, 28, 29, 30, 31]);
/// Leaf 7.0 EBX set: TSC_ADJUST, whatever the host says: the MSR is the hypervisor's own
/// (`msr.rs`), and QEMU's `qemu64` lacks it, which would leave Linux on AMD watching its TSC
/// with jiffies that a slow emulator loses.
const L7_EBX_SET: u32 = bits(&[1]);
/// Leaf 7.0 ECX kept: AVX512_VBMI, AVX512_VBMI2, GFNI, VAES, VPCLMULQDQ, AVX512_VNNI, BITALG,
/// AVX512_VPOPCNTDQ, RDPID. Gone: UMIP, PKU, WAITPKG, LA57, SGX_LC and the rest.
const L7_ECX: u32 = bits(&[1, 6, 8, 9, 10, 11, 12, 14, 22]);
/// Leaf 7.0 EDX kept: FSRM, SERIALIZE. Gone: hybrid, the speculation controls and
/// ARCH_CAPABILITIES (their MSRs are not modelled), the rest.
const L7_EDX: u32 = bits(&[4, 14]);
/// Leaf 0xD.1 EAX kept: XSAVEOPT, XGETBV with ECX=1. Gone: XSAVES (no IA32_XSS) and XSAVEC:
/// the compacted size in EBX is the CPU's to compute for the current XCR0, and Bochs reports
/// the standard size there (2688 for 2432 with AVX-512), which Linux rejects with a WARN.
const LD1_EAX: u32 = bits(&[0, 2]);
/// Leaf 0x8000_0001 ECX kept: LAHF/SAHF, LZCNT, PREFETCHW.
const LX1_ECX: u32 = bits(&[0, 5, 8]);
/// Leaf 0x8000_0001 EDX kept: SYSCALL, NX, 1 GiB pages, LM. Gone: RDTSCP (the backend may
/// not enable it).
const LX1_EDX: u32 = bits(&[11, 20, 26, 29]);

/// The guest's answer for vCPU `id` given the host's answer `host` for the same leaf/subleaf:
/// a whitelist. Leaves not listed read zero; the listed ones keep only the host feature bits
/// the hypervisor lets a guest use.
pub fn answer(leaf: u32, sub: u32, host: Regs4, id: u32, t: &Topology) -> Regs4 {
    let zero = Regs4::default();
    let mut r = host;
    match leaf {
        0x0 => r.eax = r.eax.min(MAX_BASIC),
        0x1 => {
            // EBX[31:24] initial APIC id, [23:16] logical processors per package.
            r.ebx = (r.ebx & 0xffff) | (t.vcpus.min(255) << 16) | (id.min(255) << 24);
            r.ecx = (r.ecx & L1_ECX) | L1_ECX_SET;
            r.edx = (r.edx & L1_EDX) | L1_EDX_SET;
        }
        0x2 => {}
        0x4 => {
            // Cache leaves: EAX[31:26] cores per package - 1, [25:14] sharing - 1 (one core).
            if r.eax & 0x1f != 0 {
                r.eax = (r.eax & 0x3fff) | ((t.vcpus.clamp(1, 64) - 1) << 26);
            }
        }
        // Thermal and power: only ARAT (EAX bit 2): the APIC timer runs in every C-state.
        0x6 => r = Regs4 { eax: 1 << 2, ..zero },
        0x7 if sub == 0 => {
            let ebx = (r.ebx & L7_EBX) | L7_EBX_SET;
            r = Regs4 { eax: 0, ebx, ecx: r.ecx & L7_ECX, edx: r.edx & L7_EDX }
        }
        0xb => {
            let (shift, count, kind) = match sub {
                0 => (0, 1, 1),
                1 => (width(t.vcpus), t.vcpus, 2),
                _ => (0, 0, 0),
            };
            r = Regs4 { eax: shift, ebx: count, ecx: (kind << 8) | (sub & 0xff), edx: id };
        }
        0xd if sub == 0 => {}
        // EBX (the compacted size) means nothing without XSAVEC or XSAVES.
        0xd if sub == 1 => r = Regs4 { eax: r.eax & LD1_EAX, ..zero },
        // The user-state components' sizes (AVX, AVX-512); supervisor ones are not offered.
        0xd if (2..=7).contains(&sub) => {}
        0x15 => {
            // TSC = crystal * EBX / EAX: crystal = TSC rate, ratio 1/1.
            let hz = t.tsc_hz.min(u64::from(u32::MAX)) as u32;
            r = Regs4 { eax: 1, ebx: 1, ecx: hz, edx: 0 };
        }
        0x16 => {
            let mhz = (t.tsc_hz / 1_000_000) as u32;
            r = Regs4 { eax: mhz, ebx: mhz, ecx: 100, edx: 0 };
        }
        0x4000_0000 => {
            let w = |i: usize| u32::from_le_bytes(SIGNATURE[i..i + 4].try_into().unwrap_or([0; 4]));
            r = Regs4 { eax: 0x4000_0001, ebx: w(0), ecx: w(4), edx: w(8) };
        }
        0x4000_0001 => {
            r = Regs4 {
                eax: ABI_VERSION,
                ebx: t.vcpus,
                ecx: (t.tsc_hz / 1000).min(u64::from(u32::MAX)) as u32,
                edx: id,
            };
        }
        KVM_BASE => {
            let w =
                |i: usize| u32::from_le_bytes(KVM_SIGNATURE[i..i + 4].try_into().unwrap_or([0; 4]));
            r = Regs4 { eax: KVM_BASE + 1, ebx: w(0), ecx: w(4), edx: w(8) };
        }
        0x8000_0000 => r = Regs4 { eax: r.eax.clamp(0x8000_0000, MAX_EXTENDED), ..zero },
        0x8000_0001 => r = Regs4 { ecx: r.ecx & LX1_ECX, edx: r.edx & LX1_EDX, ..zero },
        // Brand string, L2 cache, address sizes.
        0x8000_0002..=0x8000_0004 | 0x8000_0006 => {}
        // Invariant TSC (EDX bit 8): the TSC offsets keep every vCPU's TSC on one clock.
        0x8000_0007 => r = Regs4 { edx: 1 << 8, ..zero },
        0x8000_0008 => r = Regs4 { eax: r.eax & 0xffff, ..zero },
        _ => r = zero,
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Topology = Topology { vcpus: 3, tsc_hz: 4_000_000 };

    #[test]
    fn leaf_1_names_the_vcpu_hides_vmx_and_shows_x2apic_and_hypervisor() {
        let host = Regs4 { eax: 0x50654, ebx: 0x0010_0800, ecx: 0xfffa_3223, edx: 0xbfeb_fbff };
        let r = answer(1, 0, host, 2, &T);
        assert_eq!(r.ebx >> 24, 2);
        assert_eq!((r.ebx >> 16) & 0xff, 3);
        assert_eq!(r.ecx & (1 << 5), 0);
        assert_ne!(r.ecx & (1 << 21), 0);
        assert_ne!(r.ecx & (1 << 31), 0);
        assert_eq!(r.eax, host.eax);
    }

    #[test]
    fn leaf_b_describes_one_thread_per_core_and_all_vcpus_in_the_package() {
        let smt = answer(0xb, 0, Regs4::default(), 1, &T);
        assert_eq!(smt, Regs4 { eax: 0, ebx: 1, ecx: 0x100, edx: 1 });
        let core = answer(0xb, 1, Regs4::default(), 1, &T);
        assert_eq!(core, Regs4 { eax: 2, ebx: 3, ecx: 0x201, edx: 1 });
        let end = answer(0xb, 2, Regs4::default(), 1, &T);
        assert_eq!((end.ebx, end.ecx >> 8 & 0xff), (0, 0));
    }

    #[test]
    fn topology_width_rounds_up_to_a_power_of_two() {
        assert_eq!([width(1), width(2), width(3), width(4), width(5)], [0, 1, 2, 2, 3]);
    }

    #[test]
    fn hypervisor_leaves_carry_signature_abi_and_tsc_rate() {
        let r = answer(0x4000_0000, 0, Regs4::default(), 0, &T);
        let mut sig = Vec::new();
        for v in [r.ebx, r.ecx, r.edx] {
            sig.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(&sig[..], SIGNATURE);
        let r = answer(0x4000_0001, 0, Regs4::default(), 0, &T);
        assert_eq!((r.eax, r.ebx, r.ecx), (ABI_VERSION, 3, 4000));
        assert_eq!(
            answer(0x15, 0, Regs4 { eax: 2, ebx: 100, ecx: 1, edx: 0 }, 0, &T).ecx,
            4_000_000
        );
    }

    #[test]
    fn the_whitelist_hides_what_is_not_emulated_and_keeps_what_linux_needs() {
        let all = Regs4 { eax: !0, ebx: !0, ecx: !0, edx: !0 };
        let l1 = answer(1, 0, all, 0, &T);
        for (bit, what) in [(3, "MONITOR"), (5, "VMX"), (6, "SMX"), (17, "PCID")] {
            assert_eq!(l1.ecx & (1 << bit), 0, "{what} hidden");
        }
        for (bit, what) in [(7, "MCE"), (12, "MTRR"), (14, "MCA"), (22, "ACPI")] {
            assert_eq!(l1.edx & (1 << bit), 0, "{what} hidden");
        }
        for (bit, what) in [(0, "FPU"), (4, "TSC"), (6, "PAE"), (9, "APIC"), (26, "SSE2")] {
            assert_ne!(l1.edx & (1 << bit), 0, "{what} kept");
        }
        let l7 = answer(7, 0, all, 0, &T);
        assert_eq!(l7.ebx & ((1 << 4) | (1 << 10) | (1 << 11)), 0, "TSX, INVPCID");
        assert_ne!(l7.ebx & (1 << 1), 0, "TSC_ADJUST");
        assert_eq!(answer(7, 0, Regs4::default(), 0, &T).ebx, 1 << 1, "TSC_ADJUST on any host");
        assert_eq!(l7.ecx & (1 << 16), 0, "LA57");
        assert_eq!(l7.edx & ((1 << 26) | (1 << 29)), 0, "SPEC_CTRL, ARCH_CAPABILITIES");
        assert_eq!(answer(7, 1, all, 0, &T), Regs4::default());
        let x1 = answer(0x8000_0001, 0, all, 0, &T);
        assert_eq!(x1.ecx & (1 << 2), 0, "SVM hidden");
        assert_eq!(x1.edx & (1 << 27), 0, "RDTSCP hidden");
        assert_ne!(x1.edx & (1 << 29), 0, "long mode kept");
        let d1 = answer(0xd, 1, all, 0, &T);
        assert_eq!(d1.eax & (1 << 3), 0, "XSAVES hidden");
        assert_eq!(d1.eax & (1 << 1), 0, "XSAVEC hidden");
        assert_ne!(d1.eax & 1, 0, "XSAVEOPT kept");
        assert_eq!(d1.ebx, 0, "no compacted size");
    }

    #[test]
    fn unlisted_leaves_read_zero_and_the_limits_are_capped() {
        let all = Regs4 { eax: !0, ebx: !0, ecx: !0, edx: !0 };
        for leaf in [0x3, 0x5, 0x8, 0xa, 0x12, 0x14, 0x1f, 0x8000_0005, 0x8000_000a] {
            assert_eq!(answer(leaf, 0, all, 0, &T), Regs4::default(), "leaf {leaf:#x}");
        }
        assert_eq!(answer(0, 0, Regs4 { eax: 0x20, ..all }, 0, &T).eax, MAX_BASIC);
        assert_eq!(answer(0x8000_0000, 0, all, 0, &T).eax, MAX_EXTENDED);
        assert_eq!(answer(6, 0, all, 0, &T), Regs4 { eax: 4, ebx: 0, ecx: 0, edx: 0 }, "ARAT");
        assert_eq!(answer(0x8000_0007, 0, all, 0, &T).edx, 1 << 8, "invariant TSC");
    }

    #[test]
    fn a_kvm_compatible_signature_without_features_follows_the_gestalt_leaves() {
        let r = answer(KVM_BASE, 0, Regs4::default(), 0, &T);
        let mut sig = Vec::new();
        for v in [r.ebx, r.ecx, r.edx] {
            sig.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(&sig[..], KVM_SIGNATURE);
        assert_eq!(r.eax, KVM_BASE + 1);
        let all = Regs4 { eax: !0, ebx: !0, ecx: !0, edx: !0 };
        assert_eq!(answer(KVM_BASE + 1, 0, all, 0, &T), Regs4::default(), "no KVM features");
        assert_eq!(answer(0x4000_0000, 0, all, 0, &T).ebx, u32::from_le_bytes(*b"Gest"));
    }
}
