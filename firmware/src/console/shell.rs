//! The shell's pure half: a line editor fed one byte at a time, and the command parser.
//! The firmware's node loop executes the parsed [`Command`]s.

use heapless::String;

/// Longest line the editor keeps; more input is refused with a bell.
pub const LINE_MAX: usize = 160;

/// What one input byte did.
#[derive(Debug, PartialEq, Eq)]
pub enum Edit {
    /// Echo these bytes to the terminal.
    Echo(&'static [u8]),
    /// Echo the byte itself.
    EchoByte(u8),
    /// Nothing to show.
    None,
    /// The line is complete: run it.
    Line,
}

/// A minimal line editor: printable ASCII, backspace/delete, Ctrl-U, Enter.
#[derive(Default)]
pub struct LineEditor {
    line: String<LINE_MAX>,
    last_cr: bool,
}

impl LineEditor {
    /// Feeds one byte from the console.
    pub fn feed(&mut self, b: u8) -> Edit {
        let after_cr = core::mem::replace(&mut self.last_cr, b == b'\r');
        match b {
            b'\r' => Edit::Line,
            // CR LF from a terminal is one Enter.
            b'\n' if after_cr => Edit::None,
            b'\n' => Edit::Line,
            0x08 | 0x7f => {
                if self.line.pop().is_some() {
                    Edit::Echo(b"\x08 \x08")
                } else {
                    Edit::None
                }
            }
            0x15 => {
                self.line.clear();
                Edit::Echo(b"\r\x1b[K")
            }
            0x20..=0x7e => match self.line.push(char::from(b)) {
                Ok(()) => Edit::EchoByte(b),
                Err(_) => Edit::Echo(b"\x07"),
            },
            _ => Edit::None,
        }
    }

    /// The line typed so far.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Forgets the line (after running it).
    pub fn clear(&mut self) {
        self.line.clear();
    }
}

/// A parsed shell command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// List commands.
    Help,
    /// Image version, commit, build id, protocol.
    Version,
    /// Uptime, cores, memory.
    Status,
    /// Memory map, reserve and pool.
    Mem,
    /// PCI devices.
    Pci,
    /// Show the log level.
    LogShow,
    /// Set the log level.
    LogSet(crate::console::log::Level),
    /// Reset the machine.
    Reboot,
    /// Power off (exit the emulator).
    Poweroff,
    /// Nothing typed.
    Empty,
    /// A command the firmware runs that is not one of the built-ins above.
    Other(&'a str, &'a str),
}

/// Why a line is not a command.
#[derive(Debug, PartialEq, Eq)]
pub enum ShellError<'a> {
    /// Not a known command.
    Unknown(&'a str),
    /// Known command, wrong arguments: its usage.
    Usage(&'static str),
}

impl core::fmt::Display for ShellError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ShellError::Unknown(c) => write!(f, "unknown command '{c}'; type 'help' for the list"),
            ShellError::Usage(u) => write!(f, "usage: {u}"),
        }
    }
}

/// Every command with a one-line description, for `help`.
pub const HELP: &[(&str, &str)] = &[
    ("help", "this list"),
    ("version", "image version, commit, build id and protocol version"),
    ("status", "uptime, cores and memory"),
    ("mem", "memory map: usable RAM, hypervisor reserve, guest pool, heap"),
    ("pci", "PCI devices and their BARs"),
    ("net", "address, link, NIC, discovery and transport counters"),
    ("nodes", "the cluster view: every node, its cores, memory and state"),
    ("ping <node>", "five small round trips over the cluster transport"),
    ("netbench <node>", "raw-frame vs 4 KiB-message round trips, and page throughput"),
    (
        "vcpu",
        "vCPUs: node, state, host CPU, exits by reason (Ctrl-] gives the console to the guest)",
    ),
    ("stats [reset]", "remote faults by kind, messages, pages, latency histogram, hottest pages"),
    ("log [error|warn|info|debug|trace]", "show or set the console log level"),
    ("reboot", "reset this node"),
    ("poweroff", "power this node off"),
];

/// Commands the node loop runs itself (parsed as [`Command::Other`]).
pub const NODE_COMMANDS: &[&str] = &["net", "nodes", "ping", "netbench", "vcpu", "stats"];

