//! VMX at the hardware edge: detection, VMXON per core, VMCS set-up, the entry/exit assembly,
//! and [`VmxVcpu`], which implements [`Vcpu`] by translating exit reasons into [`Exit`].

use core::arch::{asm, global_asm};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use gestalt_netstack::hal::{Block, Reg, RegArray, Window};
use spin::Once;

use super::controls::{self, entry, proc, CapError, Caps, Controls};
use super::fields::{self as f, reason};
use crate::arch::cpu::{cpuid, has_vmx, rdmsr, wrmsr, MSR_EFER};
use crate::hv::slice::ApicSlice;
use crate::hv::{Breakage, Exit, IoDir, Regs, Snapshot, Vcpu};

const MSR_FEATURE_CONTROL: u32 = 0x3A;
const MSR_VMX_BASIC: u32 = 0x480;
const MSR_VMX_CR0_FIXED0: u32 = 0x486;
const MSR_VMX_CR0_FIXED1: u32 = 0x487;
const MSR_VMX_CR4_FIXED0: u32 = 0x488;
const MSR_VMX_CR4_FIXED1: u32 = 0x489;
const CR4_VMXE: u64 = 1 << 13;
const CR0_NE: u64 = 1 << 5;
const CR4_OSXSAVE: u64 = 1 << 18;

/// Why VMX cannot be used on this machine (one clear console line each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxError {
    /// CPUID.1:ECX.VMX is 0 (e.g. QEMU TCG).
    NoVmx,
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled (firmware setting).
    LockedOff,
    /// A control, EPT or unrestricted guest is missing.
    Caps(CapError),
    /// VMXON failed (CF/ZF set).
    VmxonFailed,
    /// No memory for the VMXON region, VMCS or bitmaps.
    NoMemory,
    /// A VMCS instruction failed (VM-instruction error number).
    Instruction(&'static str, u32),
}

impl fmt::Display for VmxError {
    fn fmt(&self, fm: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxError::NoVmx => write!(fm, "this CPU has no VMX (Intel VT-x); guests cannot run"),
            VmxError::LockedOff => write!(
                fm,
                "VMX is disabled and locked in IA32_FEATURE_CONTROL (enable VT-x in the BIOS)"
            ),
            VmxError::Caps(e) => write!(fm, "VMX cannot run our guests: {e}"),
            VmxError::VmxonFailed => write!(fm, "VMXON failed"),
            VmxError::NoMemory => write!(fm, "no memory left for VMX structures"),
            VmxError::Instruction(what, code) => write!(
                fm,
                "{what} failed: VM-instruction error {code} ({})",
                controls::instruction_error(*code)
            ),
        }
    }
}

/// What detection found: the controls and the revision id, shared by all cores.
pub struct Platform {
    /// Capability MSR values.
    pub caps: Caps,
    /// Controls every VMCS starts with.
    pub ctl: Controls,
    /// VMCS revision identifier (IA32_VMX_BASIC[30:0]).
    pub revision: u32,
    /// CR0/CR4 fixed bits (fixed0, fixed1) for VMX operation.
    pub cr0: (u64, u64),
    /// See `cr0`.
    pub cr4: (u64, u64),
}

static PLATFORM: Once<Platform> = Once::new();

/// The platform, after a successful [`detect`].
pub fn platform() -> Option<&'static Platform> {
    PLATFORM.get()
}

/// Checks CPUID, IA32_FEATURE_CONTROL and the capability MSRs (SDM Vol. 3C §24.6-24.7).
pub fn detect() -> Result<&'static Platform, VmxError> {
    if let Some(p) = PLATFORM.get() {
        return Ok(p);
    }
    if !has_vmx() {
        return Err(VmxError::NoVmx);
    }
    // SAFETY: IA32_FEATURE_CONTROL and the VMX capability MSRs exist when CPUID reports VMX
    // (SDM Vol. 4 Table 2-2).
    let caps = unsafe {
        let fc = rdmsr(MSR_FEATURE_CONTROL);
        if fc & 1 != 0 && fc & (1 << 2) == 0 {
            return Err(VmxError::LockedOff);
        }
        let basic = rdmsr(MSR_VMX_BASIC);
        let t = basic & controls::BASIC_TRUE_CTLS != 0;
        let proc = rdmsr(if t { 0x48E } else { 0x482 });
        Caps {
            basic,
            pin: rdmsr(if t { 0x48D } else { 0x481 }),
            proc,
            proc2: if (proc >> 63) & 1 != 0 { rdmsr(0x48B) } else { 0 },
            exit: rdmsr(if t { 0x48F } else { 0x483 }),
            entry: rdmsr(if t { 0x490 } else { 0x484 }),
            misc: rdmsr(0x485),
            ept_vpid: if (proc >> 63) & 1 != 0 { rdmsr(0x48C) } else { 0 },
        }
    };
    let ctl = controls::compute(&caps).map_err(VmxError::Caps)?;
    // SAFETY: as above.
    let (cr0, cr4) = unsafe {
        (
            (rdmsr(MSR_VMX_CR0_FIXED0), rdmsr(MSR_VMX_CR0_FIXED1)),
            (rdmsr(MSR_VMX_CR4_FIXED0), rdmsr(MSR_VMX_CR4_FIXED1)),
        )
    };
    Ok(PLATFORM.call_once(|| Platform {
        caps,
        ctl,
        revision: (caps.basic & 0x7fff_ffff) as u32,
        cr0,
        cr4,
    }))
}

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
    v
}
fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

