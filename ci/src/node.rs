//! One emulated Gestalt node: an emulator process (QEMU TCG or Bochs) booting the image, its
//! captured COM1 console, an optional NIC on the virtual switch, and teardown by pid on drop.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::artifacts::Artifacts;
use crate::console::{Console, WaitFail};
use crate::error::HarnessError;
use crate::switch::SwitchPort;
use crate::util::{log_dir, unique, TempDir};

/// Which emulator runs the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emu {
    /// `qemu-system-x86_64` with TCG.
    Qemu,
    /// `bochs-bin` (VMX-capable Skylake-X CPU model).
    Bochs,
}

impl std::str::FromStr for Emu {
    type Err = String;
    fn from_str(s: &str) -> Result<Emu, String> {
        match s {
            "qemu" => Ok(Emu::Qemu),
            "bochs" => Ok(Emu::Bochs),
            _ => Err(format!("unknown emulator '{s}': use qemu or bochs")),
        }
    }
}

/// How the node boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// QEMU `-kernel gestalt.elf -append CMDLINE` (multiboot). QEMU only.
    Kernel,
    /// From CD: `gestalt.iso` (GRUB); with a command line, a per-node ISO is made.
    Iso,
    /// Real PXE: QEMU's TFTP serves `pxe/`, its e1000 ROM (iPXE) runs `boot.ipxe`. QEMU only.
    Pxe,
    /// Real PXE through PXELINUX: QEMU's TFTP serves `pxe/`, its ROM chains `pxelinux.0`,
    /// which loads the image with `mboot.c32`. QEMU only; needs `pxelinux` and
    /// `syslinux-common` installed when the image was built.
    Pxelinux,
    /// The ISO as a raw hard disk, as after `dd` to a USB stick (writes are discarded). QEMU only.
    Disk,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Name used in logs and errors (`n0`, …).
    pub name: String,
    /// Emulator.
    pub emu: Emu,
    /// Boot path.
    pub boot: Boot,
    /// CPUs (QEMU `-smp`, Bochs `cpu: count=`).
    pub cpus: u32,
    /// Memory in MiB.
    pub mem_mib: u32,
    /// Kernel command line (contracts.md §4).
    pub cmdline: String,
    /// A NIC on the virtual switch, with its MAC.
    pub nic: Option<(SwitchPort, [u8; 6])>,
    /// QEMU's device model for that NIC (`e1000`, `e1000e`, `virtio-net-pci`); Bochs has
    /// only the e1000.
    pub nic_model: String,
    /// The Multiboot modules with their command lines (file, `name args…`): the guest
    /// ([`NodeSpec::guest`]), or a Linux guest's kernel and initrd.
    pub modules: Vec<(PathBuf, String)>,
    /// QEMU's `-cpu` (TCG): [`QEMU_CPU`] unless a test asks for another model.
    pub qemu_cpu: String,
}

/// The CPU QEMU nodes get: QEMU 7.2 TCG emulates AMD SVM with nested paging (no VMX, no
/// NRIPS), so the firmware runs guests there with its SVM backend (docs/design.md §9).
pub const QEMU_CPU: &str = "qemu64,+svm,+npt";

/// How QEMU nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// `-accel kvm -cpu host`: `/dev/kvm` opens and the host CPU shows VMX or SVM to it.
    Kvm,
    /// `-accel tcg -cpu` [`QEMU_CPU`] (SVM with nested paging, emulated).
    Tcg,
}

/// KVM when `/dev/kvm` can be opened and `/proc/cpuinfo` shows `vmx` or `svm` (the guest's
/// hypervisor needs them passed through), else TCG (DESIGN.md §7.5). Chosen once per process
/// and said on stderr.
pub fn accelerator() -> Accel {
    static CHOSEN: std::sync::OnceLock<Accel> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let (accel, why) = choose(dev, &cpuinfo);
        eprintln!("harness: QEMU nodes run with {accel:?} ({why})");
        accel
    })
}

