//! The kernel command line: `key=value` words (docs/contracts.md §4). Parsing never fails as a
//! whole: every bad word becomes a [`CmdlineError`] the console shows, and the rest still counts.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::console::log::Level;

/// How the node gets its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpMode {
    /// DHCPv4.
    Dhcp,
    /// IPv4 link-local derived from the MAC.
    Auto,
    /// A fixed address and prefix length.
    Static {
        /// Address octets.
        addr: [u8; 4],
        /// Prefix length, 0..=32.
        prefix: u8,
    },
}

/// Built-in tests selectable with `test=`.
pub const TESTS: &[&str] = &["boot", "pagefault", "mesh", "vmx", "vmx-fault"];

/// Default UDP port of the cluster transport.
pub const DEFAULT_PORT: u16 = 7470;

/// The node's configuration from its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Expected number of nodes (`nodes=`), if given.
    pub nodes: Option<u16>,
    /// Addressing (`ip=`), default auto.
    pub ip: IpMode,
    /// Cluster id (`cluster=`), default 1.
    pub cluster: u32,
    /// Cluster key (`key=`, hex), if given.
    pub key: Option<Vec<u8>>,
    /// Console log level (`log=`), default info.
    pub log: Level,
    /// Built-in test to run (`test=`).
    pub test: Option<&'static str>,
    /// This node asks to be the primary (`primary`).
    pub primary: bool,
    /// Transport UDP port (`port=`).
    pub port: u16,
    /// Start the first boot module as the guest (`guest=on|off`), default on.
    pub guest: bool,
    /// Jumbo frames (`mtu=9000`) where the NIC has them: one 4 KiB page per datagram.
    pub jumbo: bool,
    /// Most guest RAM this node contributes (`mem=`, bytes), if capped.
    pub mem: Option<u64>,
    /// How long a page that just arrived stays before a waiting request takes it away
    /// (`hold=`, µs), if not the default.
    pub hold_us: Option<u64>,
    /// Guest time dilation (`dilation=N`, 1 to 100, default 1): one second of the guest's
    /// clock lasts N seconds of the node's. For emulated clusters, whose network is a thousand
    /// times slower next to their CPUs than a real one: the guest sees it N times faster.
    pub dilation: u64,
    /// Test hook, only on the primary under `test=` (`tscskew=TICKS`): its guest clock starts
    /// TICKS ahead of its host TSC, so the other nodes' clocks must be brought up to it.
    pub tsc_skew: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: None,
            ip: IpMode::Auto,
            cluster: 1,
            key: None,
            log: Level::Info,
            test: None,
            primary: false,
            port: DEFAULT_PORT,
            guest: true,
            jumbo: false,
            mem: None,
            hold_us: None,
            dilation: 1,
            tsc_skew: None,
        }
    }
}

/// One bad word on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// A key this firmware does not know.
    UnknownKey(String),
    /// A known key without the `=value` it needs.
    MissingValue(&'static str),
    /// A known key with a value it cannot take.
    BadValue {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::UnknownKey(k) => write!(
                f,
                "unknown key '{k}' (known: nodes, ip, cluster, key, log, test, primary, port, guest, mtu, mem, hold, dilation, tscskew); ignored"
            ),
            CmdlineError::MissingValue(k) => write!(f, "'{k}' needs a value ({k}=...); ignored"),
            CmdlineError::BadValue { key, value, expected } => {
                write!(f, "bad value '{value}' for '{key}': expected {expected}; ignored")
            }
        }
    }
}

/// Parses a whole command line. The first word is dropped when it is the image's own name,
/// which every Multiboot loader puts there (QEMU, GRUB, iPXE, mboot.c32).
pub fn parse(line: &str) -> (Config, Vec<CmdlineError>) {
    let mut cfg = Config::default();
    let mut errors = Vec::new();
    let mut words = line.split_ascii_whitespace().peekable();
    if let Some(first) = words.peek() {
        if !first.contains('=') && *first != "primary" {
            words.next();
        }
    }
    for word in words {
        if let Err(e) = apply(&mut cfg, word) {
            errors.push(e);
        }
    }
    (cfg, errors)
}

fn bad(key: &'static str, value: &str, expected: &'static str) -> CmdlineError {
    CmdlineError::BadValue { key, value: value.to_string(), expected }
}

