//! Passive RTT probes: one outstanding probe per direction.
//!
//! A probe starts on a packet that carries a new TSval (timestamp mode,
//! passive-ping style) and/or new sequence space (seq/ack mode). It ends on
//! the first packet of the other direction that echoes that TSval in its
//! TSecr, or that acknowledges the probe's sequence end. Karn's rule: a
//! retransmission covering the probed data voids the seq/ack half of the
//! probe; a timestamp probe survives because the echo names the exact
//! transmission (RFC 7323 RTTM). An echo of a newer TSval than the probe's
//! voids the timestamp half (the probed transmission will never be echoed).
//!
//! A pure ACK is echoed only by the peer's next data, which may wait on the
//! peer's application (pacing, a request's think time, a keep-alive's idle
//! time) rather than on the path. Unless its data was visibly still in
//! flight, such a probe is [`P_WAIT`] until the peer sends other data
//! after it (the data stream kept flowing, as under ACK clocking); an echo
//! that is the peer's first data since comes back marked [`P_WAIT`] for the
//! caller to weigh against the path's own round trip.

use super::seq;

const P_TS: u8 = 1;
const P_SEQ: u8 = 2;
/// The probe was started by a SYN (its echo gives the downstream handshake part).
pub const P_SYN: u8 = 4;
/// The probe was started by a SYN/ACK (its echo gives the upstream handshake part).
pub const P_SYNACK: u8 = 8;
/// Started by a pure ACK whose echo may wait on the peer's application.
pub const P_WAIT: u8 = 16;
/// Started by a bare FIN: an echo that is the peer's own FIN waited for the
/// peer's application to close.
pub const P_FIN: u8 = 32;

/// One direction's outstanding probe.
#[derive(Clone, Copy, Debug, Default)]
pub struct Probe {
    /// When the probed packet passed the vantage point: microseconds since
    /// the flow's first packet, wrapping (a probe never lives 71 minutes).
    pub t_us: u32,
    seq_end: u32,
    tsval: u32,
    flags: u8,
}

impl Probe {
    /// Whether a probe is outstanding.
    #[inline]
    pub fn active(&self) -> bool {
        self.flags & (P_TS | P_SEQ) != 0
    }

    /// Starts (or replaces) the probe.
    #[inline]
    pub fn start(&mut self, now_us: u32, tsval: Option<u32>, seq_end: Option<u32>, kind: u8) {
        self.flags = kind;
        self.t_us = now_us;
        if let Some(v) = tsval {
            self.tsval = v;
            self.flags |= P_TS;
        }
        if let Some(e) = seq_end {
            self.seq_end = e;
            self.flags |= P_SEQ;
        }
        if !self.active() {
            self.flags = 0;
        }
    }

    /// Karn's rule: a retransmission starting at `seq_start` voids the
    /// seq/ack half when it re-sends probed data.
    #[inline]
    pub fn karn(&mut self, seq_start: u32) {
        if self.flags & P_SEQ != 0 && seq::lt(seq_start, self.seq_end) {
            self.flags &= !P_SEQ;
            if !self.active() {
                self.flags = 0;
            }
        }
    }

    /// Offers a packet of the other direction: `tsecr` when it carries a
    /// timestamp option and ACK, `ack` when it has ACK set, `has_ts` whether
    /// it carries the timestamp option at all, `data` whether it carries
    /// payload. Returns the sample (us) and the probe's kind bits when this
    /// packet completes the probe.
    #[inline]
    pub fn echo(
        &mut self,
        now_us: u32,
        tsecr: Option<u32>,
        ack: Option<u32>,
        has_ts: bool,
        data: bool,
    ) -> Option<(u32, u8)> {
        if !self.active() {
            return None;
        }
        let mut hit = false;
        if self.flags & P_TS != 0 {
            match tsecr {
                Some(e) if e == self.tsval => hit = true,
                // The probed transmission will never be echoed; with
                // timestamps in use, an ACK alone is no better evidence.
                Some(e) if seq::gt(e, self.tsval) => self.flags = 0,
                Some(_) => {}
                // The peer sends no timestamps: this TSval will never be echoed.
                None if !has_ts => self.flags &= !P_TS,
                None => {}
            }
        }
        // With timestamps on both sides only the echo counts (RFC 7323 RTTM).
        if !hit && self.flags & P_SEQ != 0 && !(has_ts && self.flags & P_TS != 0) {
            if let Some(a) = ack {
                hit = seq::ge(a, self.seq_end);
            }
        }
        if hit {
            let kind = self.flags & (P_SYN | P_SYNACK | P_WAIT | P_FIN);
            self.flags = 0;
            return Some((now_us.wrapping_sub(self.t_us), kind));
        }
        if data {
            self.flags &= !P_WAIT;
        }
        if !self.active() {
            self.flags = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_echo_gives_first_match_only() {
        let mut p = Probe::default();
        p.start(1_000, Some(77), None, 0);
        assert_eq!(
            p.echo(1_500, Some(76), Some(1), true, false),
            None,
            "older echo waits"
        );
        assert_eq!(
            p.echo(3_000, Some(77), Some(1), true, false),
            Some((2_000, 0))
        );
        assert_eq!(
            p.echo(4_000, Some(77), Some(1), true, false),
            None,
            "second echo ignored"
        );
    }

    #[test]
    fn newer_echo_voids_timestamp_probe() {
        let mut p = Probe::default();
        p.start(0, Some(5), Some(100), 0);
        assert_eq!(
            p.echo(10, Some(6), Some(100), true, false),
            None,
            "no ACK fallback"
        );
        assert!(!p.active());
    }

    #[test]
    fn karn_voids_seq_probe() {
        let mut p = Probe::default();
        p.start(0, None, Some(1000), P_SYN);
        p.karn(900);
        assert!(!p.active(), "retransmitted probe data is ambiguous");
        p.start(0, None, Some(1000), P_SYN);
        p.karn(1000);
        assert_eq!(
            p.echo(50, None, Some(1000), false, false),
            Some((50, P_SYN))
        );
    }

    #[test]
    fn waiting_probe_counts_only_behind_other_data() {
        let mut p = Probe::default();
        p.start(0, Some(9), None, P_WAIT);
        assert_eq!(
            p.echo(50_000, Some(9), Some(1), true, true),
            Some((50_000, P_WAIT)),
            "the peer's first data after an idle pipe may time its application"
        );
        assert!(!p.active());
        p.start(0, Some(10), None, P_WAIT);
        assert_eq!(p.echo(100, Some(9), Some(1), true, true), None);
        assert_eq!(
            p.echo(15_000, Some(10), Some(1), true, true),
            Some((15_000, 0)),
            "behind data still flowing, the echo is a round trip"
        );
    }

    #[test]
    fn peer_without_timestamps_falls_back_to_ack() {
        let mut p = Probe::default();
        p.start(0, Some(9), Some(1), P_SYN);
        assert_eq!(p.echo(70, None, Some(1), false, false), Some((70, P_SYN)));
    }
}
