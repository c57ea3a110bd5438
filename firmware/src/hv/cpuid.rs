//! What CPUID tells a guest: a whitelist of the host's leaves and feature bits (everything
//! else reads zero: VMX/SVM, machine checks, MTRRs, the speculation-control MSRs, PMU and
//! power management are hidden), a virtual topology (one core per vCPU, x2APIC id = vCPU
//! index, SDM Vol. 2A CPUID leaves 01H, 04H, 0BH), ARAT and invariant TSC, TSC frequency
//! leaves from the measured rate (Bochs reports the host's, docs/design.md §9), the Gestalt
//! hypervisor leaves at 0x4000_0000 and an empty KVM-compatible range at 0x4000_0100. On an
//! AMD host the same topology is told in AMD's own leaves too (AMD APM Vol. 3 Appendix E:
//! Fn8000_0001_ECX CmpLegacy and TopologyExtensions, Fn8000_0008_ECX, Fn8000_001D/1E): one
//! package, one node (the package's, not a Gestalt node: those are the SRAT's proximity
//! domains), one thread per core, and the extended APIC id = x2APIC id = vCPU index, as the
//! MADT says.

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

/// The largest guest time dilation (`dilation=`, hv::vm::set_dilation) up to `factor` whose
/// declared TSC rate (`hz` times it) fits leaf 15H's 32-bit crystal field, where the guest
/// sees that leaf (the host's highest basic leaf, `host_max_basic`, reaches it); at least 1.
pub fn fitting_dilation(factor: u64, hz: u64, host_max_basic: u32) -> u64 {
    if host_max_basic.min(MAX_BASIC) < 0x15 {
        return factor.max(1);
    }
    factor.clamp(1, (u64::from(u32::MAX) / hz.max(1)).max(1))
}

/// The guest's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// vCPUs in the whole system.
    pub vcpus: u32,
    /// TSC ticks per second the guest sees.
    pub tsc_hz: u64,
    /// What the host CPU is (its vendor decides which topology leaves exist).
    pub host: Host,
}

/// The host facts the answers depend on beyond the leaf asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// AMD (or Hygon, its licensee with the same leaves): the AMD topology leaves are shown.
    pub amd: bool,
    /// The host has Fn8000_001D (cache topology) to pass on: TopologyExtensions and the leaf
    /// within its extended range. QEMU answers a leaf above its range with its highest one
    /// (the SVM leaf for `qemu64`), so the range must be checked.
    pub cache_leaves: bool,
}