/// Enters VMX root operation on this core with a VMXON region at `region` (a zeroed 4 KiB
/// frame, identity-mapped) (SDM Vol. 3C §24.7-24.8).
pub fn vmxon(p: &Platform, region: u64) -> Result<(), VmxError> {
    // SAFETY: FEATURE_CONTROL exists (detect ran); when unlocked we may set the enable and lock
    // bits ourselves (SDM Vol. 3C §24.7). CR0/CR4 are set to values inside the fixed bits VMX
    // requires, which leave paging and protection as they are. The region is ours, 4 KiB
    // aligned, and starts with the revision id.
    unsafe {
        let fc = rdmsr(MSR_FEATURE_CONTROL);
        if fc & 1 == 0 {
            wrmsr(MSR_FEATURE_CONTROL, fc | 1 | (1 << 2));
        }
        let cr0 = (read_cr0() | p.cr0.0 | CR0_NE) & p.cr0.1;
        asm!("mov cr0, {}", in(reg) cr0, options(nostack));
        let cr4 = (read_cr4() | p.cr4.0 | CR4_VMXE) & p.cr4.1;
        asm!("mov cr4, {}", in(reg) cr4, options(nostack));
        stamp_revision(region, p.revision);
        let ok: u8;
        asm!("vmxon [{}]", "setna {}", in(reg) &region, out(reg_byte) ok, options(nostack));
        if ok != 0 {
            return Err(VmxError::VmxonFailed);
        }
    }
    Ok(())
}

/// VMREAD of the current VMCS (0 when the field does not exist).
pub fn vmread(field: u32) -> u64 {
    let v: u64;
    // SAFETY: in VMX root with a current VMCS; VMREAD of an unsupported field only sets flags.
    unsafe { asm!("vmread {}, {}", out(reg) v, in(reg) u64::from(field), options(nostack)) };
    v
}

/// VMWRITE to the current VMCS; the VM-instruction error on failure.
pub fn vmwrite(field: u32, val: u64) -> Result<(), VmxError> {
    let failed: u8;
    // SAFETY: in VMX root with a current VMCS; a bad field or value only sets flags.
    unsafe {
        asm!("vmwrite {}, {}", "setna {}", in(reg) u64::from(field), in(reg) val,
             out(reg_byte) failed, options(nostack));
    }
    if failed != 0 {
        return Err(VmxError::Instruction("VMWRITE", vmread(f::VM_INSTRUCTION_ERROR) as u32));
    }
    Ok(())
}

fn w(field: u32, val: u64) {
    if let Err(e) = vmwrite(field, val) {
        crate::error!("vmx: VMWRITE {field:#06x} = {val:#x}: {e}");
    }
}

/// INVEPT (all-context when supported, else single-context for `eptp`) (SDM Vol. 3C §31.3).
pub fn invept(p: &Platform, eptp: u64) {
    let desc: [u64; 2] = [eptp, 0];
    let kind: u64 = if p.ctl.invept_all { 2 } else { 1 };
    // SAFETY: INVEPT only drops cached translations; the descriptor is valid memory.
    unsafe { asm!("invept {}, [{}]", in(reg) kind, in(reg) &desc, options(nostack)) };
}

global_asm!(
    r#"
// u64 gestalt_vmx_enter(Regs *regs /* rdi */, u64 launched /* rsi */)
// Returns 0 after a VM exit, 1 when VMLAUNCH/VMRESUME itself failed.
.global gestalt_vmx_enter
gestalt_vmx_enter:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, 0x6C14
    vmwrite rax, rsp
    mov rax, rdi
    test rsi, rsi
    mov rbx, [rax + 8]
    mov rcx, [rax + 16]
    mov rdx, [rax + 24]
    mov rsi, [rax + 32]
    mov rdi, [rax + 40]
    mov rbp, [rax + 48]
    mov r8,  [rax + 56]
    mov r9,  [rax + 64]
    mov r10, [rax + 72]
    mov r11, [rax + 80]
    mov r12, [rax + 88]
    mov r13, [rax + 96]
    mov r14, [rax + 104]
    mov r15, [rax + 112]
    mov rax, [rax]
    jnz 2f
    vmlaunch
    jmp 3f
2:  vmresume
3:  pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    mov eax, 1
    ret

.global gestalt_vmx_exit
gestalt_vmx_exit:
    push rax
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
    pop rbx
    mov [rax], rbx
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    xor eax, eax
    ret
"#
);

