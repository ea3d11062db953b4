//! The peer protocol of live stitching: what one daemon asks another
//! ([`FlowQuery`] on [`PEER_PATH`]), what it answers ([`PeerAnswer`]), how
//! both are signed, and the answering side ([`answer`]).
//!
//! Authentication: requests and answers carry `X-Phalanx-Timestamp` (Unix
//! seconds) and `X-Phalanx-Signature: sha256=<hex>`, the HMAC-SHA256 with
//! the shared key of the timestamp, a newline and the exact body. A missing
//! or wrong signature is rejected (401); so is a timestamp more than
//! [`REPLAY_WINDOW_SECS`] away from this host's clock. A peer request's
//! body carries a `nonce` (random hex) that the answering daemon keeps for
//! the window and refuses to see twice ([`Nonces`]), so a captured request
//! cannot be replayed at all; the answer echoes it, so an answer cannot be
//! swapped for another request's.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Sighting;
use crate::flow::key::{FlowKey, FlowSpec, Proto};

/// Path of the peer endpoint (relative to a peer's base URL).
pub const PEER_PATH: &str = "/api/v1/peer/observations";
/// Header with the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-phalanx-timestamp";
/// Header with `sha256=<hex HMAC>`.
pub const SIGNATURE_HEADER: &str = "x-phalanx-signature";
/// Largest distance between a signed timestamp and this host's clock.
pub const REPLAY_WINDOW_SECS: u64 = 60;

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
    /// Random hex (16 to 64 digits), new for each peer request; required
    /// there, ignored by `/api/v1/stitch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl FlowQuery {
    /// The query for a whole flow.
    pub fn for_key(key: &FlowKey) -> Self {
        Self {
            flow: FlowSpec::of(key).to_string(),
            proto: key.protocol().to_string(),
            since_ns: None,
            until_ns: None,
            nonce: None,
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

    /// Whether a packet at `ts_ns` falls in the query's time window.
    pub fn contains(&self, ts_ns: u64) -> bool {
        self.since_ns.is_none_or(|s| ts_ns >= s) && self.until_ns.is_none_or(|u| ts_ns <= u)
    }
}

/// One packet of the flow as the answering point saw it (the flow is the
/// request's; `dir` is relative to its canonical key, the same at every
/// point): a [`Sighting`] in its wire form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSighting {
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

impl WireSighting {
    /// The wire form of a sighting (its flow is the request's).
    pub fn of(o: &Sighting) -> Self {
        Self {
            dir: o.dir,
            ts_ns: o.ts_ns,
            fingerprint: o.fingerprint,
            payload_hash: o.payload_hash,
            ttl: o.ttl,
            tcp_flags: o.tcp_flags,
        }
    }

    /// The sighting of a packet of `flow`, the flow that was asked for.
    pub fn sighting(&self, flow: FlowKey) -> Sighting {
        Sighting {
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
    pub observations: Vec<WireSighting>,
    /// The request's nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
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
    /// Authenticated, but the body does not name a flow or has no nonce.
    Malformed,
    /// A nonce already seen within the replay window: a replayed request.
    Replayed,
}

impl PeerOutcome {
    /// Every outcome, in label order.
    pub const ALL: [PeerOutcome; 5] = [
        PeerOutcome::Ok,
        PeerOutcome::Unauthenticated,
        PeerOutcome::Stale,
        PeerOutcome::Malformed,
        PeerOutcome::Replayed,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerOutcome::Ok => "ok",
            PeerOutcome::Unauthenticated => "unauthenticated",
            PeerOutcome::Stale => "stale",
            PeerOutcome::Malformed => "malformed",
            PeerOutcome::Replayed => "replayed",
        }
    }

    /// HTTP status of the answer.
    pub fn status(self) -> u16 {
        match self {
            PeerOutcome::Ok => 200,
            PeerOutcome::Unauthenticated | PeerOutcome::Stale | PeerOutcome::Replayed => 401,
            PeerOutcome::Malformed => 400,
        }
    }
}

impl fmt::Display for PeerOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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

impl PeerReply {
    /// A refusal: `msg` as the body, unsigned.
    fn reject(outcome: PeerOutcome, msg: &str) -> Self {
        Self {
            outcome,
            body: format!("{msg}\n").into_bytes(),
            signed: None,
        }
    }
}

/// Nonces of peer requests seen within the replay window, oldest first.
#[derive(Debug, Default)]
pub struct Nonces {
    seen: std::collections::HashSet<String>,
    order: std::collections::VecDeque<(u64, String)>,
}

/// Most nonces kept: beyond, the oldest is forgotten (a replay of it would
/// need this many requests within the window first).
const MAX_NONCES: usize = 1 << 16;

impl Nonces {
    /// Records a request's nonce signed at `ts`; false when it was seen
    /// within the window. Nonces older than the window are forgotten: the
    /// timestamp check refuses their requests anyway.
    pub fn fresh(&mut self, nonce: &str, ts: u64, now_secs: u64) -> bool {
        let horizon = now_secs.saturating_sub(2 * REPLAY_WINDOW_SECS);
        while self
            .order
            .front()
            .is_some_and(|(t, _)| *t < horizon || self.seen.len() >= MAX_NONCES)
        {
            if let Some((_, n)) = self.order.pop_front() {
                self.seen.remove(&n);
            }
        }
        if !self.seen.insert(nonce.to_string()) {
            return false;
        }
        self.order.push_back((ts, nonce.to_string()));
        true
    }
}

/// Whether a nonce is 16 to 64 hex digits.
fn nonce_ok(n: &str) -> bool {
    (16..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Serves a peer request as hop `hop` with key `secret` (none: stitching
/// is off here): checks the signature, parses the body, refuses a nonce
/// `nonces` has seen and answers the sightings `local` returns for the
/// named flow and query, signed.
#[allow(clippy::too_many_arguments)]
pub fn answer(
    secret: Option<&[u8]>,
    hop: &str,
    ts: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: u64,
    nonces: &std::sync::Mutex<Nonces>,
    local: impl FnOnce(&FlowKey, &FlowQuery) -> Vec<Sighting>,
) -> PeerReply {
    let Some(secret) = secret else {
        return PeerReply::reject(
            PeerOutcome::Unauthenticated,
            "stitching is not enabled here (no stitch.secret)",
        );
    };
    let signed_at = match verify(secret, ts, signature, body, now_secs) {
        Ok(t) => t,
        Err(e @ AuthError::Stale { .. }) => {
            return PeerReply::reject(PeerOutcome::Stale, &e.to_string())
        }
        Err(e) => return PeerReply::reject(PeerOutcome::Unauthenticated, &e.to_string()),
    };
    let (q, key) = match FlowQuery::parse(body) {
        Ok(v) => v,
        Err(e) => return PeerReply::reject(PeerOutcome::Malformed, &e.to_string()),
    };
    let Some(nonce) = q.nonce.clone().filter(|n| nonce_ok(n)) else {
        return PeerReply::reject(
            PeerOutcome::Malformed,
            "malformed request: a peer request needs a nonce of 16 to 64 hex digits",
        );
    };
    let fresh = nonces
        .lock()
        .is_ok_and(|mut n| n.fresh(&nonce, signed_at, now_secs));
    if !fresh {
        return PeerReply::reject(
            PeerOutcome::Replayed,
            "this request's nonce was already used: a replayed request",
        );
    }
    let answer = PeerAnswer {
        hop: hop.to_string(),
        flow: q.flow.clone(),
        observations: local(&key, &q).iter().map(WireSighting::of).collect(),
        nonce: Some(nonce),
    };
    let body = match serde_json::to_vec(&answer) {
        Ok(b) => b,
        Err(e) => {
            return PeerReply::reject(PeerOutcome::Malformed, &format!("encoding the answer: {e}"))
        }
    };
    let signed = (now_secs.to_string(), sign(secret, now_secs, &body));
    PeerReply {
        outcome: PeerOutcome::Ok,
        body,
        signed: Some(signed),
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
    fn a_nonce_is_fresh_once_within_the_window() {
        let mut n = Nonces::default();
        assert!(n.fresh("aa", NOW, NOW));
        assert!(!n.fresh("aa", NOW, NOW + 5), "seen: a replay");
        assert!(n.fresh("bb", NOW, NOW + 5));
        // Long after the window, the timestamp check refuses the request;
        // the nonce itself is forgotten.
        assert!(n.fresh("aa", NOW + 200, NOW + 200 + REPLAY_WINDOW_SECS * 2));
        assert_eq!(n.seen.len(), 1, "old nonces are not kept");
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
}
