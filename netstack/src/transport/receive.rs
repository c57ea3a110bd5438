//! The receive path: checks a datagram against the session, then takes what it says about
//! our stream (acks, Karn's rule, RACK), about liveness (the echo) and the peer's data.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::peer::{Fragment, Peer};
use super::session::Incoming;
use super::window::seq_lt;
use super::{
    BufferPool, Config, DropReason, Event, Header, Kind, NodeId, Stats, Transport, MAX_WINDOW,
    SENT_LOG,
};

impl Transport {
    pub(super) fn accept(&mut self, now: u64, datagram: &[u8]) -> Result<(), DropReason> {
        let (h, payload) = Header::open(datagram, &self.auth, self.cfg.cluster_id, self.cfg.local)?;
        let i = self.peer_index(h.src).ok_or(DropReason::UnknownPeer)?;
        let peer = &mut self.peers[i];
        if peer.restarted {
            return Err(DropReason::StaleSession);
        }
        match peer.session.classify(h.src_nonce, h.dst_nonce) {
            // Before the session, a hello is what it claims to be (a nonce to probe) whenever
            // it was sent; anything else for another nonce of ours, or any hello once the
            // session runs, belongs to a session that is over.
            Incoming::NotOurs if h.kind == Kind::Hello && peer.session.peer.is_none() => {
                return Ok(())
            }
            Incoming::NotOurs => return Err(DropReason::StaleSession),
            Incoming::Restarted => {
                peer.void();
                self.stats.peers_restarted += 1;
                self.events.push_back(Event::PeerRestarted(h.src));
                return Ok(());
            }
            Incoming::Confirmed => self.stats.sessions += 1,
            Incoming::Current => {}
        }
        if !peer.replay.check(h.pn) {
            return Err(DropReason::Replay);
        }
        if h.kind == Kind::Data {
            let off = h.seq.wrapping_sub(peer.rcv_next);
            if off > MAX_WINDOW && !seq_lt(h.seq, peer.rcv_next) {
                return Err(DropReason::OutOfWindow);
            }
        }
        // Authenticated, of this session, fresh and in window: from here on it counts.
        peer.replay.accept(h.pn);
        Self::on_ack(peer, &self.cfg, &mut self.stats, &mut self.pool, now, h.ack, h.sack);
        Self::on_echo(peer, &self.cfg, &mut self.events, now, h.pn_echo);
        match h.kind {
            Kind::Data => {
                let (cfg, inbox, stats, pool) =
                    (&self.cfg, &mut self.inbox, &mut self.stats, &mut self.pool);
                Self::on_data(peer, cfg, inbox, stats, pool, now, &h, payload);
            }
            // Answered at once: the echo in the answer is the sender's proof that we hear it.
            Kind::Heartbeat => peer.ack_now(),
            Kind::Ack | Kind::Hello => {}
        }
        Ok(())
    }

    /// Liveness comes from what the peer shows it heard from us, not from hearing it: with
    /// one direction cut we keep hearing the peer, but its echo stops moving. And it is
    /// dated by when we *sent* what the peer echoes: an echo of something old proves nothing
    /// about now.
    fn on_echo(peer: &mut Peer, cfg: &Config, events: &mut VecDeque<Event>, now: u64, echo: u64) {
        // An echo of a number we never sent would be a peer bug; it proves nothing.
        if echo <= peer.echo_seen || echo > peer.next_pn {
            return;
        }
        peer.echo_seen = echo;
        let heard = echo - 1;
        if heard.saturating_add(SENT_LOG as u64) >= peer.next_pn {
            let sent_at = peer.sent_log[(heard % SENT_LOG as u64) as usize];
            peer.last_heard = peer.last_heard.max(sent_at);
        }
        if !peer.up && now.saturating_sub(peer.last_heard) < cfg.peer_timeout_us {
            peer.up = true;
            events.push_back(Event::PeerUp(peer.id));
            // Answer at once, so the peer sees our echo move too and recovers without
            // waiting for our next heartbeat.
            peer.ack_now();
        }
        if peer.backoff > 0 {
            // Recovering from a timeout, and the peer heard a datagram we sent after the
            // latest transmission of the oldest unacknowledged fragment: that copy is lost
            // (typically, the path just came back after a partition). Resend it now rather
            // than after the backed-off timer, which may be seconds away.
            if let Some(f) = peer.inflight.iter_mut().find(|f| !f.sacked) {
                if f.pn < echo - 1 {
                    f.lost = true;
                }
            }
        }
    }