fn apply(cfg: &mut Config, word: &str) -> Result<(), CmdlineError> {
    let (key, value) = match word.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (word, None),
    };
    let need = |k: &'static str| value.ok_or(CmdlineError::MissingValue(k));
    match key {
        "primary" => {
            if value.is_some() {
                return Err(bad("primary", value.unwrap_or(""), "no value (a bare flag)"));
            }
            cfg.primary = true;
        }
        "nodes" => {
            let v = need("nodes")?;
            match v.parse::<u16>() {
                Ok(n) if (1..=256).contains(&n) => cfg.nodes = Some(n),
                _ => return Err(bad("nodes", v, "a number from 1 to 256")),
            }
        }
        "ip" => {
            let v = need("ip")?;
            cfg.ip = parse_ip(v).ok_or_else(|| bad("ip", v, "dhcp, auto or A.B.C.D/N"))?;
        }
        "cluster" => {
            let v = need("cluster")?;
            match v.parse::<u32>() {
                Ok(n) if n > 0 => cfg.cluster = n,
                _ => return Err(bad("cluster", v, "a number from 1 to 4294967295")),
            }
        }
        "key" => {
            let v = need("key")?;
            cfg.key = Some(
                parse_hex(v)
                    .ok_or_else(|| bad("key", v, "16 to 64 bytes as hex (32 to 128 digits)"))?,
            );
        }
        "log" => {
            let v = need("log")?;
            cfg.log = Level::parse(v)
                .ok_or_else(|| bad("log", v, "error, warn, info, debug or trace"))?;
        }
        "test" => {
            let v = need("test")?;
            cfg.test = Some(TESTS.iter().copied().find(|t| *t == v).ok_or_else(|| {
                bad("test", v, "one of the built-in tests: boot, pagefault, mesh, vmx, vmx-fault")
            })?);
        }
        "port" => {
            let v = need("port")?;
            match v.parse::<u16>() {
                Ok(p) if p > 0 => cfg.port = p,
                _ => return Err(bad("port", v, "a UDP port from 1 to 65535")),
            }
        }
        "mtu" => {
            let v = need("mtu")?;
            cfg.jumbo = match v {
                "1500" => false,
                "9000" => true,
                _ => return Err(bad("mtu", v, "1500 or 9000 (jumbo frames)")),
            };
        }
        "guest" => {
            let v = need("guest")?;
            cfg.guest = match v {
                "on" | "1" => true,
                "off" | "0" => false,
                _ => return Err(bad("guest", v, "on or off")),
            };
        }
        "mem" => {
            let v = need("mem")?;
            cfg.mem = Some(
                parse_size(v)
                    .filter(|b| *b >= 2 << 20)
                    .ok_or_else(|| bad("mem", v, "a size of at least 2M, like 64M or 4G"))?,
            );
        }
        "hold" => {
            let v = need("hold")?;
            cfg.hold_us = Some(
                v.parse::<u64>()
                    .ok()
                    .filter(|us| *us <= 1_000_000)
                    .ok_or_else(|| bad("hold", v, "microseconds from 0 to 1000000"))?,
            );
        }
        "dilation" => {
            let v = need("dilation")?;
            cfg.dilation = v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| bad("dilation", v, "a whole factor from 1 to 100"))?;
        }
        "tscskew" => {
            let v = need("tscskew")?;
            cfg.tsc_skew = Some(
                v.parse::<u64>()
                    .ok()
                    .filter(|t| *t < 1 << 60)
                    .ok_or_else(|| bad("tscskew", v, "TSC ticks below 2^60"))?,
            );
        }
        other => return Err(CmdlineError::UnknownKey(other.to_string())),
    }
    Ok(())
}

