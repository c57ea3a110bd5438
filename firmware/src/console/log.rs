//! Log levels and the line format `[SSSSS.uuuuuu] LEVEL message` (docs/contracts.md §3).

use core::fmt;

/// Severity of a log line; lines above the current level are not printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed.
    Error = 1,
    /// Something is off but work goes on.
    Warn = 2,
    /// What an operator wants to see.
    Info = 3,
    /// Detail for developers.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl Level {
    /// Parses `error`…`trace` (case-insensitive).
    pub fn parse(s: &str) -> Option<Level> {
        [Level::Error, Level::Warn, Level::Info, Level::Debug, Level::Trace]
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s))
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    /// The level from its `repr(u8)`, clamping unknown values to `Trace`.
    pub fn from_u8(v: u8) -> Level {
        match v {
            0 | 1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            4 => Level::Debug,
            _ => Level::Trace,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

/// Writes one log line (without the line end) for an uptime in microseconds.
pub fn write_line(
    out: &mut dyn fmt::Write,
    uptime_us: u64,
    level: Level,
    args: fmt::Arguments<'_>,
) -> fmt::Result {
    write!(
        out,
        "[{:5}.{:06}] {} {}",
        uptime_us / 1_000_000,
        uptime_us % 1_000_000,
        level.tag(),
        args
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_uptime_level_and_message() {
        let mut s = String::new();
        write_line(&mut s, 12_345_678, Level::Warn, format_args!("mem: {} MiB", 5)).unwrap();
        assert_eq!(s, "[   12.345678] WARN  mem: 5 MiB");
    }

    #[test]
    fn levels_parse_by_name_and_order_by_verbosity() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Error < Level::Trace);
        assert_eq!(Level::from_u8(Level::Info as u8), Level::Info);
    }
}
