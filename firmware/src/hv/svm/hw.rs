//! SVM at the hardware edge: detection, EFER.SVME and the host save area per core, the shared
//! permission maps, the VMRUN assembly, and [`SvmVcpu`], which implements [`Vcpu`] over one
//! VMCB.

use alloc::vec::Vec;
use core::arch::{asm, global_asm};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::{Mutex, Once};

use super::decode::{self, Found, Insn, Paging, MAX_LEN};
use super::vmcb::{self, code, event, misc1, misc2, off, Raw, Vmcb, EFER_SVME};
use crate::arch::apic;
use crate::arch::cpu::{cpuid, rdmsr, wrmsr, MSR_EFER};
use crate::hv::acpi;
use crate::hv::devices::pmtimer;
use crate::hv::nested::Tables;
use crate::hv::npt::NPT;
use crate::hv::slice::ApicSlice;
use crate::hv::{Breakage, Exit, Regs, Snapshot, Vcpu};
use crate::mem::frames::FrameAllocator;
use crate::mem::tables::alloc_zeroed;
use crate::paging::TableMem;

const MSR_VM_CR: u32 = 0xC001_0114;
const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
const VM_CR_LOCK: u64 = 1 << 3;
const VM_CR_SVMDIS: u64 = 1 << 4;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_LMA: u64 = 1 << 10;
/// V_INTR_MASKING: the host's RFLAGS.IF masks physical interrupts, the guest's only virtual
/// ones (APM Vol. 2 §15.21.1).
const V_INTR_MASKING: u64 = 1 << 24;
/// V_IRQ with V_IGN_TPR: a virtual interrupt is pending whatever the guest's TPR.
const V_IRQ: u64 = (1 << 8) | (1 << 20);

/// Why SVM cannot be used on this machine (one clear console line each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmError {
    /// CPUID Fn8000_0001:ECX.SVM is 0.
    NoSvm,
    /// VM_CR.SVMDIS is set and VM_CR.LOCK keeps it so (firmware setting).
    Locked,
    /// CPUID Fn8000_000A:EDX.NP is 0.
    NoNestedPaging,
    /// No memory for the host save area, a VMCB or the permission maps.
    NoMemory,
}

impl fmt::Display for SvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SvmError::NoSvm => "this CPU has no SVM (AMD-V)",
            SvmError::Locked => {
                "SVM is disabled and locked by VM_CR.SVMDIS (enable SVM / AMD-V in the BIOS)"
            }
            SvmError::NoNestedPaging => "SVM has no nested paging (NPT), which Gestalt needs",
            SvmError::NoMemory => "no memory left for SVM structures",
        })
    }
}

/// What detection found, shared by all cores (CPUID Fn8000_000A).
pub struct Platform {
    /// SVM revision (EAX[7:0]).
    pub revision: u32,
    /// Number of ASIDs (EBX).
    pub asids: u32,
    /// The CPU saves the next RIP in the VMCB (EDX[3]).
    pub nrips: bool,
    /// TLB_CONTROL may flush one ASID (EDX[6]).
    pub flush_by_asid: bool,
}

static PLATFORM: Once<Platform> = Once::new();

/// The platform, after a successful [`detect`].
pub fn platform() -> Option<&'static Platform> {
    PLATFORM.get()
}

/// CPUID Fn8000_0001:ECX[2] (APM Vol. 2 §15.4).
pub fn has_svm() -> bool {
    cpuid(0x8000_0000, 0).eax >= 0x8000_000A && cpuid(0x8000_0001, 0).ecx & (1 << 2) != 0
}

