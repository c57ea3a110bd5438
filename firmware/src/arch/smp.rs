//! Starting the application processors: INIT-SIPI-SIPI (SDM Vol. 3A §9.4.4.1) one at a time
//! through the real-mode trampoline at 0x8000, each reporting in on an atomic.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use gestalt_netstack::hal::{Block, Reg, Window};

use super::{apic, cpu, time};
use crate::acpi::Cpu;

const TRAMPOLINE: u64 = 0x8000;
const AP_STACK: usize = 64 * 1024;

/// CPUs running (the BSP counts).
pub static ONLINE: AtomicU32 = AtomicU32::new(1);
static ARRIVED: AtomicU64 = AtomicU64::new(u64::MAX);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_data_cr3: u8;
    static ap_data_efer: u8;
    static ap_data_stack: u8;
    static ap_data_entry: u8;
    static ap_data_arg: u8;
}

fn addr(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Where a trampoline data field lives in the copy at 0x8000.
fn slot(field: &u8) -> u64 {
    // SAFETY: address-of a linker symbol only.
    TRAMPOLINE + addr(field) - unsafe { addr(&ap_trampoline_start) }
}

/// The trampoline's data fields, laid out as `ap_trampoline.s` declares them from
/// `ap_data_cr3` on.
struct TrampolineData;

impl Block for TrampolineData {
    const SIZE: usize = 32;
    const ALIGN: usize = 8;
}

const DATA_CR3: Reg<TrampolineData, u32> = Reg::at::<0>();
const DATA_EFER: Reg<TrampolineData, u32> = Reg::at::<4>();
const DATA_STACK: Reg<TrampolineData, u64> = Reg::at::<8>();
const DATA_ENTRY: Reg<TrampolineData, u64> = Reg::at::<16>();
const DATA_ARG: Reg<TrampolineData, u64> = Reg::at::<24>();

/// The data fields in the copy at 0x8000, if the assembly still lays them out as
/// [`TrampolineData`] says.
fn trampoline_data() -> Option<Window<TrampolineData>> {
    // SAFETY: addresses of linker symbols only.
    let (cr3, efer, stack, entry, arg) = unsafe {
        (
            slot(&ap_data_cr3),
            slot(&ap_data_efer),
            slot(&ap_data_stack),
            slot(&ap_data_entry),
            slot(&ap_data_arg),
        )
    };
    let at = |r: usize| cr3 + r as u64;
    let same = efer == at(DATA_EFER.offset())
        && stack == at(DATA_STACK.offset())
        && entry == at(DATA_ENTRY.offset())
        && arg == at(DATA_ARG.offset());
    (same && cr3.is_multiple_of(TrampolineData::ALIGN as u64)).then(|| {
        // SAFETY: the fields lie in the trampoline copy at 0x8000 (layout checked above),
        // low memory excluded from every allocator, identity-mapped writable; an AP reads
        // them only while being started, one at a time.
        unsafe { Window::new(cr3 as usize) }
    })
}

extern "C" fn ap_main(index: u64) -> ! {
    super::gdt::init_this_cpu();
    super::idt::init_this_cpu();
    apic::init_this_cpu();
    ONLINE.fetch_add(1, Ordering::SeqCst);
    ARRIVED.store(index, Ordering::SeqCst);
    crate::node::ap_idle(index as usize)
}

/// Starts every CPU in `cpus` except the BSP; logs each; returns how many came up.
pub fn start_aps(cpus: &[Cpu]) -> u32 {
    let bsp = apic::id();
    let Some(data) = trampoline_data() else {
        crate::error!("smp: trampoline data layout differs from TrampolineData; no APs started");
        return 0;
    };
    // SAFETY: the trampoline symbols bracket code+data in our image; 0x8000..0x9000 is low
    // memory excluded from every allocator and mapped writable and executable.
    let efer = unsafe {
        let start = addr(&ap_trampoline_start);
        let len = addr(&ap_trampoline_end) - start;
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len as usize);
        cpu::rdmsr(cpu::MSR_EFER) & ((1 << 8) | (1 << 11))
    };
    data.set(DATA_CR3, super::paging::cr3() as u32);
    data.set(DATA_EFER, efer as u32);
    data.set(DATA_ENTRY, ap_main as *const () as u64);
    let mut up = 0;
    for (i, c) in cpus.iter().enumerate().filter(|(_, c)| c.apic_id != bsp) {
        let stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; AP_STACK].into_boxed_slice());
        let top = (stack.as_ptr_range().end as u64) & !0xF;
        // No AP is using the data now: APs are started one at a time and each is past the
        // trampoline once it has arrived.
        data.set(DATA_STACK, top);
        data.set(DATA_ARG, i as u64);
        ARRIVED.store(u64::MAX, Ordering::SeqCst);
        apic::send_init(c.apic_id);
        time::delay_us(10_000);
        let mut arrived = false;
        for _ in 0..2 {
            apic::send_sipi(c.apic_id, (TRAMPOLINE >> 12) as u8);
            for _ in 0..1000 {
                if ARRIVED.load(Ordering::SeqCst) == i as u64 {
                    arrived = true;
                    break;
                }
                time::delay_us(100);
            }
            if arrived {
                break;
            }
        }
        if arrived {
            up += 1;
            crate::info!("smp: cpu {i} (apic {}) online", c.apic_id);
        } else {
            crate::error!("smp: cpu {i} (apic {}) did not start", c.apic_id);
        }
    }
    up
}