unsafe extern "C" {
    fn gestalt_vmx_enter(regs: *mut Regs, launched: u64) -> u64;
    fn gestalt_vmx_exit();
}

/// One vCPU on VMX.
pub struct VmxVcpu {
    regs: Regs,
    vmcs: u64,
    launched: bool,
    p: &'static Platform,
    proc: u32,
    entry: u32,
    eptp: u64,
    slice: u64,
}

/// Exits since boot on this node (all vCPUs), for rates.
pub static EXITS: AtomicU64 = AtomicU64::new(0);

/// A VMXON region or a VMCS: a 4 KiB frame that starts with the VMCS revision identifier
/// (SDM Vol. 3C §25.2, §25.11.5).
struct VmxRegion;

impl Block for VmxRegion {
    const SIZE: usize = 4096;
    const ALIGN: usize = 4096;
}

const REVISION: Reg<VmxRegion, u32> = Reg::at::<0>();

/// Writes the revision identifier into the zeroed frame `frame`.
///
/// # Safety
/// `frame` must be a 4 KiB-aligned, identity-mapped frame owned by the caller.
unsafe fn stamp_revision(frame: u64, revision: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe { Window::<VmxRegion>::new(frame as usize) }.set(REVISION, revision);
}

/// The largest GDT: a 16-bit limit, 8-byte descriptors (SDM Vol. 3A §3.5.1).
struct Gdt;

impl Block for Gdt {
    const SIZE: usize = 1 << 16;
    const ALIGN: usize = 8;
}

const DESCRIPTORS: RegArray<Gdt, u64, 8192> = RegArray::at::<0>();

/// The base of the 16-byte system descriptor `sel` names in the GDT at `gdt_base` with
/// `limit` (SDM Vol. 3A §8.2.3); 0 when the descriptor would lie beyond the limit.
fn sel_base(gdt_base: u64, limit: u16, sel: u16) -> u64 {
    let i = usize::from(sel >> 3);
    if (i + 2) * 8 > usize::from(limit) + 1 {
        return 0;
    }
    // SAFETY: the GDT this CPU uses, identity-mapped; the two entries read lie inside its limit.
    let gdt = unsafe { Window::<Gdt>::new(gdt_base as usize) };
    let (Some(lo), Some(hi)) = (DESCRIPTORS.get(i), DESCRIPTORS.get(i + 1)) else { return 0 };
    let (lo, hi) = (gdt.get(lo), gdt.get(hi));
    ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffff_ffff) << 32)
}

impl VmxVcpu {
    /// A VMCS for vCPU `id` in the zeroed frame `vmcs`, with nested tables `eptp` and the MSR
    /// bitmap page `msr_bitmap`; made current on this core (which must be in VMX operation).
    pub fn new(
        p: &'static Platform,
        id: u32,
        vmcs: u64,
        eptp: u64,
        msr_bitmap: u64,
    ) -> Result<VmxVcpu, VmxError> {
        // SAFETY: `vmcs` is a zeroed 4 KiB frame owned by this vCPU; VMCLEAR/VMPTRLD only
        // change VMX state (SDM Vol. 3C §24.11.3).
        unsafe {
            stamp_revision(vmcs, p.revision);
            let bad: u8;
            asm!("vmclear [{}]", "setna {}", in(reg) &vmcs, out(reg_byte) bad, options(nostack));
            if bad != 0 {
                return Err(VmxError::Instruction("VMCLEAR", 0));
            }
            let bad: u8;
            asm!("vmptrld [{}]", "setna {}", in(reg) &vmcs, out(reg_byte) bad, options(nostack));
            if bad != 0 {
                return Err(VmxError::Instruction("VMPTRLD", 0));
            }
        }
        let c = p.ctl;
        let mut v = VmxVcpu {
            regs: Regs::default(),
            vmcs,
            launched: false,
            p,
            proc: c.proc,
            entry: c.entry,
            eptp,
            slice: 0,
        };
        w(f::PIN_CONTROLS, u64::from(c.pin));
        w(f::PROC_CONTROLS, u64::from(c.proc));
        w(f::PROC2_CONTROLS, u64::from(c.proc2));
        w(f::EXIT_CONTROLS, u64::from(c.exit));
        w(f::ENTRY_CONTROLS, u64::from(c.entry));
        w(f::EXCEPTION_BITMAP, 0);
        w(f::CR3_TARGET_COUNT, 0);
        w(f::EXIT_MSR_STORE_COUNT, 0);
        w(f::EXIT_MSR_LOAD_COUNT, 0);
        w(f::ENTRY_MSR_LOAD_COUNT, 0);
        w(f::ENTRY_INTERRUPTION_INFO, 0);
        w(f::MSR_BITMAP, msr_bitmap);
        w(f::EPT_POINTER, eptp);
        if c.vpid {
            w(f::VPID, u64::from(id) + 1);
        }
        w(f::VMCS_LINK_POINTER, u64::MAX);
        w(f::TSC_OFFSET, 0);
        // The guest may not clear NE or VMXE: those bits read from the shadows (SDM Vol. 3C
        // §25.6.6); everything else is the guest's own.
        w(f::CR0_GUEST_HOST_MASK, CR0_NE);
        w(f::CR4_GUEST_HOST_MASK, CR4_VMXE);
        v.host_state();
        v.enter_protected_mode(0);
        Ok(v)
    }

