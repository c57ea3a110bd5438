//! The boot loader configurations written next to the image: iPXE script, PXELINUX config and
//! GRUB config. Plain text builders, tested on the host.

/// Quote a word for grub.cfg (single quotes; a quote inside becomes '\\'').
fn grub_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// A module word list is its file name, then optional arguments: `payload-litmus runs=2000`.
/// The module's command line is the whole list (file name first, as the loaders do).
pub fn module_file(module: &str) -> &str {
    module.split_whitespace().next().unwrap_or("")
}

/// The iPXE script `boot.ipxe`: loads `gestalt.elf` (and modules) from the same TFTP root.
pub fn ipxe_script(cmdline: &str, modules: &[String]) -> String {
    let mut s = String::from("#!ipxe\n# Gestalt node boot (written by gestalt-image build)\n");
    s += &format!("kernel gestalt.elf {cmdline}\n");
    for m in modules {
        s += &format!("module {} {m}\n", module_file(m));
    }
    s += "boot\n";
    s
}

/// `pxelinux.cfg/default` for PXELINUX with mboot.c32 (modules separated by `---`).
pub fn pxelinux_cfg(cmdline: &str, modules: &[String]) -> String {
    let mut append = format!("gestalt.elf {cmdline}");
    for m in modules {
        append += &format!(" --- {} {m}", module_file(m));
    }
    format!(
        "# Gestalt node boot through PXELINUX (written by gestalt-image build); needs pxelinux.0,\n\
         # ldlinux.c32, libcom32.c32 and mboot.c32 from syslinux in the TFTP root.\n\
         SERIAL 0 115200\nDEFAULT gestalt\nPROMPT 0\nTIMEOUT 0\n\
         LABEL gestalt\n  KERNEL mboot.c32\n  APPEND {append}\n"
    )
}

/// `grub.cfg` for the ISO: serial console, no menu delay, `multiboot` + `module` lines.
pub fn grub_cfg(cmdline: &str, modules: &[String]) -> String {
    let args: Vec<String> = cmdline.split_whitespace().map(grub_quote).collect();
    let mut s = String::from(
        "# Gestalt node boot (written by gestalt-image build)\n\
         serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n\
         terminal_input serial console\nterminal_output serial console\n\
         set timeout=0\nset default=0\n\
         menuentry \"Gestalt\" {\n",
    );
    s += &format!("  multiboot /boot/gestalt.elf {}\n", args.join(" "));
    for m in modules {
        let words: Vec<String> = m.split_whitespace().map(grub_quote).collect();
        s += &format!("  module /boot/{} {}\n", module_file(m), words.join(" "));
    }
    s += "  boot\n}\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_config_boots_the_image_with_quoted_arguments_and_modules() {
        let cfg = grub_cfg("nodes=2 key='x'", &["guest.elf".to_string()]);
        assert!(cfg.contains("multiboot /boot/gestalt.elf 'nodes=2' 'key='\\''x'\\'''\n"), "{cfg}");
        assert!(cfg.contains("module /boot/guest.elf 'guest.elf'\n"), "{cfg}");
    }

    #[test]
    fn a_module_with_arguments_is_loaded_from_its_file_with_the_whole_command_line() {
        let m = ["payload-litmus runs=2000".to_string()];
        let cfg = grub_cfg("nodes=2", &m);
        assert!(
            cfg.contains("module /boot/payload-litmus 'payload-litmus' 'runs=2000'\n"),
            "{cfg}"
        );
        assert!(ipxe_script("", &m).contains("module payload-litmus payload-litmus runs=2000\n"));
        assert!(pxelinux_cfg("", &m).contains(" --- payload-litmus payload-litmus runs=2000"));
        assert!(cfg.contains("set timeout=0"));
        assert!(cfg.contains("terminal_output serial"));
    }

    #[test]
    fn ipxe_script_loads_the_image_relative_to_itself() {
        let s = ipxe_script("nodes=2", &[]);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel gestalt.elf nodes=2\n"));
        assert!(s.ends_with("boot\n"));
    }

    #[test]
    fn pxelinux_config_uses_mboot_with_modules_after_triple_dashes() {
        let s = pxelinux_cfg("a=1", &["g.elf".to_string()]);
        assert!(s.contains("KERNEL mboot.c32"));
        assert!(s.contains("APPEND gestalt.elf a=1 --- g.elf g.elf"));
    }
}