impl Host {
    /// Reads the vendor (leaf 0) and the extended range of the CPU `cpuid` asks.
    pub fn probe(cpuid: impl Fn(u32, u32) -> Regs4) -> Host {
        let v = cpuid(0, 0);
        let mut vendor = [0u8; 12];
        for (i, r) in [v.ebx, v.edx, v.ecx].into_iter().enumerate() {
            vendor[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
        }
        let amd = &vendor == b"AuthenticAMD" || &vendor == b"HygonGenuine";
        let cache_leaves = amd
            && cpuid(0x8000_0000, 0).eax >= 0x8000_001D
            && cpuid(0x8000_0001, 0).ecx & TOPOLOGY_EXTENSIONS != 0;
        Host { amd, cache_leaves }
    }
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
/// Highest extended leaf a guest on an AMD host sees: up to the topology leaf Fn8000_001E.
pub const MAX_EXTENDED_AMD: u32 = 0x8000_001E;
/// Fn8000_0001_ECX CmpLegacy (APM Vol. 3 Appendix E): the logical processors that leaf 1's
/// HTT and LogicalProcessorCount announce are cores, not threads of one core (§E.5).
const CMP_LEGACY: u32 = 1 << 1;
/// Fn8000_0001_ECX TopologyExtensions: Fn8000_001D and Fn8000_001E are defined.
const TOPOLOGY_EXTENSIONS: u32 = 1 << 22;

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
        0x8000_0000 => {
            // On AMD the topology leaf is the guest's own, whatever the host's range (QEMU's
            // `qemu64` ends at 0x8000_000A).
            let max =
                if t.host.amd { MAX_EXTENDED_AMD } else { r.eax.clamp(0x8000_0000, MAX_EXTENDED) };
            r = Regs4 { eax: max, ..zero }
        }
        0x8000_0001 => {
            let mut ecx = r.ecx & LX1_ECX;
            if t.host.amd {
                ecx |= TOPOLOGY_EXTENSIONS;
                if t.vcpus > 1 {
                    ecx |= CMP_LEGACY;
                }
            }
            r = Regs4 { ecx, edx: r.edx & LX1_EDX, ..zero }
        }
        // Brand string, L2 cache, address sizes.
        0x8000_0002..=0x8000_0004 | 0x8000_0006 => {}
        // Invariant TSC (EDX bit 8): the TSC offsets keep every vCPU's TSC on one clock.
        0x8000_0007 => r = Regs4 { edx: 1 << 8, ..zero },
        // ECX on AMD (Fn8000_0008_ECX): NC [7:0] = logical processors - 1, ApicIdSize
        // [15:12] = the APIC id bits that number them in the package; reserved on Intel.
        0x8000_0008 => {
            let ecx = if t.host.amd {
                (t.vcpus.clamp(1, 256) - 1) | (width(t.vcpus).min(15) << 12)
            } else {
                0
            };
            r = Regs4 { eax: r.eax & 0xffff, ecx, ..zero }
        }
        // Cache topology (Fn8000_001D), like leaf 4: NumSharingCache [25:14] = 0, each cache
        // private to its core. None where the host has no such leaf (type 0: no caches told).
        0x8000_001D if t.host.cache_leaves => {
            if r.eax & 0x1f != 0 {
                r.eax &= 0x3fff;
            }
        }
        // Fn8000_001E: EAX ExtendedApicId; EBX CoreId [7:0] and ThreadsPerCore - 1 [15:8] (0:
        // one thread); ECX NodeId [7:0] and NodesPerProcessor - 1 [10:8] (0: one node).
        0x8000_001E if t.host.amd => r = Regs4 { eax: id, ebx: id & 0xff, ..zero },
        _ => r = zero,
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Topology =
        Topology { vcpus: 3, tsc_hz: 4_000_000, host: Host { amd: false, cache_leaves: false } };
    const AMD: Host = Host { amd: true, cache_leaves: false };
    const ALL: Regs4 = Regs4 { eax: !0, ebx: !0, ecx: !0, edx: !0 };

    fn amd(vcpus: u32) -> Topology {
        Topology { vcpus, tsc_hz: 4_000_000, host: AMD }
    }

    /// A CPU answering `leaf 0` with `vendor` and the other leaves from `ext`.
    fn cpu(vendor: &[u8; 12], max_ext: u32, ext1_ecx: u32) -> impl Fn(u32, u32) -> Regs4 + '_ {
        move |leaf, _| {
            let w = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
            match leaf {
                0 => Regs4 { eax: 0x10, ebx: w(0), edx: w(4), ecx: w(8) },
                0x8000_0000 => Regs4 { eax: max_ext, ..Regs4::default() },
                0x8000_0001 => Regs4 { ecx: ext1_ecx, ..Regs4::default() },
                _ => Regs4::default(),
            }
        }
    }

    #[test]
    fn the_host_vendor_and_its_cache_topology_leaf_are_probed() {
        let topoext = 1 << 22;
        assert_eq!(Host::probe(cpu(b"GenuineIntel", 0x8000_0008, 0)), Host::default());
        let qemu64 = Host::probe(cpu(b"AuthenticAMD", 0x8000_000A, 0));
        assert_eq!(qemu64, AMD, "no Fn8000_001D above the range");
        let zen = Host::probe(cpu(b"AuthenticAMD", 0x8000_0021, topoext));
        assert_eq!(zen, Host { amd: true, cache_leaves: true });
        let hygon = Host::probe(cpu(b"HygonGenuine", 0x8000_0021, 0));
        assert_eq!(hygon, AMD, "in range but without TopologyExtensions");
    }

    #[test]
    fn amd_leaves_tell_the_vcpu_count_and_apic_id_width() {
        let r = answer(0x8000_0008, 0, Regs4 { eax: 0x3030, ..ALL }, 0, &amd(3));
        assert_eq!(r, Regs4 { eax: 0x3030, ebx: 0, ecx: 2 | (2 << 12), edx: 0 });
        assert_eq!(answer(0x8000_0008, 0, ALL, 0, &amd(1)).ecx, 0);
        assert_eq!(answer(0x8000_0008, 0, ALL, 0, &amd(16)).ecx, 15 | (4 << 12));
        assert_eq!(answer(0x8000_0008, 0, ALL, 0, &amd(17)).ecx, 16 | (5 << 12));
        let r = answer(0x8000_001E, 0, ALL, 5, &amd(8));
        assert_eq!(r, Regs4 { eax: 5, ebx: 5, ecx: 0, edx: 0 }, "one thread per core, one node");
        let x1 = answer(0x8000_0001, 0, Regs4::default(), 0, &amd(2));
        assert_eq!(x1.ecx, (1 << 1) | (1 << 22), "CmpLegacy, TopologyExtensions");
        assert_eq!(answer(0x8000_0001, 0, Regs4::default(), 0, &amd(1)).ecx, 1 << 22);
        assert_eq!(answer(0x8000_0000, 0, ALL, 0, &amd(2)).eax, MAX_EXTENDED_AMD);
        let qemu64 = Regs4 { eax: 0x8000_000A, ..Regs4::default() };
        assert_eq!(answer(0x8000_0000, 0, qemu64, 0, &amd(2)).eax, MAX_EXTENDED_AMD);
        assert_eq!(answer(0x8000_000A, 0, ALL, 0, &amd(2)), Regs4::default(), "SVM hidden");
    }