/// Checks CPUID and VM_CR (APM Vol. 2 §15.4, §15.30.1).
pub fn detect() -> Result<&'static Platform, SvmError> {
    if let Some(p) = PLATFORM.get() {
        return Ok(p);
    }
    if !has_svm() {
        return Err(SvmError::NoSvm);
    }
    // SAFETY: VM_CR exists when CPUID reports SVM (APM Vol. 2 §15.30.1).
    let vm_cr = unsafe { rdmsr(MSR_VM_CR) };
    if vm_cr & VM_CR_SVMDIS != 0 {
        if vm_cr & VM_CR_LOCK != 0 {
            return Err(SvmError::Locked);
        }
        // SAFETY: unlocked, SVMDIS is ours to clear (APM Vol. 2 §15.30.1).
        unsafe { wrmsr(MSR_VM_CR, vm_cr & !VM_CR_SVMDIS) };
    }
    let f = cpuid(0x8000_000A, 0);
    if f.edx & 1 == 0 {
        return Err(SvmError::NoNestedPaging);
    }
    Ok(PLATFORM.call_once(|| Platform {
        revision: f.eax & 0xff,
        asids: f.ebx,
        nrips: f.edx & (1 << 3) != 0,
        flush_by_asid: f.edx & (1 << 6) != 0,
    }))
}

/// Cores with EFER.SVME set: (APIC id, the physical address of the page VMSAVE/VMLOAD keep
/// the host's FS, GS, TR, LDTR and syscall MSRs in).
static ENABLED: Mutex<Vec<(u32, u64)>> = Mutex::new(Vec::new());

/// Cores with SVM enabled.
pub fn cores() -> usize {
    ENABLED.lock().len()
}

fn page() -> Result<u64, SvmError> {
    let layout =
        core::alloc::Layout::from_size_align(4096, 4096).map_err(|_| SvmError::NoMemory)?;
    // SAFETY: a non-zero-sized layout; the page is leaked: SVM owns it for the core's life.
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) } as u64;
    if p == 0 {
        return Err(SvmError::NoMemory);
    }
    Ok(p)
}

/// Sets EFER.SVME on this core once and gives it a host save area (VM_HSAVE_PA) and a host
/// VMCB for VMSAVE/VMLOAD, from the heap (identity-mapped RAM, so addresses are physical).
pub fn enable_here() -> Result<(), SvmError> {
    let id = apic::id();
    if ENABLED.lock().iter().any(|(a, _)| *a == id) {
        return Ok(());
    }
    detect()?;
    let (hsave, host) = (page()?, page()?);
    // SAFETY: SVM is present and not disabled (detect); setting SVME only makes the SVM
    // instructions available; HSAVE is a 4 KiB-aligned page the CPU owns from now on
    // (APM Vol. 2 §15.30.4).
    unsafe {
        wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
        wrmsr(MSR_VM_HSAVE_PA, hsave);
    }
    ENABLED.lock().push((id, host));
    Ok(())
}

fn host_vmcb_here() -> Option<u64> {
    let id = apic::id();
    ENABLED.lock().iter().find(|(a, _)| *a == id).map(|(_, h)| *h)
}

/// The permission maps every VMCB shares: (IOPM, MSRPM) physical addresses.
static MAPS: Once<(u64, u64)> = Once::new();

/// The MSRs the guest reads and writes itself: they live in the VMCB (VMLOAD/VMSAVE) or are
/// the guest's alone (one vCPU per core, the host never touches them) — the same set the VMX
/// MSR bitmap passes.
const PASS: [u32; 11] = [
    0x174,
    0x175,
    0x176,
    0xC000_0081,
    0xC000_0082,
    0xC000_0083,
    0xC000_0084,
    0xC000_0100,
    0xC000_0101,
    0xC000_0102,
    0xC000_0103,
];

/// Builds the I/O and MSR permission maps once (contiguous frames from the reserve). The
/// guest reads the host's ACPI PM timer itself where it has one (`acpi::pm_timer`): a trapped
/// read costs QEMU TCG ~40 µs, and Linux rejects a TSC reference that takes longer than its
/// `tsc_read_refs` bound (3 reads in tsc_khz / 32 cycles, 31 µs) on AMD, where it has no other.
pub fn maps(frames: &Mutex<FrameAllocator>) -> Result<(u64, u64), SvmError> {
    if let Some(m) = MAPS.get() {
        return Ok(*m);
    }
    let mut f = frames.lock();
    let io = alloc_zeroed(&mut f, 3, 4096).ok_or(SvmError::NoMemory)?;
    let msr = alloc_zeroed(&mut f, 2, 4096).ok_or(SvmError::NoMemory)?;
    // SAFETY: fresh, identity-mapped frames of exactly these sizes, owned by the maps.
    unsafe {
        let iopm = core::slice::from_raw_parts_mut(io as *mut u8, vmcb::IOPM_BYTES);
        vmcb::fill_iopm(iopm, &pm_timer_ports());
        vmcb::fill_msrpm(core::slice::from_raw_parts_mut(msr as *mut u8, vmcb::MSRPM_BYTES), &PASS);
    }
    Ok(*MAPS.call_once(|| (io, msr)))
}

