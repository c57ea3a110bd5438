//! `gestalt-cluster run`: boot N emulated nodes joined by the virtual switch and show every
//! console, prefixed `n0| `, `n1| `, …; stdin lines go to node 0's console (`N: cmd` to node N).
//! Ctrl-C, SIGTERM or end of input stops every emulator. `make run` calls this.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gestalt_ci::{linux, Artifacts, Boot, Cluster, Emu, NodeSpec};

const USAGE: &str = "\
usage: gestalt-cluster run [--nodes N] [--emu qemu|bochs] [--boot kernel|iso|pxe|disk] [--cpus C]
                           [--out DIR] [--cmdline \"k=v ...\"] [--seed S] [--guest FILE|linux]
  Boots N nodes (default 2; QEMU boots with -kernel, Bochs from the ISO) joined by a virtual
  switch on 127.0.0.1 and shows their consoles prefixed by node. With --guest, every node
  boots FILE as its first module and the cluster runs it as one guest (VMX on Bochs, SVM with
  nested paging on QEMU). --guest linux fetches Debian's cloud kernel and busybox (apt-get
  download, cached in DIR/linux/), packs the initramfs with ci/linux/init and boots it with
  a shell on the guest's console (Ctrl-] then Enter gives node 0's console to it); across
  Bochs nodes with dilation=20 unless --cmdline sets dilation=. Type a
  line to send it to node 0, or `N: line` for node N. Ctrl-C or end of input stops everything.";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

struct Options {
    nodes: usize,
    emu: Emu,
    boot: Option<Boot>,
    cpus: u32,
    out: Option<PathBuf>,
    cmdline: String,
    seed: u64,
    guest: Option<Guest>,
}

