//! Where a TCP connection's time goes, seen from the vantage point: the
//! client's side of the path, the server's side, the server's answer, the
//! client's pause, and the waits for retransmissions.
//!
//! The client is the side that opened the connection. An *exchange* is a
//! request (client data) and its answer (server data): the server's
//! response time is the time from the request's last segment to the
//! answer's first byte, less the server side's round trip (the path);
//! the client's think time is the pause between the handshake and the
//! client's first request, less the client side's round trip. Later
//! pauses of a persistent connection are the user's, not the client's,
//! and are not counted. A retransmission episode runs from the receiver's
//! last acknowledgment progress before the first resend to its next
//! progress: the time the resend cost.

use super::stats::SampleStats;

/// The raw times of a connection's exchanges, before the path's round
/// trips are taken out (they are known only at the end).
#[derive(Clone, Debug, Default)]
pub struct Exchanges {
    /// Request's last segment -> answer's first byte, µs.
    pub response_us: SampleStats,
    /// The latest of them, µs.
    pub last_response_us: u32,
    /// The server's latest packet the client waited on (SYN/ACK or answer
    /// data), ns; 0 before the handshake's SYN/ACK.
    pub server_last_ns: u64,
    /// The current request's latest segment, ns; 0 while the server talks.
    pub request_last_ns: u64,
    /// SYN/ACK -> the client's first request byte, µs.
    pub first_pause_us: Option<u32>,
    /// The client sent data.
    pub requested: bool,
}

impl Exchanges {
    /// The server's SYN/ACK passed at `now`.
    pub fn syn_ack(&mut self, now: u64) {
        self.server_last_ns = now.max(1);
    }

    /// New data from the client passed at `now`.
    pub fn client_data(&mut self, now: u64) {
        if !self.requested {
            self.requested = true;
            if self.server_last_ns != 0 {
                self.first_pause_us = Some(us(now.saturating_sub(self.server_last_ns)));
            }
        }
        self.request_last_ns = now.max(1);
    }

    /// New data from the server passed at `now`.
    pub fn server_data(&mut self, now: u64) {
        if self.request_last_ns != 0 {
            self.last_response_us = us(now.saturating_sub(self.request_last_ns));
            self.response_us.add(self.last_response_us);
            self.request_last_ns = 0;
        }
        self.server_last_ns = now.max(1);
    }
}

/// One direction's retransmission waits.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetransWait {
    /// The receiver's latest acknowledgment progress, ns.
    pub progress_ns: u64,
    /// The open episode's start (the progress before its first resend).
    pub since_ns: Option<u64>,
    /// Closed episodes' total, ns.
    pub total_ns: u64,
}

impl RetransWait {
    /// A resend at `now`: opens an episode from the latest progress.
    pub fn resend(&mut self, now: u64) {
        if self.since_ns.is_none() {
            let from = if self.progress_ns != 0 {
                self.progress_ns
            } else {
                now
            };
            self.since_ns = Some(from);
        }
    }

    /// Data became outstanding at `now` with nothing else unacknowledged
    /// (after an idle time): a resend of it waited from here at most.
    pub fn outstanding(&mut self, now: u64) {
        if self.since_ns.is_none() {
            self.progress_ns = now;
        }
    }

    /// The receiver's acknowledgment moved on at `now`: closes an episode.
    pub fn progress(&mut self, now: u64) {
        if let Some(from) = self.since_ns.take() {
            self.total_ns += now.saturating_sub(from);
        }
        self.progress_ns = now;
    }

    /// The total, an episode still open counting to `last_ns`.
    pub fn total_ns(&self, last_ns: u64) -> u64 {
        self.total_ns + self.since_ns.map_or(0, |from| last_ns.saturating_sub(from))
    }
}

fn us(ns: u64) -> u32 {
    u32::try_from(ns / 1000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn think_time_is_the_first_pause_only_and_responses_are_per_exchange() {
        let mut x = Exchanges::default();
        x.syn_ack(24 * MS);
        x.client_data(1384 * MS);
        x.server_data(1446 * MS);
        x.server_data(1450 * MS);
        // The user's next click, 10 s on, is no client delay.
        x.client_data(11_450 * MS);
        x.client_data(11_451 * MS);
        x.server_data(11_500 * MS);
        assert_eq!(x.first_pause_us, Some(1_360_000));
        assert_eq!(x.response_us.count(), 2);
        assert_eq!(x.response_us.min_us(), Some(49_000));
    }

    #[test]
    fn a_retransmission_costs_from_the_last_progress_to_the_next() {
        let mut w = RetransWait::default();
        w.progress(100 * MS);
        w.resend(400 * MS);
        w.resend(800 * MS);
        assert_eq!(w.total_ns(900 * MS), 800 * MS, "still open");
        w.progress(1000 * MS);
        assert_eq!(w.total_ns(2000 * MS), 900 * MS);
        // Idle, then new data at 5 s re-sent at 6 s: 1 s, not 5.
        w.outstanding(5000 * MS);
        w.resend(6000 * MS);
        assert_eq!(w.total_ns(6500 * MS), 900 * MS + 1500 * MS);
    }
}