    /// Host state for exits on this core: its GDT, TSS, IDT, CR3, stack set per entry
    /// (SDM Vol. 3C §25.5).
    fn host_state(&mut self) {
        let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
        // SAFETY: reading segment registers and TR has no side effects.
        unsafe {
            asm!("mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds", "mov {3:x}, es",
                 "mov {4:x}, fs", "mov {5:x}, gs", "str {6:x}",
                 out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs,
                 out(reg) tr, options(nomem, nostack));
        }
        let gdt = x86_64::instructions::tables::sgdt();
        let idt = x86_64::instructions::tables::sidt();
        let gdt_base = gdt.base.as_u64();
        w(f::HOST_CS_SEL, u64::from(cs & !7));
        w(f::HOST_SS_SEL, u64::from(ss & !7));
        w(f::HOST_DS_SEL, u64::from(ds & !7));
        w(f::HOST_ES_SEL, u64::from(es & !7));
        w(f::HOST_FS_SEL, u64::from(fs & !7));
        w(f::HOST_GS_SEL, u64::from(gs & !7));
        w(f::HOST_TR_SEL, u64::from(tr & !7));
        // SAFETY: FS/GS base, EFER and PAT exist on every x86-64 CPU.
        let (fsb, gsb, efer, pat) = unsafe {
            (rdmsr(0xC000_0100), rdmsr(0xC000_0101), rdmsr(MSR_EFER), rdmsr(crate::hv::msr::PAT))
        };
        // The exit loads it back after the guest's ran (SDM Vol. 3C §28.5.1).
        w(f::HOST_PAT, pat);
        w(f::HOST_FS_BASE, fsb);
        w(f::HOST_GS_BASE, gsb);
        w(f::HOST_TR_BASE, sel_base(gdt_base, gdt.limit, tr));
        w(f::HOST_GDTR_BASE, gdt_base);
        w(f::HOST_IDTR_BASE, idt.base.as_u64());
        w(f::HOST_CR0, read_cr0());
        w(f::HOST_CR3, crate::arch::paging::cr3());
        w(f::HOST_CR4, read_cr4());
        w(f::HOST_EFER, efer);
        w(f::HOST_SYSENTER_CS, 0);
        w(f::HOST_SYSENTER_ESP, 0);
        w(f::HOST_SYSENTER_EIP, 0);
        w(f::HOST_RIP, gestalt_vmx_exit as *const () as u64);
    }

    /// Makes this vCPU's VMCS current on this core (after another VMCS was used).
    pub fn load(&mut self) {
        // SAFETY: the VMCS frame belongs to this vCPU; VMPTRLD changes only VMX state.
        unsafe { asm!("vmptrld [{}]", in(reg) &self.vmcs, options(nostack)) };
    }

    fn segment(&self, sel: u32, base: u32, limit: u32, ar: u32) -> (u16, u64, u32, u32) {
        (vmread(sel) as u16, vmread(base), vmread(limit) as u32, vmread(ar) as u32)
    }

    #[allow(clippy::too_many_arguments)]
    fn set_seg(
        sel_f: u32,
        base_f: u32,
        limit_f: u32,
        ar_f: u32,
        sel: u16,
        base: u64,
        lim: u32,
        ar: u32,
    ) {
        w(sel_f, u64::from(sel));
        w(base_f, base);
        w(limit_f, u64::from(lim));
        w(ar_f, u64::from(ar));
    }

