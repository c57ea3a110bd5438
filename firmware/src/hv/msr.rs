//! The guest's model-specific registers outside the x2APIC range: the ones Linux reads or
//! writes at boot on the CPU the CPUID whitelist describes, kept per vCPU. An MSR not listed
//! raises #GP on read and on write, as on a CPU without it (the dispatch counts them per vCPU
//! for `vcpu`); CPUID hides the features whose MSRs are not here (MTRRs, machine checks,
//! TSC_ADJUST, the speculation controls), so a correct guest does not touch them.

use super::vlapic::Gp;

/// IA32_TIME_STAMP_COUNTER.
pub const TSC: u32 = 0x10;
/// IA32_APIC_BASE.
pub const APIC_BASE: u32 = 0x1B;
/// IA32_BIOS_SIGN_ID: the microcode revision (Linux writes 0, runs CPUID, reads it).
pub const BIOS_SIGN_ID: u32 = 0x8B;
/// IA32_TSC_ADJUST.
pub const TSC_ADJUST: u32 = 0x3B;
/// IA32_FEATURE_CONTROL.
pub const FEATURE_CONTROL: u32 = 0x3A;
/// IA32_MTRRCAP.
pub const MTRR_CAP: u32 = 0xFE;
/// IA32_MISC_ENABLE.
pub const MISC_ENABLE: u32 = 0x1A0;
/// IA32_PAT.
pub const PAT: u32 = 0x277;
/// IA32_PAT's power-on and reset value: WB, WT, UC-, UC twice (SDM Vol. 3A §13.12.4);
/// an INIT leaves it unchanged (SDM Vol. 3A Table 10-1).
pub const PAT_POWER_ON: u64 = 0x0007_0406_0007_0406;
/// IA32_MTRR_DEF_TYPE.
pub const MTRR_DEF_TYPE: u32 = 0x2FF;
/// IA32_EFER.
pub const EFER: u32 = 0xC000_0080;
/// AMD family 0Fh's Interrupt Pending Message register (BKDG for AMD Family 0Fh, MSR
/// C001_0055): Linux reads it on such CPUs (QEMU's `qemu64` is one) to see whether C1E is
/// active (bits 28:27); reading 0 says it is not, so the guest needs no C1E workaround.
pub const K8_INT_PENDING_MSG: u32 = 0xC001_0055;

/// An MSR write the backend must carry into the guest's state (VMCS or VMCB), because the
/// CPU uses the value while the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// IA32_EFER as written (the backend keeps LMA as the CPU set it).
    Efer(u64),
    /// IA32_PAT, which the CPU's page walks use for memory types (the VMCS's guest IA32_PAT
    /// with "load IA32_PAT" on entry, SDM Vol. 3C §26.3.2.1; the VMCB's G_PAT with nested
    /// paging, APM Vol. 2 §15.25.8).
    Pat(u64),
}

/// One vCPU's MSRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrFile {
    /// IA32_PAT (power-on value, SDM Vol. 3A §13.12.4).
    pub pat: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def: u64,
    /// IA32_EFER as the guest wrote it.
    pub efer: u64,
    /// IA32_APIC_BASE: x2APIC mode and enabled, BSP flag on vCPU 0 (SDM Vol. 3A §11.4.4).
    pub apic_base: u64,
    /// IA32_TSC_ADJUST as the guest wrote it. The guest TSC is the node's clock plus the
    /// cluster's offset, which a guest must not move; the value is kept and read back only
    /// (Linux reads it to check nobody moved the TSC, and writes 0 if it is not).
    pub tsc_adjust: u64,
    /// IA32_MISC_ENABLE: fast strings (bit 0) at power-on; the guest may set or clear the
    /// bits Linux touches (fast strings, XD disable) with no effect here.
    pub misc_enable: u64,
}

impl MsrFile {
    /// Power-on values; `bsp` sets the boot-processor flag.
    pub fn new(bsp: bool) -> MsrFile {
        MsrFile {
            pat: PAT_POWER_ON,
            mtrr_def: 0,
            efer: 0,
            apic_base: 0xFEE0_0000 | (1 << 11) | (1 << 10) | if bsp { 1 << 8 } else { 0 },
            misc_enable: 1,
            tsc_adjust: 0,
        }
    }

    /// RDMSR: the value, or None for #GP. `tsc` is the guest's TSC now.
    pub fn read(&self, msr: u32, tsc: u64) -> Option<u64> {
        match msr {
            TSC => Some(tsc),
            APIC_BASE => Some(self.apic_base),
            // Locked, VMX off: the guest sees no VMX (SDM Vol. 3C §24.7).
            FEATURE_CONTROL => Some(1),
            MISC_ENABLE => Some(self.misc_enable),
            BIOS_SIGN_ID => Some(0),
            TSC_ADJUST => Some(self.tsc_adjust),
            MTRR_CAP => Some(0),
            PAT => Some(self.pat),
            MTRR_DEF_TYPE => Some(self.mtrr_def),
            EFER => Some(self.efer),
            K8_INT_PENDING_MSG => Some(0),
            _ => None,
        }
    }

