//! Flow table and per-flow TCP/UDP KPI estimators.
//!
//! One engine serves the live daemon and `phalanx analyze`: it consumes
//! [`phalanx_common::PacketMeta`] records and never looks at a wall clock.
//! Time is the records' own (`ts_ns`), so idle timeouts and every estimator
//! behave identically on a ring buffer and on a capture file. The live
//! daemon also moves the clock on while no record arrives
//! ([`FlowTable::advance`], to its record clock: the kernel's
//! CLOCK_MONOTONIC plus the offset the records get), so flows of a link
//! gone quiet expire; that only ever happens after their last packet, so
//! their figures are those a file of the same packets gives.
//!
//! # Flows
//!
//! A flow is keyed by the canonical 5-tuple (addresses, ports, protocol)
//! **and the VLAN ids**: the same 5-tuple on two VLANs is two flows. VLAN ids
//! are held per direction, so a capture point that tags only one direction
//! still yields one flow (the untagged reverse direction attaches to the
//! flow that has not yet seen that direction). `src` is the side that sent
//! the SYN (or, without a SYN, the first packet). The table is bounded by
//! [`FlowConfig::max_flows`]; flows leave after an idle timeout that
//! depends on their state, or, when the table is full, the flow idle the
//! longest leaves to make room; both are counted ([`TableStats`]). A new SYN
//! with a different ISN on a closed (FIN or RST) flow starts a new flow. A
//! SYN (or SYN/ACK) re-sent with the same ISN is the same attempt: the flow
//! then waits `syn_retry_timeout_secs` instead of `syn_timeout_secs`, long
//! enough for the sender's exponential backoff (Linux: 1, 3, 7, 15, 31 and
//! 63 s after the first SYN).
//!
//! # Directions and the vantage point
//!
//! Every per-direction figure is named by the sender of the packets. An RTT
//! sample of direction *X* measures *vantage point -> receiver of X ->
//! vantage point*: the part of the round trip on the receiver's side of the
//! capture point.
//!
//! # KPI definitions
//!
//! - **packets / bytes**: packets and frame bytes as seen, per direction
//!   and summed. A GSO record with `segs > 1` counts as `segs` packets, and
//!   its bytes are expanded by repeating the headers for every segment. A
//!   TCP frame longer than the receiver's MSS (from its SYN) that carries
//!   no count, as capture files taken on hosts with TSO or GRO hold, gets
//!   the count the ring would give it (`ceil(payload / MSS)`), so a file
//!   and the ring give the same figures for the same packets. A second
//!   copy of a TCP packet captured at another point (`tcpdump -i any` on a
//!   router, merged taps; see [`copies`]) counts nowhere but in
//!   `capture_duplicates`.
//! - **goodput_bytes**: payload bytes seen for the first time at the
//!   vantage point (data above the highest sequence, plus hole fills;
//!   re-sends of data seen before are excluded).
//!   `goodput_bps` divides it by the flow's duration.
//! - **RTT samples**: one probe outstanding per direction. With TCP
//!   timestamps (both sides send the option): a packet carrying a new TSval
//!   (data, SYN, FIN, or a pure ACK that acknowledges new data into an open
//!   window) starts a probe that ends at the first packet of the other
//!   direction whose TSecr equals that TSval (passive ping; an echo of a
//!   newer TSval abandons the probe). Without timestamps: a segment
//!   carrying new sequence space starts a probe that ends at the first ACK
//!   covering it; Karn's rule: a retransmission of probed data abandons the
//!   probe. The handshake counts: SYN -> SYN/ACK is a sample of the
//!   client's direction, SYN/ACK -> ACK of the server's. Idle and
//!   application time are never samples: keep-alives and zero-window
//!   probes start no probe, and the bare answer to one ends none (it echoes
//!   whatever the peer saw last); a pure ACK of everything in flight (as
//!   every ACK is at a receiver) is echoed by the peer's next data only
//!   when the peer's application writes again, so its sample counts only
//!   behind other data of the peer (the stream kept flowing) or within
//!   twice the direction's minimum plus 1 ms; a FIN answered by the peer's
//!   own FIN waited for the peer's application to close; data re-sent on a
//!   timer (a retransmission timeout) echoes whatever the peer sent last
//!   and ends no probe (a resend answering a partial ACK may).
//! - **handshake**: `downstream_ms` = SYN -> SYN/ACK (vantage point to
//!   server and back), `upstream_ms` = SYN/ACK -> ACK (vantage point to
//!   client and back), `total_ms` their sum, the client-to-server RTT.
//! - **local_side** (flow): `src` or `dst` when the capture was taken at
//!   that host: every packet of it carries an initial TTL (32, 64, 128 or
//!   255: no router between it and the vantage point) while every packet
//!   of the peer carries a decremented one. `null` mid-path, on one LAN
//!   segment (both undecremented) or without TTLs.
//! - **rtt** (flow): the network round trip seen from the vantage point.
//!   With `local_side` known, the local side's direction: its packets to
//!   the peer and the peer's answer back, the whole path; the other
//!   direction's samples time the local host's own answer and are
//!   `answer_ms` (their median), never part of `rtt`. Without it (a
//!   vantage point on the path), the end-to-end estimate from the two
//!   parts: the component-wise sum of the two directions' figures (`min`,
//!   `avg`, `p50`, `p99`, `max`; `samples` is the total sample count); when
//!   only one direction has samples, that direction's figures. `srtt_ms`
//!   and `jitter_ms` come from the same parts. Quantiles are nearest rank
//!   over exact samples for the first 64 samples per direction, then a
//!   log-linear sketch, exact below 128 µs and within 0.8 % above.
//!   Per-direction figures are in `src_to_dst.rtt` / `dst_to_src.rtt`.
//! - **retransmissions**: a segment carrying sequence space that passed the
//!   vantage point before, or that fills a hole *late*. A hole is a range
//!   skipped by a segment starting above the highest sequence seen (the
//!   *opener*). A fill was sent after the opener, so re-sent (loss upstream
//!   of the vantage point), when the sender's own stamps say so: a newer
//!   TSval than the opener's, or, with the same TSval (one millisecond) or
//!   none, a later IP ID where this direction's IP IDs run in sequence
//!   (eight small steps up in a row, tracked per flow and direction; a
//!   random or zero ID, as IPv6 has, tells nothing); an older stamp makes
//!   it an original overtaken on the way (reordering), however late. When
//!   the stamps do not tell, timing does: a fill is late when it comes at
//!   least the other direction's minimum RTT (vantage point -> sender ->
//!   vantage point) after the hole opened, i.e. the sender could have
//!   learnt of the loss and re-sent; without any RTT sample, when the
//!   receiver has sent 3 duplicate ACKs; a fill that answers a partial ACK
//!   (below) is late too. Up to 64 holes are tracked per direction.
//!   Classes (per segment):
//!   *pmtud* when an ICMP "fragmentation needed" / ICMPv6 "packet too big"
//!   quoting this direction arrived while the data was in flight (the resend
//!   at the smaller MSS is path-MTU discovery, not loss recovery);
//!   *fast* when the receiver had reported the loss before it (RFC 6675
//!   IsLost: >= 3 duplicate ACKs, or more than 2 * SMSS bytes SACKed above
//!   its cumulative ACK; SMSS = the receiver's MSS option, else 1460), or while in the fast recovery the first one
//!   started (until the receiver ACKs the highest sequence at that time),
//!   or when it answers a partial ACK (RFC 6582): it starts where a
//!   cumulative ACK sent during fast recovery pointed and comes one
//!   vantage-to-sender round trip after that ACK (between the minimum and
//!   twice it plus 1 ms; an RTO comes later). That covers the segment that
//!   was highest when the recovery began but was lost before the vantage
//!   point, so the recovery point seen there ended below it;
//!   *timeout* otherwise; *spurious* (a subset of all) when the vantage
//!   point had already seen all of its data acknowledged, or when a later
//!   D-SACK (RFC 2883) reports the latest retransmission as a duplicate.
//!   `late_fills` counts the retransmissions detected as late fills.
//!   Keep-alives (<= 1 byte at highest-1) and zero-window probes are not
//!   retransmissions.
//! - **out_of_order**: a segment filling a hole that is not late
//!   (reordering, not loss). `reorder_extent_max` is the largest RFC 4737
//!   reorder extent: packets of the direction that arrived between the
//!   first later segment (which opened the hole) and the late one.
//! - **dup_acks**: RFC 5681 duplicate ACKs: ACK flag, no data, no SYN/FIN,
//!   same non-zero window as the sender's previous ACK, while the other
//!   side has unacknowledged data (or its sequence state is unknown); a
//!   SYN's window is unscaled, so the first ACK after it is not compared. ACKs
//!   of a closed (zero) window answer window probes and signal no loss.
//! - **zero_windows**: zero-window episodes (the first zero window
//!   advertisement after a non-zero one); `zero_window_packets` counts every
//!   packet advertising zero. **window_full**: segments whose end reaches the
//!   receiver's ACK + scaled window (only when both SYNs were seen, so the
//!   scale is known); **window_limited**: segments after which less than
//!   one segment (the receiver's MSS, else 1460 bytes) of that window was
//!   left, so the sender had to wait for the receiver (includes
//!   `window_full`).
//! - **mss / wscale**: the options of each side's SYN.
//! - **jitter_ms**: RFC 3550 interarrival jitter `J += (|D| - J) / 16`.
//!   TCP: `D` is the difference of consecutive RTT samples of a direction
//!   (a transit time measured on one clock, the vantage point's, so no
//!   clock rates or offsets have to be guessed). UDP and other protocols:
//!   `D` is an arrival spacing minus the mean spacing so far (assumes a
//!   constant-rate sender). The flow value is that of `rtt`'s parts: the
//!   local side's direction at a host, else the larger direction's.
//! - **latency** (TCP): where the time goes, see [`latency`]: each side's
//!   network round trip from the vantage point (`client_network_ms`: the
//!   smallest sample of the server's packets; `server_network_ms`: of the
//!   client's), the server's answer time (`server_response_ms`: request's
//!   last segment -> answer's first byte, less the server side's round
//!   trip, median of the exchanges), the client's pause between the
//!   handshake and its first request (`client_think_ms`, less the client
//!   side's round trip) and the waits for resends
//!   (`retransmission_delay_ms`: from the receiver's last acknowledgment
//!   progress, or the data's sending after an idle time, to its next
//!   progress after a first resend; spurious resends wait for nothing).
//! - **state**: `syn_sent` (SYN unanswered; also `syn_unanswered`),
//!   `syn_received`, `established` (also picked up mid-stream), `closing`
//!   (FIN one way), `closed` (FIN both ways), `reset` (RST, `rst_from`
//!   names the sender); `active` for UDP and other protocols.
//! - **icmp**: ICMP/ICMPv6 errors (`kind` IcmpError) are attached to the
//!   flow of the packet they quote, with type, code, MTU and the reporting
//!   address (first 8 kept; `icmp_errors` counts all).
//!
//! Evidence for the diagnosis rules (per direction unless noted):
//!
//! - **ttl**: TTL / hop limit of the first and latest packet, min, max and
//!   `changes` (packets whose TTL differs from the previous packet's).
//! - **ce_packets**: packets with ECN Congestion Experienced (`tos & 3 == 3`);
//!   also summed per flow.
//! - **srtt_ms**: RFC 6298 smoothed RTT (gain 1/8) of the direction's samples,
//!   the "recent" RTT; the flow figure takes the parts `rtt` takes.
//! - **zero_window_ms**: time the side advertised a zero window, from the
//!   first zero advertisement of an episode to the next non-zero one (an
//!   episode still open counts to the flow's last packet, `zero_window_open`).
//! - **max_segment / max_acked_segment**: the largest segment payload sent
//!   (GSO: the segment size), and the largest first transmission the peer's
//!   cumulative ACK covered (one size probe at a time, on a new segment larger
//!   than any acknowledged; a retransmission overlapping it voids it, Karn).
//!   **full_size_retrans** counts retransmissions of segments at least
//!   `max_segment` long while nothing that large had been acknowledged.
//! - **stall**: the longest run of retransmissions starting at the same
//!   sequence with no ACK advance past it in between (data already
//!   acknowledged and path-MTU resends excluded); `open` when the run is
//!   still unacknowledged.
//! - **ack_advances**: times the side's cumulative ACK moved forward;
//!   **syn_only**: every packet of the side was a SYN without ACK;
//!   **rst_ns**: time of its first RST.
//!
//! # Memory
//!
//! An idle tracked flow costs `size_of::<Flow>()` = 232 bytes (x86_64) in
//! the slab plus its share of the hash index (about 10 bytes at one million
//! flows). The slab grows by doubling but never past `max_flows`, so a full
//! table holds no spare slots: measured 242.5 bytes per idle flow with one
//! million flows in a one-million table (`cargo bench --bench engine`).
//! RTT sketches, sequence holes, rare counters (retransmissions,
//! reordering, ...) and ICMP events live in one block allocated on first
//! need (896 bytes, plus up to 256 bytes of exact RTT samples per
//! direction, then a sparse sketch); a 1%-loss bulk-transfer mix measured
//! about 1,400 bytes per flow in all.

