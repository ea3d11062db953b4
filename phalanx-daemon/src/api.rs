//! HTTP server: `/metrics`, `/healthz`, `/api/v1/...`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;

use crate::{
    alerting::service::IncidentsView,
    flow::{
        rank::{self, RankBy},
        FlowTable,
    },
    metrics::text,
    stitch::{
        live::LiveStitch,
        peer::{self, FlowQuery},
    },
};

/// Shared state behind the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Metrics registry, encoded on each scrape.
    pub registry: Arc<Registry>,
    /// Live flow table.
    pub flows: Arc<Mutex<FlowTable>>,
    /// Incidents and their evidence.
    pub incidents: IncidentsView,
    /// Live stitching (peer endpoint and `/api/v1/stitch`); `None` answers 404.
    pub stitch: Option<Arc<LiveStitch>>,
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/incidents/{id}", get(incident))
        .route("/api/v1/incidents/{id}/pcapng", get(incident_pcapng))
        .route(peer::PEER_PATH, post(peer_observations))
        .route("/api/v1/stitch", post(stitch_flow))
        .with_state(state)
}

/// Binds the listener; a bind failure is reported before anything runs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the
/// Prometheus text format (curl, promtool).
async fn metrics(State(s): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    let mut body = String::new();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match encode(&mut body, &s.registry) {
        Ok(()) if text::wants_openmetrics(accept) => {
            ([(header::CONTENT_TYPE, text::OPENMETRICS)], body).into_response()
        }
        Ok(()) => (
            [(header::CONTENT_TYPE, text::PROMETHEUS_TEXT)],
            text::to_prometheus_text(&body),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// Body of `/api/v1/flows`.
#[derive(serde::Serialize)]
struct FlowsResponse {
    /// Flows tracked in all.
    total: usize,
    /// Sort key, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    sort: Option<String>,
    flows: Vec<crate::flow::FlowSummary>,
}

/// `/api/v1/flows?sort=KEY&limit=N`: the `limit` worst flows by `KEY`
/// (largest first); without `sort`, every flow (up to `limit`) in table order.
#[derive(serde::Deserialize)]
struct FlowsQuery {
    sort: Option<String>,
    limit: Option<usize>,
}

fn bad_request(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

async fn flows(
    State(s): State<ApiState>,
    q: Result<Query<FlowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_request("bad query: expected sort=KEY and limit=N (a positive integer)");
    };
    let by = match q.sort.as_deref().map(str::parse::<RankBy>).transpose() {
        Ok(by) => by,
        Err(e) => return bad_request(e),
    };
    if q.limit == Some(0) {
        return bad_request("limit must be at least 1");
    }
    let snapshot = match s.flows.lock() {
        Ok(t) => t.snapshot(),
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "flow table poisoned\n").into_response()
        }
    };
    let total = snapshot.len();
    let limit = q.limit.unwrap_or(usize::MAX);
    let flows = match by {
        Some(by) => rank::top(snapshot, by, limit),
        None => snapshot.into_iter().take(limit).collect(),
    };
    Json(FlowsResponse {
        total,
        sort: by.map(|b| b.to_string()),
        flows,
    })
    .into_response()
}

/// Body of `/api/v1/incidents`: firing (oldest first), then resolved (newest first).
#[derive(serde::Serialize)]
struct IncidentsResponse {
    incidents: Vec<crate::alerting::Incident>,
}

fn poisoned() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "incident state poisoned\n",
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
}

async fn incidents(State(s): State<ApiState>) -> Response {
    match s.incidents.manager.lock() {
        Ok(m) => Json(IncidentsResponse {
            incidents: m.list().into_iter().cloned().collect(),
        })
        .into_response(),
        Err(_) => poisoned(),
    }
}

async fn incident(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.incidents.manager.lock() {
        Ok(m) => match m.get(&id) {
            Some(i) => Json(i.clone()).into_response(),
            None => not_found("no such incident"),
        },
        Err(_) => poisoned(),
    }
}

/// `?compressed=true` serves the stored `.pcapng.zst` as is.
#[derive(serde::Deserialize)]
struct PcapngQuery {
    #[serde(default)]
    compressed: bool,
}

/// The incident's evidence: decompressed by default, so any Wireshark opens
/// it (the stored file is zstd-compressed).
async fn incident_pcapng(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<PcapngQuery>,
) -> Response {
    let file = match s.incidents.manager.lock() {
        Ok(m) => match m.get(&id) {
            Some(i) => i.annotations.get("pcapng").cloned(),
            None => return not_found("no such incident"),
        },
        Err(_) => return poisoned(),
    };
    let Some(file) = file else {
        return not_found("this incident has no evidence file");
    };
    let store = s.incidents.evidence.clone();
    let compressed = q.compressed;
    let name = file.clone();
    let read = tokio::task::spawn_blocking(move || {
        if compressed {
            store.read_compressed(&name)
        } else {
            store.read_pcapng(&name)
        }
    })
    .await;
    let (bytes, ctype, fname) = match read {
        Ok(Ok(b)) if compressed => (b, "application/zstd", file),
        Ok(Ok(b)) => (
            b,
            "application/x-pcapng",
            file.trim_end_matches(".zst").to_string(),
        ),
        Ok(Err(e)) => {
            tracing::warn!(incident = %id, "serving evidence: {e}");
            return not_found("evidence file is gone (rotated out?)");
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{fname}\""),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// `POST /api/v1/peer/observations`: a peer asks for a flow's recent
/// packets (signed request, signed answer; see [`crate::stitch::peer`]).
async fn peer_observations(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(live) = s.stitch else {
        return not_found("live stitching is not available");
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let reply = live.answer(
        h(peer::TIMESTAMP_HEADER),
        h(peer::SIGNATURE_HEADER),
        &body,
        crate::clock::wall_secs(),
    );
    let status = StatusCode::from_u16(reply.outcome.status()).unwrap_or(StatusCode::BAD_REQUEST);
    if reply.outcome != peer::PeerOutcome::Ok {
        tracing::debug!(outcome = %reply.outcome, "peer request rejected");
    }
    let mut resp = (status, reply.body).into_response();
    let ctype = if reply.signed.is_some() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let hs = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        hs.insert(header::CONTENT_TYPE, v);
    }
    if let Some((ts, sig)) = reply.signed {
        for (name, value) in [(peer::TIMESTAMP_HEADER, ts), (peer::SIGNATURE_HEADER, sig)] {
            if let Ok(v) = header::HeaderValue::from_str(&value) {
                hs.insert(name, v);
            }
        }
    }
    resp
}

/// `POST /api/v1/stitch` with a [`FlowQuery`]: asks every peer for the
/// flow's packets, stitches them with the local ones and returns the
/// report (`phalanx stitch --json` fields plus per-peer status).
async fn stitch_flow(State(s): State<ApiState>, body: Bytes) -> Response {
    let Some(live) = s.stitch else {
        return not_found("live stitching is not available");
    };
    let (q, key) = match FlowQuery::parse(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    if !live.has_peers() {
        return (
            StatusCode::BAD_REQUEST,
            "no stitch.peers configured: nothing to stitch with\n",
        )
            .into_response();
    }
    Json(live.stitch_flow(key, q).await).into_response()
}