/// What the cluster runs as its guest.
enum Guest {
    /// A Multiboot kernel.
    File(PathBuf),
    /// Debian's kernel with our initramfs and its shell.
    Linux,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        nodes: 2,
        emu: Emu::Qemu,
        boot: None,
        cpus: 1,
        out: None,
        cmdline: String::new(),
        seed: 1,
        guest: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--nodes" => {
                o.nodes = val()?.parse().map_err(|_| "--nodes takes a number from 1 to 64")?;
                if !(1..=64).contains(&o.nodes) {
                    return Err("--nodes takes a number from 1 to 64".into());
                }
            }
            "--emu" => o.emu = val()?.parse()?,
            "--boot" => {
                o.boot = Some(match val()?.as_str() {
                    "kernel" => Boot::Kernel,
                    "iso" => Boot::Iso,
                    "pxe" => Boot::Pxe,
                    "disk" => Boot::Disk,
                    other => {
                        return Err(format!("unknown boot '{other}': use kernel, iso, pxe or disk"))
                    }
                });
            }
            "--cpus" => o.cpus = val()?.parse().map_err(|_| "--cpus takes a number")?,
            "--out" => o.out = Some(PathBuf::from(val()?)),
            "--cmdline" => o.cmdline = val()?,
            "--seed" => o.seed = val()?.parse().map_err(|_| "--seed takes a number")?,
            "--guest" => {
                let g = val()?;
                if g == "linux" {
                    o.guest = Some(Guest::Linux);
                    continue;
                }
                let g = PathBuf::from(g);
                if !g.is_file() {
                    return Err(format!(
                        "--guest {}: no such file (make payloads builds the test guests; `linux` boots Debian's kernel)",
                        g.display()
                    ));
                }
                o.guest = Some(Guest::File(g));
            }
            other => return Err(format!("unknown option '{other}'\n{USAGE}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => parse(&args[1..]).and_then(|o| run(&o)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gestalt-cluster: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A node's console split into lines for the prefixed display.
struct Display {
    prefix: String,
    pos: usize,
    partial: Vec<u8>,
    partial_since: Option<Instant>,
}

impl Display {
    /// Print complete lines; print a partial line (a prompt) once it has been quiet a moment.
    fn show(&mut self, new: &[u8], out: &mut impl Write) {
        for &b in new {
            match b {
                b'\n' => {
                    let line = String::from_utf8_lossy(&self.partial).replace('\r', "");
                    let _ = writeln!(out, "{}{}", self.prefix, line);
                    self.partial.clear();
                }
                _ => self.partial.push(b),
            }
        }
        if self.partial.is_empty() {
            self.partial_since = None;
        } else if !new.is_empty() {
            self.partial_since = Some(Instant::now());
        }
        if self.partial_since.is_some_and(|t| t.elapsed() > Duration::from_millis(300)) {
            let line = String::from_utf8_lossy(&self.partial).replace('\r', "");
            let _ = writeln!(out, "{}{}", self.prefix, line);
            self.partial.clear();
            self.partial_since = None;
        }
    }
}

fn run(o: &Options) -> Result<(), String> {
    let art = o.out.as_ref().map_or_else(Artifacts::locate, Artifacts::at);
    let boot = o.boot.unwrap_or(match o.emu {
        Emu::Qemu => Boot::Kernel,
        Emu::Bochs => Boot::Iso,
    });
    // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    eprintln!(
        "gestalt-cluster: booting {} {:?} node(s) from {} (Ctrl-C stops them)",
        o.nodes,
        o.emu,
        art.dir().display()
    );
    let kinds = vec![(o.emu, boot); o.nodes];
    let mut cmdline = o.cmdline.clone();
    let modules = match &o.guest {
        Some(Guest::File(g)) => vec![(g.clone(), "guest".to_string())],
        Some(Guest::Linux) => {
            let m = linux_modules(&art)?;
            let has = |key: &str, c: &str| c.split_whitespace().any(|w| w.starts_with(key));
            if !has("mem=", &cmdline) {
                cmdline = format!("{cmdline} {}", linux::GUEST_MEM);
            }
            // Across Bochs nodes a page round trip outlasts Linux's tick: dilate the guest's
            // clock as ci/tests/linux_span.rs does (docs/design.md §6).
            if o.nodes > 1 && o.emu == Emu::Bochs && !has("dilation=", &cmdline) {
                cmdline = format!("{cmdline} {}", linux::SPAN_DILATION);
                eprintln!(
                    "gestalt-cluster: Linux across Bochs nodes runs with {}: its clock runs that many times slower than the emulated one",
                    linux::SPAN_DILATION
                );
            }
            eprintln!(
                "gestalt-cluster: the kernel boots in a few minutes under Bochs (under a minute on QEMU); at `init: shell on the console`, type Ctrl-] then Enter to give node 0's console to the guest"
            );
            m
        }
        None => Vec::new(),
    };
    let linux = matches!(o.guest, Some(Guest::Linux));
    let shape = |spec: NodeSpec| {
        let spec = spec.modules(&modules);
        if linux {
            spec.mem_mib(linux::NODE_MIB)
        } else {
            spec
        }
    };
    let mut cluster = Cluster::start_shaped(&kinds, o.cpus, &cmdline, &art, o.seed, &shape)
        .map_err(|e| e.to_string())?;
    for n in &cluster.nodes {
        eprintln!(
            "gestalt-cluster: {} is pid {}, console log {}",
            n.name(),
            n.pid(),
            n.console().log_path().display()
        );
    }

    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });

    let mut displays: Vec<Display> = (0..cluster.nodes.len())
        .map(|i| Display {
            prefix: format!("n{i}| "),
            pos: 0,
            partial: Vec::new(),
            partial_since: None,
        })
        .collect();
    let stdout = std::io::stdout();
    let mut result = Ok(());
    while !STOP.load(Ordering::Relaxed) {
        let mut out = stdout.lock();
        for (node, d) in cluster.nodes.iter().zip(displays.iter_mut()) {
            let (bytes, end) = node.console().bytes_from(d.pos);
            d.pos = end;
            d.show(&bytes, &mut out);
        }
        let _ = out.flush();
        drop(out);
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(line)) => {
                let (target, text) = route(&line, cluster.nodes.len());
                if let Err(e) = cluster.nodes[target].send_line(text) {
                    eprintln!("gestalt-cluster: n{target}: {e}");
                }
            }
            Ok(None) => {
                // End of input: give the nodes a moment to answer the last line, then stop.
                std::thread::sleep(Duration::from_millis(500));
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(gone) = cluster.nodes.iter().position(|n| !n.console().is_open()) {
            result =
                Err(format!("node n{gone} stopped (its console closed); stopping the cluster"));
            break;
        }
    }
    let mut out = stdout.lock();
    for (node, d) in cluster.nodes.iter().zip(displays.iter_mut()) {
        let (bytes, _) = node.console().bytes_from(d.pos);
        d.show(&bytes, &mut out);
    }
    drop(out);
    eprintln!("gestalt-cluster: stopping {} node(s)", cluster.nodes.len());
    cluster.nodes.clear();
    result
}

/// The Linux guest's modules: the kernel (with the shell word on its command line) and an
/// initramfs packed now in `art`'s `linux/`.
fn linux_modules(art: &Artifacts) -> Result<Vec<(PathBuf, String)>, String> {
    let (vmlinuz, busybox) = linux::kernel_and_busybox(art).map_err(|e| e.to_string())?;
    let initrd = art.dir().join("linux").join("initrd-shell.cpio");
    linux::initramfs(&busybox, &initrd)?;
    let cmdline = format!("{} {}", linux::CMDLINE, linux::SHELL_WORD);
    Ok(linux::modules(&vmlinuz, &initrd, &cmdline))
}

/// `N: text` goes to node N (when N names a node), anything else to node 0.
fn route(line: &str, nodes: usize) -> (usize, &str) {
    if let Some((n, rest)) = line.split_once(':') {
        if let Ok(i) = n.trim().parse::<usize>() {
            if i < nodes {
                return (i, rest.strip_prefix(' ').unwrap_or(rest));
            }
        }
    }
    (0, line)
}