/// The accelerator for a host where `/dev/kvm` opens (`dev`) with this `/proc/cpuinfo`, and
/// why.
fn choose(dev: bool, cpuinfo: &str) -> (Accel, &'static str) {
    let virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    match (dev, virt) {
        (true, true) => (Accel::Kvm, "/dev/kvm usable and the CPU shows VMX/SVM"),
        (false, _) => (Accel::Tcg, "/dev/kvm cannot be opened"),
        (true, false) => (Accel::Tcg, "/dev/kvm opens but the CPU shows no VMX or SVM"),
    }
}

impl NodeSpec {
    /// A one-CPU, 256 MiB node with an empty command line.
    pub fn new(name: &str, emu: Emu, boot: Boot) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            emu,
            boot,
            cpus: 1,
            mem_mib: 256,
            cmdline: String::new(),
            nic: None,
            nic_model: "e1000".to_string(),
            modules: Vec::new(),
            qemu_cpu: QEMU_CPU.to_string(),
        }
    }

    /// Choose QEMU's `-cpu` (TCG) (e.g. `qemu64,-svm` for a CPU without SVM).
    pub fn qemu_cpu(mut self, cpu: &str) -> NodeSpec {
        self.qemu_cpu = cpu.to_string();
        self
    }

    /// Boot with `path` as the first Multiboot module: the guest (QEMU `-initrd`, or in the
    /// node's ISO).
    pub fn guest(mut self, path: &Path) -> NodeSpec {
        self.modules = vec![(path.to_path_buf(), "guest".to_string())];
        self
    }

    /// Boot with these modules instead, each (file, module command line): the first is the
    /// guest, the second a Linux guest's initrd.
    pub fn modules(mut self, modules: &[(PathBuf, String)]) -> NodeSpec {
        self.modules = modules.to_vec();
        self
    }

    /// Set the memory (MiB).
    pub fn mem_mib(mut self, mib: u32) -> NodeSpec {
        self.mem_mib = mib;
        self
    }

    /// The modules to boot with: (file, module command line).
    fn module_list(&self) -> Vec<(&Path, &str)> {
        self.modules.iter().map(|(p, c)| (p.as_path(), c.as_str())).collect()
    }

    /// Set the CPU count.
    pub fn cpus(mut self, n: u32) -> NodeSpec {
        self.cpus = n;
        self
    }

    /// Set the command line.
    pub fn cmdline(mut self, c: &str) -> NodeSpec {
        self.cmdline = c.to_string();
        self
    }

    /// Choose QEMU's NIC model (`e1000`, `e1000e`, `virtio-net-pci`).
    pub fn nic_model(mut self, model: &str) -> NodeSpec {
        self.nic_model = model.to_string();
        self
    }

    /// Attach a NIC on a switch port.
    pub fn nic(mut self, port: SwitchPort, mac: [u8; 6]) -> NodeSpec {
        self.nic = Some((port, mac));
        self
    }
}

/// A running node. Dropping it kills the emulator (SIGKILL by pid) and reaps it.
pub struct Node {
    name: String,
    child: Child,
    console: Console,
    started: Instant,
    _dir: TempDir,
}

/// Start `cmd` in its own process group (Ctrl-C at a terminal reaches only the harness, which
/// then stops the node) and have the kernel kill it if the harness dies.
fn spawn(mut cmd: Command) -> Result<Child, HarnessError> {
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and calls only prctl(2) and getppid(2),
    // which are async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.spawn().map_err(|source| HarnessError::Spawn { program, source })
}

fn write_file(path: &Path, text: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text)
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}

/// The ISO for this node: the built one, or one made in `dir` for a custom command line.
fn node_iso(spec: &NodeSpec, art: &Artifacts, dir: &Path) -> Result<PathBuf, HarnessError> {
    if spec.cmdline.is_empty() && spec.module_list().is_empty() {
        return art.iso();
    }
    let elf = art.elf()?;
    let bytes = std::fs::read(&elf)
        .map_err(|e| HarnessError::io(format!("reading {}", elf.display()), e))?;
    let iso = dir.join("node.iso");
    gestalt_image::iso::make_iso(&bytes, &spec.cmdline, &spec.module_list(), &iso)
        .map_err(|e| HarnessError::io("making the node's ISO", std::io::Error::other(e)))?;
    Ok(iso)
}

