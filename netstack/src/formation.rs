//! Cluster formation (DESIGN.md §5), sans-IO: collects authenticated announcements, refuses
//! nodes running another image, and commits a view once the expected number of nodes is
//! there (or the formation timeout passed). Node ids: `primary`-flagged nodes first, then by
//! MAC, so every node computes the same ids from the same set. The firmware feeds it the
//! announcements it receives ([`crate::membership`]) and the time.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use crate::membership::Announce;
use crate::transport::NodeId;

/// One member of a committed view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// What it announced.
    pub announce: Announce,
    /// Its IPv4 address and transport port.
    pub addr: ([u8; 4], u16),
}

/// The committed membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Members by id.
    pub members: Vec<Member>,
    /// This node's id.
    pub me: NodeId,
}

impl View {
    /// Total cores.
    pub fn cores(&self) -> u32 {
        self.members.iter().map(|m| u32::from(m.announce.cores)).sum()
    }

    /// Total guest memory in bytes.
    pub fn memory(&self) -> u64 {
        // Announced by peers: never trust a sum of them not to overflow.
        self.members.iter().fold(0u64, |t, m| t.saturating_add(m.announce.memory_bytes))
    }

    /// The member with id `id`.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(usize::from(id))
    }
}

/// What an announcement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A node not seen before joined the candidate set.
    New,
    /// A node already known (re-announcement).
    Known,
    /// A member of the committed view announced from a new address (its link-local address
    /// changed after a late conflict): the view now has the new one.
    Moved {
        /// The member.
        id: NodeId,
        /// Its new IPv4 address and port.
        addr: ([u8; 4], u16),
    },
    /// Refused: see the reason.
    Refused(Refusal),
}

/// Why a node was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It runs another image build.
    OtherBuild {
        /// Its MAC.
        mac: [u8; 6],
        /// First bytes of its build id.
        build: [u8; 8],
    },
    /// It arrived after the view was committed without it.
    Late {
        /// Its MAC.
        mac: [u8; 6],
    },
    /// It claims our own MAC (a misconfigured or looped-back network).
    DuplicateMac,
}

/// A MAC address shown as people write it.
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::OtherBuild { mac, build } => {
                write!(f, "node {} runs another image (build ", Mac(*mac))?;
                for b in build {
                    write!(f, "{b:02x}")?;
                }
                write!(f, "); all nodes must boot the same image")
            }
            Refusal::Late { mac } => {
                write!(
                    f,
                    "node {} arrived after the view was committed; reboot the cluster to add it",
                    Mac(*mac)
                )
            }
            Refusal::DuplicateMac => write!(f, "another node claims this node's MAC"),
        }
    }
}

/// An announcement and the (IPv4, port) it came from.
type Seen = (Announce, ([u8; 4], u16));

/// The formation state machine.
pub struct Formation {
    me: Announce,
    my_addr: ([u8; 4], u16),
    expected: Option<u16>,
    deadline: u64,
    seen: BTreeMap<[u8; 6], Seen>,
    view: Option<View>,
}

impl Formation {
    /// Starts forming at `now` (µs). Without an expected count the view commits with whoever
    /// is there after `timeout_us`.
    pub fn new(
        me: Announce,
        my_addr: ([u8; 4], u16),
        expected: Option<u16>,
        now: u64,
        timeout_us: u64,
    ) -> Self {
        Formation {
            me,
            my_addr,
            expected,
            deadline: now.saturating_add(timeout_us),
            seen: BTreeMap::new(),
            view: None,
        }
    }

    /// This node's announcement.
    pub fn me(&self) -> &Announce {
        &self.me
    }

    /// The node count the view waits for: `nodes=` here, or learnt from a peer.
    pub fn expected(&self) -> Option<u16> {
        self.expected
    }

    /// Nodes known so far, this one included.
    pub fn count(&self) -> usize {
        self.seen.len() + 1
    }

