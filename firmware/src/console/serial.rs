//! COM1 (the 16550 at 0x3F8) behind a spin lock, and the logging macros every module uses.
//!
//! At 115200 baud a log line takes milliseconds to send. While the network loop runs
//! ([`defer`]), log lines go to a bounded buffer instead (dropped and counted when it is full)
//! and the main loop drains it as fast as the UART takes bytes ([`pump`]); everything else
//! (boot, shell output) is written synchronously, after whatever the buffer still holds, so
//! the console keeps its order.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::spec::registers::LSR;
use uart_16550::BaudRate;
use uart_16550::{Config, Uart16550};

use super::log::{self, Level};
use super::ring::{LineBuf, LogRing};

struct Console {
    uart: Option<Uart16550<PioBackend>>,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console { uart: None });
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// About 1.4 s of serial output. Lock order: `CONSOLE`, then `RING`.
static RING: Mutex<LogRing<16384>> = Mutex::new(LogRing::new());
static DEFER: AtomicBool = AtomicBool::new(false);

impl Console {
    /// Writes out everything the buffer holds, waiting for the UART (not for the network
    /// loop: it defers).
    fn drain_ring(&mut self) {
        let mut r = RING.lock();
        match self.uart.as_mut() {
            Some(u) => {
                while !r.is_empty() {
                    r.drain(|b| u.send_bytes(b));
                    core::hint::spin_loop();
                }
            }
            None => {
                let n = r.len();
                r.consume(n);
            }
        }
    }
}

/// While the returned guard lives, log lines go to the bounded buffer and never wait for
/// the UART (the network loop holds one).
#[must_use = "logging is deferred only while the guard lives"]
pub struct Deferred(bool);

/// Defers log lines until the guard is dropped (see the module docs).
pub fn defer() -> Deferred {
    Deferred(DEFER.swap(true, Ordering::Relaxed))
}

impl Drop for Deferred {
    fn drop(&mut self) {
        DEFER.store(self.0, Ordering::Relaxed);
    }
}

/// Sends what the UART takes now from the buffer, without waiting; once the buffer is empty
/// after lines were dropped, queues a line saying how many. Call from the main loop.
pub fn pump() {
    let Some(mut c) = CONSOLE.try_lock() else { return };
    let Some(mut r) = RING.try_lock() else { return };
    match c.uart.as_mut() {
        Some(u) => r.drain(|b| u.send_bytes(b)),
        None => {
            let n = r.len();
            r.consume(n);
        }
    }
    if r.is_empty() {
        let n = r.take_unreported();
        if n > 0 {
            let mut line = LineBuf::<160>::new();
            let _ = log::write_line(
                &mut line,
                crate::arch::time::uptime_us(),
                Level::Warn,
                format_args!("console: {n} log lines dropped (the serial line is slower than the log; see 'net')"),
            );
            line.end_line();
            r.push_line(line.as_bytes());
        }
    }
}

/// Log lines wait in the buffer for the UART (a main loop about to sleep should pump first:
/// the UART empties its FIFO in about 1.4 ms).
pub fn has_pending_output() -> bool {
    RING.try_lock().is_some_and(|r| !r.is_empty())
}

/// Log lines dropped since boot because the buffer was full.
pub fn dropped_lines() -> u64 {
    RING.lock().dropped()
}

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
    if DEFER.load(Ordering::Relaxed) {
        let mut line = LineBuf::<320>::new();
        let _ = log::write_line(&mut line, us, l, args);
        line.end_line();
        RING.lock().push_line(line.as_bytes());
        pump();
        return;
    }
    let mut c = CONSOLE.lock();
    c.drain_ring();
    let _ = log::write_line(&mut *c, us, l, args);
    let _ = c.write_str("\n");
}

/// Prints text as it is (after the log lines still buffered).
pub fn print(args: fmt::Arguments<'_>) {
    let mut c = CONSOLE.lock();
    c.drain_ring();
    let _ = c.write_fmt(args);
}

/// Prints from a context that may have interrupted a holder of the lock (exceptions,
/// panics): waits a while, then takes the lock by force rather than deadlock.
pub fn print_forced(args: fmt::Arguments<'_>) {
    for _ in 0..1_000_000 {
        if let Some(mut c) = CONSOLE.try_lock() {
            // The buffered lines first, if this CPU was not interrupted holding the buffer.
            if let (Some(mut r), Some(u)) = (RING.try_lock(), c.uart.as_mut()) {
                while !r.is_empty() {
                    r.drain(|b| u.send_bytes(b));
                }
            }
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
    c.drain_ring();
    if let Some(u) = c.uart.as_mut() {
        for _ in 0..10_000_000 {
            if u.lsr().contains(LSR::TRANSMITTER_EMPTY) {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

/// One byte from the console, if one is waiting. The main loop calls it every turn, so it
/// drains the log buffer too.
pub fn try_read() -> Option<u8> {
    pump();
    CONSOLE.lock().uart.as_mut()?.try_receive_byte().ok()
}

/// Writes raw bytes (shell echo), after the log lines still buffered.
pub fn write_bytes(b: &[u8]) {
    let mut c = CONSOLE.lock();
    c.drain_ring();
    if let Some(u) = c.uart.as_mut() {
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
