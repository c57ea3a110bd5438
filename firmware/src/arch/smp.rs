//! Starting the application processors: INIT-SIPI-SIPI (SDM Vol. 3A §9.4.4.1) one at a time
//! through the real-mode trampoline at 0x8000, each reporting in on an atomic.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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
    // SAFETY: the trampoline symbols bracket code+data in our image; 0x8000..0x9000 is low
    // memory excluded from every allocator and mapped writable and executable.
    unsafe {
        let start = addr(&ap_trampoline_start);
        let len = addr(&ap_trampoline_end) - start;
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len as usize);
        let efer = cpu::rdmsr(cpu::MSR_EFER) & ((1 << 8) | (1 << 11));
        core::ptr::write_volatile(slot(&ap_data_cr3) as *mut u32, super::paging::cr3() as u32);
        core::ptr::write_volatile(slot(&ap_data_efer) as *mut u32, efer as u32);
        core::ptr::write_volatile(slot(&ap_data_entry) as *mut u64, ap_main as *const () as u64);
    }
    let mut up = 0;
    for (i, c) in cpus.iter().enumerate().filter(|(_, c)| c.apic_id != bsp) {
        let stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; AP_STACK].into_boxed_slice());
        let top = (stack.as_ptr_range().end as u64) & !0xF;
        // SAFETY: the data slots are in the trampoline copy, which no AP is using now (APs
        // are started one at a time and each is past the trampoline once it has arrived).
        unsafe {
            core::ptr::write_volatile(slot(&ap_data_stack) as *mut u64, top);
            core::ptr::write_volatile(slot(&ap_data_arg) as *mut u64, i as u64);
        }
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
