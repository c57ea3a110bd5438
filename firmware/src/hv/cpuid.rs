//! What CPUID tells a guest: the host's answer with a virtual topology (one core per vCPU,
//! x2APIC id = vCPU index, SDM Vol. 2A CPUID leaves 01H, 04H, 0BH), VMX and SVM hidden, the
//! hypervisor bit set, TSC frequency leaves from the measured rate (Bochs reports the host's,
//! docs/design.md §9), and the Gestalt hypervisor leaves at 0x4000_0000.

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

/// The guest's answer for vCPU `id` given the host's answer `host` for the same leaf/subleaf.
pub fn answer(leaf: u32, sub: u32, host: Regs4, id: u32, t: &Topology) -> Regs4 {
    let mut r = host;
    match leaf {
        0x0 => r.eax = r.eax.min(0x16),
        0x1 => {
            // EBX[31:24] initial APIC id, [23:16] logical processors per package.
            r.ebx = (r.ebx & 0xffff) | (t.vcpus.min(255) << 16) | (id.min(255) << 24);
            // ECX: clear MONITOR(3), VMX(5), SMX(6), EST(7), TM2(8), PDCM(15);
            // set x2APIC(21), TSC-deadline(24), hypervisor(31).
            r.ecx &= !((1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 15));
            r.ecx |= (1 << 21) | (1 << 24) | (1 << 31);
            // EDX: HTT(28) says EBX[23:16] is valid; clear ACPI thermal(22), TM(29), PBE(31).
            r.edx = (r.edx | (1 << 28)) & !((1 << 22) | (1 << 29) | (1 << 31));
        }
        0x4 => {
            // Cache leaves: EAX[31:26] cores per package - 1, [25:14] sharing - 1 (one core).
            if r.eax & 0x1f != 0 {
                r.eax = (r.eax & 0x3fff) | ((t.vcpus.clamp(1, 64) - 1) << 26);
            }
        }
        0x6 | 0xa => r = Regs4::default(),
        0xb => {
            let (shift, count, kind) = match sub {
                0 => (0, 1, 1),
                1 => (width(t.vcpus), t.vcpus, 2),
                _ => (0, 0, 0),
            };
            r = Regs4 { eax: shift, ebx: count, ecx: (kind << 8) | (sub & 0xff), edx: id };
        }
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
        0x4000_0002..=0x4fff_ffff => r = Regs4::default(),
        // SVM hidden as VMX is (AMD APM Vol. 3 CPUID Fn8000_0001:ECX[2], Fn8000_000A), and
        // the AMD core count follows the vCPUs (Fn8000_0008:ECX[7:0] = cores - 1).
        0x8000_0001 => r.ecx &= !(1 << 2),
        0x8000_0008 => r.ecx = (r.ecx & !0xff) | (t.vcpus.clamp(1, 256) - 1),
        0x8000_000A => r = Regs4::default(),
        _ => {}
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
    fn amd_leaves_hide_svm_and_count_the_vcpus() {
        let r = answer(0x8000_0001, 0, Regs4 { ecx: 0x25, ..Regs4::default() }, 0, &T);
        assert_eq!(r.ecx, 0x21);
        let svm = Regs4 { eax: 1, ebx: 16, ecx: 0, edx: 0x1 };
        assert_eq!(answer(0x8000_000A, 0, svm, 0, &T), Regs4::default());
        let r = answer(0x8000_0008, 0, Regs4 { eax: 0x3028, ebx: 0, ecx: 0x7007, edx: 0 }, 0, &T);
        assert_eq!((r.eax, r.ecx), (0x3028, 0x7002));
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
}
