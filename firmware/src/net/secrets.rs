//! What of the cluster key a console may show: its fingerprint, never the key (issue 9). The
//! boot log prints the command line, which carries `key=`; these helpers rewrite it first.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use gestalt_netstack::transport::ClusterKey;

use crate::cmdline::{self, CmdlineError};

/// The key as the transport uses it: `key=` bytes are hashed like any passphrase.
pub fn cluster_key(bytes: &[u8]) -> ClusterKey {
    ClusterKey::from_passphrase(bytes)
}

/// The fingerprint as 16 hex digits (same key, same digits, on every node).
pub fn fingerprint(key: &ClusterKey) -> String {
    key.fingerprint().iter().map(|b| format!("{b:02x}")).collect()
}

/// `line` with every `key=` value replaced by that key's fingerprint, or by `<not shown>`
/// when the value is not a valid key (a near miss can be most of the real key).
pub fn redacted_cmdline(line: &str) -> String {
    let words: Vec<String> = line
        .split_ascii_whitespace()
        .map(|w| match w.strip_prefix("key=") {
            Some(v) => match cmdline::parse(&format!("gestalt key={v}")).0.key {
                Some(k) => format!("key=<fingerprint {}>", fingerprint(&cluster_key(&k))),
                None => String::from("key=<not shown>"),
            },
            None => String::from(w),
        })
        .collect();
    words.join(" ")
}

/// A command-line error as the console shows it: a bad `key=` value is not repeated.
pub fn redacted_error(e: &CmdlineError) -> String {
    match e {
        CmdlineError::BadValue { key: "key", expected, .. } => {
            format!("bad value (not shown) for 'key': expected {expected}; ignored")
        }
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn the_boot_line_shows_the_key_fingerprint_and_never_the_key() {
        let line = format!("gestalt.elf nodes=2 key={KEY} primary");
        let shown = redacted_cmdline(&line);
        let (cfg, _) = cmdline::parse(&line);
        let fp = fingerprint(&cluster_key(&cfg.key.unwrap()));
        assert_eq!(shown, format!("gestalt.elf nodes=2 key=<fingerprint {fp}> primary"));
        assert!(!shown.contains(&KEY[..8]), "{shown}");
        assert_eq!(fp.len(), 16);
    }

    #[test]
    fn a_malformed_key_is_not_shown_in_the_line_or_in_its_error() {
        let near_miss = &KEY[..31]; // one digit short
        let line = format!("gestalt.elf key={near_miss}");
        assert_eq!(redacted_cmdline(&line), "gestalt.elf key=<not shown>");
        let (_, errors) = cmdline::parse(&line);
        assert_eq!(errors.len(), 1);
        let shown = redacted_error(&errors[0]);
        assert!(!shown.contains(near_miss) && shown.contains("'key'"), "{shown}");
        assert!(errors[0].to_string().contains(near_miss), "the unredacted form would leak");
    }

    #[test]
    fn nodes_with_the_same_key_show_the_same_fingerprint() {
        let a = redacted_cmdline(&format!("x key={KEY}"));
        let b = redacted_cmdline(&format!("y nodes=3 key={KEY}"));
        let other = redacted_cmdline(&format!("x key={}", "5a".repeat(16)));
        assert_eq!(a.rsplit(' ').next(), b.rsplit(' ').next());
        assert_ne!(a, other);
    }
}
