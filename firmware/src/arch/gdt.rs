//! Per-CPU GDT and TSS: kernel code/data and a TSS whose IST 0 gives double faults a stack
//! of their own (SDM Vol. 3A §3.4.5, §8.7).

use alloc::boxed::Box;

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot used by the double-fault handler.
pub const DOUBLE_FAULT_IST: u16 = 0;
const IST_STACK: usize = 16 * 1024;

/// Builds and loads this CPU's GDT and TSS (leaked: they live as long as the CPU).
pub fn init_this_cpu() {
    let stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; IST_STACK].into_boxed_slice());
    let top = VirtAddr::from_ptr(stack.as_ptr_range().end);
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST)] = top.align_down(16u64);
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));

    let gdt: &'static mut GlobalDescriptorTable = Box::leak(Box::new(GlobalDescriptorTable::new()));
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, which lives forever.
    unsafe {
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss_sel);
    }
}
