//! The VMCB (AMD APM Vol. 2 Appendix B): field offsets, intercept bits and exit codes, a
//! [`Vmcb`] page with typed accessors, the I/O and MSR permission maps, and the translation of
//! exit codes into the neutral [`Exit`] — all pure, so the host tests check them.

use crate::hv::{Exit, IoDir};

/// Control-area and state-save-area offsets (APM Vol. 2 Tables B-1, B-2).
pub mod off {
    /// Intercept CR reads (bits 15:0) and writes (31:16).
    pub const INTERCEPT_CR: usize = 0x000;
    /// Intercept exception vectors (one bit per vector).
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    /// Intercept vector 3 (INTR … SHUTDOWN).
    pub const INTERCEPT_MISC1: usize = 0x00C;
    /// Intercept vector 4 (VMRUN … XSETBV).
    pub const INTERCEPT_MISC2: usize = 0x010;
    /// Physical address of the I/O permission map.
    pub const IOPM_BASE: usize = 0x040;
    /// Physical address of the MSR permission map.
    pub const MSRPM_BASE: usize = 0x048;
    /// TSC offset.
    pub const TSC_OFFSET: usize = 0x050;
    /// Guest ASID (u32).
    pub const ASID: usize = 0x058;
    /// TLB control (u8).
    pub const TLB_CONTROL: usize = 0x05C;
    /// V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, V_INTR_VECTOR.
    pub const VINTR: usize = 0x060;
    /// Interrupt shadow (bit 0).
    pub const INTERRUPT_SHADOW: usize = 0x068;
    /// Exit code.
    pub const EXITCODE: usize = 0x070;
    /// Exit information 1.
    pub const EXITINFO1: usize = 0x078;
    /// Exit information 2.
    pub const EXITINFO2: usize = 0x080;
    /// An event whose delivery the exit interrupted.
    pub const EXITINTINFO: usize = 0x088;
    /// Nested paging enable (bit 0).
    pub const NP_ENABLE: usize = 0x090;
    /// Event injection.
    pub const EVENTINJ: usize = 0x0A8;
    /// Nested page table CR3.
    pub const N_CR3: usize = 0x0B0;
    /// VMCB clean bits (0: reload everything).
    pub const CLEAN: usize = 0x0C0;
    /// Next RIP (with NRIPS).
    pub const NRIP: usize = 0x0C8;
    /// Segment registers: selector u16, attributes u16, limit u32, base u64.
    pub const ES: usize = 0x400;
    /// CS.
    pub const CS: usize = 0x410;
    /// SS.
    pub const SS: usize = 0x420;
    /// DS.
    pub const DS: usize = 0x430;
    /// FS.
    pub const FS: usize = 0x440;
    /// GS.
    pub const GS: usize = 0x450;
    /// GDTR (limit and base only).
    pub const GDTR: usize = 0x460;
    /// LDTR.
    pub const LDTR: usize = 0x470;
    /// IDTR (limit and base only).
    pub const IDTR: usize = 0x480;
    /// TR.
    pub const TR: usize = 0x490;
    /// CPL (u8).
    pub const CPL: usize = 0x4CB;
    /// EFER.
    pub const EFER: usize = 0x4D0;
    /// CR4.
    pub const CR4: usize = 0x548;
    /// CR3.
    pub const CR3: usize = 0x550;
    /// CR0.
    pub const CR0: usize = 0x558;
    /// DR7.
    pub const DR7: usize = 0x560;
    /// DR6.
    pub const DR6: usize = 0x568;
    /// RFLAGS.
    pub const RFLAGS: usize = 0x570;
    /// RIP.
    pub const RIP: usize = 0x578;
    /// RSP.
    pub const RSP: usize = 0x5D8;
    /// RAX.
    pub const RAX: usize = 0x5F8;
    /// Guest PAT.
    pub const G_PAT: usize = 0x668;
}