/// The host's PM timer block to pass, if the guest's FADT names it.
fn pm_timer_ports() -> Vec<(u16, u16)> {
    let pm = acpi::pm_timer();
    if pm.host {
        alloc::vec![(pm.port, pmtimer::LEN)]
    } else {
        Vec::new()
    }
}

global_asm!(
    r#"
// void gestalt_svm_run(Regs *regs /* rdi */, u64 vmcb /* rsi */, u64 host_vmcb /* rdx */)
// GIF is clear from CLGI to STGI, so no interrupt or NMI lands between the host's state and
// the guest's; in the guest GIF is set and the host's IF=1 lets physical interrupts exit.
.global gestalt_svm_run
gestalt_svm_run:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    pushfq
    push rdi
    push rdx
    clgi
    mov rax, rdx
    vmsave rax
    mov rax, rsi
    mov rbx, [rdi + 8]
    mov rcx, [rdi + 16]
    mov rdx, [rdi + 24]
    mov rsi, [rdi + 32]
    mov rbp, [rdi + 48]
    mov r8,  [rdi + 56]
    mov r9,  [rdi + 64]
    mov r10, [rdi + 72]
    mov r11, [rdi + 80]
    mov r12, [rdi + 88]
    mov r13, [rdi + 96]
    mov r14, [rdi + 104]
    mov r15, [rdi + 112]
    mov rdi, [rdi + 40]
    vmload rax
    sti
    vmrun rax
    vmsave rax
    cli
    mov rax, [rsp + 8]
    mov [rax + 8], rbx
    mov [rax + 16], rcx
    mov [rax + 24], rdx
    mov [rax + 32], rsi
    mov [rax + 40], rdi
    mov [rax + 48], rbp
    mov [rax + 56], r8
    mov [rax + 64], r9
    mov [rax + 72], r10
    mov [rax + 80], r11
    mov [rax + 88], r12
    mov [rax + 96], r13
    mov [rax + 104], r14
    mov [rax + 112], r15
    pop rax
    vmload rax
    stgi
    pop rdi
    popfq
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
"#
);

unsafe extern "C" {
    fn gestalt_svm_run(regs: *mut Regs, vmcb: u64, host_vmcb: u64);
}

/// Exits since boot on this node (all vCPUs), for rates.
pub static EXITS: AtomicU64 = AtomicU64::new(0);
/// #UD exits retried because the bytes at RIP were no longer mapped here (all vCPUs).
pub static UNREADABLE: AtomicU64 = AtomicU64::new(0);
/// Retries in a row before such a #UD goes to the guest after all.
const UNREADABLE_RETRIES: u32 = 1000;

/// Reads identity-mapped table frames (the nested tables, to fetch guest bytes).
struct Identity;

impl TableMem for Identity {
    fn alloc_table(&mut self) -> Option<u64> {
        None
    }

    fn read(&self, table: u64, idx: usize) -> u64 {
        // SAFETY: `table` is a frame of this node's nested tables (identity-mapped reserve)
        // and `idx` comes from 9 address bits. Entries are written whole by other cores; an
        // aligned 64-bit read sees one value or the other.
        unsafe { core::ptr::read_volatile((table as *const u64).add(idx & 0x1ff)) }
    }

    fn write(&mut self, _table: u64, _idx: usize, _val: u64) {}
}

