//! Live stitching with peer daemons.
//!
//! A daemon with a `stitch.secret` keeps, besides the incident history, a
//! bounded history of each flow's recent packets as [`Observation`]s (the
//! fingerprint and the few fields [`super::stitch`] needs, ~64 bytes each)
//! and answers signed peer requests for a flow's observations
//! ([`PEER_PATH`]). A daemon with `stitch.peers` asks every peer for a
//! flow's observations, adds its own, and stitches them: on
//! `POST /api/v1/stitch` and for the flow of every firing incident.
//!
//! Authentication: requests and answers carry `X-Phalanx-Timestamp` (Unix
//! seconds) and `X-Phalanx-Signature: sha256=<hex>`, the HMAC-SHA256 with
//! the shared key of the timestamp, a newline and the exact body. A missing
//! or wrong signature is rejected (401); so is a timestamp more than
//! [`REPLAY_WINDOW_SECS`] away from this host's clock (a captured request
//! replays only within that window, and only ever reads). Every outcome is
//! counted in `phalanx_stitch_peer_requests_total{outcome}`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phalanx_common::PacketMeta;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, warn, Instrument as _};

use super::config::{SecretError, StitchConfig};
use super::{HopCapture, Observation, StitchReport};
use crate::flow::history::{FlowHistory, HistoryBounds};
use crate::flow::key::{FlowKey, FlowSpec, Proto};

/// Path of the peer endpoint (relative to a peer's base URL).
pub const PEER_PATH: &str = "/api/v1/peer/observations";
/// Header with the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-phalanx-timestamp";
/// Header with `sha256=<hex HMAC>`.
pub const SIGNATURE_HEADER: &str = "x-phalanx-signature";
/// Largest distance between a signed timestamp and this host's clock.
pub const REPLAY_WINDOW_SECS: u64 = 60;
/// Link delay (p99, ms) from which the summary mentions it.
pub const NOTABLE_DELAY_MS: f64 = 10.0;

/// Why a signed message was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// A header is absent or unreadable.
    #[error("missing or unreadable {0} header")]
    Missing(&'static str),
    /// The signature does not match the key, timestamp and body.
    #[error("bad signature")]
    BadSignature,
    /// Signed outside the replay window.
    #[error(
        "timestamp {ts} is {skew} s away from this host's clock (window {REPLAY_WINDOW_SECS} s)"
    )]
    Stale {
        /// The signed timestamp.
        ts: u64,
        /// Its distance to now, seconds.
        skew: u64,
    },
}

/// `sha256=<hex of HMAC-SHA256(secret, "<ts>\n" + body)>`.
pub fn sign(secret: &[u8], ts: u64, body: &[u8]) -> String {
    crate::sign::sign(secret, &[ts.to_string().as_bytes(), b"\n", body])
}

/// Checks the headers of a signed message against its body (constant-time
/// comparison) and the timestamp against `now_secs`; returns the timestamp.
pub fn verify(
    secret: &[u8],
    ts: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: u64,
) -> Result<u64, AuthError> {
    let ts: u64 = ts
        .and_then(|t| t.trim().parse().ok())
        .ok_or(AuthError::Missing(TIMESTAMP_HEADER))?;
    let signature = signature
        .map(str::trim)
        .filter(|s| s.starts_with(crate::sign::PREFIX))
        .ok_or(AuthError::Missing(SIGNATURE_HEADER))?;
    let ts_text = ts.to_string();
    if !crate::sign::verify(secret, &[ts_text.as_bytes(), b"\n", body], signature) {
        return Err(AuthError::BadSignature);
    }
    let skew = ts.abs_diff(now_secs);
    if skew > REPLAY_WINDOW_SECS {
        return Err(AuthError::Stale { ts, skew });
    }
    Ok(ts)
}

/// A request body that does not name a flow.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QueryError {
    /// Not the expected JSON.
    #[error("malformed request: {0}")]
    Json(String),
    /// `flow` is not `ADDR:PORT -> ADDR:PORT`.
    #[error("malformed request: {0}")]
    Flow(String),
    /// `proto` is not a protocol name or number.
    #[error("malformed request: proto {0:?} is not \"tcp\", \"udp\", \"icmp\", \"icmpv6\" or a protocol number")]
    Proto(String),
    /// `since_ns` after `until_ns`.
    #[error("malformed request: since_ns is after until_ns")]
    Window,
}

fn default_proto() -> String {
    "tcp".into()
}

/// Body of a peer request and of `POST /api/v1/stitch`: a flow in either
/// orientation, optionally a time window (ns since the epoch, answering
/// host's clock) its packets must fall in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    /// `"10.0.0.1:40000 -> 10.0.0.2:80"` (IPv6 as `[addr]:port`).
    pub flow: String,
    /// `tcp` (default), `udp` or an IP protocol number.
    #[serde(default = "default_proto")]
    pub proto: String,
    /// Packets at or after this time only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ns: Option<u64>,
    /// Packets at or before this time only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ns: Option<u64>,
}

impl FlowQuery {
    /// The query for a whole flow.
    pub fn for_key(key: &FlowKey) -> Self {
        Self {
            flow: FlowSpec::of(key).to_string(),
            proto: key.protocol().to_string(),
            since_ns: None,
            until_ns: None,
        }
    }

    /// Parses a body and the flow it names.
    pub fn parse(body: &[u8]) -> Result<(Self, FlowKey), QueryError> {
        let q: Self = serde_json::from_slice(body).map_err(|e| QueryError::Json(e.to_string()))?;
        let key = q.key()?;
        Ok((q, key))
    }

    /// The canonical key of the named flow.
    pub fn key(&self) -> Result<FlowKey, QueryError> {
        let spec: FlowSpec = self.flow.parse().map_err(QueryError::Flow)?;
        let proto: Proto = self
            .proto
            .parse()
            .map_err(|_| QueryError::Proto(self.proto.clone()))?;
        if let (Some(a), Some(b)) = (self.since_ns, self.until_ns) {
            if a > b {
                return Err(QueryError::Window);
            }
        }
        Ok(spec.key(proto))
    }