/// Parses one line. `extra` names further commands the caller runs itself (`Other`).
pub fn parse<'a>(line: &'a str, extra: &[&str]) -> Result<Command<'a>, ShellError<'a>> {
    let line = line.trim();
    let (cmd, rest) = match line.split_once(' ') {
        Some((c, r)) => (c, r.trim()),
        None => (line, ""),
    };
    let no_args =
        |c: Command<'a>, usage| if rest.is_empty() { Ok(c) } else { Err(ShellError::Usage(usage)) };
    match cmd {
        "" => Ok(Command::Empty),
        "help" | "?" => Ok(Command::Help),
        "version" => no_args(Command::Version, "version"),
        "status" => no_args(Command::Status, "status"),
        "mem" => no_args(Command::Mem, "mem"),
        "pci" => no_args(Command::Pci, "pci"),
        "reboot" => no_args(Command::Reboot, "reboot"),
        "poweroff" => no_args(Command::Poweroff, "poweroff"),
        "log" if rest.is_empty() => Ok(Command::LogShow),
        "log" => crate::console::log::Level::parse(rest)
            .map(Command::LogSet)
            .ok_or(ShellError::Usage("log [error|warn|info|debug|trace]")),
        c if extra.contains(&c) => Ok(Command::Other(c, rest)),
        c => Err(ShellError::Unknown(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::log::Level;

    fn type_in(ed: &mut LineEditor, s: &[u8]) -> Vec<Edit> {
        s.iter().map(|b| ed.feed(*b)).collect()
    }

    #[test]
    fn backspace_erases_the_last_character_on_screen_and_in_the_line() {
        let mut ed = LineEditor::default();
        type_in(&mut ed, b"statux");
        assert_eq!(ed.feed(0x7f), Edit::Echo(b"\x08 \x08"));
        type_in(&mut ed, b"s");
        assert_eq!(ed.line(), "status");
        assert_eq!(ed.feed(b'\r'), Edit::Line);
    }

    #[test]
    fn backspace_on_an_empty_line_does_nothing() {
        let mut ed = LineEditor::default();
        assert_eq!(ed.feed(0x08), Edit::None);
    }

    #[test]
    fn crlf_is_one_enter_and_control_bytes_are_ignored() {
        let mut ed = LineEditor::default();
        let edits = type_in(&mut ed, b"a\x01\r\n");
        assert_eq!(edits, vec![Edit::EchoByte(b'a'), Edit::None, Edit::Line, Edit::None]);
    }

    #[test]
    fn overlong_line_rings_the_bell_and_keeps_what_fits() {
        let mut ed = LineEditor::default();
        for _ in 0..LINE_MAX {
            ed.feed(b'x');
        }
        assert_eq!(ed.feed(b'y'), Edit::Echo(b"\x07"));
        assert_eq!(ed.line().len(), LINE_MAX);
    }

    #[test]
    fn every_command_in_help_is_one_the_shell_takes() {
        for (usage, _) in HELP {
            let name = usage.split(' ').next().unwrap();
            let parsed = parse(name, NODE_COMMANDS);
            assert!(
                !matches!(parsed, Err(ShellError::Unknown(_))),
                "help lists '{name}' but the shell refuses it"
            );
        }
        for c in NODE_COMMANDS {
            assert!(
                HELP.iter().any(|(u, _)| u.split(' ').next() == Some(c)),
                "'{c}' is missing from help"
            );
        }
    }

    #[test]
    fn commands_parse_and_unknown_ones_get_the_hint() {
        assert_eq!(parse("  status ", &[]), Ok(Command::Status));
        assert_eq!(parse("log debug", &[]), Ok(Command::LogSet(Level::Debug)));
        assert_eq!(parse("log", &[]), Ok(Command::LogShow));
        assert_eq!(parse("", &[]), Ok(Command::Empty));
        assert_eq!(parse("net x", &["net"]), Ok(Command::Other("net", "x")));
        let e = parse("frobnicate now", &[]).unwrap_err();
        assert_eq!(e.to_string(), "unknown command 'frobnicate'; type 'help' for the list");
        assert_eq!(
            parse("log loud", &[]).unwrap_err(),
            ShellError::Usage("log [error|warn|info|debug|trace]")
        );
        assert_eq!(parse("reboot now", &[]).unwrap_err(), ShellError::Usage("reboot"));
    }
}
