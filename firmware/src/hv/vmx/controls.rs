//! VMX capabilities and VMCS control computation as pure functions of the capability MSR
//! values (SDM Vol. 3D Appendix A), so the host tests them with the values real CPUs and
//! Bochs report. Also the decoding of VM-instruction errors (SDM Vol. 3C §31.4).

use core::fmt;

/// IA32_VMX_BASIC bit 55: the TRUE_* control MSRs exist (SDM Vol. 3D §A.1).
pub const BASIC_TRUE_CTLS: u64 = 1 << 55;

/// Pin-based controls (SDM Vol. 3C §25.6.1).
pub mod pin {
    /// External-interrupt exiting.
    pub const EXT_INT_EXITING: u32 = 1 << 0;
    /// NMI exiting.
    pub const NMI_EXITING: u32 = 1 << 3;
    /// VMX-preemption timer.
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
}

/// Primary processor-based controls (SDM Vol. 3C §25.6.2, Table 25-6).
pub mod proc {
    /// Interrupt-window exiting.
    pub const INT_WINDOW: u32 = 1 << 2;
    /// Use TSC offsetting: the guest's RDTSC adds the VMCS TSC offset (SDM Vol. 3C §26.3).
    pub const TSC_OFFSETTING: u32 = 1 << 3;
    /// HLT exiting.
    pub const HLT_EXITING: u32 = 1 << 7;
    /// CR3-load exiting.
    pub const CR3_LOAD: u32 = 1 << 15;
    /// CR3-store exiting.
    pub const CR3_STORE: u32 = 1 << 16;
    /// Unconditional I/O exiting.
    pub const UNCOND_IO: u32 = 1 << 24;
    /// Use MSR bitmaps.
    pub const MSR_BITMAP: u32 = 1 << 28;
    /// Activate secondary controls.
    pub const SECONDARY: u32 = 1 << 31;
}

/// Secondary processor-based controls (SDM Vol. 3C §25.6.2, Table 25-7).
pub mod proc2 {
    /// Enable EPT.
    pub const EPT: u32 = 1 << 1;
    /// Enable RDTSCP.
    pub const RDTSCP: u32 = 1 << 3;
    /// Enable VPID.
    pub const VPID: u32 = 1 << 5;
    /// Unrestricted guest.
    pub const UNRESTRICTED: u32 = 1 << 7;
    /// Enable INVPCID.
    pub const INVPCID: u32 = 1 << 12;
}

/// VM-exit controls (SDM Vol. 3C §25.7.1).
pub mod exit {
    /// Host address-space size (64-bit host).
    pub const HOST_64: u32 = 1 << 9;
    /// Load IA32_PAT.
    pub const LOAD_PAT: u32 = 1 << 19;
    /// Save IA32_EFER.
    pub const SAVE_EFER: u32 = 1 << 20;
    /// Load IA32_EFER.
    pub const LOAD_EFER: u32 = 1 << 21;
}

/// VM-entry controls (SDM Vol. 3C §25.8.1).
pub mod entry {
    /// IA-32e mode guest.
    pub const IA32E: u32 = 1 << 9;
    /// Load IA32_PAT.
    pub const LOAD_PAT: u32 = 1 << 14;
    /// Load IA32_EFER.
    pub const LOAD_EFER: u32 = 1 << 15;
}

/// IA32_VMX_EPT_VPID_CAP bits (SDM Vol. 3D §A.10).
pub mod ept_cap {
    /// Page-walk length 4.
    pub const WALK4: u64 = 1 << 6;
    /// Write-back EPT paging structures.
    pub const WB: u64 = 1 << 14;
    /// 2 MiB pages.
    pub const PAGE_2M: u64 = 1 << 16;
    /// INVEPT.
    pub const INVEPT: u64 = 1 << 20;
    /// INVEPT all-context.
    pub const INVEPT_ALL: u64 = 1 << 26;
    /// INVVPID.
    pub const INVVPID: u64 = 1 << 32;
}