    fn contains(&self, ts_ns: u64) -> bool {
        self.since_ns.is_none_or(|s| ts_ns >= s) && self.until_ns.is_none_or(|u| ts_ns <= u)
    }
}

/// One packet of the flow as the answering point saw it (the flow is the
/// request's; `dir` is relative to its canonical key, the same at every point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireObservation {
    /// Direction within the canonical flow key.
    pub dir: u8,
    /// Timestamp at the point, its wall clock (ns).
    pub ts_ns: u64,
    /// Packet fingerprint.
    pub fingerprint: u64,
    /// Payload hash (0: none).
    pub payload_hash: u32,
    /// TTL / hop limit there.
    pub ttl: u8,
    /// TCP flags.
    pub tcp_flags: u8,
}

impl WireObservation {
    fn of(o: &Observation) -> Self {
        Self {
            dir: o.dir,
            ts_ns: o.ts_ns,
            fingerprint: o.fingerprint,
            payload_hash: o.payload_hash,
            ttl: o.ttl,
            tcp_flags: o.tcp_flags,
        }
    }

    fn observation(&self, flow: FlowKey) -> Observation {
        Observation {
            flow,
            dir: self.dir & 1,
            ts_ns: self.ts_ns,
            fingerprint: self.fingerprint,
            payload_hash: self.payload_hash,
            ttl: self.ttl,
            tcp_flags: self.tcp_flags,
        }
    }
}

/// Body of a peer's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAnswer {
    /// The answering daemon's hop name.
    pub hop: String,
    /// The flow, as asked.
    pub flow: String,
    /// Its recent packets there, oldest first.
    pub observations: Vec<WireObservation>,
}

/// Outcome of a request to the peer endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerOutcome {
    /// Answered.
    Ok,
    /// Missing or wrong signature, or no key configured here.
    Unauthenticated,
    /// Signed outside the replay window.
    Stale,
    /// Authenticated, but the body does not name a flow.
    Malformed,
}

impl PeerOutcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerOutcome::Ok => "ok",
            PeerOutcome::Unauthenticated => "unauthenticated",
            PeerOutcome::Stale => "stale",
            PeerOutcome::Malformed => "malformed",
        }
    }

    /// HTTP status of the answer.
    pub fn status(self) -> u16 {
        match self {
            PeerOutcome::Ok => 200,
            PeerOutcome::Unauthenticated | PeerOutcome::Stale => 401,
            PeerOutcome::Malformed => 400,
        }
    }
}

/// Labels `{outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// ok, unauthenticated, stale, malformed (served) or ok, failed (asked).
    pub outcome: String,
}

/// Labels `{peer, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// Peer base URL (from the configuration, so bounded).
    pub peer: String,
    /// ok or failed.
    pub outcome: String,
}

/// Stitching metrics.
#[derive(Clone, Debug, Default)]
pub struct StitchMetrics {
    /// Requests served on the peer endpoint, by outcome.
    pub served: Family<OutcomeLabels, Counter>,
    /// Requests made to peers, by peer and outcome.
    pub asked: Family<PeerLabels, Counter>,
}

impl StitchMetrics {
    /// Creates the metrics (every served outcome at 0) and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        for o in [
            PeerOutcome::Ok,
            PeerOutcome::Unauthenticated,
            PeerOutcome::Stale,
            PeerOutcome::Malformed,
        ] {
            // Every outcome shows from the start, at 0.
            let _ = m.served.get_or_create(&OutcomeLabels {
                outcome: o.as_str().into(),
            });
        }
        registry.register(
            "phalanx_stitch_peer_requests",
            "Requests on the peer observations endpoint, by outcome (ok, unauthenticated, stale, malformed)",
            m.served.clone(),
        );
        registry.register(
            "phalanx_stitch_peer_queries",
            "Requests this daemon made to its stitch peers, by peer and outcome (ok, failed)",
            m.asked.clone(),
        );
        m
    }

    /// Served requests with `outcome` so far.
    pub fn served(&self, outcome: PeerOutcome) -> u64 {
        self.served
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str().into(),
            })
            .get()
    }
}

/// Errors setting up live stitching.
#[derive(Debug, Error)]
pub enum LiveError {
    /// The key could not be loaded.
    #[error("{0}")]
    Secret(#[from] SecretError),
    /// The HTTP client could not be built.
    #[error("stitch HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The peer endpoint's answer: status, body and (when answered) the
/// signature headers `(timestamp, signature)`.
#[derive(Debug)]
pub struct PeerReply {
    /// What happened (counted).
    pub outcome: PeerOutcome,
    /// Body: the JSON answer, or a one-line reason.
    pub body: Vec<u8>,
    /// Headers signing the body.
    pub signed: Option<(String, String)>,
}

/// What one peer contributed to a stitch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerStatus {
    /// Peer base URL.
    pub peer: String,
    /// Its hop name, when it answered.
    pub hop: Option<String>,
    /// Packets of the flow it returned.
    pub observations: u64,
    /// Why it contributed nothing, when so.
    pub error: Option<String>,
}

/// This daemon's own contribution.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalStatus {
    /// Hop name.
    pub hop: String,
    /// Packets of the flow in the local history.
    pub observations: u64,
}

/// Result of a live stitch: the report of `phalanx stitch --json` (`order`,
/// `hops`, `links`, `flows`, absent when stitching failed) plus what each
/// point contributed, the [`summarize`] sentence and the stitcher's error.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveReport {
    /// The flow, `"a:p <-> b:p tcp"`.
    pub flow: String,
    /// When it was stitched (RFC 3339).
    pub stitched_at: String,
    /// One sentence: where packets were lost (and delayed).
    pub summary: Option<String>,
    /// Why there is no report (too few points saw the flow, ...).
    pub error: Option<String>,
    /// This daemon's history.
    pub local: LocalStatus,
    /// Each peer's answer.
    pub peers: Vec<PeerStatus>,
    /// The stitch report.
    #[serde(flatten)]
    pub report: Option<StitchReport>,
}