    fn set_data_segments(sel: u16, base: u64, limit: u32, ar: u32) {
        for (s, b, l, a) in [
            (f::GUEST_DS_SEL, f::GUEST_DS_BASE, f::GUEST_DS_LIMIT, f::GUEST_DS_AR),
            (f::GUEST_ES_SEL, f::GUEST_ES_BASE, f::GUEST_ES_LIMIT, f::GUEST_ES_AR),
            (f::GUEST_FS_SEL, f::GUEST_FS_BASE, f::GUEST_FS_LIMIT, f::GUEST_FS_AR),
            (f::GUEST_GS_SEL, f::GUEST_GS_BASE, f::GUEST_GS_LIMIT, f::GUEST_GS_AR),
            (f::GUEST_SS_SEL, f::GUEST_SS_BASE, f::GUEST_SS_LIMIT, f::GUEST_SS_AR),
        ] {
            Self::set_seg(s, b, l, a, sel, base, limit, ar);
        }
    }

    fn common_reset(&mut self, cr0: u64) {
        let p = self.p;
        w(f::GUEST_CR0, (cr0 | p.cr0.0 | CR0_NE) & p.cr0.1 & !(1 << 31) & !1 | (cr0 & 1));
        w(f::CR0_READ_SHADOW, cr0);
        w(f::GUEST_CR3, 0);
        w(f::GUEST_CR4, (p.cr4.0 | CR4_VMXE) & p.cr4.1);
        w(f::CR4_READ_SHADOW, 0);
        w(f::GUEST_EFER, 0);
        w(f::GUEST_PAT, crate::hv::msr::PAT_POWER_ON);
        self.entry &= !entry::IA32E;
        w(f::ENTRY_CONTROLS, u64::from(self.entry));
        Self::set_seg(
            f::GUEST_LDTR_SEL,
            f::GUEST_LDTR_BASE,
            f::GUEST_LDTR_LIMIT,
            f::GUEST_LDTR_AR,
            0,
            0,
            0xffff,
            0x82,
        );
        Self::set_seg(
            f::GUEST_TR_SEL,
            f::GUEST_TR_BASE,
            f::GUEST_TR_LIMIT,
            f::GUEST_TR_AR,
            0,
            0,
            0xffff,
            0x8b,
        );
        w(f::GUEST_GDTR_BASE, 0);
        w(f::GUEST_GDTR_LIMIT, 0xffff);
        w(f::GUEST_IDTR_BASE, 0);
        w(f::GUEST_IDTR_LIMIT, 0xffff);
        w(f::GUEST_DR7, 0x400);
        w(f::GUEST_RSP, 0);
        w(f::GUEST_RFLAGS, 0x2);
        w(f::GUEST_PENDING_DBG, 0);
        w(f::GUEST_SYSENTER_CS, 0);
        w(f::GUEST_SYSENTER_ESP, 0);
        w(f::GUEST_SYSENTER_EIP, 0);
        w(f::GUEST_DEBUGCTL, 0);
        w(f::GUEST_INTERRUPTIBILITY, 0);
        w(f::GUEST_ACTIVITY, 0);
        w(f::ENTRY_INTERRUPTION_INFO, 0);
        self.regs = Regs::default();
    }

