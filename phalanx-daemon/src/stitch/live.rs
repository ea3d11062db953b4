//! Live stitching with peer daemons: the coordinator.
//!
//! A daemon with a `stitch.secret` keeps, besides the incident history, a
//! bounded history of each flow's recent packets as [`Sighting`]s
//! ([`super::recorder`]) and answers signed peer requests for a flow's
//! sightings ([`super::peer`]). A daemon with `stitch.peers` asks every
//! peer for a flow's sightings, adds its own, and stitches them: on
//! `POST /api/v1/stitch` and for the flow of every firing incident. Every
//! outcome is counted in `phalanx_stitch_peer_requests_total{outcome}`
//! (served) and `phalanx_stitch_peer_queries_total{peer,outcome}` (asked).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use phalanx_common::PacketMeta;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::Serialize;
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument as _};

use super::config::{SecretError, StitchConfig};
use super::peer::{
    self, sign, verify, FlowQuery, PeerAnswer, PeerOutcome, PeerReply, PEER_PATH, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
use super::recorder::{HistoryWriter, SightingHistory};
use super::summary::summarize;
use super::{HopCapture, Sighting, StitchReport};
use crate::flow::history::HistoryBounds;
use crate::flow::key::FlowKey;

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
        for o in PeerOutcome::ALL {
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

    fn count_served(&self, outcome: PeerOutcome) {
        self.served
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str().into(),
            })
            .inc();
    }

    fn count_asked(&self, peer: &reqwest::Url, ok: bool) {
        self.asked
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
                outcome: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
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

/// A query in flight to one peer.
type PeerTask = JoinHandle<Result<PeerAnswer, String>>;

/// Live stitching: the local history, the peer endpoint and the client.
#[derive(Debug)]
pub struct LiveStitch {
    hop: String,
    peers: Vec<reqwest::Url>,
    secret: Option<Vec<u8>>,
    refresh: Duration,
    history: Option<Mutex<SightingHistory>>,
    client: reqwest::Client,
    metrics: StitchMetrics,
    /// Peer requests' nonces seen within the replay window.
    nonces: Mutex<peer::Nonces>,
}

impl LiveStitch {
    /// Loads the key, sizes the history (kept only with a key) and
    /// registers the metrics. `host` names the hop when `stitch.hop` is empty.
    pub fn new(
        cfg: &StitchConfig,
        bounds: HistoryBounds,
        host: &str,
        registry: &mut Registry,
    ) -> Result<Self, LiveError> {
        let secret = cfg.load_secret()?;
        let history = secret
            .as_ref()
            .map(|_| Mutex::new(SightingHistory::new(bounds.per_flow, bounds.max_flows)));
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
            nonces: Mutex::new(peer::Nonces::default()),
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
        HistoryWriter::new(Some(h)).record(batch);
    }

    /// The history locked for [`HistoryWriter::record`] without waiting;
    /// `None` while a peer request is reading it.
    pub fn try_history_writer(&self) -> Option<HistoryWriter<'_>> {
        let Some(h) = &self.history else {
            return Some(HistoryWriter::new(None));
        };
        match h.try_lock() {
            Ok(g) => Some(HistoryWriter::new(Some(g))),
            Err(std::sync::TryLockError::WouldBlock) => None,
            // A panic elsewhere: recording stops, as with `record`.
            Err(std::sync::TryLockError::Poisoned(_)) => Some(HistoryWriter::new(None)),
        }
    }

    /// The flow's sightings in the local history, within the query's window.
    pub fn local(&self, key: &FlowKey, q: &FlowQuery) -> Vec<Sighting> {
        let Some(h) = &self.history else {
            return Vec::new();
        };
        let Ok(h) = h.lock() else {
            return Vec::new();
        };
        let mut v = h.recent(key);
        v.retain(|o| q.contains(o.ts_ns));
        v
    }

    /// Serves a peer request: checks the signature, parses the body and
    /// answers the flow's sightings, signed ([`peer::answer`]). Counts the
    /// outcome.
    pub fn answer(
        &self,
        ts: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_secs: u64,
    ) -> PeerReply {
        let reply = peer::answer(
            self.secret.as_deref(),
            &self.hop,
            ts,
            signature,
            body,
            now_secs,
            &self.nonces,
            |key, q| self.local(key, q),
        );
        self.metrics.count_served(reply.outcome);
        reply
    }

    /// Asks every peer (concurrently, each bounded by `stitch.timeout_ms`)
    /// for the flow's sightings, adds the local ones and stitches them.
    /// Never fails: what went wrong is in the report.
    pub async fn stitch_flow(self: &Arc<Self>, key: FlowKey, mut query: FlowQuery) -> LiveReport {
        let nonce = match crate::sign::random_hex(16) {
            Ok(n) => n,
            Err(e) => return self.failed(&key, format!("no randomness for a nonce: {e}")),
        };
        query.nonce = Some(nonce.clone());
        let body = match serde_json::to_vec(&query) {
            Ok(b) => Arc::new(b),
            Err(e) => return self.failed(&key, format!("encoding the request: {e}")),
        };
        let tasks = self.ask_all(body, Arc::new(nonce));
        // Read while the peers answer.
        let local = self.local(&key, &query);
        let local_count = local.len() as u64;
        let mine = HopCapture {
            name: self.hop.clone(),
            observations: local,
        };
        let (hops, peers) = self.collect_answers(key, mine, tasks).await;
        let (report, error) = stitch_hops(hops).await;
        debug!(flow = %key, ok = report.is_some(), "stitched");
        LiveReport {
            flow: key.to_string(),
            stitched_at: crate::clock::rfc3339(crate::clock::wall_ns()),
            summary: report.as_ref().map(summarize),
            error,
            local: LocalStatus {
                hop: self.hop.clone(),
                observations: local_count,
            },
            peers,
            report,
        }
    }

    /// Starts one query per peer, in the configured order.
    fn ask_all(self: &Arc<Self>, body: Arc<Vec<u8>>, nonce: Arc<String>) -> Vec<PeerTask> {
        self.peers
            .iter()
            .map(|p| {
                let me = self.clone();
                let (peer, body, nonce) = (p.clone(), body.clone(), nonce.clone());
                tokio::spawn(
                    async move { me.ask(&peer, &body, &nonce).await }
                        .instrument(tracing::info_span!("peer", peer = %p)),
                )
            })
            .collect()
    }

    /// Waits for every peer's answer (counted): the hops to stitch, this
    /// daemon's (`mine`) first, and what each peer contributed.
    async fn collect_answers(
        &self,
        key: FlowKey,
        mine: HopCapture,
        tasks: Vec<PeerTask>,
    ) -> (Vec<HopCapture>, Vec<PeerStatus>) {
        let mut hops = vec![mine];
        let mut peers = Vec::new();
        for (peer, t) in self.peers.iter().zip(tasks) {
            let r = match t.await {
                Ok(r) => r,
                Err(e) => Err(format!("query task failed: {e}")),
            };
            self.metrics.count_asked(peer, r.is_ok());
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
                        observations: a.observations.iter().map(|o| o.sighting(key)).collect(),
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
        (hops, peers)
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

    /// One signed request to one peer; the answer's signature is checked
    /// too, and that it answers this request (its `nonce`).
    async fn ask(
        &self,
        base: &reqwest::Url,
        body: &[u8],
        nonce: &str,
    ) -> Result<PeerAnswer, String> {
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
        let answer: PeerAnswer =
            serde_json::from_slice(&bytes).map_err(|e| format!("malformed answer: {e}"))?;
        if answer.nonce.as_deref() != Some(nonce) {
            return Err("answer rejected: it answers another request (nonce)".into());
        }
        Ok(answer)
    }
}

/// Stitches the hops off the async runtime: the report, or why there is none.
/// Points that saw nothing are dropped first: they cannot be placed on the path.
async fn stitch_hops(mut hops: Vec<HopCapture>) -> (Option<StitchReport>, Option<String>) {
    hops.retain(|h| !h.observations.is_empty());
    match tokio::task::spawn_blocking(move || super::stitch(hops)).await {
        Ok(Ok(r)) => (Some(r), None),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(e) => (None, Some(format!("stitch task failed: {e}"))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::history::HistoryConfig;
    use crate::synth::tcp_segment as seg;

    /// The peer history as the default configuration sizes it.
    fn peer_bounds() -> HistoryBounds {
        HistoryConfig::default().peers()
    }

    const NOW: u64 = 1_700_000_000;

    fn live(secret: Option<&str>) -> LiveStitch {
        let cfg = StitchConfig {
            secret: secret.unwrap_or_default().to_string(),
            hop: "h1".into(),
            ..StitchConfig::default()
        };
        LiveStitch::new(&cfg, peer_bounds(), "host", &mut Registry::default()).expect("live stitch")
    }

    fn signed_request(body: &[u8]) -> (String, String) {
        (NOW.to_string(), sign(b"0123456789abcdef", NOW, body))
    }

    #[test]
    fn peer_endpoint_answers_signed_and_counts_every_outcome() {
        let l = live(Some("0123456789abcdef"));
        l.record(&[seg(1, 10), seg(2, 20), seg(3, 30)]);
        let body = br#"{"flow":"10.0.0.2:80 -> 10.0.0.1:40000","since_ns":15,"nonce":"00112233445566778899aabbccddeeff"}"#;
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
            a.nonce.as_deref(),
            Some("00112233445566778899aabbccddeeff"),
            "the answer names its request"
        );
        // The same signed request again, within the window: a replay.
        let again = l.answer(Some(&ts), Some(&sig), body, NOW + 1);
        assert_eq!(
            (again.outcome, again.outcome.status()),
            (PeerOutcome::Replayed, 401)
        );
        // Signed, but without a nonce: refused before anything is read.
        let bare = br#"{"flow":"10.0.0.2:80 -> 10.0.0.1:40000"}"#;
        let (bts, bsig) = signed_request(bare);
        let r = l.answer(Some(&bts), Some(&bsig), bare, NOW);
        assert_eq!(r.outcome, PeerOutcome::Malformed);
        assert!(String::from_utf8_lossy(&r.body).contains("needs a nonce"));
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
                m.served(PeerOutcome::Malformed),
                m.served(PeerOutcome::Replayed)
            ],
            [1, 2, 1, 2, 1]
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

    /// Serves `live` on 127.0.0.1 with the daemon's router; returns its base URL.
    async fn serve(live: Arc<LiveStitch>, dir: &std::path::Path) -> String {
        crate::api::serve_for_test(
            dir,
            Registry::default(),
            crate::api::auth::Auth::open(),
            Some(live),
        )
        .await
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
                peer_bounds(),
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
                peer_bounds(),
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
                peer_bounds(),
                "h",
                &mut Registry::default(),
            )
            .expect("up"),
        );
        up.record(&segs);
        let k = Sighting::from_meta(&segs[0]).flow;
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
}