/// One vCPU on SVM.
pub struct SvmVcpu {
    regs: Regs,
    vmcb: &'static mut Vmcb,
    vmcb_pa: u64,
    host_vmcb: u64,
    p: &'static Platform,
    ncr3: u64,
    /// The last exit, for the next RIP.
    last: Raw,
    /// Its length when the exit path already decoded it (VMCALL from #UD).
    decoded_len: Option<u64>,
    /// An injected NMI's handler has not returned (IRET intercepted meanwhile).
    nmi_blocked: bool,
    /// The last nested page fault (page, write, fetch), to flush when it repeats.
    last_npf: Option<(u64, bool, bool)>,
    /// #UD exits in a row whose bytes could not be read (retried).
    unreadable: u32,
    slice: u64,
}

impl SvmVcpu {
    /// A VMCB for vCPU `id` in the zeroed frame `vmcb`, with nested tables at `ncr3` and the
    /// shared permission maps `maps` (IOPM, MSRPM); this core must have SVM enabled.
    pub fn new(
        p: &'static Platform,
        id: u32,
        vmcb: u64,
        ncr3: u64,
        maps: (u64, u64),
    ) -> Result<SvmVcpu, SvmError> {
        let host_vmcb = host_vmcb_here().ok_or(SvmError::NoSvm)?;
        // SAFETY: `vmcb` is a zeroed, 4 KiB-aligned, identity-mapped frame this vCPU owns for
        // its life; the CPU touches it only inside VMRUN, which this vCPU issues.
        let page = unsafe { &mut *(vmcb as *mut Vmcb) };
        // ASID 0 is the host's; one vCPU per core, so any other works and differs per vCPU
        // where the CPU has enough.
        let asid = 1 + id % p.asids.saturating_sub(1).max(1);
        let mut v = SvmVcpu {
            regs: Regs::default(),
            vmcb: page,
            vmcb_pa: vmcb,
            host_vmcb,
            p,
            ncr3,
            last: Raw { code: 0, info1: 0, info2: 0 },
            decoded_len: None,
            nmi_blocked: false,
            last_npf: None,
            unreadable: 0,
            slice: 0,
        };
        let c = &mut *v.vmcb;
        c.set32(off::INTERCEPT_CR, 0);
        c.set32(off::INTERCEPT_EXCEPTIONS, 1 << 6);
        c.set32(off::INTERCEPT_MISC1, MISC1);
        c.set32(off::INTERCEPT_MISC2, MISC2);
        c.set(off::IOPM_BASE, maps.0);
        c.set(off::MSRPM_BASE, maps.1);
        c.set(off::TSC_OFFSET, 0);
        c.set32(off::ASID, asid);
        c.0[off::TLB_CONTROL] = 1;
        c.set(off::VINTR, V_INTR_MASKING);
        c.set(off::NP_ENABLE, 1);
        c.set(off::N_CR3, ncr3);
        c.set(off::CLEAN, 0);
        v.enter_protected_mode(0);
        Ok(v)
    }

    fn intercepts1(&self) -> u32 {
        self.vmcb.get32(off::INTERCEPT_MISC1)
    }

    fn set_intercepts1(&mut self, on: u32, bits: u32) {
        let now = self.intercepts1();
        self.vmcb.set32(off::INTERCEPT_MISC1, if on != 0 { now | bits } else { now & !bits });
    }

    fn common_reset(&mut self, cr0: u64) {
        let c = &mut *self.vmcb;
        c.set(off::CR0, cr0);
        c.set(off::CR3, 0);
        c.set(off::CR4, 0);
        c.set(off::EFER, EFER_SVME);
        c.set(off::DR6, 0xffff_0ff0);
        c.set(off::DR7, 0x400);
        c.set(off::RFLAGS, 2);
        c.set(off::RSP, 0);
        c.set(off::RAX, 0);
        c.set(off::G_PAT, crate::hv::msr::PAT_POWER_ON);
        c.set_segment(off::LDTR, 0, 0, 0xffff, 0x82);
        c.set_segment(off::TR, 0, 0, 0xffff, 0x8b);
        c.set_segment(off::GDTR, 0, 0, 0xffff, 0);
        c.set_segment(off::IDTR, 0, 0, 0xffff, 0);
        c.0[off::CPL] = 0;
        c.set(off::INTERRUPT_SHADOW, 0);
        c.set(off::EVENTINJ, 0);
        c.set(off::VINTR, V_INTR_MASKING);
        let i1 = c.get32(off::INTERCEPT_MISC1) & !(misc1::VINTR | misc1::IRET);
        c.set32(off::INTERCEPT_MISC1, i1);
        self.nmi_blocked = false;
        self.regs = Regs::default();
    }