    fn exit_reason(&mut self) -> Exit {
        let raw = vmread(f::EXIT_REASON) as u32;
        let q = vmread(f::EXIT_QUALIFICATION);
        EXITS.fetch_add(1, Ordering::Relaxed);
        // An event whose delivery the exit interrupted is delivered again at the next entry
        // (SDM Vol. 3C §28.2.4, §27.2.4).
        let idt = vmread(f::IDT_VECTORING_INFO);
        if idt & (1 << 31) != 0 {
            w(f::ENTRY_INTERRUPTION_INFO, idt & !(1 << 12));
            if idt & (1 << 11) != 0 {
                w(f::ENTRY_EXCEPTION_ERROR, vmread(f::IDT_VECTORING_ERROR));
            }
            w(f::ENTRY_INSTRUCTION_LEN, vmread(f::EXIT_INSTRUCTION_LEN));
        }
        if raw & (1 << 31) != 0 {
            let basic = raw & 0xffff;
            return Exit::InvalidGuestState {
                what: controls::entry_failure(basic, q),
                qualification: q,
            };
        }
        // The long-mode entry control follows EFER.LMA, which the guest changes itself by
        // enabling paging with EFER.LME set (SDM Vol. 3C §25.8.1, §10.8.5).
        let lma = vmread(f::GUEST_EFER) & (1 << 10) != 0;
        let want = if lma { self.entry | entry::IA32E } else { self.entry & !entry::IA32E };
        if want != self.entry {
            self.entry = want;
            w(f::ENTRY_CONTROLS, u64::from(want));
        }
        let r = &self.regs;
        match raw & 0xffff {
            reason::EXCEPTION_NMI => {
                let info = vmread(f::EXIT_INTERRUPTION_INFO);
                if (info >> 8) & 7 == 2 {
                    // A host NMI: let the host see it.
                    // SAFETY: raising NMI's vector runs the firmware's NMI diagnostic.
                    unsafe { asm!("int 2", options(nostack)) };
                }
                Exit::Exception {
                    vector: info as u8,
                    error: vmread(f::EXIT_INTERRUPTION_ERROR) as u32,
                }
            }
            reason::EXTERNAL_INTERRUPT => Exit::Interrupt,
            reason::TRIPLE_FAULT => Exit::TripleFault,
            reason::INIT => Exit::Init,
            reason::SIPI => Exit::Sipi { vector: q as u8 },
            reason::INTERRUPT_WINDOW => Exit::InterruptWindow,
            reason::CPUID => Exit::Cpuid { leaf: r.rax as u32, sub: r.rcx as u32 },
            reason::HLT => Exit::Hlt,
            reason::VMCALL => Exit::Hypercall { nr: r.rax },
            reason::CR_ACCESS => {
                let cr = (q & 0xf) as u8;
                let write =
                    if (q >> 4) & 3 == 0 { Some(self.gpr((q >> 8) as u8 & 0xf)) } else { None };
                Exit::CrAccess { cr, write }
            }
            reason::IO => Exit::Io {
                port: (q >> 16) as u16,
                size: (q & 7) as u8 + 1,
                dir: if q & 8 != 0 { IoDir::In } else { IoDir::Out },
                string: q & 16 != 0,
            },
            reason::RDMSR => Exit::Msr { msr: r.rcx as u32, write: None },
            reason::WRMSR => {
                Exit::Msr { msr: r.rcx as u32, write: Some((r.rdx << 32) | (r.rax & 0xffff_ffff)) }
            }
            reason::EPT_VIOLATION => Exit::NestedPageFault {
                gpa: vmread(f::GUEST_PHYSICAL_ADDRESS),
                write: q & 2 != 0,
                exec: q & 4 != 0,
                present: q & 0x38 != 0,
            },
            reason::EPT_MISCONFIG => Exit::Other {
                what: "EPT misconfiguration",
                qualification: vmread(f::GUEST_PHYSICAL_ADDRESS),
            },
            reason::PREEMPTION_TIMER => Exit::Preempted,
            reason::INVALID_GUEST_STATE | reason::MSR_LOADING | reason::MACHINE_CHECK => {
                Exit::InvalidGuestState {
                    what: controls::entry_failure(raw & 0xffff, q),
                    qualification: q,
                }
            }
            reason::NMI_WINDOW => Exit::Other { what: "NMI window", qualification: q },
            reason::TASK_SWITCH => Exit::Other { what: "task switch", qualification: q },
            reason::INVD => Exit::NoOp { what: "INVD" },
            reason::RDTSC => Exit::Other { what: "RDTSC", qualification: q },
            reason::MWAIT | reason::MONITOR => Exit::Undefined { what: "MONITOR/MWAIT" },
            reason::PAUSE => Exit::Other { what: "PAUSE", qualification: q },
            reason::XSETBV => {
                Exit::Xsetbv { xcr: r.rcx as u32, value: (r.rdx << 32) | (r.rax & 0xffff_ffff) }
            }
            // VMX is hidden from the guest (CPUID.1:ECX.VMX = 0, SDM Vol. 3C §24.6): its
            // instructions are undefined there, as is GETSEC without SMX.
            reason::INVEPT | 19..=27 | 53 | 59 | 11 => {
                Exit::Undefined { what: exit_name(raw & 0xffff) }
            }
            n => Exit::Other { what: exit_name(n), qualification: q },
        }
    }

    fn gpr(&self, n: u8) -> u64 {
        let r = &self.regs;
        match n {
            0 => r.rax,
            1 => r.rcx,
            2 => r.rdx,
            3 => r.rbx,
            4 => vmread(f::GUEST_RSP),
            5 => r.rbp,
            6 => r.rsi,
            7 => r.rdi,
            8 => r.r8,
            9 => r.r9,
            10 => r.r10,
            11 => r.r11,
            12 => r.r12,
            13 => r.r13,
            14 => r.r14,
            _ => r.r15,
        }
    }
}

fn exit_name(n: u32) -> &'static str {
    match n {
        5 => "I/O SMI",
        6 => "other SMI",
        11 => "GETSEC",
        14 => "INVLPG",
        15 => "RDPMC",
        17 => "RSM",
        19..=27 => "VMX instruction",
        29 => "MOV DR",
        37 => "monitor trap flag",
        43 => "TPR below threshold",
        44 => "APIC access",
        46 | 47 => "descriptor-table access",
        51 => "RDTSCP",
        50 => "INVEPT",
        53 => "INVVPID",
        59 => "VMFUNC",
        54 => "WBINVD",
        _ => "unknown exit reason",
    }
}

