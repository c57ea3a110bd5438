//! A cluster: N nodes of one emulator joined by one virtual switch, node i with MAC
//! 52:54:00:47:53:<i> and `nodes=N` on its command line (node 0 also `primary`).

use crate::artifacts::Artifacts;
use crate::error::HarnessError;
use crate::node::{Boot, Emu, Node, NodeSpec};
use crate::switch::{PortKind, Switch};

/// Nodes and the switch that joins them. Dropping it stops every node, then the switch.
pub struct Cluster {
    /// The nodes, `n0`, `n1`, …
    pub nodes: Vec<Node>,
    /// The switch.
    pub switch: Switch,
}

impl Cluster {
    /// Boot `n` nodes with `cpus` CPUs each; `cmdline` is added to every node's command line.
    pub fn start(
        n: usize,
        emu: Emu,
        boot: Boot,
        cpus: u32,
        cmdline: &str,
        art: &Artifacts,
        seed: u64,
    ) -> Result<Cluster, HarnessError> {
        let nodes: Vec<(Emu, Boot)> = vec![(emu, boot); n];
        Self::start_mixed(&nodes, cpus, cmdline, art, seed)
    }

    /// Boot one node per `(emulator, boot path)` entry, all on one switch (QEMU and Bochs
    /// nodes can share it: both carry one frame per datagram).
    pub fn start_mixed(
        kinds: &[(Emu, Boot)],
        cpus: u32,
        cmdline: &str,
        art: &Artifacts,
        seed: u64,
    ) -> Result<Cluster, HarnessError> {
        Self::start_with_guest(kinds, cpus, cmdline, art, seed, None)
    }

    /// [`Cluster::start_mixed`], every node booted with `guest` as its first module (only the
    /// primary loads it; the others serve their share of the guest without it).
    pub fn start_with_guest(
        kinds: &[(Emu, Boot)],
        cpus: u32,
        cmdline: &str,
        art: &Artifacts,
        seed: u64,
        guest: Option<&std::path::Path>,
    ) -> Result<Cluster, HarnessError> {
        Self::start_shaped(kinds, cpus, cmdline, art, seed, &|spec: NodeSpec| match guest {
            Some(g) => spec.guest(g),
            None => spec,
        })
    }

    /// [`Cluster::start_mixed`] with each node's spec passed through `shape` (its guest, its
    /// modules, its memory) before it boots.
    pub fn start_shaped(
        kinds: &[(Emu, Boot)],
        cpus: u32,
        cmdline: &str,
        art: &Artifacts,
        seed: u64,
        shape: &dyn Fn(NodeSpec) -> NodeSpec,
    ) -> Result<Cluster, HarnessError> {
        let n = kinds.len();
        let mut switch = Switch::new(seed)?;
        let mut nodes = Vec::with_capacity(n);
        for (i, &(emu, boot)) in kinds.iter().enumerate() {
            let kind = match emu {
                Emu::Qemu => PortKind::Qemu,
                Emu::Bochs => PortKind::Bochs,
            };
            let port = switch.add_port(kind)?;
            let mut line = format!("nodes={n}");
            if i == 0 {
                line += " primary";
            }
            if !cmdline.trim().is_empty() {
                line += " ";
                line += cmdline.trim();
            }
            let mac = [0x52, 0x54, 0x00, 0x47, 0x53, i as u8];
            let spec =
                NodeSpec::new(&format!("n{i}"), emu, boot).cpus(cpus).cmdline(&line).nic(port, mac);
            nodes.push(Node::start(&shape(spec), art)?);
        }
        Ok(Cluster { nodes, switch })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes first (each kills its emulator by pid), then the switch's threads.
        self.nodes.clear();
    }
}