/// The capability MSR values that decide the controls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// IA32_VMX_BASIC (0x480).
    pub basic: u64,
    /// Pin-based (0x48D TRUE, else 0x481).
    pub pin: u64,
    /// Primary processor-based (0x48E TRUE, else 0x482).
    pub proc: u64,
    /// Secondary processor-based (0x48B; 0 when the primary cannot activate them).
    pub proc2: u64,
    /// Exit (0x48F TRUE, else 0x483).
    pub exit: u64,
    /// Entry (0x490 TRUE, else 0x484).
    pub entry: u64,
    /// IA32_VMX_MISC (0x485).
    pub misc: u64,
    /// IA32_VMX_EPT_VPID_CAP (0x48C).
    pub ept_vpid: u64,
}

/// The controls a vCPU runs with (dynamic bits such as the interrupt window and IA-32e mode
/// are toggled at run time on top of these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Controls {
    /// Pin-based.
    pub pin: u32,
    /// Primary processor-based.
    pub proc: u32,
    /// Secondary processor-based.
    pub proc2: u32,
    /// VM-exit.
    pub exit: u32,
    /// VM-entry.
    pub entry: u32,
    /// Preemption timer available (pin bit 6 set).
    pub preemption_timer: bool,
    /// The preemption timer counts down once every 2^shift TSC ticks (IA32_VMX_MISC[4:0]).
    pub timer_shift: u8,
    /// INVEPT all-context is available (else single-context is used).
    pub invept_all: bool,
    /// VPID is enabled.
    pub vpid: bool,
    /// Wait-for-SIPI activity state supported (IA32_VMX_MISC bit 8).
    pub wait_for_sipi: bool,
}

/// Why this CPU cannot run our guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapError {
    /// A control we need cannot be set to 1.
    Missing {
        /// Which control field.
        field: &'static str,
        /// The bits that cannot be 1.
        bits: u32,
        /// What they are.
        what: &'static str,
    },
    /// EPT cannot do 4-level write-back tables.
    EptLacks(&'static str),
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapError::Missing { field, bits, what } => {
                write!(f, "no {what}: {field} controls cannot set {bits:#x}")
            }
            CapError::EptLacks(what) => write!(f, "EPT lacks {what}"),
        }
    }
}

/// Control value from a capability MSR: bits 31:0 must be 1 where set (allowed 0-settings),
/// bits 63:32 may be 1 only where set (allowed 1-settings) (SDM Vol. 3D §A.3.1).
pub fn adjust(
    field: &'static str,
    cap: u64,
    required: u32,
    optional: u32,
    what: &'static str,
) -> Result<u32, CapError> {
    let must = cap as u32;
    let may = (cap >> 32) as u32;
    let missing = required & !may;
    if missing != 0 {
        return Err(CapError::Missing { field, bits: missing, what });
    }
    Ok(must | required | (optional & may))
}