    fn on_ack(
        peer: &mut Peer,
        cfg: &Config,
        stats: &mut Stats,
        pool: &mut BufferPool,
        now: u64,
        ack: u32,
        sack: u64,
    ) {
        // An ack for data never sent would be a peer bug; ignore it rather than trust it.
        let sent_end = match (peer.inflight.back(), peer.unsent.front()) {
            (Some(f), _) => f.seq.wrapping_add(1),
            (None, Some(f)) => f.seq,
            (None, None) => peer.next_seq,
        };
        if seq_lt(sent_end, ack) {
            return;
        }
        // Karn (RFC 6298 §3): one ack covering any retransmitted or timer-era fragment may
        // have been prompted by the retransmission, or held up by whatever made the timer
        // fire; it says nothing about the round trip, and neither do the other fragments it
        // covers (after a partition heals, they would read as seconds).
        let mut ambiguous = false;
        let mut newest_timed = None::<u64>;
        let mut newest_acked_sent_at = None::<u64>;
        let mut newly = |f: &Fragment| {
            if f.retransmitted || !f.timed {
                ambiguous = true;
            } else {
                newest_timed = newest_timed.max(Some(f.sent_at));
            }
            newest_acked_sent_at = newest_acked_sent_at.max(Some(f.sent_at));
        };
        let mut progressed = false;
        while let Some(front) = peer.inflight.front() {
            if !seq_lt(front.seq, ack) {
                break;
            }
            let Some(f) = peer.inflight.pop_front() else { break };
            progressed = true;
            if !f.sacked {
                newly(&f);
            }
            pool.give(f.data);
        }
        for f in peer.inflight.iter_mut() {
            let off = f.seq.wrapping_sub(ack);
            if (1..=64).contains(&off) && sack & (1 << (off - 1)) != 0 && !f.sacked {
                f.sacked = true;
                f.lost = false;
                newly(f);
            }
        }
        if let (false, Some(t)) = (ambiguous, newest_timed) {
            // The most recently sent fragment: the sample least inflated by queueing.
            peer.rtt.sample(now.saturating_sub(t), cfg);
            stats.rtt_samples += 1;
        }
        if progressed {
            peer.backoff = 0;
        }
        // RACK (RFC 8985, simplified): anything sent a reordering window before something
        // that has been acknowledged is lost; resend it without waiting for the timer.
        if let Some(t) = newest_acked_sent_at {
            let reo_wnd = peer.rtt.srtt / 4;
            for f in peer.inflight.iter_mut() {
                if !f.sacked && f.sent_at + reo_wnd < t {
                    f.lost = true;
                }
            }
        }
        if peer.inflight.iter().all(|f| f.sacked) {
            peer.rto_deadline = None;
        } else if progressed {
            peer.rto_deadline = Some(now + peer.current_rto(cfg));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_data(
        peer: &mut Peer,
        cfg: &Config,
        inbox: &mut VecDeque<(NodeId, Vec<u8>)>,
        stats: &mut Stats,
        pool: &mut BufferPool,
        now: u64,
        h: &Header,
        payload: &[u8],
    ) {
        if seq_lt(h.seq, peer.rcv_next) || peer.out_of_order.contains_key(&h.seq) {
            stats.duplicates += 1;
            peer.ack_now();
            return;
        }
        if inbox.len() >= cfg.inbox_limit {
            // Not acknowledged: the sender will retransmit once the application caught up.
            stats.inbox_full += 1;
            return;
        }
        if h.seq == peer.rcv_next && peer.out_of_order.is_empty() {
            // In order with nothing missing: the ack may wait for a reply to carry it.
            peer.ack_later(now, cfg.ack_delay_us);
        } else {
            // A gap opens or closes: the sender learns it at once (loss recovery).
            peer.ack_now();
        }
        if h.seq == peer.rcv_next {
            // In order (the loss-free case): straight into the message, no reorder buffer.
            Self::take_fragment(peer, cfg, inbox, stats, pool, h.frag_index, h.frag_count, payload);
        } else {
            let mut data = pool.take(payload.len());
            data.extend_from_slice(payload);
            peer.out_of_order.insert(h.seq, (h.frag_index, h.frag_count, data));
        }
        while let Some((index, count, data)) = peer.out_of_order.remove(&peer.rcv_next) {
            Self::take_fragment(peer, cfg, inbox, stats, pool, index, count, &data);
            pool.give(data);
        }
    }

    /// Appends the fragment with sequence number `rcv_next` to the message being assembled,
    /// and delivers the message when it is complete.
    #[allow(clippy::too_many_arguments)]
    fn take_fragment(
        peer: &mut Peer,
        cfg: &Config,
        inbox: &mut VecDeque<(NodeId, Vec<u8>)>,
        stats: &mut Stats,
        pool: &mut BufferPool,
        index: u8,
        count: u8,
        data: &[u8],
    ) {
        peer.rcv_next = peer.rcv_next.wrapping_add(1);
        if index != peer.partial_next {
            // Cannot happen between correct peers (fragments are sequenced); recover by
            // discarding the partial message.
            peer.partial.clear();
            peer.partial_next = 0;
            if index != 0 {
                return;
            }
        }
        if index == 0 {
            // One buffer for the whole message, so appending never reallocates.
            let whole = usize::from(count).saturating_mul(data.len()).min(cfg.max_message);
            peer.partial = pool.take(whole.max(data.len()));
        }
        peer.partial.extend_from_slice(data);
        peer.partial_next = index + 1;
        if peer.partial_next == count {
            inbox.push_back((peer.id, core::mem::take(&mut peer.partial)));
            peer.partial_next = 0;
            stats.messages_delivered += 1;
        }
    }
}