impl LiveReport {
    /// Peer and stitcher errors in one line, if any.
    pub fn errors(&self) -> Option<String> {
        let v: Vec<String> = self
            .peers
            .iter()
            .filter_map(|p| p.error.as_ref().map(|e| format!("peer {}: {e}", p.peer)))
            .chain(self.error.clone())
            .collect();
        (!v.is_empty()).then(|| v.join("; "))
    }
}

/// One sentence about where a flow's packets were lost.
///
/// Counting: a link is one direction between two neighbouring hops of the
/// report. M = the sum of `lost` over every link: packets of the flow seen
/// leaving a link's upstream hop and never seen at its downstream hop (while
/// that hop was recording). N = `lost` of the link with the most, which the
/// sentence names: "N of M lost packets dropped between hop A and hop B
/// (direction A -> B: N of P packets lost)", P being the packets that left
/// A on that link. N = M says nothing was lost anywhere else. When the
/// largest p99 one-way delay of a link reaches [`NOTABLE_DELAY_MS`], the
/// sentence names that link's delay too.
pub fn summarize(r: &StitchReport) -> String {
    let lost: u64 = r.links.iter().map(|l| l.lost).sum();
    let worst = r
        .links
        .iter()
        .reduce(|a, b| if b.lost > a.lost { b } else { a });
    let mut s = match worst {
        Some(w) if lost > 0 => format!(
            "{} of {lost} lost packets dropped between hop {} and hop {} (direction {} -> {}: {} of {} packets lost)",
            w.lost, w.from, w.to, w.from, w.to, w.lost, w.packets
        ),
        _ => {
            let names: Vec<&str> = r.hops.iter().map(|h| h.name.as_str()).collect();
            let matched: u64 = r.links.iter().map(|l| l.delivered).sum();
            format!(
                "no packet lost between hops {} ({matched} packets matched)",
                names.join(", ")
            )
        }
    };
    let slowest = r
        .links
        .iter()
        .filter_map(|l| l.delay_ms.p99.map(|p| (p, l)))
        // The first of equals: path order.
        .reduce(|a, b| if b.0 > a.0 { b } else { a });
    if let Some((p99, l)) = slowest {
        if p99 >= NOTABLE_DELAY_MS {
            s.push_str(&format!(
                "; one-way delay {} -> {} p50 {:.1} ms, p99 {p99:.1} ms",
                l.from,
                l.to,
                l.delay_ms.p50.unwrap_or(p99)
            ));
        }
    }
    s
}

/// Observations kept for peers, and the last segment size seen per flow
/// direction (to split GSO records).
#[derive(Debug)]
struct Kept {
    observations: FlowHistory<FlowKey, Observation>,
    seg_size: FlowHistory<(FlowKey, u8), u32>,
}

impl Kept {
    fn new(per_flow: usize, flows: usize) -> Self {
        Self {
            observations: FlowHistory::new(HistoryBounds {
                per_flow,
                max_flows: flows,
            }),
            seg_size: FlowHistory::new(HistoryBounds {
                per_flow: 1,
                max_flows: flows.saturating_mul(2),
            }),
        }
    }

    fn record(&mut self, m: &PacketMeta) {
        if m.ip_version != 4 && m.ip_version != 6 {
            return;
        }
        let mut o = Observation::from_meta(m);
        // Payload hashes are left out: a GSO record's hash covers the first
        // segment's bytes and its other segments get none, so the hashes of
        // one sender-side point would not compare with a downstream point's.
        o.payload_hash = 0;
        let tcp = m.kind == phalanx_common::RecordKind::Tcp as u8;
        if !tcp || m.segs <= 1 || m.payload_len == 0 {
            if tcp && m.payload_len > 0 {
                let key = (o.flow, o.dir);
                let known = self.seg_size.latest(&key).copied().unwrap_or(0);
                self.seg_size.push(key, &known.max(m.payload_len));
            }
            self.observations.push(o.flow, &o);
            return;
        }
        let key = (o.flow, o.dir);
        let known = self.seg_size.latest(&key).copied();
        // tc records carry the kernel's own segment size; the inference
        // serves records without it.
        let size = if m.gso_size > 0 {
            u32::from(m.gso_size)
        } else {
            gso_segment_size(m.payload_len, u32::from(m.segs), known)
        };
        if known != Some(size)
            && (m.gso_size > 0 || m.payload_len.is_multiple_of(u32::from(m.segs)))
        {
            self.seg_size.push(key, &size);
        }
        for seg in gso_segments(m, size) {
            let mut so = Observation::from_meta(&seg);
            so.payload_hash = 0;
            self.observations.push(so.flow, &so);
        }
    }
}

/// Segment size of a TCP GSO record without the kernel's `gso_size` (a
/// record from elsewhere than tc) of `payload` bytes in `segs` segments:
/// every segment but the last has the same size `g`, so
/// `(segs - 1) * g < payload <= segs * g`. The flow direction's known size
/// (its largest single segment, or an earlier GSO split) when it fits, else
/// `payload / segs` (exact when all segments are full, the usual case).
pub fn gso_segment_size(payload: u32, segs: u32, known: Option<u32>) -> u32 {
    let segs = segs.max(1);
    let lo = payload.div_ceil(segs);
    let hi = if segs > 1 {
        (payload.saturating_sub(1)) / (segs - 1)
    } else {
        payload
    };
    match known {
        Some(g) if (lo..=hi).contains(&g) => g,
        _ => lo,
    }
}

