//! The hypervisor: a vendor-neutral [`Vcpu`] backend trait and [`Exit`] enum, the exit
//! dispatch generic over both (`dispatch`), the VMX (`vmx/`) and SVM (`svm/`) backends, nested
//! page tables with neutral rights (`nested`, in the EPT or AMD format: `ept`, `npt`), guest
//! memory (`memory`), MSRs (`msr`), port devices (`devices`, `uart`), CPUID and x2APIC models,
//! the Multiboot guest loader, and the node's guest with its scheduling (`vm`, `sched`).
//!
//! Everything above the backends reads only [`Exit`]; no code outside `vmx/` or `svm/` knows a
//! vendor's exit reason number.

pub mod acpi;
pub mod cache;
pub mod cluster;
pub mod coherent;
pub mod cpuid;
pub mod devices;
pub mod dispatch;
pub mod ept;
pub mod faultstats;
pub mod hypercall;
pub mod ioapic;
pub mod linux;
pub mod loader;
pub mod mmio;
pub mod msr;
pub mod nested;
pub mod npt;
pub mod stats;
pub mod svm;
pub mod timesync;
pub mod uart;
pub mod vlapic;
pub mod vmx;
pub mod zeromap;

#[cfg(target_os = "none")]
pub mod memory;
#[cfg(target_os = "none")]
pub mod sched;
#[cfg(target_os = "none")]
pub mod slice;
#[cfg(target_os = "none")]
pub mod vcpus;
#[cfg(target_os = "none")]
pub mod vm;

/// Direction of a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDir {
    /// `IN`: the guest reads.
    In,
    /// `OUT`: the guest writes.
    Out,
}

/// Why a vCPU stopped running guest code. Vendor backends translate their exit codes into this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// A guest-physical access the nested page tables do not allow.
    NestedPageFault {
        /// Guest-physical address.
        gpa: u64,
        /// The access was a write.
        write: bool,
        /// The access was an instruction fetch.
        exec: bool,
        /// The page was mapped, but without the right the access needed.
        present: bool,
    },
    /// Port I/O (one element; string and REP forms are reported with `string`).
    Io {
        /// Port number.
        port: u16,
        /// Bytes: 1, 2 or 4.
        size: u8,
        /// Read or write.
        dir: IoDir,
        /// INS/OUTS (not emulated: the guest is stopped).
        string: bool,
    },
    /// RDMSR (`write` = None) or WRMSR (`write` = the value, from EDX:EAX).
    Msr {
        /// MSR index (ECX).
        msr: u32,
        /// The value written, for WRMSR.
        write: Option<u64>,
    },
    /// CPUID with EAX/ECX as leaf and subleaf.
    Cpuid {
        /// EAX.
        leaf: u32,
        /// ECX.
        sub: u32,
    },
    /// HLT.
    Hlt,
    /// VMCALL/VMMCALL: the hypercall number in RAX.
    Hypercall {
        /// RAX.
        nr: u64,
    },
    /// A host interrupt arrived while the guest ran (IPI, timer).
    Interrupt,
    /// The guest can take an interrupt now (interrupt-window exiting).
    InterruptWindow,
    /// The time slice ended (VMX preemption timer, or the core's APIC timer on SVM).
    Preempted,
    /// The physical CPU received INIT while in the guest.
    Init,
    /// The physical CPU received a start-up IPI while in the guest.
    Sipi {
        /// Start-up vector.
        vector: u8,
    },
    /// The guest triple-faulted (shutdown).
    TripleFault,
    /// A control register access the hypervisor intercepts.
    CrAccess {
        /// CR number.
        cr: u8,
        /// Written value (MOV to CR), None for other forms.
        write: Option<u64>,
    },
    /// XSETBV: the guest loads extended control register `xcr` with `value` (EDX:EAX).
    Xsetbv {
        /// ECX: which XCR.
        xcr: u32,
        /// The value.
        value: u64,
    },
    /// An instruction the guest may not use here (the VMX instructions, MONITOR/MWAIT, which
    /// CPUID does not advertise): the guest gets #UD, as on a CPU without them.
    Undefined {
        /// Which instruction.
        what: &'static str,
    },
    /// An instruction with nothing to do for the hypervisor (INVD: the host keeps the caches
    /// coherent): skipped.
    NoOp {
        /// Which instruction.
        what: &'static str,
    },
    /// An exception the hypervisor intercepts (vector, error code).
    Exception {
        /// Vector.
        vector: u8,
        /// Error code (0 when none).
        error: u32,
    },
    /// VM entry refused the guest state (the backend's reason and qualification).
    InvalidGuestState {
        /// What the backend found.
        what: &'static str,
        /// Backend qualification (entry-failure detail).
        qualification: u64,
    },
    /// The entry instruction itself failed (VM-instruction error, decoded).
    EntryFailed {
        /// The error number.
        code: u32,
        /// What it means.
        what: &'static str,
    },
    /// Anything else, named by the backend.
    Other {
        /// The backend's name for it.
        what: &'static str,
        /// Backend qualification.
        qualification: u64,
    },
}