/// Intercept vector 3 bits (APM Vol. 2 Table B-1, offset 0Ch).
pub mod misc1 {
    /// Physical interrupt.
    pub const INTR: u32 = 1 << 0;
    /// Physical NMI.
    pub const NMI: u32 = 1 << 1;
    /// Physical INIT.
    pub const INIT: u32 = 1 << 3;
    /// Virtual interrupt (the guest can take V_IRQ).
    pub const VINTR: u32 = 1 << 4;
    /// CPUID.
    pub const CPUID: u32 = 1 << 18;
    /// IRET (the end of an injected NMI's handler).
    pub const IRET: u32 = 1 << 20;
    /// INVD.
    pub const INVD: u32 = 1 << 22;
    /// HLT.
    pub const HLT: u32 = 1 << 24;
    /// IN/OUT through the I/O permission map.
    pub const IOIO: u32 = 1 << 27;
    /// RDMSR/WRMSR through the MSR permission map.
    pub const MSR: u32 = 1 << 28;
    /// Task switch.
    pub const TASK_SWITCH: u32 = 1 << 29;
    /// Shutdown (triple fault).
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Intercept vector 4 bits (APM Vol. 2 Table B-1, offset 10h).
pub mod misc2 {
    /// VMRUN: must be intercepted (APM Vol. 2 §15.5.1).
    pub const VMRUN: u32 = 1 << 0;
    /// VMMCALL.
    pub const VMMCALL: u32 = 1 << 1;
    /// VMLOAD, VMSAVE, STGI, CLGI, SKINIT: SVM is hidden from the guest.
    pub const SVM_INSNS: u32 = 0b11_1110 << 1;
    /// MONITOR.
    pub const MONITOR: u32 = 1 << 10;
    /// MWAIT (unconditional and armed).
    pub const MWAIT: u32 = 0b11 << 11;
    /// XSETBV.
    pub const XSETBV: u32 = 1 << 13;
}

/// Exit codes (APM Vol. 2 Appendix C).
pub mod code {
    /// Exception vector 0 (add the vector).
    pub const EXCEPTION: u64 = 0x40;
    /// #UD.
    pub const UD: u64 = 0x46;
    /// Physical interrupt.
    pub const INTR: u64 = 0x60;
    /// Physical NMI.
    pub const NMI: u64 = 0x61;
    /// SMI.
    pub const SMI: u64 = 0x62;
    /// Physical INIT.
    pub const INIT: u64 = 0x63;
    /// Virtual interrupt window.
    pub const VINTR: u64 = 0x64;
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// IRET.
    pub const IRET: u64 = 0x74;
    /// INVD.
    pub const INVD: u64 = 0x76;
    /// HLT.
    pub const HLT: u64 = 0x78;
    /// IN/OUT.
    pub const IOIO: u64 = 0x7B;
    /// RDMSR/WRMSR.
    pub const MSR: u64 = 0x7C;
    /// Task switch.
    pub const TASK_SWITCH: u64 = 0x7D;
    /// Shutdown.
    pub const SHUTDOWN: u64 = 0x7F;
    /// VMRUN.
    pub const VMRUN: u64 = 0x80;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x81;
    /// SKINIT (last of VMLOAD, VMSAVE, STGI, CLGI, SKINIT).
    pub const SKINIT: u64 = 0x86;
    /// MONITOR.
    pub const MONITOR: u64 = 0x8A;
    /// MWAIT.
    pub const MWAIT: u64 = 0x8B;
    /// MWAIT armed.
    pub const MWAIT_CONDITIONAL: u64 = 0x8C;
    /// XSETBV.
    pub const XSETBV: u64 = 0x8D;
    /// Nested page fault.
    pub const NPF: u64 = 0x400;
    /// VMRUN refused the VMCB (consistency checks, APM Vol. 2 §15.5.1).
    pub const INVALID: u64 = u64::MAX;
}

/// EVENTINJ / EXITINTINFO (APM Vol. 2 §15.20): valid bit, error-code-valid bit, types.
pub mod event {
    /// Valid.
    pub const VALID: u64 = 1 << 31;
    /// An error code is pushed (bits 63:32).
    pub const ERROR_VALID: u64 = 1 << 11;
    /// External interrupt.
    pub const INTR: u64 = 0 << 8;
    /// NMI.
    pub const NMI: u64 = 2 << 8;
    /// Exception.
    pub const EXCEPTION: u64 = 3 << 8;
}

/// EFER.SVME: must stay set in the guest's EFER (APM Vol. 2 §15.5.1).
pub const EFER_SVME: u64 = 1 << 12;

/// One VMCB: a 4 KiB page the CPU reads at VMRUN and writes at #VMEXIT.
#[repr(C, align(4096))]
pub struct Vmcb(pub [u8; 4096]);

impl Vmcb {
    /// A zeroed VMCB.
    pub const fn zeroed() -> Vmcb {
        Vmcb([0; 4096])
    }