    /// Takes an authenticated announcement received from `addr`.
    pub fn on_announce(&mut self, a: Announce, addr: ([u8; 4], u16)) -> Heard {
        if a.mac == self.me.mac {
            return if a == self.me { Heard::Known } else { Heard::Refused(Refusal::DuplicateMac) };
        }
        if a.build_id != self.me.build_id {
            let mut build = [0; 8];
            build.copy_from_slice(&a.build_id[..8]);
            return Heard::Refused(Refusal::OtherBuild { mac: a.mac, build });
        }
        if let Some(v) = &mut self.view {
            return match v.members.iter_mut().find(|m| m.announce.mac == a.mac) {
                Some(m) if m.addr != addr => {
                    m.addr = addr;
                    Heard::Moved { id: m.id, addr }
                }
                Some(_) => Heard::Known,
                None => Heard::Refused(Refusal::Late { mac: a.mac }),
            };
        }
        // A node started without `nodes=` takes the count from one that has it, so a cluster
        // where only some command lines say `nodes=N` still commits one view of N.
        if self.expected.is_none() && a.expected_nodes > 0 {
            self.expected = Some(a.expected_nodes);
        }
        match self.seen.insert(a.mac, (a, addr)) {
            None => Heard::New,
            Some(_) => Heard::Known,
        }
    }

    /// Commits the view when it is complete or the timeout passed; then returns it.
    pub fn poll(&mut self, now: u64) -> Option<&View> {
        if self.view.is_none() {
            let complete = self.expected.is_some_and(|n| self.count() >= usize::from(n));
            if complete
                || (self.expected.is_none() && now >= self.deadline)
                || self.expected == Some(1)
            {
                self.view = Some(self.commit());
            }
        }
        self.view.as_ref()
    }

    /// The committed view, if any.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    fn commit(&self) -> View {
        let mut all: Vec<Seen> = self.seen.values().copied().collect();
        all.push((self.me, self.my_addr));
        all.sort_by_key(|(a, _)| (!a.primary, a.mac));
        if let Some(n) = self.expected {
            all.truncate(usize::from(n));
        }
        let members: Vec<Member> = all
            .into_iter()
            .enumerate()
            .map(|(i, (announce, addr))| Member { id: i as NodeId, announce, addr })
            .collect();
        let me = members.iter().find(|m| m.announce.mac == self.me.mac).map_or(0, |m| m.id);
        View { members, me }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(last: u8, primary: bool) -> (Announce, ([u8; 4], u16)) {
        let a = Announce {
            cluster_id: 1,
            epoch: 7,
            build_id: [0xb1; 16],
            mac: [0x52, 0x54, 0, 0, 0, last],
            cores: 2,
            memory_bytes: 100 << 20,
            expected_nodes: 3,
            primary,
        };
        (a, ([169, 254, 0, last], 7470))
    }

    #[test]
    fn view_commits_when_the_expected_count_is_reached_with_ids_by_mac() {
        let (me, addr) = node(5, false);
        let mut f = Formation::new(me, addr, Some(3), 0, 1_000_000);
        let (a, aa) = node(9, false);
        assert_eq!(f.on_announce(a, aa), Heard::New);
        assert_eq!(f.on_announce(a, aa), Heard::Known);
        assert!(f.poll(10).is_none());
        let (b, ba) = node(1, false);
        assert_eq!(f.on_announce(b, ba), Heard::New);
        let v = f.poll(20).unwrap().clone();
        let macs: Vec<u8> = v.members.iter().map(|m| m.announce.mac[5]).collect();
        assert_eq!(macs, vec![1, 5, 9]);
        assert_eq!(v.me, 1);
        assert_eq!(v.cores(), 6);
        assert_eq!(v.member(2).unwrap().addr, ([169, 254, 0, 9], 7470));
    }

    #[test]
    fn every_node_computes_the_same_ids() {
        let nodes: Vec<_> = [7u8, 3, 200, 4].iter().map(|l| node(*l, *l == 200)).collect();
        let views: Vec<View> = nodes
            .iter()
            .map(|(me, addr)| {
                let mut f = Formation::new(*me, *addr, Some(4), 0, 1);
                for (a, aa) in nodes.iter().filter(|(a, _)| a.mac != me.mac) {
                    f.on_announce(*a, *aa);
                }
                f.poll(0).unwrap().clone()
            })
            .collect();
        for v in &views {
            let macs: Vec<u8> = v.members.iter().map(|m| m.announce.mac[5]).collect();
            // The `primary` node is node 0; the rest follow by MAC.
            assert_eq!(macs, vec![200, 3, 4, 7]);
        }
        let mes: Vec<NodeId> = views.iter().map(|v| v.me).collect();
        assert_eq!(mes, vec![3, 1, 0, 2]);
    }