    fn set_data_segments(&mut self, sel: u16, base: u64, limit: u32, attr: u16) {
        for s in [off::DS, off::ES, off::FS, off::GS, off::SS] {
            self.vmcb.set_segment(s, sel, base, limit, attr);
        }
    }

    fn paging(&self) -> Paging {
        let c = &self.vmcb;
        Paging {
            cr0: c.get(off::CR0),
            cr3: c.get(off::CR3),
            cr4: c.get(off::CR4),
            efer: c.get(off::EFER),
        }
    }

    /// The length of `insn` at the guest's RIP, read through its paging and the nested
    /// tables; None when the bytes there are not that instruction or cannot be read.
    fn decode(&self, insn: Insn) -> Option<u64> {
        match self.find(insn) {
            Found::Len(n) => Some(n),
            Found::Other | Found::Unreadable => None,
        }
    }

    /// What the guest's RIP holds of `insn`, read through its paging and the nested tables.
    fn find(&self, insn: Insn) -> Found {
        let p = self.paging();
        let (_, cs_base, _, cs_attr) = self.vmcb.segment(off::CS);
        let long64 = p.long64(cs_attr & (1 << 9) != 0);
        let lin = if long64 { 0 } else { cs_base }.wrapping_add(self.vmcb.get(off::RIP));
        let nested = Tables::at(self.ncr3, &NPT);
        // One nested walk per guest page (an instruction's bytes are one or two pages).
        let mut last: Option<(u64, u64)> = None;
        let mut read = |gpa: u64, size: u8| -> Option<u64> {
            let page = gpa & !0xfff;
            let hpa = match last {
                Some((g, h)) if g == page => h,
                _ => {
                    let (h, _) = nested.translate(&Identity, page)?;
                    last = Some((page, h));
                    h
                }
            };
            let at = hpa | (gpa & 0xfff);
            if (at & 0xfff) + u64::from(size) > 0x1000 {
                return None;
            }
            // SAFETY: `hpa` is a frame the nested tables map for this guest (home or cache
            // frame of the guest pool, identity-mapped); the read stays inside it.
            let v = unsafe { core::ptr::read_unaligned(at as *const u64) };
            Some(if size >= 8 { v } else { v & ((1u64 << (8 * size)) - 1) })
        };
        let mut bytes = [0; MAX_LEN];
        let n = decode::fetch(&p, lin, &mut read, &mut bytes);
        decode::find(&bytes[..n], n == MAX_LEN, long64, insn)
    }

    /// The instruction the last exit intercepted, for its length.
    fn insn(&self) -> Option<Insn> {
        Some(match self.last.code {
            code::CPUID => Insn::Cpuid,
            code::HLT => Insn::Hlt,
            code::MSR => Insn::Msr,
            code::VMMCALL => Insn::Vmmcall,
            code::XSETBV => Insn::Xsetbv,
            code::INVD => Insn::Invd,
            code::UD => Insn::Vmcall,
            _ => return None,
        })
    }

    /// The next RIP: the CPU's (NRIPS, or EXITINFO2 of an I/O exit), else decoded.
    fn next_rip(&self) -> u64 {
        let rip = self.vmcb.get(off::RIP);
        if self.last.code == code::IOIO {
            // EXITINFO2 of an I/O intercept is the next RIP, NRIPS or not (APM Vol. 2
            // §15.10.2).
            return self.last.info2;
        }
        if self.p.nrips {
            let n = self.vmcb.get(off::NRIP);
            if n != 0 {
                return n;
            }
        }
        let Some(insn) = self.insn() else { return rip };
        let len = self.decoded_len.or_else(|| self.decode(insn)).unwrap_or(insn.min_len());
        rip.wrapping_add(len)
    }