/// The controls for our guests: EPT + unrestricted guest + VPID, HLT/I/O/MSR-bitmap exiting,
/// external-interrupt exiting, EFER load/save, PAT load both ways (the guest's memory types
/// take effect, the host's come back), 64-bit host; the preemption timer when present.
/// Unwanted default-1 controls (CR3 load/store exiting…) stay 0 where the TRUE MSRs allow it.
pub fn compute(c: &Caps) -> Result<Controls, CapError> {
    let pin = adjust(
        "pin-based",
        c.pin,
        pin::EXT_INT_EXITING | pin::NMI_EXITING,
        pin::PREEMPTION_TIMER,
        "external-interrupt exiting",
    )?;
    let proc = adjust(
        "processor-based",
        c.proc,
        proc::HLT_EXITING | proc::UNCOND_IO | proc::MSR_BITMAP | proc::TSC_OFFSETTING,
        proc::SECONDARY,
        "HLT, I/O or MSR-bitmap exiting or TSC offsetting",
    )?;
    let proc2_cap = if proc & proc::SECONDARY != 0 { c.proc2 } else { 0 };
    adjust("secondary", proc2_cap, proc2::EPT, 0, "EPT")?;
    adjust("secondary", proc2_cap, proc2::UNRESTRICTED, 0, "unrestricted guest")?;
    let proc2 = adjust(
        "secondary",
        proc2_cap,
        proc2::EPT | proc2::UNRESTRICTED,
        proc2::VPID | proc2::RDTSCP | proc2::INVPCID,
        "EPT or unrestricted guest",
    )?;
    let exit = adjust(
        "VM-exit",
        c.exit,
        exit::HOST_64 | exit::SAVE_EFER | exit::LOAD_EFER | exit::LOAD_PAT,
        0,
        "64-bit host or EFER save/load or PAT load on exit",
    )?;
    let entry = adjust(
        "VM-entry",
        c.entry,
        entry::LOAD_EFER | entry::LOAD_PAT,
        0,
        "EFER or PAT load on entry",
    )?;
    let e = c.ept_vpid;
    for (bit, what) in [
        (ept_cap::WALK4, "4-level walks"),
        (ept_cap::WB, "write-back tables"),
        (ept_cap::PAGE_2M, "2 MiB pages"),
        (ept_cap::INVEPT, "INVEPT"),
    ] {
        if e & bit == 0 {
            return Err(CapError::EptLacks(what));
        }
    }
    // VPID without INVVPID cannot be managed: leave it off then.
    let vpid = proc2 & proc2::VPID != 0 && e & ept_cap::INVVPID != 0;
    Ok(Controls {
        pin,
        proc,
        proc2: if vpid { proc2 } else { proc2 & !proc2::VPID },
        exit,
        entry: entry & !entry::IA32E,
        preemption_timer: pin & pin::PREEMPTION_TIMER != 0,
        timer_shift: (c.misc & 0x1f) as u8,
        invept_all: e & ept_cap::INVEPT_ALL != 0,
        vpid,
        wait_for_sipi: c.misc & (1 << 8) != 0,
    })
}

/// What a VM-instruction error number means (SDM Vol. 3C §31.4, Table 31-1).
pub fn instruction_error(code: u32) -> &'static str {
    match code {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error",
    }
}

/// What a VM-entry failure exit (basic reason 33/34/41, SDM Vol. 3C §27.8) means.
pub fn entry_failure(reason: u32, qualification: u64) -> &'static str {
    match (reason, qualification) {
        (33, 2) => "invalid guest state (PDPTE load failed)",
        (33, 3) => "invalid guest state (NMI injection blocked)",
        (33, 4) => "invalid guest state (VMCS link pointer)",
        (33, _) => "invalid guest state",
        (34, _) => "MSR loading failed on VM entry",
        (41, _) => "machine-check event during VM entry",
        _ => "VM-entry failure",
    }
}

/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;