pub mod config;
pub mod copies;
pub mod history;
mod jitter;
pub mod json;
pub mod key;
pub mod latency;
pub mod loss;
pub mod observe;
pub mod rank;
pub mod report;
pub mod rtt;
pub mod seq;
pub mod shared;
pub mod state;
pub mod stats;
pub mod table;
pub mod tcp;
pub mod window;

pub use config::FlowConfig;
pub use key::{FlowKey, Proto};
pub use observe::{Delta, FlowObserver, Sample};
pub use report::{
    DirReport, FlowSummary, HandshakeReport, LatencyReport, PerSide, RttReport, StallReport,
    TtlReport,
};
pub use shared::SharedTable;
pub use state::Flow;
pub use table::{FlowReport, FlowTable, TableStats};

/// A one-packet UDP record from 10.0.0.1:`sport` to 10.0.0.2:80 at `ts_ns`.
#[cfg(test)]
pub(crate) fn udp_record(sport: u16, ts_ns: u64) -> phalanx_common::PacketMeta {
    use phalanx_common::{ipproto, PacketMeta, RecordKind};
    let mut m = PacketMeta::zeroed();
    m.ts_ns = ts_ns;
    m.kind = RecordKind::Udp as u8;
    m.ip_version = 4;
    m.l4_proto = ipproto::UDP;
    m.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
    m.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
    m.sport = sport;
    m.dport = 80;
    m.wire_len = 60;
    m
}
