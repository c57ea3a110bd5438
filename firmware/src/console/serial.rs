//! COM1 (the 16550 at 0x3F8) behind a spin lock, and the logging macros every module uses.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::spec::registers::LSR;
use uart_16550::BaudRate;
use uart_16550::{Config, Uart16550};

use super::log::{self, Level};

struct Console {
    uart: Option<Uart16550<PioBackend>>,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console { uart: None });
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let Some(uart) = self.uart.as_mut() else { return Ok(()) };
        for chunk in s.split_inclusive('\n') {
            match chunk.strip_suffix('\n') {
                Some(line) => {
                    uart.send_bytes_exact(line.as_bytes());
                    uart.send_bytes_exact(b"\r\n");
                }
                None => uart.send_bytes_exact(chunk.as_bytes()),
            }
        }
        Ok(())
    }
}

/// Programs COM1 for 115200 8N1 with FIFOs. Without a UART the console stays silent.
pub fn init() {
    // SAFETY: 0x3F8..0x3FF is COM1 on every PC; nothing else in the firmware touches it.
    let uart = unsafe { Uart16550::new_port(0x3f8) }.ok().and_then(|mut u| {
        u.init(Config { baud_rate: BaudRate::Baud115200, ..Config::default() }).ok()?;
        Some(u)
    });
    CONSOLE.lock().uart = uart;
}

/// The current console level.
pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Ordering::Relaxed))
}

/// Sets the console level.
pub fn set_level(l: Level) {
    LEVEL.store(l as u8, Ordering::Relaxed);
}

/// Prints one log line when `l` is enabled.
pub fn log(l: Level, args: fmt::Arguments<'_>) {
    if l > level() {
        return;
    }
    let us = crate::arch::time::uptime_us();
    let mut c = CONSOLE.lock();
    let _ = log::write_line(&mut *c, us, l, args);
    let _ = c.write_str("\n");
}

/// Prints text as it is.
pub fn print(args: fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Prints from a context that may have interrupted a holder of the lock (exceptions,
/// panics): waits a while, then takes the lock by force rather than deadlock.
pub fn print_forced(args: fmt::Arguments<'_>) {
    for _ in 0..1_000_000 {
        if let Some(mut c) = CONSOLE.try_lock() {
            let _ = c.write_fmt(args);
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: the holder is this CPU's interrupted context or a CPU that stopped; a torn line
    // on the console is better than a silent hang.
    unsafe { CONSOLE.force_unlock() };
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Waits until the UART has sent everything (before power-off or an emulator exit).
pub fn flush() {
    let Some(mut c) = CONSOLE.try_lock() else { return };
    if let Some(u) = c.uart.as_mut() {
        for _ in 0..10_000_000 {
            if u.lsr().contains(LSR::TRANSMITTER_EMPTY) {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

/// One byte from the console, if one is waiting.
pub fn try_read() -> Option<u8> {
    CONSOLE.lock().uart.as_mut()?.try_receive_byte().ok()
}

/// Writes raw bytes (shell echo).
pub fn write_bytes(b: &[u8]) {
    if let Some(u) = CONSOLE.lock().uart.as_mut() {
        u.send_bytes_exact(b);
    }
}

/// Logs at ERROR.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::console::serial::log($crate::console::log::Level::Error, format_args!($($t)*)) } }
/// Logs at WARN.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::console::serial::log($crate::console::log::Level::Warn, format_args!($($t)*)) } }
/// Logs at INFO.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::console::serial::log($crate::console::log::Level::Info, format_args!($($t)*)) } }
/// Logs at DEBUG.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::console::serial::log($crate::console::log::Level::Debug, format_args!($($t)*)) } }
/// Prints without a log prefix.
#[macro_export]
macro_rules! kprint { ($($t:tt)*) => { $crate::console::serial::print(format_args!($($t)*)) } }
/// Prints a line without a log prefix.
#[macro_export]
macro_rules! kprintln { ($($t:tt)*) => { $crate::console::serial::print(format_args!("{}\n", format_args!($($t)*))) } }