impl Vcpu for VmxVcpu {
    fn run(&mut self) -> Exit {
        // Without the preemption timer the core's APIC timer ends the slice (an external-
        // interrupt exit).
        let slice = if self.p.ctl.preemption_timer {
            let ticks = (self.slice >> self.p.ctl.timer_shift).clamp(1, u64::from(u32::MAX));
            w(f::PREEMPTION_TIMER_VALUE, ticks);
            None
        } else {
            Some(ApicSlice::arm(self.slice))
        };
        // SAFETY: this vCPU's VMCS is current on this core, with host state for this core; the
        // assembly saves the callee-saved registers and returns through HOST_RIP.
        let failed = unsafe { gestalt_vmx_enter(&mut self.regs, u64::from(self.launched)) };
        let e = if failed != 0 {
            let code = vmread(f::VM_INSTRUCTION_ERROR) as u32;
            Exit::EntryFailed { code, what: controls::instruction_error(code) }
        } else {
            self.launched = true;
            self.exit_reason()
        };
        slice.map_or(e, |s| s.end(e))
    }

    fn regs(&mut self) -> &mut Regs {
        &mut self.regs
    }

    fn skip_instruction(&mut self) {
        let len = vmread(f::EXIT_INSTRUCTION_LEN);
        w(f::GUEST_RIP, vmread(f::GUEST_RIP) + len);
        // Skipping an instruction ends an STI/MOV SS shadow (SDM Vol. 3C §26.3.1.5).
        let i = vmread(f::GUEST_INTERRUPTIBILITY);
        if i & 3 != 0 {
            w(f::GUEST_INTERRUPTIBILITY, i & !3);
        }
    }

    fn advance_rip(&mut self, len: u64) {
        w(f::GUEST_RIP, vmread(f::GUEST_RIP) + len);
        let i = vmread(f::GUEST_INTERRUPTIBILITY);
        if i & 3 != 0 {
            w(f::GUEST_INTERRUPTIBILITY, i & !3);
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            rip: vmread(f::GUEST_RIP),
            rsp: vmread(f::GUEST_RSP),
            rflags: vmread(f::GUEST_RFLAGS),
            cr0: vmread(f::GUEST_CR0),
            cr3: vmread(f::GUEST_CR3),
            cr4: vmread(f::GUEST_CR4),
            efer: vmread(f::GUEST_EFER),
            cs: self.segment(f::GUEST_CS_SEL, f::GUEST_CS_BASE, f::GUEST_CS_LIMIT, f::GUEST_CS_AR),
            ss: self.segment(f::GUEST_SS_SEL, f::GUEST_SS_BASE, f::GUEST_SS_LIMIT, f::GUEST_SS_AR),
            interruptibility: vmread(f::GUEST_INTERRUPTIBILITY) as u32,
        }
    }

    fn interruptible(&self) -> bool {
        vmread(f::GUEST_RFLAGS) & (1 << 9) != 0
            && vmread(f::GUEST_INTERRUPTIBILITY) & 3 == 0
            && vmread(f::ENTRY_INTERRUPTION_INFO) & (1 << 31) == 0
    }

    fn nmi_allowed(&self) -> bool {
        // Blocking by MOV SS (bit 1) or by NMI (bit 3) holds an NMI back (SDM Vol. 3C §25.4.2).
        vmread(f::GUEST_INTERRUPTIBILITY) & 0b1010 == 0
            && vmread(f::ENTRY_INTERRUPTION_INFO) & (1 << 31) == 0
    }

    fn inject_nmi(&mut self) {
        // Interruption type 2 (NMI), vector 2 (SDM Vol. 3C §26.6.1.1).
        w(f::ENTRY_INTERRUPTION_INFO, 2 | (2 << 8) | (1 << 31));
    }

    fn inject_interrupt(&mut self, vector: u8) {
        w(f::ENTRY_INTERRUPTION_INFO, u64::from(vector) | (1 << 31));
    }

    fn set_interrupt_window(&mut self, on: bool) {
        let want = if on { self.proc | proc::INT_WINDOW } else { self.proc & !proc::INT_WINDOW };
        if want != self.proc {
            self.proc = want;
            w(f::PROC_CONTROLS, u64::from(want));
        }
    }

    fn set_time_slice(&mut self, tsc_ticks: u64) {
        self.slice = tsc_ticks;
    }

    fn set_efer(&mut self, efer: u64) {
        // LMA is the CPU's to set; keep the current value (SDM Vol. 3A §10.8.5).
        let lma = vmread(f::GUEST_EFER) & (1 << 10);
        w(f::GUEST_EFER, (efer & !(1 << 10)) | lma);
    }