impl Exit {
    /// The counter bucket for the `vcpu` command.
    pub fn kind(&self) -> stats::Kind {
        use stats::Kind;
        match self {
            Exit::NestedPageFault { .. } => Kind::NestedPageFault,
            Exit::Io { .. } => Kind::Io,
            Exit::Msr { .. } => Kind::Msr,
            Exit::Cpuid { .. } => Kind::Cpuid,
            Exit::Hlt => Kind::Hlt,
            Exit::Hypercall { .. } => Kind::Hypercall,
            Exit::Interrupt => Kind::Interrupt,
            Exit::InterruptWindow => Kind::InterruptWindow,
            Exit::Preempted => Kind::Preempted,
            Exit::Init | Exit::Sipi { .. } => Kind::InitSipi,
            Exit::CrAccess { .. } | Exit::Xsetbv { .. } => Kind::CrAccess,
            Exit::Exception { .. } | Exit::Undefined { .. } | Exit::NoOp { .. } => Kind::Exception,
            Exit::TripleFault
            | Exit::InvalidGuestState { .. }
            | Exit::EntryFailed { .. }
            | Exit::Other { .. } => Kind::Fatal,
        }
    }
}

/// The guest's general-purpose registers the backend saves and restores around every run
/// (RSP and RIP live in the backend's guest state).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
}

/// Control and segment state for diagnostics (`vcpu` and fatal-exit dumps).
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR0 as the guest runs with it.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 as the guest runs with it.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// CS selector, base, limit, access rights (VMX layout: L is bit 13, D/B bit 14).
    pub cs: (u16, u64, u32, u32),
    /// SS selector, base, limit, access rights.
    pub ss: (u16, u64, u32, u32),
    /// Interruptibility (bit 0 STI, bit 1 MOV SS blocking).
    pub interruptibility: u32,
}

/// A virtual CPU backend (VMX or SVM). All methods act on this vCPU, which is loaded
/// on the calling physical CPU.
pub trait Vcpu {
    /// Runs the guest until the next exit.
    fn run(&mut self) -> Exit;
    /// The general-purpose registers.
    fn regs(&mut self) -> &mut Regs;
    /// Moves RIP past the instruction that exited.
    fn skip_instruction(&mut self);
    /// Moves RIP forward by `len` bytes, for an instruction the hypervisor emulated whose
    /// length the exit did not report (an MMIO access behind a nested page fault).
    fn advance_rip(&mut self, len: u64);
    /// Control and segment state.
    fn snapshot(&self) -> Snapshot;
    /// True when the guest can take an external interrupt now (IF set, no STI/MOV SS shadow).
    fn interruptible(&self) -> bool;
    /// Delivers `vector` as an external interrupt at the next entry.
    fn inject_interrupt(&mut self, vector: u8);
    /// True when an NMI can be injected now (no NMI blocking, no event already queued).
    fn nmi_allowed(&self) -> bool;
    /// Delivers an NMI at the next entry.
    fn inject_nmi(&mut self);
    /// Asks for [`Exit::InterruptWindow`] as soon as the guest can take an interrupt.
    fn set_interrupt_window(&mut self, on: bool);
    /// The next [`Exit::Preempted`] after at most this many TSC ticks of guest time.
    fn set_time_slice(&mut self, tsc_ticks: u64);
    /// Sets EFER (the backend keeps its long-mode entry state consistent).
    fn set_efer(&mut self, efer: u64);
    /// Sets the guest's IA32_PAT, the memory types its page walks use (already checked).
    fn set_pat(&mut self, pat: u64);
    /// Writes CR0 or CR4 as the guest asked (the backend keeps its fixed bits).
    fn set_cr(&mut self, cr: u8, val: u64);
    /// Starts in 32-bit protected mode, flat segments, paging off, at `eip` (Multiboot §3.2).
    fn enter_protected_mode(&mut self, eip: u32);
    /// Starts in real mode at `vector << 12` as after a start-up IPI (SDM Vol. 3A §9.4.4).
    fn enter_sipi(&mut self, vector: u8);
    /// Drops cached nested translations of this vCPU (after rights were reduced).
    fn flush_nested(&mut self);
    /// Loads the guest's XCR0 (already checked against what the host supports).
    fn set_xcr0(&mut self, value: u64);
    /// The guest's TSC reads the host's plus `offset` (wrapping) from the next entry on, in
    /// RDTSC, RDTSCP and RDMSR 0x10 alike (SDM Vol. 3C §26.3 "TSC offsetting"; the VMCB's
    /// TSC_OFFSET on SVM, APM Vol. 2 §15.30.5).
    fn set_tsc_offset(&mut self, offset: u64);
    /// Delivers a hardware exception (with an error code for the vectors that push one).
    fn inject_exception(&mut self, vector: u8, error: Option<u32>);
    /// Test hook: makes the next entry fail, with a guest state the CPU refuses (`Guest`) or a
    /// control value it refuses (`Control`), so the failure paths can be driven end to end.
    fn break_for_test(&mut self, what: Breakage);
}

/// What [`Vcpu::break_for_test`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breakage {
    /// Guest state (entry fails with an invalid-guest-state exit).
    Guest,
    /// A VM-execution control (the entry instruction fails).
    Control,
}