    /// The exit the dispatch sees for what the CPU reported, or None when the backend
    /// finished it here (re-enter).
    fn exit(&mut self) -> Option<Exit> {
        let c = &mut *self.vmcb;
        let raw = Raw {
            code: c.get(off::EXITCODE),
            info1: c.get(off::EXITINFO1),
            info2: c.get(off::EXITINFO2),
        };
        self.last = raw;
        self.decoded_len = None;
        EXITS.fetch_add(1, Ordering::Relaxed);
        c.0[off::TLB_CONTROL] = 0;
        // EVENTINJ was taken at VMRUN; an event whose delivery the exit interrupted is
        // delivered again at the next entry (APM Vol. 2 §15.7.2).
        let ii = c.get(off::EXITINTINFO);
        c.set(off::EVENTINJ, if ii & event::VALID != 0 { ii } else { 0 });
        let r = self.regs;
        if let Some(e) = vmcb::translate(raw, r.rax, r.rcx, r.rdx) {
            if let Exit::NestedPageFault { gpa, write, exec, present } = e {
                // The same access faulting again at once after it was answered may be served
                // from a stale translation: drop this ASID's before the next try.
                let this = Some((gpa & !0xfff, write, exec));
                if present && self.last_npf == this {
                    self.flush_nested();
                }
                self.last_npf = this;
            }
            return Some(e);
        }
        match raw.code {
            _ if raw.code as u32 == u32::MAX => Some(self.invalid()),
            code::IRET => {
                // The injected NMI's handler returns: NMIs may come again (the IRET runs
                // when the guest re-enters).
                self.nmi_blocked = false;
                self.set_intercepts1(0, misc1::IRET);
                None
            }
            code::UD => {
                // VMCALL from a payload built for Intel is a hypercall; any other #UD is the
                // guest's own.
                match self.find(Insn::Vmcall) {
                    Found::Len(len) => {
                        self.unreadable = 0;
                        self.decoded_len = Some(len);
                        return Some(Exit::Hypercall { nr: self.regs.rax });
                    }
                    // The CPU fetched the instruction, so its bytes were mapped; another
                    // node took a page of them (or of the tables to them) since. Run it
                    // again: its fetch faults them back (bounded, for a walk this decoder
                    // cannot do).
                    Found::Unreadable if self.unreadable < UNREADABLE_RETRIES => {
                        self.unreadable += 1;
                        UNREADABLE.fetch_add(1, Ordering::Relaxed);
                    }
                    Found::Unreadable | Found::Other => {
                        self.unreadable = 0;
                        self.inject_exception(6, None);
                    }
                }
                None
            }
            _ => Some(self.invalid()),
        }
    }

    /// VMRUN refused the VMCB: a control this backend broke, or the guest state.
    fn invalid(&self) -> Exit {
        let c = &self.vmcb;
        if c.get32(off::INTERCEPT_MISC2) & misc2::VMRUN == 0 || c.get32(off::ASID) == 0 {
            return Exit::EntryFailed {
                code: u32::MAX,
                what: "VMRUN with invalid control field(s) (APM Vol. 2 §15.5.1)",
            };
        }
        Exit::InvalidGuestState {
            what: "invalid guest state (VMRUN consistency checks, APM Vol. 2 §15.5.1)",
            qualification: c.get(off::EFER),
        }
    }
}

/// Intercepts always on (vector 3): physical interrupts, NMI and INIT, CPUID, INVD, HLT, all
/// port I/O, the MSRs the map selects, task switches and shutdown.
const MISC1: u32 = misc1::INTR
    | misc1::NMI
    | misc1::INIT
    | misc1::CPUID
    | misc1::INVD
    | misc1::HLT
    | misc1::IOIO
    | misc1::MSR
    | misc1::TASK_SWITCH
    | misc1::SHUTDOWN;
/// Intercepts always on (vector 4): every SVM instruction (the guest sees no SVM), VMMCALL,
/// MONITOR/MWAIT and XSETBV.
const MISC2: u32 = misc2::VMRUN
    | misc2::VMMCALL
    | misc2::SVM_INSNS
    | misc2::MONITOR
    | misc2::MWAIT
    | misc2::XSETBV;