    fn set_pat(&mut self, pat: u64) {
        // Loaded on every entry ("load IA32_PAT", SDM Vol. 3C §26.3.2.1).
        w(f::GUEST_PAT, pat);
    }

    fn set_cr(&mut self, cr: u8, val: u64) {
        let p = self.p;
        match cr {
            0 => {
                w(f::CR0_READ_SHADOW, val);
                let fixed = (val | p.cr0.0 | CR0_NE) & p.cr0.1;
                // Unrestricted guest: PE and PG are the guest's (SDM Vol. 3C §26.3.1.1).
                let v = (fixed & !((1 << 31) | 1)) | (val & ((1 << 31) | 1));
                w(f::GUEST_CR0, v);
                // Turning paging on or off here is the guest's long-mode switch: EFER.LMA
                // and the entry control follow in the same exit.
                let (efer, ia32e) = controls::long_mode_after_cr0(v, vmread(f::GUEST_EFER));
                w(f::GUEST_EFER, efer);
                let want =
                    if ia32e { self.entry | entry::IA32E } else { self.entry & !entry::IA32E };
                if want != self.entry {
                    self.entry = want;
                    w(f::ENTRY_CONTROLS, u64::from(want));
                }
            }
            4 => {
                w(f::CR4_READ_SHADOW, val);
                w(f::GUEST_CR4, (val | p.cr4.0 | CR4_VMXE) & p.cr4.1);
            }
            _ => {}
        }
    }

    fn enter_protected_mode(&mut self, eip: u32) {
        self.common_reset(0x11);
        Self::set_seg(
            f::GUEST_CS_SEL,
            f::GUEST_CS_BASE,
            f::GUEST_CS_LIMIT,
            f::GUEST_CS_AR,
            0x08,
            0,
            u32::MAX,
            0xc09b,
        );
        Self::set_data_segments(0x10, 0, u32::MAX, 0xc093);
        w(f::GUEST_RIP, u64::from(eip));
    }

    fn enter_sipi(&mut self, vector: u8) {
        self.common_reset(0x10);
        let base = u64::from(vector) << 12;
        Self::set_seg(
            f::GUEST_CS_SEL,
            f::GUEST_CS_BASE,
            f::GUEST_CS_LIMIT,
            f::GUEST_CS_AR,
            u16::from(vector) << 8,
            base,
            0xffff,
            0x9b,
        );
        Self::set_data_segments(0, 0, 0xffff, 0x93);
        w(f::GUEST_RIP, 0);
    }

    fn flush_nested(&mut self) {
        invept(self.p, self.eptp);
    }

    fn break_for_test(&mut self, what: Breakage) {
        match what {
            // RFLAGS bit 1 must be 1 (SDM Vol. 3C §27.3.1.4): an invalid-guest-state exit.
            Breakage::Guest => w(f::GUEST_RFLAGS, vmread(f::GUEST_RFLAGS) & !2),
            // Pin-based must-be-1 bits cleared: VMfailValid, error 7 (SDM Vol. 3C §27.2.1.1).
            Breakage::Control => w(f::PIN_CONTROLS, 0),
        }
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        w(f::TSC_OFFSET, offset);
    }

    fn set_xcr0(&mut self, value: u64) {
        // XSETBV needs CR4.OSXSAVE on the host too. The host never uses XSAVE-managed state
        // (soft-float firmware, one vCPU per core), so the guest's XCR0 can stay loaded
        // across exits (SDM Vol. 1 §13.3).
        let cr4 = vmread(f::HOST_CR4);
        if cr4 & CR4_OSXSAVE == 0 {
            // SAFETY: CPUID reports XSAVE (the guest could only get here through it), so
            // CR4.OSXSAVE may be set; nothing else in the host changes behaviour with it.
            unsafe { asm!("mov cr4, {}", in(reg) cr4 | CR4_OSXSAVE, options(nostack)) };
            w(f::HOST_CR4, cr4 | CR4_OSXSAVE);
        }
        // SAFETY: the value passed the architectural checks against this CPU's XSAVE
        // components (dispatch::xcr0_valid), so XSETBV does not fault.
        unsafe {
            asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32,
                 options(nostack));
        }
    }

    fn inject_exception(&mut self, vector: u8, error: Option<u32>) {
        let mut info = u64::from(vector) | (3 << 8) | (1 << 31);
        if let Some(e) = error {
            info |= 1 << 11;
            w(f::ENTRY_EXCEPTION_ERROR, u64::from(e));
        }
        w(f::ENTRY_INTERRUPTION_INFO, info);
    }
}

/// Reads the CPUID leaf of the host (for the guest's CPUID answer).
pub fn host_cpuid(leaf: u32, sub: u32) -> crate::hv::cpuid::Regs4 {
    let r = cpuid(leaf, sub);
    crate::hv::cpuid::Regs4 { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}