    /// WRMSR: `Ok(Some(load))` when the backend must load the value; `Err(Gp)` for an MSR
    /// not modelled or a value the architecture refuses.
    pub fn write(&mut self, msr: u32, v: u64) -> Result<Option<Load>, Gp> {
        match msr {
            // The TSC is the host's plus the offset the node keeps: a guest write is dropped
            // (no guest sets it at boot; a moved TSC would break the cluster's one clock).
            TSC => {}
            BIOS_SIGN_ID => {}
            MISC_ENABLE => self.misc_enable = v,
            TSC_ADJUST => self.tsc_adjust = v,
            FEATURE_CONTROL => return Err(Gp),
            // Only the mode bits move; the base stays where the virtual APIC is.
            APIC_BASE => self.apic_base = (self.apic_base & !0xc00) | (v & 0xc00),
            // Each byte a memory type: 0, 1, 4, 5, 6 or 7 (SDM Vol. 3A §13.12.2).
            PAT if v.to_le_bytes().iter().any(|t| matches!(t, 2 | 3) || *t > 7) => return Err(Gp),
            PAT => {
                self.pat = v;
                return Ok(Some(Load::Pat(v)));
            }
            MTRR_DEF_TYPE => self.mtrr_def = v,
            EFER => {
                self.efer = v;
                return Ok(Some(Load::Efer(v)));
            }
            // Everything else, MTRR_CAP (read-only) included.
            _ => return Err(Gp),
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_boot_processor_has_the_bsp_flag() {
        assert_ne!(MsrFile::new(true).read(APIC_BASE, 0).unwrap() & (1 << 8), 0);
        assert_eq!(MsrFile::new(false).read(APIC_BASE, 0).unwrap() & (1 << 8), 0);
    }

    #[test]
    fn unknown_msrs_fault_on_read_and_on_write() {
        let mut m = MsrFile::new(false);
        // MCG_CAP, SPEC_CTRL, ARCH_CAPABILITIES: hidden by CPUID, not modelled.
        for msr in [0x1234, 0x179, 0x48, 0x10A] {
            assert_eq!(m.read(msr, 0), None, "{msr:#x}");
            assert_eq!(m.write(msr, 5), Err(Gp), "{msr:#x}");
        }
        assert_eq!(m.write(MTRR_CAP, 0), Err(Gp), "read-only");
        assert_eq!(m.write(FEATURE_CONTROL, 5), Err(Gp), "locked");
        assert_eq!(m, MsrFile::new(false));
    }

    #[test]
    fn a_k8s_interrupt_pending_register_reads_as_c1e_inactive_and_is_read_only() {
        let mut m = MsrFile::new(false);
        assert_eq!(m.read(K8_INT_PENDING_MSG, 0), Some(0));
        assert_eq!(m.write(K8_INT_PENDING_MSG, 1 << 27), Err(Gp));
    }

    #[test]
    fn linux_boot_msrs_answer() {
        let mut m = MsrFile::new(true);
        // The microcode revision dance: write 0, read.
        assert_eq!(m.write(BIOS_SIGN_ID, 0), Ok(None));
        assert_eq!(m.read(BIOS_SIGN_ID, 0), Some(0));
        assert_eq!(m.read(FEATURE_CONTROL, 0), Some(1), "locked, VMX off");
        m.write(MISC_ENABLE, 1 | (1 << 34)).unwrap();
        assert_eq!(m.read(MISC_ENABLE, 0), Some(1 | (1 << 34)));
        // Linux's PAT: WB, WC, UC-, UC, WB, WP, UC-, WT.
        let pat = 0x0407_0506_0007_0106;
        assert_eq!(m.write(PAT, pat), Ok(Some(Load::Pat(pat))), "the CPU must use it");
        assert_eq!(m.read(PAT, 0), Some(pat));
        assert_eq!(m.write(PAT, 0x02), Err(Gp), "type 2 is reserved");
        assert_eq!(m.read(PAT, 0), Some(pat));
        assert_eq!(m.write(TSC, 5), Ok(None));
        assert_eq!(m.read(TSC_ADJUST, 0), Some(0));
        m.write(TSC_ADJUST, 9).unwrap();
        assert_eq!(m.read(TSC_ADJUST, 0), Some(9));
    }

    #[test]
    fn efer_writes_are_kept_and_handed_to_the_backend() {
        let mut m = MsrFile::new(false);
        assert_eq!(m.write(EFER, 0x901), Ok(Some(Load::Efer(0x901))));
        assert_eq!(m.read(EFER, 0), Some(0x901));
    }

    #[test]
    fn apic_base_writes_move_only_the_mode_bits() {
        let mut m = MsrFile::new(true);
        m.write(APIC_BASE, 0x1234_5000).unwrap();
        assert_eq!(m.read(APIC_BASE, 0), Some(0xFEE0_0000 | (1 << 8)));
    }

    #[test]
    fn the_tsc_reads_the_time_given() {
        assert_eq!(MsrFile::new(false).read(TSC, 77), Some(77));
    }
}