impl Vcpu for SvmVcpu {
    fn run(&mut self) -> Exit {
        // SVM has no preemption timer: the slice is this core's local-APIC timer.
        let slice = ApicSlice::arm(self.slice);
        loop {
            self.vmcb.set(off::RAX, self.regs.rax);
            // SAFETY: SVM is enabled on this core with its host VMCB; the VMCB is this
            // vCPU's, with intercepts for everything that must not reach the host; the
            // assembly saves the callee-saved registers and RFLAGS and restores the host's
            // segment state with VMLOAD.
            unsafe { gestalt_svm_run(&mut self.regs, self.vmcb_pa, self.host_vmcb) };
            self.regs.rax = self.vmcb.get(off::RAX);
            if let Some(e) = self.exit() {
                return slice.end(e);
            }
        }
    }

    fn regs(&mut self) -> &mut Regs {
        &mut self.regs
    }

    fn skip_instruction(&mut self) {
        let next = self.next_rip();
        self.vmcb.set(off::RIP, next);
        // Skipping an instruction ends an STI/MOV SS shadow.
        self.vmcb.set(off::INTERRUPT_SHADOW, 0);
        self.decoded_len = None;
        self.last.code = 0;
    }

    fn advance_rip(&mut self, len: u64) {
        let rip = self.vmcb.get(off::RIP);
        self.vmcb.set(off::RIP, rip + len);
        self.vmcb.set(off::INTERRUPT_SHADOW, 0);
        self.decoded_len = None;
    }

    fn snapshot(&self) -> Snapshot {
        let c = &self.vmcb;
        // Access rights in the VMX layout the Snapshot uses (type/S/DPL/P in bits 7:0, AVL/L/
        // D/G in 15:12; the VMCB packs the latter into 11:8): the MMIO decode reads L and D.
        let seg = |at| {
            let (s, b, l, a) = c.segment(at);
            let a = u32::from(a);
            (s, b, l, (a & 0xff) | ((a & 0xf00) << 4))
        };
        Snapshot {
            rip: c.get(off::RIP),
            rsp: c.get(off::RSP),
            rflags: c.get(off::RFLAGS),
            cr0: c.get(off::CR0),
            cr3: c.get(off::CR3),
            cr4: c.get(off::CR4),
            efer: c.get(off::EFER),
            cs: seg(off::CS),
            ss: seg(off::SS),
            interruptibility: (c.get(off::INTERRUPT_SHADOW) & 1) as u32,
        }
    }

    fn interruptible(&self) -> bool {
        let c = &self.vmcb;
        c.get(off::RFLAGS) & (1 << 9) != 0
            && c.get(off::INTERRUPT_SHADOW) & 1 == 0
            && c.get(off::EVENTINJ) & event::VALID == 0
    }

    fn inject_interrupt(&mut self, vector: u8) {
        self.vmcb.set(off::EVENTINJ, event::VALID | event::INTR | u64::from(vector));
    }

    fn nmi_allowed(&self) -> bool {
        !self.nmi_blocked
            && self.vmcb.get(off::INTERRUPT_SHADOW) & 1 == 0
            && self.vmcb.get(off::EVENTINJ) & event::VALID == 0
    }

    fn inject_nmi(&mut self) {
        self.vmcb.set(off::EVENTINJ, event::VALID | event::NMI | 2);
        // SVM keeps no NMI blocking the backend can read: it ends at the handler's IRET.
        self.nmi_blocked = true;
        self.set_intercepts1(1, misc1::IRET);
    }

    fn set_interrupt_window(&mut self, on: bool) {
        let v = self.vmcb.get(off::VINTR);
        self.vmcb.set(off::VINTR, if on { v | V_IRQ } else { v & !V_IRQ });
        self.set_intercepts1(u32::from(on), misc1::VINTR);
    }

    fn set_time_slice(&mut self, tsc_ticks: u64) {
        self.slice = tsc_ticks;
    }