    #[test]
    fn amd_cache_topology_is_passed_on_with_each_cache_private_to_its_core() {
        let l3 = Regs4 { eax: 0x0003_c163, ebx: 0x03c0_003f, ecx: 0x3fff, edx: 1 };
        let zen = Topology { host: Host { amd: true, cache_leaves: true }, ..amd(4) };
        assert_eq!(answer(0x8000_001D, 3, l3, 0, &zen), Regs4 { eax: 0x163, ..l3 });
        let end = Regs4::default();
        assert_eq!(answer(0x8000_001D, 4, end, 0, &zen), end);
        assert_eq!(answer(0x8000_001D, 0, l3, 0, &amd(4)), Regs4::default(), "no host leaf");
    }

    #[test]
    fn intel_hosts_get_none_of_the_amd_topology() {
        assert_eq!(answer(0x8000_0008, 0, ALL, 0, &T).ecx, 0);
        assert_eq!(answer(0x8000_001E, 0, ALL, 1, &T), Regs4::default());
        assert_eq!(answer(0x8000_001D, 0, ALL, 1, &T), Regs4::default());
        assert_eq!(answer(0x8000_0001, 0, Regs4::default(), 0, &T).ecx, 0);
    }

    /// Decodes each vCPU's place the way AMD's Appendix E.5 and Linux's AMD topology code do
    /// (core bits = ApicIdSize, else from NC; package = APIC id above them; threads from
    /// Fn8000_001E) and checks it against the Intel leaves and the MADT's x2APIC ids.
    #[test]
    fn amd_and_intel_leaves_describe_one_package_of_single_thread_cores() {
        for n in 1..=40 {
            let t = amd(n);
            let nc = answer(0x8000_0008, 0, ALL, 0, &t).ecx;
            let count = (nc & 0xff) + 1;
            let bits = match (nc >> 12) & 0xf {
                0 => width(count),
                b => b,
            };
            assert_eq!(count, n, "NC");
            assert_eq!((answer(1, 0, ALL, 0, &t).ebx >> 16) & 0xff, n.min(255), "leaf 1");
            assert_eq!(answer(0xb, 1, ALL, 0, &t).eax, bits, "0BH core shift = ApicIdSize");
            let mut cores = Vec::new();
            for id in 0..n {
                let e = answer(0x8000_001E, 0, ALL, id, &t);
                assert_eq!(e.eax, id, "extended APIC id = x2APIC id");
                assert_eq!(e.eax, answer(0xb, 0, ALL, id, &t).edx);
                assert_eq!((e.ebx >> 8) & 0xff, 0, "one thread per core");
                assert_eq!(e.ecx & 0x7ff, 0, "node 0 of one");
                assert_eq!(e.eax >> bits, 0, "all in package 0");
                cores.push(e.eax & ((1 << bits) - 1));
            }
            cores.dedup();
            assert_eq!(cores.len(), n as usize, "a core each");
        }
    }

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

    #[test]
    fn a_dilation_is_lowered_only_where_the_declared_tsc_rate_would_not_fit_32_bits() {
        // Bochs at ips=20M (its Skylake has leaf 16H): a 20 MHz TSC takes the largest factor
        // the command line allows.
        assert_eq!(fitting_dilation(100, 20_000_000, 0x16), 100);
        // A 2 GHz TSC declared 3x would be 6 GHz: twice is the most that fits.
        assert_eq!(fitting_dilation(3, 2_000_000_000, 0x20), 2);
        // A rate above 4.29 GHz cannot be dilated at all, and 0 is never a factor.
        assert_eq!(fitting_dilation(10, 5_000_000_000, 0x16), 1);
        assert_eq!(fitting_dilation(0, 20_000_000, 0x16), 1);
        // Not measured (host builds): the factor stands.
        assert_eq!(fitting_dilation(7, 0, 0x16), 7);
        // No leaf 15H for the guest (QEMU's qemu64 stops at 0DH): nothing to fit.
        assert_eq!(fitting_dilation(20, 2_600_000_000, 0xd), 20);
        assert_eq!(fitting_dilation(0, 2_600_000_000, 0xd), 1);
    }
}