    /// The u64 at `at`.
    pub fn get(&self, at: usize) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }

    /// Sets the u64 at `at`.
    pub fn set(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// The u32 at `at`.
    pub fn get32(&self, at: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }

    /// Sets the u32 at `at`.
    pub fn set32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets segment `at`: selector, base, limit and attributes in the VMCB's 12-bit form
    /// (descriptor bits 47:40 in 7:0, bits 55:52 in 11:8).
    pub fn set_segment(&mut self, at: usize, sel: u16, base: u64, limit: u32, attr: u16) {
        self.0[at..at + 2].copy_from_slice(&sel.to_le_bytes());
        self.0[at + 2..at + 4].copy_from_slice(&attr.to_le_bytes());
        self.set32(at + 4, limit);
        self.set(at + 8, base);
    }

    /// Segment `at` as (selector, base, limit, attributes).
    pub fn segment(&self, at: usize) -> (u16, u64, u32, u16) {
        let w = |i: usize| u16::from_le_bytes([self.0[i], self.0[i + 1]]);
        (w(at), self.get(at + 8), self.get32(at + 4), w(at + 2))
    }
}

/// Bytes of the I/O permission map: one bit per port, plus the bits an access at 0xFFFF
/// reaches past it (APM Vol. 2 §15.10.1); 12 KiB, 3 contiguous pages.
pub const IOPM_BYTES: usize = 3 * 4096;
/// Bytes of the MSR permission map (APM Vol. 2 §15.11): 8 KiB, 2 contiguous pages.
pub const MSRPM_BYTES: usize = 2 * 4096;

/// Fills the I/O permission map: every port intercepted (the hypervisor models every device)
/// except the `pass` ranges `(first port, ports)`, which the guest reaches directly (APM Vol. 2
/// §15.10.1: bit n for port n; an access is intercepted if any of its ports' bits is set).
pub fn fill_iopm(map: &mut [u8], pass: &[(u16, u16)]) {
    map.fill(0xff);
    for &(first, n) in pass {
        let first = usize::from(first);
        for port in first..(first + usize::from(n)).min(map.len() * 8) {
            map[port / 8] &= !(1 << (port % 8));
        }
    }
}

/// Fills the MSR permission map: everything intercepted except `pass`, whose reads and writes
/// go to the guest's own copy (APM Vol. 2 §15.11: two bits per MSR, read then write, in three
/// 2 KiB ranges for 0..1FFF, C000_0000.., C001_0000..).
pub fn fill_msrpm(map: &mut [u8], pass: &[u32]) {
    map.fill(0xff);
    for &msr in pass {
        if let Some(bit) = msrpm_bit(msr) {
            map[bit / 8] &= !(0b11 << (bit % 8));
        }
    }
}

/// The read bit of `msr` in the MSR permission map (the write bit follows it), if the map
/// covers `msr`.
pub fn msrpm_bit(msr: u32) -> Option<usize> {
    let (base, n) = match msr {
        0..=0x1fff => (0, msr),
        0xC000_0000..=0xC000_1FFF => (0x800, msr - 0xC000_0000),
        0xC001_0000..=0xC001_1FFF => (0x1000, msr - 0xC001_0000),
        _ => return None,
    };
    Some(base * 8 + n as usize * 2)
}

/// An exit as the CPU reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raw {
    /// EXITCODE.
    pub code: u64,
    /// EXITINFO1.
    pub info1: u64,
    /// EXITINFO2.
    pub info2: u64,
}