/// QEMU's `-initrd` for Multiboot modules: `file args` per module, comma-separated, a comma
/// inside doubled. The module's name (the first word of its command line) is the file.
fn qemu_modules(modules: &[(&Path, &str)]) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::new();
    for (i, (path, cmdline)) in modules.iter().enumerate() {
        if i > 0 {
            s.push(",");
        }
        s.push(path.as_os_str().to_string_lossy().replace(',', ",,"));
        if let Some((_, args)) = cmdline.split_once(' ') {
            s.push(" ");
            s.push(args.replace(',', ",,"));
        }
    }
    s
}

impl Node {
    /// Boot a node. Its console log goes to `$GESTALT_LOG_DIR` (default `<tmp>/gestalt-ci-logs`).
    pub fn start(spec: &NodeSpec, art: &Artifacts) -> Result<Node, HarnessError> {
        let dir = TempDir::new("gestalt-node")?;
        let log = log_dir().join(format!("{}.log", unique(&spec.name)));
        let (child, console) = match spec.emu {
            Emu::Qemu => Self::start_qemu(spec, art, dir.path(), &log)?,
            Emu::Bochs => Self::start_bochs(spec, art, dir.path(), &log)?,
        };
        Ok(Node { name: spec.name.clone(), child, console, started: Instant::now(), _dir: dir })
    }