/// `64M`, `4G`, `512K` or plain bytes.
fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        b'T' | b't' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse_ip(v: &str) -> Option<IpMode> {
    match v {
        "dhcp" => return Some(IpMode::Dhcp),
        "auto" => return Some(IpMode::Auto),
        _ => {}
    }
    let (a, p) = v.split_once('/')?;
    let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    let mut addr = [0u8; 4];
    let mut parts = a.split('.');
    for octet in &mut addr {
        *octet = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(IpMode::Static { addr, prefix })
}

fn parse_hex(v: &str) -> Option<Vec<u8>> {
    if !v.len().is_multiple_of(2) || !(32..=128).contains(&v.len()) {
        return None;
    }
    (0..v.len()).step_by(2).map(|i| u8::from_str_radix(v.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_name_is_skipped_and_known_keys_are_taken() {
        let (cfg, errs) =
            parse("/boot/gestalt.elf nodes=3 ip=10.0.0.2/24 cluster=7 log=debug primary");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg.nodes, Some(3));
        assert_eq!(cfg.ip, IpMode::Static { addr: [10, 0, 0, 2], prefix: 24 });
        assert_eq!(cfg.cluster, 7);
        assert_eq!(cfg.log, Level::Debug);
        assert!(cfg.primary);
    }

    #[test]
    fn mtu_selects_jumbo_frames_or_refuses_odd_sizes() {
        assert!(parse("x mtu=9000").0.jumbo);
        assert!(!parse("x mtu=1500").0.jumbo);
        let (cfg, errs) = parse("x mtu=4000");
        assert!(!cfg.jumbo);
        assert!(errs[0].to_string().contains("1500 or 9000"));
    }

    #[test]
    fn guest_key_switches_the_module_guest_and_vmx_tests_exist() {
        let (cfg, errs) = parse("x guest=off test=vmx-fault");
        assert!(errs.is_empty(), "{errs:?}");
        assert!(!cfg.guest);
        assert_eq!(cfg.test, Some("vmx-fault"));
        assert!(Config::default().guest);
        assert_eq!(parse("x guest=maybe").1.len(), 1);
    }

    #[test]
    fn mem_caps_the_contribution_with_a_size_and_refuses_nonsense() {
        assert_eq!(parse("mem=64M").0.mem, Some(64 << 20));
        assert_eq!(parse("mem=2g").0.mem, Some(2 << 30));
        assert_eq!(parse("mem=4194304").0.mem, Some(4 << 20));
        for bad in ["mem=1M", "mem=", "mem=lots", "mem=99999999999T", "mem=M"] {
            let (cfg, errs) = parse(bad);
            assert_eq!(cfg.mem, None, "{bad}");
            assert_eq!(errs.len(), 1, "{bad}");
        }
    }

    #[test]
    fn tscskew_takes_ticks_and_refuses_the_rest() {
        assert_eq!(parse("tscskew=1000000").0.tsc_skew, Some(1_000_000));
        for bad in ["tscskew=-1", "tscskew=2000000000000000000", "tscskew=", "tscskew=x"] {
            let (cfg, errs) = parse(bad);
            assert_eq!((cfg.tsc_skew, errs.len()), (None, 1), "{bad}");
        }
    }

    #[test]
    fn dilation_takes_a_factor_from_1_to_100() {
        assert_eq!(parse("").0.dilation, 1);
        assert_eq!(parse("dilation=10").0.dilation, 10);
        for bad in ["dilation=0", "dilation=101", "dilation=1.5", "dilation=-2"] {
            let (cfg, errs) = parse(bad);
            assert_eq!((cfg.dilation, errs.len()), (1, 1), "{bad}");
        }
        assert_eq!(parse("x dilation").1, vec![CmdlineError::MissingValue("dilation")]);
    }

    #[test]
    fn hold_takes_microseconds_up_to_a_second() {
        assert_eq!(parse("hold=250").0.hold_us, Some(250));
        assert_eq!(parse("hold=0").0.hold_us, Some(0));
        for bad in ["hold=-1", "hold=2000000", "hold=soon"] {
            let (cfg, errs) = parse(bad);
            assert_eq!((cfg.hold_us, errs.len()), (None, 1), "{bad}");
        }
    }

    #[test]
    fn empty_line_gives_defaults() {
        assert_eq!(parse(""), (Config::default(), Vec::new()));
        assert_eq!(parse("gestalt.elf"), (Config::default(), Vec::new()));
    }

    #[test]
    fn unknown_key_and_bad_values_are_reported_and_the_rest_still_applies() {
        let (cfg, errs) =
            parse("k bogus=1 nodes=abc nodes=0 ip=1.2.3/8 test=nope port=99999 cluster=5");
        assert_eq!(cfg.cluster, 5);
        assert_eq!(cfg.nodes, None);
        assert_eq!(errs.len(), 6, "{errs:?}");
        assert_eq!(errs[0], CmdlineError::UnknownKey("bogus".into()));
        assert!(errs[1].to_string().contains("bad value 'abc' for 'nodes'"));
        assert!(errs[3].to_string().contains("A.B.C.D/N"));
    }

    #[test]
    fn bad_test_name_lists_every_built_in_test() {
        let (_, errs) = parse("x test=nope");
        let msg = errs[0].to_string();
        for t in TESTS {
            assert!(msg.contains(t), "{msg} misses {t}");
        }
    }

    #[test]
    fn key_without_value_is_reported() {
        let (_, errs) = parse("x nodes");
        assert_eq!(errs, vec![CmdlineError::MissingValue("nodes")]);
    }

    #[test]
    fn hex_key_must_be_whole_bytes_of_sane_length() {
        let key = "00112233445566778899aabbccddeeff";
        assert_eq!(parse(&format!("x key={key}")).0.key.unwrap().len(), 16);
        assert_eq!(parse("x key=0011").1.len(), 1);
        assert_eq!(parse(&format!("x key={key}0")).1.len(), 1);
        assert_eq!(parse(&format!("x key=zz{}", &key[2..])).1.len(), 1);
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let samples =
            ["=", "==", "a=b=c", "ip=/", "ip=1.2.3.4/", "key=é", "\u{0} \u{ff}", "nodes=-1"];
        for s in samples {
            let _ = parse(s);
            let _ = parse(&format!("img {s}"));
        }
    }
}