/// The wire segments of a TCP GSO record, as Linux's software segmentation
/// makes them: sequence numbers `size` apart, the IPv4 ID incremented per
/// segment, CWR on the first only, FIN and PSH on the last only, options
/// (timestamps, SACK) copied.
pub fn gso_segments(m: &PacketMeta, size: u32) -> impl Iterator<Item = PacketMeta> + '_ {
    use phalanx_common::tcp_flags::{CWR, FIN, PSH};
    let segs = u32::from(m.segs.max(1));
    let size = size.max(1);
    (0..segs).map_while(move |i| {
        let offset = i.checked_mul(size)?;
        if offset >= m.payload_len && i > 0 {
            return None;
        }
        let mut s = *m;
        s.segs = 1;
        s.seq = m.seq.wrapping_add(offset);
        s.payload_len = if i + 1 == segs {
            m.payload_len - offset
        } else {
            size.min(m.payload_len - offset)
        };
        if m.ip_version == 4 {
            s.ip_id = u32::from((m.ip_id as u16).wrapping_add(i as u16));
        }
        if i + 1 < segs {
            s.tcp_flags &= !(FIN | PSH);
        }
        if i > 0 {
            s.tcp_flags &= !CWR;
        }
        Some(s)
    })
}

/// The stitch history held for recording (nothing when none is kept).
pub struct Recorder<'a>(Option<std::sync::MutexGuard<'a, Kept>>);

impl Recorder<'_> {
    /// Adds a batch of records, as [`LiveStitch::record`] does.
    pub fn record(&mut self, batch: &[PacketMeta]) {
        if let Some(h) = &mut self.0 {
            for m in batch {
                h.record(m);
            }
        }
    }
}

/// Live stitching: the local history, the peer endpoint and the client.
#[derive(Debug)]
pub struct LiveStitch {
    hop: String,
    peers: Vec<reqwest::Url>,
    secret: Option<Vec<u8>>,
    refresh: Duration,
    history: Option<Mutex<Kept>>,
    client: reqwest::Client,
    metrics: StitchMetrics,
}