/// The guest's EFER and "IA-32e mode guest" entry control after it writes `cr0` with EFER
/// `efer`: paging on with LME set activates IA-32e mode (LMA = 1), paging off deactivates it
/// (SDM Vol. 3A §10.8.5). The CPU does this itself for writes that do not exit; for a write
/// the hypervisor carries out, it must, or the next entry fails its EFER checks (SDM Vol. 3C
/// §27.3.1.1: LMA must equal the entry control, and LME when CR0.PG = 1).
pub fn long_mode_after_cr0(cr0: u64, efer: u64) -> (u64, bool) {
    let active = cr0 & (1 << 31) != 0 && efer & EFER_LME != 0;
    (if active { efer | EFER_LMA } else { efer & !EFER_LMA }, active)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values Bochs 2.7 reports for `corei7_skylake_x` (printed by `log=debug` as
    /// `hv: caps …`): default-1 bits in the low halves, what may be 1 in the high halves.
    fn skylake() -> Caps {
        Caps {
            basic: 0x00d8_1000_0000_002b,
            pin: 0x0000_007f_0000_0016,
            proc: 0xf7f9_fffe_0400_6172,
            proc2: 0x0217_7fff_0000_0000,
            exit: 0x007f_ffff_0003_6dfb,
            entry: 0x0000_ffff_0000_11fb,
            misc: 0x0000_0000_6004_01e0,
            ept_vpid: 0x0000_0f01_0633_4141,
        }
    }

    #[test]
    fn skylake_caps_give_ept_unrestricted_vpid_and_preemption_timer() {
        let c = compute(&skylake()).unwrap();
        assert_ne!(c.proc2 & proc2::EPT, 0);
        assert_ne!(c.proc2 & proc2::UNRESTRICTED, 0);
        assert!(c.vpid);
        assert!(c.preemption_timer);
        assert_eq!(c.timer_shift, 0);
        assert!(c.wait_for_sipi);
        assert_ne!(c.proc & proc::HLT_EXITING, 0);
        assert_ne!(c.pin & pin::EXT_INT_EXITING, 0);
        // Default-1 bits the TRUE MSR still forces stay set; CR3 exiting is off.
        assert_eq!(c.proc & 0x0400_6172, 0x0400_6172 & c.proc);
        assert_eq!(c.proc & (proc::CR3_LOAD | proc::CR3_STORE), 0);
        assert_eq!(c.entry & entry::IA32E, 0);
        assert_ne!(c.exit & exit::HOST_64, 0);
        assert_ne!(c.entry & entry::LOAD_PAT, 0, "the guest's PAT is the CPU's");
        assert_ne!(c.exit & exit::LOAD_PAT, 0, "the host's PAT comes back");
    }

    #[test]
    fn must_be_one_bits_are_kept_and_impossible_bits_are_refused() {
        assert_eq!(adjust("x", 0x0000_00ff_0000_0011, 0x2, 0x100, "w"), Ok(0x13));
        assert_eq!(
            adjust("x", 0x0000_000f_0000_0000, 0x10, 0, "w"),
            Err(CapError::Missing { field: "x", bits: 0x10, what: "w" })
        );
    }

    #[test]
    fn no_secondary_controls_means_no_ept() {
        let mut caps = skylake();
        caps.proc &= !(u64::from(proc::SECONDARY) << 32);
        let e = compute(&caps).unwrap_err();
        assert!(e.to_string().contains("EPT"), "{e}");
    }

    #[test]
    fn missing_unrestricted_guest_is_named() {
        let mut caps = skylake();
        caps.proc2 &= !(u64::from(proc2::UNRESTRICTED) << 32);
        assert!(compute(&caps).unwrap_err().to_string().contains("unrestricted guest"));
    }

    #[test]
    fn no_preemption_timer_is_not_fatal() {
        let mut caps = skylake();
        caps.pin &= !(u64::from(pin::PREEMPTION_TIMER) << 32);
        let c = compute(&caps).unwrap();
        assert!(!c.preemption_timer);
    }

    #[test]
    fn ept_without_write_back_is_refused() {
        let mut caps = skylake();
        caps.ept_vpid &= !ept_cap::WB;
        assert_eq!(compute(&caps), Err(CapError::EptLacks("write-back tables")));
    }

    #[test]
    fn vm_instruction_errors_decode() {
        assert_eq!(instruction_error(7), "VM entry with invalid control field(s)");
        assert_eq!(instruction_error(8), "VM entry with invalid host-state field(s)");
        assert_eq!(instruction_error(99), "unknown VM-instruction error");
        assert_eq!(entry_failure(33, 0), "invalid guest state");
    }

    #[test]
    fn paging_on_with_lme_activates_long_mode_the_way_linux_enters_it() {
        // Linux's 32-bit entry: EFER.LME by WRMSR, then CR0 = PE|MP|ET|NE|WP|AM|PG at once.
        assert_eq!(long_mode_after_cr0(0x8005_0033, EFER_LME), (EFER_LME | EFER_LMA, true));
        assert_eq!(long_mode_after_cr0(0x8005_0033, 0), (0, false));
        assert_eq!(long_mode_after_cr0(0x11, EFER_LME | EFER_LMA), (EFER_LME, false));
        assert_eq!(
            long_mode_after_cr0(0x8000_0011, EFER_LME | EFER_LMA | 1),
            (EFER_LME | EFER_LMA | 1, true)
        );
    }
}
