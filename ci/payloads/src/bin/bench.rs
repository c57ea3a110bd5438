//! Exit-rate benchmark: 100 000 hypercall round trips between two console lines, so the
//! harness can time them on the wall clock while the payload reports the emulated cost.
#![no_std]
#![no_main]

use gestalt_payloads::*;

const N: u64 = 100_000;

#[unsafe(no_mangle)]
extern "C" fn payload_main(_mbi: u32) -> ! {
    println!("bench: start {N} hypercalls");
    let t0 = rdtsc();
    for _ in 0..N {
        vmcall(hc::NOP, 0, 0);
    }
    let ticks = rdtsc() - t0;
    println!(
        "bench: done {N} hypercalls in {ticks} TSC ticks ({} per round trip, TSC {} Hz)",
        ticks / N,
        tsc_hz()
    );
    exit(0)
}