/// The neutral exit for `raw`, with the guest's RAX, RCX, RDX; None for the exits the backend
/// finishes itself (#UD, IRET, VMRUN refused).
pub fn translate(raw: Raw, rax: u64, rcx: u64, rdx: u64) -> Option<Exit> {
    let Raw { code: c, info1, info2 } = raw;
    // VMEXIT_INVALID is -1; some emulators (QEMU) store it as a 32-bit -1.
    let c = if c == u64::from(u32::MAX) { code::INVALID } else { c };
    let edx_eax = (rdx << 32) | (rax & 0xffff_ffff);
    Some(match c {
        code::UD | code::IRET | code::INVALID => return None,
        code::EXCEPTION..=0x5F => {
            Exit::Exception { vector: (c - code::EXCEPTION) as u8, error: info1 as u32 }
        }
        code::INTR | code::NMI | code::SMI => Exit::Interrupt,
        code::INIT => Exit::Init,
        code::VINTR => Exit::InterruptWindow,
        code::CPUID => Exit::Cpuid { leaf: rax as u32, sub: rcx as u32 },
        code::HLT => Exit::Hlt,
        code::VMMCALL => Exit::Hypercall { nr: rax },
        // EXITINFO1: bit 0 IN, bit 2 string, bits 6:4 one-hot size, 31:16 port (APM Vol. 2
        // §15.10.2).
        code::IOIO => Exit::Io {
            port: (info1 >> 16) as u16,
            size: match (info1 >> 4) & 7 {
                1 => 1,
                2 => 2,
                _ => 4,
            },
            dir: if info1 & 1 != 0 { IoDir::In } else { IoDir::Out },
            string: info1 & 4 != 0,
        },
        code::MSR => {
            Exit::Msr { msr: rcx as u32, write: if info1 & 1 != 0 { Some(edx_eax) } else { None } }
        }
        // EXITINFO1 is a page-fault error code (bit 0 present, 1 write, 4 fetch), EXITINFO2
        // the guest-physical address (APM Vol. 2 §15.25.6).
        code::NPF => Exit::NestedPageFault {
            gpa: info2,
            write: info1 & 2 != 0,
            exec: info1 & 0x10 != 0,
            present: info1 & 1 != 0,
        },
        code::SHUTDOWN => Exit::TripleFault,
        code::XSETBV => Exit::Xsetbv { xcr: rcx as u32, value: edx_eax },
        code::INVD => Exit::NoOp { what: "INVD" },
        code::VMRUN..=code::SKINIT => Exit::Undefined { what: "SVM instruction" },
        code::MONITOR | code::MWAIT | code::MWAIT_CONDITIONAL => {
            Exit::Undefined { what: "MONITOR/MWAIT" }
        }
        code::TASK_SWITCH => Exit::Other { what: "task switch", qualification: info1 },
        n => Exit::Other { what: exit_name(n), qualification: n },
    })
}

