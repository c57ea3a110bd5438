//! The guest's model-specific registers outside the x2APIC range: the few a guest OS reads or
//! writes at boot, kept per vCPU. Unknown reads raise #GP; unknown writes are ignored (a guest
//! tuning power or performance MSRs of a CPU it does not own has nothing to break here).

use super::vlapic::Gp;

/// IA32_TIME_STAMP_COUNTER.
pub const TSC: u32 = 0x10;
/// IA32_APIC_BASE.
pub const APIC_BASE: u32 = 0x1B;
/// IA32_FEATURE_CONTROL.
pub const FEATURE_CONTROL: u32 = 0x3A;
/// IA32_MTRRCAP.
pub const MTRR_CAP: u32 = 0xFE;
/// IA32_MISC_ENABLE.
pub const MISC_ENABLE: u32 = 0x1A0;
/// IA32_PAT.
pub const PAT: u32 = 0x277;
/// IA32_MTRR_DEF_TYPE.
pub const MTRR_DEF_TYPE: u32 = 0x2FF;
/// IA32_EFER.
pub const EFER: u32 = 0xC000_0080;

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
}

impl MsrFile {
    /// Power-on values; `bsp` sets the boot-processor flag.
    pub fn new(bsp: bool) -> MsrFile {
        MsrFile {
            pat: 0x0007_0406_0007_0406,
            mtrr_def: 0,
            efer: 0,
            apic_base: 0xFEE0_0000 | (1 << 11) | (1 << 10) | if bsp { 1 << 8 } else { 0 },
        }
    }

    /// RDMSR: the value, or None for #GP. `tsc` is the guest's TSC now.
    pub fn read(&self, msr: u32, tsc: u64) -> Option<u64> {
        match msr {
            TSC => Some(tsc),
            APIC_BASE => Some(self.apic_base),
            // Locked, VMX off: the guest sees no VMX (SDM Vol. 3C §24.7).
            FEATURE_CONTROL => Some(1),
            MISC_ENABLE => Some(1),
            MTRR_CAP => Some(0),
            PAT => Some(self.pat),
            MTRR_DEF_TYPE => Some(self.mtrr_def),
            EFER => Some(self.efer),
            _ => None,
        }
    }

    /// WRMSR: `Ok(Some(efer))` when EFER changed and the backend must load it.
    pub fn write(&mut self, msr: u32, v: u64) -> Result<Option<u64>, Gp> {
        match msr {
            // Only the mode bits move; the base stays where the virtual APIC is.
            APIC_BASE => self.apic_base = (self.apic_base & !0xc00) | (v & 0xc00),
            PAT => self.pat = v,
            MTRR_DEF_TYPE => self.mtrr_def = v,
            EFER => {
                self.efer = v;
                return Ok(Some(v));
            }
            _ => {}
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
    fn unknown_msrs_fault_on_read_and_are_ignored_on_write() {
        let mut m = MsrFile::new(false);
        assert_eq!(m.read(0x1234, 0), None);
        assert_eq!(m.write(0x1234, 5), Ok(None));
        assert_eq!(m, MsrFile::new(false));
    }

    #[test]
    fn efer_writes_are_kept_and_handed_to_the_backend() {
        let mut m = MsrFile::new(false);
        assert_eq!(m.write(EFER, 0x901), Ok(Some(0x901)));
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