    fn set_efer(&mut self, efer: u64) {
        // LMA is the CPU's to set; SVME must stay set for VMRUN (APM Vol. 2 §15.5.1).
        let lma = self.vmcb.get(off::EFER) & EFER_LMA;
        self.vmcb.set(off::EFER, (efer & !EFER_LMA) | lma | EFER_SVME);
    }

    fn set_pat(&mut self, pat: u64) {
        // With nested paging the guest's walks use G_PAT (APM Vol. 2 §15.25.8).
        self.vmcb.set(off::G_PAT, pat);
    }

    fn set_cr(&mut self, cr: u8, val: u64) {
        // CR writes are not intercepted on SVM (the guest owns CR0 and CR4 in the VMCB).
        match cr {
            0 => self.vmcb.set(off::CR0, val),
            4 => self.vmcb.set(off::CR4, val),
            _ => {}
        }
    }

    fn enter_protected_mode(&mut self, eip: u32) {
        self.common_reset(0x11);
        self.vmcb.set_segment(off::CS, 0x08, 0, u32::MAX, 0xc9b);
        self.set_data_segments(0x10, 0, u32::MAX, 0xc93);
        self.vmcb.set(off::RIP, u64::from(eip));
    }

    fn enter_sipi(&mut self, vector: u8) {
        // SVM has no wait-for-SIPI state: the dispatch holds the vCPU until the start-up IPI,
        // and this is the state it then starts in (SDM Vol. 3A §9.4.4).
        self.common_reset(0x10);
        let base = u64::from(vector) << 12;
        self.vmcb.set_segment(off::CS, u16::from(vector) << 8, base, 0xffff, 0x9b);
        self.set_data_segments(0, 0, 0xffff, 0x93);
        self.vmcb.set(off::RIP, 0);
    }

    fn flush_nested(&mut self) {
        // TLB_CONTROL at the next VMRUN: this ASID's entries, or everything (APM Vol. 2
        // §15.16.1).
        self.vmcb.0[off::TLB_CONTROL] = if self.p.flush_by_asid { 3 } else { 1 };
    }

    fn set_xcr0(&mut self, value: u64) {
        // As on VMX: XSETBV needs CR4.OSXSAVE on the host; the host never uses XSAVE state,
        // so the guest's XCR0 stays loaded across exits. VMRUN saves the host's CR4 and
        // #VMEXIT restores it, so setting it once here lasts.
        let cr4: u64;
        // SAFETY: reading CR4 has no side effects.
        unsafe { asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack)) };
        if cr4 & CR4_OSXSAVE == 0 {
            // SAFETY: CPUID reports XSAVE (the guest could only get here through it), so
            // CR4.OSXSAVE may be set; nothing else in the host changes behaviour with it.
            unsafe { asm!("mov cr4, {}", in(reg) cr4 | CR4_OSXSAVE, options(nostack)) };
        }
        // SAFETY: the value passed the architectural checks against this CPU's XSAVE
        // components (dispatch::xcr0_valid), so XSETBV does not fault.
        unsafe {
            asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32,
                 options(nostack));
        }
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        self.vmcb.set(off::TSC_OFFSET, offset);
    }

    fn inject_exception(&mut self, vector: u8, error: Option<u32>) {
        let mut e = event::VALID | event::EXCEPTION | u64::from(vector);
        if let Some(code) = error {
            e |= event::ERROR_VALID | (u64::from(code) << 32);
        }
        self.vmcb.set(off::EVENTINJ, e);
    }

    fn break_for_test(&mut self, what: Breakage) {
        match what {
            // EFER.SVME clear in the guest fails VMRUN's consistency checks (APM Vol. 2
            // §15.5.1).
            Breakage::Guest => {
                let e = self.vmcb.get(off::EFER);
                self.vmcb.set(off::EFER, e & !EFER_SVME);
            }
            // So does a VMCB that does not intercept VMRUN.
            Breakage::Control => {
                let i = self.vmcb.get32(off::INTERCEPT_MISC2);
                self.vmcb.set32(off::INTERCEPT_MISC2, i & !misc2::VMRUN);
            }
        }
    }
}