    fn start_qemu(
        spec: &NodeSpec,
        art: &Artifacts,
        dir: &Path,
        log: &Path,
    ) -> Result<(Child, Console), HarnessError> {
        let mut cmd = Command::new("qemu-system-x86_64");
        let kvm = spec.qemu_cpu == QEMU_CPU && accelerator() == Accel::Kvm;
        cmd.args(["-nodefaults", "-machine", "pc", "-accel", if kvm { "kvm" } else { "tcg" }]);
        cmd.args(["-display", "none"]);
        cmd.args(["-monitor", "none", "-serial", "stdio", "-no-reboot"]);
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        cmd.arg("-cpu").arg(if kvm { "host" } else { &spec.qemu_cpu });
        cmd.arg("-smp").arg(spec.cpus.to_string());
        cmd.arg("-m").arg(spec.mem_mib.to_string());
        match spec.boot {
            Boot::Kernel => {
                cmd.arg("-kernel").arg(art.elf()?);
                if !spec.cmdline.is_empty() {
                    cmd.arg("-append").arg(&spec.cmdline);
                }
                let modules = spec.module_list();
                if !modules.is_empty() {
                    cmd.arg("-initrd").arg(qemu_modules(&modules));
                }
            }
            Boot::Iso => {
                cmd.arg("-cdrom").arg(node_iso(spec, art, dir)?).args(["-boot", "d"]);
            }
            Boot::Disk => {
                let iso = node_iso(spec, art, dir)?;
                cmd.arg("-drive")
                    .arg(format!("file={},format=raw,if=ide,snapshot=on", iso.display()))
                    .args(["-boot", "c"]);
            }
            Boot::Pxe | Boot::Pxelinux => {
                let root = art.pxe_dir()?;
                let bootfile = if spec.boot == Boot::Pxe { "boot.ipxe" } else { "pxelinux.0" };
                if !root.join(bootfile).is_file() {
                    return Err(HarnessError::MissingArtifact { path: root.join(bootfile) });
                }
                let tftp = if spec.cmdline.is_empty() {
                    root
                } else {
                    // A TFTP root of the node's own: the same files, its command line in the
                    // loader's configuration.
                    let own = dir.join("tftp");
                    std::fs::create_dir_all(own.join("pxelinux.cfg"))
                        .map_err(|e| HarnessError::io("creating the node's TFTP root", e))?;
                    for entry in std::fs::read_dir(&root)
                        .map_err(|e| HarnessError::io("reading the TFTP root", e))?
                        .flatten()
                        .filter(|e| e.path().is_file())
                    {
                        std::fs::copy(entry.path(), own.join(entry.file_name()))
                            .map_err(|e| HarnessError::io("copying the TFTP root", e))?;
                    }
                    write_file(
                        &own.join("boot.ipxe"),
                        &gestalt_image::boot_config::ipxe_script(&spec.cmdline, &[]),
                    )?;
                    write_file(
                        &own.join("pxelinux.cfg").join("default"),
                        &gestalt_image::boot_config::pxelinux_cfg(&spec.cmdline, &[]),
                    )?;
                    own
                };
                // User-mode networking here only serves TFTP to the guest; `restrict=on` keeps
                // every guest packet inside QEMU.
                cmd.arg("-netdev").arg(format!(
                    "user,id=pxe,tftp={},bootfile={bootfile},restrict=on",
                    tftp.display()
                ));
                cmd.args(["-device", "e1000,netdev=pxe,bootindex=1", "-boot", "n"]);
            }
        }
        if let Some((port, mac)) = spec.nic {
            cmd.args(port.qemu_args("n0", &spec.nic_model, mac));
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        cmd.stderr(Stdio::from(
            std::fs::File::create(dir.join("qemu.stderr"))
                .map_err(|e| HarnessError::io("creating the QEMU stderr file", e))?,
        ));
        let mut child = spawn(cmd)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take().map(|s| Box::new(s) as Box<dyn Write + Send>);
        match Console::from_pipe(stdout, stdin, log) {
            Ok(c) => Ok((child, c)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn start_bochs(
        spec: &NodeSpec,
        art: &Artifacts,
        dir: &Path,
        log: &Path,
    ) -> Result<(Child, Console), HarnessError> {
        if spec.boot != Boot::Iso {
            return Err(HarnessError::io(
                "starting Bochs",
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "Bochs nodes boot from the ISO only (Boot::Iso)",
                ),
            ));
        }
        for (file, package) in [
            ("/usr/share/bochs/BIOS-bochs-latest", "bochsbios"),
            ("/usr/share/vgabios/vgabios.bin", "vgabios"),
            ("/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so", "bochs-term"),
        ] {
            if !Path::new(file).exists() {
                return Err(HarnessError::io(
                    "starting Bochs",
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{file} is missing: install the Debian package {package}"),
                    ),
                ));
            }
        }
        let iso = node_iso(spec, art, dir)?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io("binding the Bochs console listener", e))?;
        let port =
            listener.local_addr().map_err(|e| HarnessError::io("console listener", e))?.port();
        // ips=20M with sync=none: emulated time runs ~5x ahead of the instructions Bochs
        // executes (~100 MIPS here), so BIOS and firmware delays cost little real time.
        let mut rc = format!(
            "megs: {mem}\n\
             cpu: model=corei7_skylake_x, count={cpus}, ips=20000000, reset_on_triple_fault=0\n\
             romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
             vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
             ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14\n\
             ata0-master: type=cdrom, path={iso}, status=inserted\n\
             boot: cdrom\n\
             display_library: term\n\
             com1: enabled=1, mode=socket-client, dev=127.0.0.1:{port}\n\
             port_e9_hack: enabled=1\n\
             clock: sync=none, time0=local\n\
             log: {dir}/bochs.log\n\
             panic: action=fatal\n\
             error: action=report\n\
             info: action=ignore\n\
             debug: action=ignore\n\
             sound: driver=dummy\n\
             speaker: enabled=0\n\
             mouse: enabled=0\n",
            mem = spec.mem_mib,
            cpus = spec.cpus,
            iso = iso.display(),
            dir = dir.display(),
        );
        if let Some((port, mac)) = spec.nic {
            rc += "pci: enabled=1, chipset=i440fx, slot1=e1000\n";
            rc += &port.bochs_line(mac);
            rc += "\n";
        } else {
            rc += "pci: enabled=1, chipset=i440fx\n";
        }
        write_file(&dir.join("bochsrc"), &rc)?;
        // The built-in debugger stops at start: continue, and quit when the simulation ends.
        write_file(&dir.join("cmds"), "continue\nquit\n")?;
        let mut cmd = Command::new("bochs-bin");
        cmd.arg("-q").arg("-f").arg(dir.join("bochsrc")).arg("-rc").arg(dir.join("cmds"));
        cmd.current_dir(dir).env("TERM", "dumb");
        let out = |name: &str| {
            std::fs::File::create(dir.join(name))
                .map(Stdio::from)
                .map_err(|e| HarnessError::io("creating a Bochs output file", e))
        };
        cmd.stdin(Stdio::null()).stdout(out("bochs.stdout")?).stderr(out("bochs.stderr")?);
        let console = Console::from_listener(listener, log)?;
        let child = spawn(cmd)?;
        Ok((child, console))
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The emulator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since the emulator was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The console.
    pub fn console(&self) -> &Console {
        &self.console
    }

    fn exit_status(child: &mut Child) -> Option<String> {
        child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// Wait until a complete console line (after the previous match) contains `needle`, and
    /// return that line. On timeout or emulator exit, the error carries what the node printed.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, HarnessError> {
        self.wait(needle, true, timeout)
    }

    /// Like [`Node::wait_for`], but `needle` may end a line still being printed: for prompts
    /// such as `gestalt> `, which have no newline.
    pub fn wait_for_text(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        self.wait(needle, false, timeout)
    }

    fn wait(
        &mut self,
        needle: &str,
        whole_line: bool,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        let child = &mut self.child;
        match self.console.wait_for(needle, whole_line, timeout, &mut || Self::exit_status(child)) {
            Ok(line) => Ok(line),
            Err(WaitFail::Timeout) => Err(HarnessError::Timeout {
                node: self.name.clone(),
                waiting_for: needle.to_string(),
                after: timeout,
                console: self.console.tail_since_cursor(),
                log: self.console.log_path().to_path_buf(),
            }),
            Err(WaitFail::Exited(status)) => Err(HarnessError::Exited {
                node: self.name.clone(),
                status,
                waiting_for: needle.to_string(),
                console: self.console.tail_since_cursor(),
                log: self.console.log_path().to_path_buf(),
            }),
        }
    }

    /// Type a line on the console (a carriage return ends it, as a terminal's Enter does).
    pub fn send_line(&mut self, line: &str) -> Result<(), HarnessError> {
        self.console.write(&format!("{line}\r"), Duration::from_secs(30))
    }

    /// Run a shell command: type it, wait for its echo and the next prompt, and return what
    /// was printed in between (the echoed command line included).
    pub fn command(&mut self, cmd: &str, timeout: Duration) -> Result<String, HarnessError> {
        let start = self.console.skip_to_end();
        self.send_line(cmd)?;
        if !cmd.is_empty() {
            self.wait_for_text(cmd, timeout)?;
        }
        self.wait_for_text("gestalt> ", timeout)?;
        let (bytes, _) = self.console.bytes_from(start);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let end = text.rfind("gestalt> ").unwrap_or(text.len());
        Ok(text[..end].to_string())
    }

    /// Wait for the emulator to exit by itself (e.g. after a `test=` run).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self
                .child
                .try_wait()
                .map_err(|e| HarnessError::io("waiting for the emulator", e))?
            {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    node: self.name.clone(),
                    waiting_for: "the emulator to exit".into(),
                    after: timeout,
                    console: self.console.tail_since_cursor(),
                    log: self.console.log_path().to_path_buf(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGKILL by pid: Bochs ignores SIGTERM. Then reap, so no zombie remains.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod accel_tests {
    use super::*;

    #[test]
    fn qemu_gets_each_module_with_its_arguments_and_commas_doubled() {
        let m =
            [(Path::new("/o/vmlinuz"), "vmlinuz console=ttyS0 a=1,2"), (Path::new("/o/i"), "i")];
        assert_eq!(qemu_modules(&m), "/o/vmlinuz console=ttyS0 a=1,,2,/o/i");
        let spec = NodeSpec::new("n", Emu::Qemu, Boot::Kernel).guest(Path::new("/g"));
        assert_eq!(spec.module_list(), [(Path::new("/g"), "guest")]);
    }

    #[test]
    fn kvm_only_with_the_device_and_vmx_or_svm_in_the_cpu_flags() {
        let svm = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 svm npt\n";
        let plain = "flags\t\t: fpu sse2 hypervisor\nvmx flags\t: none\n";
        assert_eq!(choose(true, svm).0, Accel::Kvm);
        assert_eq!(choose(false, svm).0, Accel::Tcg);
        assert_eq!(choose(true, plain).0, Accel::Tcg);
        assert_eq!(choose(true, "flags : vmx\n").0, Accel::Kvm);
    }
}