impl LiveStitch {
    /// Loads the key, sizes the history (kept only with a key) and
    /// registers the metrics. `host` names the hop when `stitch.hop` is empty.
    pub fn new(cfg: &StitchConfig, host: &str, registry: &mut Registry) -> Result<Self, LiveError> {
        let secret = cfg.load_secret()?;
        let history = secret
            .as_ref()
            .map(|_| Mutex::new(Kept::new(cfg.history_packets, cfg.history_flows)));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .user_agent(concat!("phalanx/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            hop: if cfg.hop.is_empty() {
                host.to_string()
            } else {
                cfg.hop.clone()
            },
            peers: cfg.peers.iter().map(|p| p.0.clone()).collect(),
            secret,
            refresh: Duration::from_secs(cfg.refresh_secs),
            history,
            client,
            metrics: StitchMetrics::register(registry),
        })
    }

    /// This daemon's hop name.
    pub fn hop(&self) -> &str {
        &self.hop
    }

    /// Whether peers are configured (incidents get stitched).
    pub fn has_peers(&self) -> bool {
        !self.peers.is_empty()
    }

    /// How often firing incidents are stitched again.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// The metrics.
    pub fn metrics(&self) -> &StitchMetrics {
        &self.metrics
    }

    /// Adds a batch of records to the history (no-op without a key). A TCP
    /// GSO record (tc sees the sender's super-packets before they are
    /// segmented) is kept as the wire segments it becomes, so that it
    /// matches what points downstream see.
    pub fn record(&self, batch: &[PacketMeta]) {
        let Some(h) = &self.history else { return };
        let Ok(h) = h.lock() else { return };
        Recorder(Some(h)).record(batch);
    }

    /// The history locked for [`Recorder::record`] without waiting; `None`
    /// while a peer request is reading it.
    pub fn try_recorder(&self) -> Option<Recorder<'_>> {
        let Some(h) = &self.history else {
            return Some(Recorder(None));
        };
        match h.try_lock() {
            Ok(g) => Some(Recorder(Some(g))),
            Err(std::sync::TryLockError::WouldBlock) => None,
            // A panic elsewhere: recording stops, as with `record`.
            Err(std::sync::TryLockError::Poisoned(_)) => Some(Recorder(None)),
        }
    }

    /// The flow's observations in the local history, within the query's window.
    pub fn local(&self, key: &FlowKey, q: &FlowQuery) -> Vec<Observation> {
        let Some(h) = &self.history else {
            return Vec::new();
        };
        let Ok(h) = h.lock() else {
            return Vec::new();
        };
        let mut v = h.observations.recent(key);
        v.retain(|o| q.contains(o.ts_ns));
        v
    }

    /// Serves a peer request: checks the signature, parses the body and
    /// answers the flow's observations, signed. Counts the outcome.
    pub fn answer(
        &self,
        ts: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_secs: u64,
    ) -> PeerReply {
        let reply = self.answer_inner(ts, signature, body, now_secs);
        self.metrics
            .served
            .get_or_create(&OutcomeLabels {
                outcome: reply.outcome.as_str().into(),
            })
            .inc();
        reply
    }

    fn answer_inner(
        &self,
        ts: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_secs: u64,
    ) -> PeerReply {
        let reject = |outcome: PeerOutcome, msg: String| PeerReply {
            outcome,
            body: format!("{msg}\n").into_bytes(),
            signed: None,
        };
        let Some(secret) = &self.secret else {
            return reject(
                PeerOutcome::Unauthenticated,
                "stitching is not enabled here (no stitch.secret)".into(),
            );
        };
        match verify(secret, ts, signature, body, now_secs) {
            Ok(_) => {}
            Err(e @ AuthError::Stale { .. }) => return reject(PeerOutcome::Stale, e.to_string()),
            Err(e) => return reject(PeerOutcome::Unauthenticated, e.to_string()),
        }
        let (q, key) = match FlowQuery::parse(body) {
            Ok(v) => v,
            Err(e) => return reject(PeerOutcome::Malformed, e.to_string()),
        };
        let answer = PeerAnswer {
            hop: self.hop.clone(),
            flow: q.flow.clone(),
            observations: self
                .local(&key, &q)
                .iter()
                .map(WireObservation::of)
                .collect(),
        };
        let body = match serde_json::to_vec(&answer) {
            Ok(b) => b,
            Err(e) => return reject(PeerOutcome::Malformed, format!("encoding the answer: {e}")),
        };
        let signed = (now_secs.to_string(), sign(secret, now_secs, &body));
        PeerReply {
            outcome: PeerOutcome::Ok,
            body,
            signed: Some(signed),
        }
    }

    /// Asks every peer (concurrently, each bounded by `stitch.timeout_ms`)
    /// for the flow's observations, adds the local ones and stitches them.
    /// Never fails: what went wrong is in the report.
    pub async fn stitch_flow(self: &Arc<Self>, key: FlowKey, query: FlowQuery) -> LiveReport {
        let body = match serde_json::to_vec(&query) {
            Ok(b) => Arc::new(b),
            Err(e) => return self.failed(&key, format!("encoding the request: {e}")),
        };
        let tasks: Vec<_> = self
            .peers
            .iter()
            .map(|p| {
                let me = self.clone();
                let (peer, body) = (p.clone(), body.clone());
                tokio::spawn(
                    async move { me.ask(&peer, &body).await }
                        .instrument(tracing::info_span!("peer", peer = %p)),
                )
            })
            .collect();
        let local = self.local(&key, &query);
        let mut hops = vec![HopCapture {
            name: self.hop.clone(),
            observations: local.clone(),
        }];
        let mut peers = Vec::new();
        for (peer, t) in self.peers.iter().zip(tasks) {
            let r = match t.await {
                Ok(r) => r,
                Err(e) => Err(format!("query task failed: {e}")),
            };
            self.metrics
                .asked
                .get_or_create(&PeerLabels {
                    peer: peer.to_string(),
                    outcome: if r.is_ok() { "ok" } else { "failed" }.into(),
                })
                .inc();
            match r {
                Ok(a) => {
                    peers.push(PeerStatus {
                        peer: peer.to_string(),
                        hop: Some(a.hop.clone()),
                        observations: a.observations.len() as u64,
                        error: None,
                    });
                    hops.push(HopCapture {
                        name: a.hop,
                        observations: a.observations.iter().map(|o| o.observation(key)).collect(),
                    });
                }
                Err(e) => {
                    warn!(peer = %peer, "stitch peer: {e}");
                    peers.push(PeerStatus {
                        peer: peer.to_string(),
                        hop: None,
                        observations: 0,
                        error: Some(e),
                    });
                }
            }
        }
        // Drop points that saw nothing: they cannot be placed on the path.
        hops.retain(|h| !h.observations.is_empty());
        let stitched = tokio::task::spawn_blocking(move || super::stitch(hops)).await;
        let (report, error) = match stitched {
            Ok(Ok(r)) => (Some(r), None),
            Ok(Err(e)) => (None, Some(e.to_string())),
            Err(e) => (None, Some(format!("stitch task failed: {e}"))),
        };
        debug!(flow = %key, ok = report.is_some(), "stitched");
        LiveReport {
            flow: key.to_string(),
            stitched_at: crate::clock::rfc3339(crate::clock::wall_ns()),
            summary: report.as_ref().map(summarize),
            error,
            local: LocalStatus {
                hop: self.hop.clone(),
                observations: local.len() as u64,
            },
            peers,
            report,
        }
    }

    fn failed(&self, key: &FlowKey, error: String) -> LiveReport {
        LiveReport {
            flow: key.to_string(),
            stitched_at: crate::clock::rfc3339(crate::clock::wall_ns()),
            summary: None,
            error: Some(error),
            local: LocalStatus {
                hop: self.hop.clone(),
                observations: 0,
            },
            peers: Vec::new(),
            report: None,
        }
    }

    /// One signed request to one peer; the answer's signature is checked too.
    async fn ask(&self, base: &reqwest::Url, body: &[u8]) -> Result<PeerAnswer, String> {
        let Some(secret) = &self.secret else {
            return Err("no stitch.secret configured".into());
        };
        let mut url = base.clone();
        url.set_path(&format!("{}{PEER_PATH}", base.path().trim_end_matches('/')));
        let ts = crate::clock::wall_secs();
        let resp = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, sign(secret, ts, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (ts_h, sig_h) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
        let bytes = resp.bytes().await.map_err(|e| error_chain(&e))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                .trim()
                .to_string();
            return Err(format!("HTTP {status}: {text}"));
        }
        verify(
            secret,
            ts_h.as_deref(),
            sig_h.as_deref(),
            &bytes,
            crate::clock::wall_secs(),
        )
        .map_err(|e| format!("answer rejected: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("malformed answer: {e}"))
    }
}

/// An error with its causes, `a: b: c` (reqwest's own message hides them).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl fmt::Display for PeerOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef-shared";
    const NOW: u64 = 1_700_000_000;

    #[test]
    fn signature_round_trip() {
        let body = br#"{"flow":"10.0.0.1:1 -> 10.0.0.2:2"}"#;
        let sig = sign(KEY, NOW, body);
        assert!(sig.starts_with("sha256=") && sig.len() == 71, "{sig}");
        assert_eq!(
            verify(KEY, Some(&NOW.to_string()), Some(&sig), body, NOW),
            Ok(NOW)
        );
        // Within the window either side.
        assert!(verify(KEY, Some(&NOW.to_string()), Some(&sig), body, NOW + 60).is_ok());
        assert!(verify(KEY, Some(&NOW.to_string()), Some(&sig), body, NOW - 60).is_ok());
    }

    #[test]
    fn wrong_key_tampered_body_or_timestamp_are_rejected() {
        let body = br#"{"flow":"10.0.0.1:1 -> 10.0.0.2:2"}"#;
        let ts = NOW.to_string();
        let sig = sign(KEY, NOW, body);
        let other = sign(b"another-key-of-16+bytes", NOW, body);
        assert_eq!(
            verify(KEY, Some(&ts), Some(&other), body, NOW),
            Err(AuthError::BadSignature),
            "wrong key"
        );
        let tampered = br#"{"flow":"10.0.0.1:1 -> 10.0.0.3:2"}"#;
        assert_eq!(
            verify(KEY, Some(&ts), Some(&sig), tampered, NOW),
            Err(AuthError::BadSignature),
            "tampered body"
        );
        let later = (NOW + 1).to_string();
        assert_eq!(
            verify(KEY, Some(&later), Some(&sig), body, NOW),
            Err(AuthError::BadSignature),
            "the timestamp is signed"
        );
        assert_eq!(
            verify(KEY, None, Some(&sig), body, NOW),
            Err(AuthError::Missing(TIMESTAMP_HEADER))
        );
        assert_eq!(
            verify(KEY, Some(&ts), None, body, NOW),
            Err(AuthError::Missing(SIGNATURE_HEADER))
        );
        assert_eq!(
            verify(KEY, Some("soon"), Some(&sig), body, NOW),
            Err(AuthError::Missing(TIMESTAMP_HEADER))
        );
        for bad in [
            "sha256=zz",
            "md5=00",
            &sig[..70],
            &format!("{}g", &sig[..70]),
        ] {
            assert!(
                verify(KEY, Some(&ts), Some(bad), body, NOW).is_err(),
                "{bad:?} must not verify"
            );
        }
    }

    #[test]
    fn stale_timestamps_are_rejected() {
        let body = b"{}";
        let old = NOW - REPLAY_WINDOW_SECS - 1;
        let sig = sign(KEY, old, body);
        assert_eq!(
            verify(KEY, Some(&old.to_string()), Some(&sig), body, NOW),
            Err(AuthError::Stale {
                ts: old,
                skew: REPLAY_WINDOW_SECS + 1
            })
        );
        let future = NOW + REPLAY_WINDOW_SECS + 5;
        let sig = sign(KEY, future, body);
        assert!(matches!(
            verify(KEY, Some(&future.to_string()), Some(&sig), body, NOW),
            Err(AuthError::Stale { .. })
        ));
    }

    #[test]
    fn queries_parse_either_orientation() {
        let (q, a) =
            FlowQuery::parse(br#"{"flow":"10.0.0.2:80 -> 10.0.0.1:40000"}"#).expect("valid");
        assert_eq!(q.proto, "tcp");
        let (_, b) = FlowQuery::parse(
            br#"{"flow":"10.0.0.1:40000 -> 10.0.0.2:80","proto":"tcp","since_ns":1,"until_ns":2}"#,
        )
        .expect("valid");
        assert_eq!(a, b, "both orientations name one flow");
        assert_eq!(a.proto, 6);
        let again = FlowQuery::for_key(&a);
        assert_eq!(again.key(), Ok(a), "for_key round-trips");
        let (_, v6) = FlowQuery::parse(br#"{"flow":"[fd00::1]:5 -> [fd00::2]:6","proto":"17"}"#)
            .expect("v6 udp");
        assert_eq!((v6.ip_version, v6.proto), (6, 17));
    }

    #[test]
    fn malformed_queries_say_why() {
        for (body, needle) in [
            (&b"not json"[..], "malformed request"),
            (br#"{"flw":"10.0.0.1:1 -> 10.0.0.2:2"}"#, "unknown field"),
            (br#"{}"#, "missing field `flow`"),
            (br#"{"flow":"10.0.0.1 -> 10.0.0.2"}"#, "ADDR:PORT"),
            (br#"{"flow":"10.0.0.1:1 -> [::1]:2"}"#, "mixes"),
            (
                br#"{"flow":"10.0.0.1:1 -> 10.0.0.2:2","proto":"sctp"}"#,
                "proto",
            ),
            (
                br#"{"flow":"10.0.0.1:1 -> 10.0.0.2:2","since_ns":5,"until_ns":4}"#,
                "since_ns",
            ),
            (br#"{"flow":7}"#, "invalid type"),
        ] {
            let msg = FlowQuery::parse(body).expect_err("malformed").to_string();
            assert!(
                msg.contains(needle),
                "{}: expected {needle:?} in {msg:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn live(secret: Option<&str>) -> LiveStitch {
        let cfg = StitchConfig {
            secret: secret.unwrap_or_default().to_string(),
            hop: "h1".into(),
            ..StitchConfig::default()
        };
        LiveStitch::new(&cfg, "host", &mut Registry::default()).expect("live stitch")
    }

    fn seg(seq: u32, ts_ns: u64) -> PacketMeta {
        use phalanx_common::{ipproto, RecordKind};
        let mut m = PacketMeta::zeroed();
        m.kind = RecordKind::Tcp as u8;
        m.ip_version = 4;
        m.l4_proto = ipproto::TCP;
        m.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        m.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        m.sport = 40000;
        m.dport = 80;
        m.seq = seq;
        m.ts_ns = ts_ns;
        m.ttl = 64;
        m
    }

    fn signed_request(body: &[u8]) -> (String, String) {
        (NOW.to_string(), sign(b"0123456789abcdef", NOW, body))
    }

    #[test]
    fn peer_endpoint_answers_signed_and_counts_every_outcome() {
        let l = live(Some("0123456789abcdef"));
        l.record(&[seg(1, 10), seg(2, 20), seg(3, 30)]);
        let body = br#"{"flow":"10.0.0.2:80 -> 10.0.0.1:40000","since_ns":15}"#;
        let (ts, sig) = signed_request(body);
        let r = l.answer(Some(&ts), Some(&sig), body, NOW);
        assert_eq!(
            r.outcome,
            PeerOutcome::Ok,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let (rts, rsig) = r.signed.clone().expect("answer signed");
        assert!(verify(b"0123456789abcdef", Some(&rts), Some(&rsig), &r.body, NOW).is_ok());
        let a: PeerAnswer = serde_json::from_slice(&r.body).expect("answer JSON");
        assert_eq!(a.hop, "h1");
        assert_eq!(
            a.observations.iter().map(|o| o.ts_ns).collect::<Vec<_>>(),
            vec![20, 30],
            "window applied"
        );

        let r = l.answer(
            Some(&ts),
            Some(&sign(b"wrong key, 16 bytes+", NOW, body)),
            body,
            NOW,
        );
        assert_eq!(
            (r.outcome, r.outcome.status()),
            (PeerOutcome::Unauthenticated, 401)
        );
        assert!(r.signed.is_none());
        let r = l.answer(None, None, body, NOW);
        assert_eq!(r.outcome, PeerOutcome::Unauthenticated);
        let r = l.answer(Some(&ts), Some(&sig), body, NOW + 3600);
        assert_eq!((r.outcome, r.outcome.status()), (PeerOutcome::Stale, 401));
        let bad = br#"{"flow":"nonsense"}"#;
        let (ts, sig) = signed_request(bad);
        let r = l.answer(Some(&ts), Some(&sig), bad, NOW);
        assert_eq!(
            (r.outcome, r.outcome.status()),
            (PeerOutcome::Malformed, 400)
        );
        assert!(
            String::from_utf8_lossy(&r.body).contains("malformed request"),
            "clear message"
        );
        let m = l.metrics();
        assert_eq!(
            [
                m.served(PeerOutcome::Ok),
                m.served(PeerOutcome::Unauthenticated),
                m.served(PeerOutcome::Stale),
                m.served(PeerOutcome::Malformed)
            ],
            [1, 2, 1, 1]
        );
    }

    #[test]
    fn without_a_key_nothing_is_kept_or_served() {
        let l = live(None);
        l.record(&[seg(1, 10)]);
        let body = br#"{"flow":"10.0.0.2:80 -> 10.0.0.1:40000"}"#;
        let (ts, sig) = signed_request(body);
        let r = l.answer(Some(&ts), Some(&sig), body, NOW);
        assert_eq!(r.outcome, PeerOutcome::Unauthenticated);
        let key = FlowQuery::parse(body).expect("valid").1;
        assert!(l.local(&key, &FlowQuery::for_key(&key)).is_empty());
    }

    #[test]
    fn gso_records_become_their_wire_segments() {
        use phalanx_common::tcp_flags::{ACK, CWR, PSH};
        assert_eq!(gso_segment_size(4344, 3, None), 1448, "all full");
        assert_eq!(gso_segment_size(2996, 3, Some(1448)), 1448, "short last");
        assert_eq!(
            gso_segment_size(2996, 3, Some(1600)),
            999,
            "known size cannot fit"
        );
        assert_eq!(gso_segment_size(2000, 2, Some(1448)), 1448);
        let mut m = seg(1000, 5);
        m.ip_id = 0xfffe;
        m.segs = 3;
        m.payload_len = 2996;
        m.tcp_flags = ACK | PSH | CWR;
        let v: Vec<PacketMeta> = gso_segments(&m, 1448).collect();
        assert_eq!(
            v.iter()
                .map(|s| (s.seq, s.payload_len, s.ip_id, s.tcp_flags, s.segs))
                .collect::<Vec<_>>(),
            vec![
                (1000, 1448, 0xfffe, ACK | CWR, 1),
                (2448, 1448, 0xffff, ACK, 1),
                (3896, 100, 0, ACK | PSH, 1),
            ]
        );
        // Kept as segments; the size learnt from single segments is used.
        let l = live(Some("0123456789abcdef"));
        let mut single = seg(0, 1);
        single.payload_len = 1448;
        l.record(&[single, m]);
        let key = Observation::from_meta(&m).flow;
        let kept = l.local(&key, &FlowQuery::for_key(&key));
        assert_eq!(
            kept.len(),
            4,
            "one single segment and three from the GSO record"
        );
        let fps: Vec<u64> = kept.iter().map(|o| o.fingerprint).collect();
        let want: Vec<u64> = std::iter::once(single)
            .chain(gso_segments(&m, 1448))
            .map(|s| super::super::fingerprint(&s))
            .collect();
        assert_eq!(fps, want, "fingerprints of the wire segments");
        assert!(kept.iter().all(|o| o.payload_hash == 0));
    }

    /// A record with the kernel's segment size splits exactly even when the
    /// last segment is short and no single segment taught the size.
    #[test]
    fn kernel_gso_size_splits_a_short_last_segment() {
        let l = live(Some("0123456789abcdef"));
        let mut m = seg(1000, 5);
        m.segs = 3;
        m.payload_len = 2996;
        m.gso_size = 1448;
        l.record(&[m]);
        let key = Observation::from_meta(&m).flow;
        let kept = l.local(&key, &FlowQuery::for_key(&key));
        let want: Vec<u64> = gso_segments(&m, 1448)
            .map(|s| super::super::fingerprint(&s))
            .collect();
        assert_eq!(
            kept.iter().map(|o| o.fingerprint).collect::<Vec<_>>(),
            want,
            "segments of 1448, 1448 and 100 bytes, not three of 999"
        );
    }

    /// Serves `live` on 127.0.0.1 with the daemon's router; returns its base URL.
    async fn serve(live: Arc<LiveStitch>, dir: &std::path::Path) -> String {
        use crate::alerting::{
            evidence::{EvidenceStore, Retention},
            service::IncidentsView,
            IncidentManager, ManagerSettings,
        };
        let evidence = EvidenceStore::open(
            dir,
            Retention {
                max_bytes: 1 << 20,
                max_files: 10,
            },
        )
        .expect("evidence dir");
        let state = crate::api::ApiState {
            registry: Arc::new(Registry::default()),
            flows: Arc::new(Mutex::new(crate::flow::FlowTable::new(
                crate::flow::FlowConfig::default(),
            ))),
            incidents: IncidentsView {
                manager: Arc::new(Mutex::new(IncidentManager::new(ManagerSettings::default()))),
                evidence: Arc::new(evidence),
            },
            stitch: Some(live),
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, crate::api::router(state)).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn two_daemons_stitch_over_http() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = "0123456789abcdef";
        // Downstream point: every segment but seq 5, one hop later (TTL 63).
        let down = Arc::new(
            LiveStitch::new(
                &StitchConfig {
                    secret: key.into(),
                    hop: "down".into(),
                    ..StitchConfig::default()
                },
                "h",
                &mut Registry::default(),
            )
            .expect("down"),
        );
        let t0 = 1_700_000_000_000_000_000u64;
        let segs: Vec<PacketMeta> = (0..20u32)
            .map(|i| {
                let mut m = seg(1000 + i * 100, t0 + u64::from(i) * 1_000_000);
                m.payload_len = 100;
                m.ip_id = i;
                m
            })
            .collect();
        let arrived: Vec<PacketMeta> = segs
            .iter()
            .filter(|m| m.seq != 1500)
            .map(|m| {
                let mut a = *m;
                a.ttl = 63;
                a.ts_ns += 200_000;
                a
            })
            .collect();
        down.record(&arrived);
        let url = serve(down.clone(), dir.path()).await;
        let unreachable = "http://127.0.0.1:9/".to_string();
        let wrong_key = Arc::new(
            LiveStitch::new(
                &StitchConfig {
                    secret: "not-the-shared-key!".into(),
                    hop: "x".into(),
                    ..StitchConfig::default()
                },
                "h",
                &mut Registry::default(),
            )
            .expect("x"),
        );
        let wrong_url = serve(wrong_key, dir.path()).await;
        let peers = [url.as_str(), unreachable.as_str(), wrong_url.as_str()];
        let up = Arc::new(
            LiveStitch::new(
                &StitchConfig {
                    secret: key.into(),
                    hop: "up".into(),
                    peers: peers.iter().map(|p| p.parse().expect("url")).collect(),
                    timeout_ms: 2000,
                    ..StitchConfig::default()
                },
                "h",
                &mut Registry::default(),
            )
            .expect("up"),
        );
        up.record(&segs);
        let k = Observation::from_meta(&segs[0]).flow;
        let r = up.stitch_flow(k, FlowQuery::for_key(&k)).await;
        let rep = r
            .report
            .as_ref()
            .expect("stitched despite two failing peers");
        let l = rep.link("up", "down").expect("up -> down");
        assert_eq!((l.packets, l.lost, l.unmatched), (20, 1, 0), "{l:?}");
        assert_eq!(
            r.summary.as_deref(),
            Some("1 of 1 lost packets dropped between hop up and hop down (direction up -> down: 1 of 20 packets lost)")
        );
        assert_eq!(r.peers[0].hop.as_deref(), Some("down"));
        assert_eq!(r.peers[0].observations, 19);
        assert!(r.peers[1].error.is_some(), "unreachable peer reported");
        let e = r.peers[2].error.as_deref().unwrap_or_default();
        assert!(e.contains("401"), "peer with another key refuses: {e}");
        assert_eq!(down.metrics().served(PeerOutcome::Ok), 1);
        let errors = r.errors().expect("errors listed");
        assert!(
            errors.contains(&unreachable) && errors.contains(&wrong_url),
            "{errors}"
        );
        let v = serde_json::to_value(&r).expect("json");
        assert!(
            v["links"].is_array() && v["hops"].is_array(),
            "stitch --json fields: {v}"
        );
    }

    fn report(lost_fwd: u64, lost_rev: u64, p99: Option<f64>) -> StitchReport {
        use super::super::{
            link::DelayStats, ClockMethod, HopReport, LinkReport, OrderSource, PathDirection,
        };
        let hop = |name: &str, position| HopReport {
            name: name.into(),
            position,
            packets: 100,
            flows: 1,
            shared_flows: 1,
            collisions: 0,
            clock_offset_ms: 0.0,
            clock_offset_ns: 0,
        };
        let link = |from: &str, to: &str, direction, lost: u64| LinkReport {
            from: from.into(),
            to: to.into(),
            direction,
            packets: 1000,
            delivered: 1000 - lost,
            lost,
            duplicates: 0,
            unmatched: 0,
            outside_window: 0,
            reordered: 0,
            delay_ms: DelayStats {
                samples: 1,
                p50: p99.map(|p| p / 2.0),
                p99,
                ..DelayStats::default()
            },
            clock_offset_ms: 0.0,
            clock_method: ClockMethod::TwoWay,
            flows: 1,
            flows_missing: 0,
            payload_hash: false,
        };
        StitchReport {
            order: OrderSource::Inferred,
            hops: vec![hop("client", 0), hop("server", 1)],
            links: vec![
                link("client", "server", PathDirection::Forward, lost_fwd),
                link("server", "client", PathDirection::Reverse, lost_rev),
            ],
            flows: Vec::new(),
        }
    }

    #[test]
    fn summary_names_the_worst_link() {
        assert_eq!(
            summarize(&report(37, 3, Some(1.0))),
            "37 of 40 lost packets dropped between hop client and hop server \
             (direction client -> server: 37 of 1000 packets lost)"
        );
        assert_eq!(
            summarize(&report(0, 5, None)),
            "5 of 5 lost packets dropped between hop server and hop client \
             (direction server -> client: 5 of 1000 packets lost)"
        );
        assert_eq!(
            summarize(&report(0, 0, Some(24.0))),
            "no packet lost between hops client, server (2000 packets matched); \
             one-way delay client -> server p50 12.0 ms, p99 24.0 ms"
        );
    }
}