    #[test]
    fn without_an_expected_count_the_timeout_commits_what_is_there() {
        let (mut me, addr) = node(5, false);
        me.expected_nodes = 0;
        let mut f = Formation::new(me, addr, None, 100, 1000);
        let (mut other, oa) = node(6, false);
        other.expected_nodes = 0;
        f.on_announce(other, oa);
        assert!(f.poll(1099).is_none());
        assert_eq!(f.poll(1100).unwrap().members.len(), 2);
    }

    #[test]
    fn absurd_announced_memory_saturates_instead_of_overflowing() {
        let (mut me, addr) = node(5, false);
        me.memory_bytes = u64::MAX;
        let mut f = Formation::new(me, addr, Some(2), 0, 1);
        let (mut other, oa) = node(6, false);
        other.memory_bytes = u64::MAX;
        f.on_announce(other, oa);
        assert_eq!(f.poll(0).unwrap().memory(), u64::MAX);
    }

    #[test]
    fn a_node_without_nodes_takes_the_count_from_a_peer_that_has_it() {
        let (mut me, addr) = node(5, false);
        me.expected_nodes = 0;
        let mut f = Formation::new(me, addr, None, 0, 1000);
        let (a, aa) = node(6, false); // says nodes=3
        f.on_announce(a, aa);
        // Past the timeout, but two of the three are not enough.
        assert!(f.poll(5000).is_none());
        f.on_announce(node(7, false).0, node(7, false).1);
        assert_eq!(f.poll(5001).unwrap().members.len(), 3);
    }

    #[test]
    fn a_member_announcing_from_a_new_address_is_followed() {
        let (me, addr) = node(5, false);
        let mut f = Formation::new(me, addr, Some(2), 0, 1);
        let (a, aa) = node(6, false);
        f.on_announce(a, aa);
        assert!(f.poll(0).is_some());
        let moved = ([169, 254, 9, 9], 7470);
        assert_eq!(f.on_announce(a, moved), Heard::Moved { id: 1, addr: moved });
        assert_eq!(f.view().unwrap().member(1).unwrap().addr, moved);
        assert_eq!(f.on_announce(a, moved), Heard::Known);
    }

    #[test]
    fn a_single_node_cluster_commits_at_once() {
        let (me, addr) = node(5, false);
        let mut f = Formation::new(me, addr, Some(1), 0, 1_000_000);
        assert_eq!(f.poll(0).unwrap().members.len(), 1);
    }

    #[test]
    fn other_builds_late_nodes_and_mac_clashes_are_refused() {
        let (me, addr) = node(5, false);
        let mut f = Formation::new(me, addr, Some(2), 0, 1_000_000);
        let (mut other, oa) = node(6, false);
        other.build_id = [0xee; 16];
        let heard = f.on_announce(other, oa);
        assert!(
            matches!(heard, Heard::Refused(Refusal::OtherBuild { build, .. }) if build == [0xee; 8])
        );
        if let Heard::Refused(r) = heard {
            assert!(r.to_string().contains("runs another image (build eeeeeeeeeeeeeeee)"));
        }
        let mut clone = me;
        clone.cores = 64;
        assert_eq!(f.on_announce(clone, oa), Heard::Refused(Refusal::DuplicateMac));
        f.on_announce(node(7, false).0, node(7, false).1);
        assert!(f.poll(0).is_some());
        assert_eq!(
            f.on_announce(node(8, false).0, node(8, false).1),
            Heard::Refused(Refusal::Late { mac: node(8, false).0.mac })
        );
        assert_eq!(f.on_announce(node(7, false).0, node(7, false).1), Heard::Known);
    }
}