fn exit_name(n: u64) -> &'static str {
    match n {
        0x00..=0x1F => "CR access",
        0x20..=0x3F => "DR access",
        0x6E => "RDTSC",
        0x77 => "PAUSE",
        0x79 => "INVLPG",
        0x87 => "RDTSCP",
        0x89 => "WBINVD",
        _ => "unknown SVM exit code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(code: u64, info1: u64, info2: u64) -> Raw {
        Raw { code, info1, info2 }
    }

    #[test]
    fn io_exits_decode_port_size_direction_and_string() {
        // IN AL, 0x3F8 (8-bit): port in 31:16, SZ8, TYPE=IN.
        let e = translate(raw(code::IOIO, (0x3f8 << 16) | (1 << 4) | 1, 0), 0, 0, 0);
        assert_eq!(e, Some(Exit::Io { port: 0x3f8, size: 1, dir: IoDir::In, string: false }));
        // OUT DX, EAX to 0xF4 (32-bit).
        let e = translate(raw(code::IOIO, (0xf4 << 16) | (4 << 4), 0), 0, 0, 0);
        assert_eq!(e, Some(Exit::Io { port: 0xf4, size: 4, dir: IoDir::Out, string: false }));
        let e = translate(raw(code::IOIO, (0x80 << 16) | (2 << 4) | 4, 0), 0, 0, 0);
        assert_eq!(e, Some(Exit::Io { port: 0x80, size: 2, dir: IoDir::Out, string: true }));
    }

    #[test]
    fn msr_exits_take_the_index_from_ecx_and_the_value_from_edx_eax() {
        let e = translate(raw(code::MSR, 0, 0), 0xdead, 0x1b, 0);
        assert_eq!(e, Some(Exit::Msr { msr: 0x1b, write: None }));
        let e = translate(raw(code::MSR, 1, 0), 0xffff_ffff_0000_0001, 0xC000_0080, 0x2);
        assert_eq!(e, Some(Exit::Msr { msr: 0xC000_0080, write: Some(0x2_0000_0001) }));
    }

    #[test]
    fn nested_page_faults_carry_the_address_and_the_kind_of_access() {
        let e = translate(raw(code::NPF, 0b1_0000, 0x12_3000), 0, 0, 0);
        let want =
            Exit::NestedPageFault { gpa: 0x12_3000, write: false, exec: true, present: false };
        assert_eq!(e, Some(want));
        let e = translate(raw(code::NPF, 0b11, 0x4000), 0, 0, 0);
        let want = Exit::NestedPageFault { gpa: 0x4000, write: true, exec: false, present: true };
        assert_eq!(e, Some(want));
    }

    #[test]
    fn generic_code_never_sees_an_svm_exit_code() {
        assert_eq!(
            translate(raw(code::CPUID, 0, 0), 7, 1, 0),
            Some(Exit::Cpuid { leaf: 7, sub: 1 })
        );
        assert_eq!(translate(raw(code::VMMCALL, 0, 0), 3, 0, 0), Some(Exit::Hypercall { nr: 3 }));
        assert_eq!(translate(raw(code::HLT, 0, 0), 0, 0, 0), Some(Exit::Hlt));
        assert_eq!(translate(raw(code::SHUTDOWN, 0, 0), 0, 0, 0), Some(Exit::TripleFault));
        assert_eq!(translate(raw(code::INTR, 0, 0), 0, 0, 0), Some(Exit::Interrupt));
        assert_eq!(translate(raw(code::VINTR, 0, 0), 0, 0, 0), Some(Exit::InterruptWindow));
        let e = translate(raw(code::XSETBV, 0, 0), 7, 0, 0);
        assert_eq!(e, Some(Exit::Xsetbv { xcr: 0, value: 7 }));
        for c in [code::VMRUN, 0x82, 0x83, 0x84, 0x85, code::SKINIT] {
            assert_eq!(
                translate(raw(c, 0, 0), 0, 0, 0),
                Some(Exit::Undefined { what: "SVM instruction" })
            );
        }
        assert!(matches!(
            translate(raw(0x89, 0, 0), 0, 0, 0),
            Some(Exit::Other { what: "WBINVD", .. })
        ));
        assert_eq!(translate(raw(code::UD, 0, 0), 0, 0, 0), None);
        assert_eq!(translate(raw(code::INVALID, 0, 0), 0, 0, 0), None);
    }

    #[test]
    fn the_msr_map_passes_only_the_listed_msrs_in_all_three_ranges() {
        let mut m = vec![0u8; MSRPM_BYTES];
        fill_msrpm(&mut m, &[0x174, 0xC000_0100, 0xC001_0000]);
        let bits = |msr: u32| {
            let b = msrpm_bit(msr).unwrap();
            (m[b / 8] >> (b % 8)) & 0b11
        };
        assert_eq!(bits(0x174), 0);
        assert_eq!(bits(0x175), 0b11);
        assert_eq!(bits(0xC000_0100), 0);
        assert_eq!(bits(0xC000_0080), 0b11);
        assert_eq!(bits(0xC001_0000), 0);
        // MSR 0x174 is bits 0x2E8/0x2E9: byte 0x5D, bits 0 and 1 (APM Vol. 2 §15.11).
        assert_eq!(msrpm_bit(0x174), Some(0x5D * 8));
        assert_eq!(msrpm_bit(0xC000_0100), Some(0x800 * 8 + 0x200));
        assert_eq!(msrpm_bit(0x4000_0000), None);
    }

    #[test]
    fn the_io_map_passes_only_the_listed_ports() {
        let mut m = vec![0u8; IOPM_BYTES];
        fill_iopm(&mut m, &[(0x608, 4), (0xfffe, 2)]);
        let bit = |p: usize| (m[p / 8] >> (p % 8)) & 1;
        assert_eq!([bit(0x607), bit(0x608), bit(0x60b), bit(0x60c)], [1, 0, 0, 1]);
        // Port 0x608 is byte 0xC1, bit 0: the low nibble clear, the high one set.
        assert_eq!(m[0xC1], 0xf0);
        assert_eq!([bit(0xfffd), bit(0xfffe), bit(0xffff), bit(0x10000)], [1, 0, 0, 1]);
        let passed = m.iter().map(|b| b.count_zeros()).sum::<u32>();
        assert_eq!(passed, 6);
    }

    #[test]
    fn segments_round_trip_through_the_vmcb() {
        let mut v = Box::new(Vmcb::zeroed());
        v.set_segment(off::CS, 0x08, 0x1000, 0xffff_ffff, 0xc9b);
        assert_eq!(v.segment(off::CS), (0x08, 0x1000, 0xffff_ffff, 0xc9b));
        assert_eq!(&v.0[0x410..0x414], &[0x08, 0, 0x9b, 0x0c]);
    }
}
