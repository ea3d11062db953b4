//! HTTP server: `/metrics`, `/healthz`, `/api/v1/...`.

pub mod auth;
pub mod lists;
pub mod serve;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use auth::{Auth, Denied, Scope};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;

use crate::{
    alerting::service::IncidentsView,
    flow::SharedTable,
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
    pub flows: Arc<SharedTable>,
    /// Incidents and their evidence.
    pub incidents: IncidentsView,
    /// Live stitching (peer endpoint and `/api/v1/stitch`); `None` answers 404.
    pub stitch: Option<Arc<LiveStitch>>,
    /// Who may call the API ([`auth`]).
    pub auth: Arc<Auth>,
    /// The daemon's health, for `/healthz`.
    pub health: crate::health::Health,
}

/// Builds the router: `/healthz` for anyone, the peer endpoint under its
/// own HMAC signatures, `/api/v1/session` for a token, reads for `read`
/// and actions for `admin` callers (everything, when the API is open).
pub fn router(state: ApiState) -> Router {
    let read = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/flows", get(lists::flows))
        .route("/api/v1/incidents", get(lists::incidents))
        .route("/api/v1/incidents/{id}", get(incident))
        .route("/api/v1/incidents/{id}/pcapng", get(incident_pcapng))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    let admin = Router::new()
        .route("/api/v1/stitch", post(stitch_flow))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(healthz))
        .route(peer::PEER_PATH, post(peer_observations))
        .route("/api/v1/session", post(open_session).delete(close_session))
        .merge(read)
        .merge(admin)
        .with_state(state)
}

/// `ok`, or `degraded: <reasons>` while the process works but has lost
/// data it should have kept (200 either way: a restart would not help).
async fn healthz(State(s): State<ApiState>) -> String {
    format!("{}\n", s.health.status())
}

async fn require_read(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    admit(&s, req, next, Scope::Read).await
}

async fn require_admin(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    admit(&s, req, next, Scope::Admin).await
}

/// Lets the request in when its caller has `scope` (the caller goes into
/// its extensions, for what records who acted), else answers 401 or 403.
async fn admit(s: &ApiState, mut req: Request, next: Next, scope: Scope) -> Response {
    match s.auth.admit(req.headers(), scope) {
        Ok(caller) => {
            if let Some(p) = caller {
                req.extensions_mut().insert(p);
            }
            next.run(req).await
        }
        Err(d) => refused(d, scope),
    }
}

fn refused(d: Denied, scope: Scope) -> Response {
    let challenge = [(header::WWW_AUTHENTICATE, "Bearer realm=\"phalanx\"")];
    match d {
        Denied::Missing => (
            StatusCode::UNAUTHORIZED,
            challenge,
            "authentication required: Authorization: Bearer TOKEN (http.token_file), or a session cookie from POST /api/v1/session\n",
        )
            .into_response(),
        Denied::Invalid => (
            StatusCode::UNAUTHORIZED,
            challenge,
            "unknown token or expired session\n",
        )
            .into_response(),
        Denied::Forbidden => (
            StatusCode::FORBIDDEN,
            format!("this needs a token of scope {}\n", scope.as_str()),
        )
            .into_response(),
    }
}

/// `POST /api/v1/session` with a bearer token: a browser session cookie
/// (HttpOnly, SameSite=Strict) standing for the token; the body names
/// the caller and its scope.
async fn open_session(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if !s.auth.required() {
        return not_found("no http.token_file: the API is open and needs no session");
    }
    match s.auth.open_session(&headers, false) {
        Ok((p, cookie)) => (
            [(header::SET_COOKIE, cookie)],
            Json(serde_json::json!({ "name": p.name, "scope": p.scope.as_str() })),
        )
            .into_response(),
        Err(d) => refused(d, Scope::Read),
    }
}

/// `DELETE /api/v1/session`: ends the request's session.
async fn close_session(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, s.auth.close_session(&headers))],
    )
        .into_response()
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

pub(crate) fn bad_request(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

pub(crate) fn poisoned() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "incident state poisoned\n",
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
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

/// Serves the daemon's router on 127.0.0.1 over an empty flow table and
/// incident list (evidence in `dir`), for tests; returns its base URL.
#[cfg(test)]
pub(crate) async fn serve_for_test(
    dir: &std::path::Path,
    registry: Registry,
    auth: Auth,
    stitch: Option<Arc<LiveStitch>>,
) -> String {
    use crate::alerting::{
        evidence::{EvidenceStore, Retention},
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
    let state = ApiState {
        registry: Arc::new(registry),
        flows: Arc::new(SharedTable::new(crate::flow::FlowTable::new(
            crate::flow::FlowConfig::default(),
        ))),
        incidents: IncidentsView {
            manager: Arc::new(std::sync::Mutex::new(IncidentManager::new(
                ManagerSettings::default(),
            ))),
            evidence: Arc::new(evidence),
        },
        stitch,
        auth: Arc::new(auth),
        health: crate::health::Health::default(),
    };
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, router(state)).await });
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use auth::Tokens;

    const TOKENS: &str = "ops:admin:admin-token-0123456789\nprom:read:read-token-0123456789\n";

    /// Serves the router with the tokens above; returns its base URL.
    async fn serve(dir: &std::path::Path) -> String {
        let tokens = Tokens::parse(TOKENS, std::path::Path::new("tokens")).expect("tokens");
        let auth = Auth::new(Some(tokens), std::time::Duration::from_secs(600));
        let mut registry = Registry::default();
        auth.register(&mut registry);
        serve_for_test(dir, registry, auth, None).await
    }

    #[tokio::test]
    async fn tokens_and_sessions_gate_the_api_by_scope() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = serve(dir.path()).await;
        let c = reqwest::Client::new();
        let get = |path: &str, token: Option<&str>| {
            let mut r = c.get(format!("{base}{path}"));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        let status = |r: reqwest::Result<reqwest::Response>| r.expect("answer").status().as_u16();
        assert_eq!(
            status(get("/healthz", None).await),
            200,
            "health for anyone"
        );
        for path in ["/metrics", "/api/v1/flows", "/api/v1/incidents"] {
            assert_eq!(status(get(path, None).await), 401, "{path} without a token");
            assert_eq!(status(get(path, Some("wrong-token-0123456789")).await), 401);
            assert_eq!(
                status(get(path, Some("read-token-0123456789")).await),
                200,
                "{path}"
            );
        }
        let stitch = |token: &'static str| {
            c.post(format!("{base}/api/v1/stitch"))
                .bearer_auth(token)
                .body(r#"{"flow":"10.0.0.1:1 -> 10.0.0.2:2"}"#)
                .send()
        };
        assert_eq!(
            status(stitch("read-token-0123456789").await),
            403,
            "acting needs admin"
        );
        // Admitted: this test daemon has no live stitching.
        assert_eq!(status(stitch("admin-token-0123456789").await), 404);

        // A browser exchanges the token once for a cookie.
        let r = c
            .post(format!("{base}/api/v1/session"))
            .bearer_auth("read-token-0123456789")
            .send()
            .await
            .expect("session");
        assert_eq!(r.status().as_u16(), 200);
        let set = r
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("Set-Cookie")
            .to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let cookie = set.split(';').next().expect("name=value").to_string();
        let with_cookie = |path: &str| {
            c.get(format!("{base}{path}"))
                .header(header::COOKIE, cookie.clone())
                .send()
        };
        assert_eq!(status(with_cookie("/api/v1/incidents").await), 200);
        let r = c
            .delete(format!("{base}/api/v1/session"))
            .header(header::COOKIE, cookie.clone())
            .send()
            .await
            .expect("logout");
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(
            status(with_cookie("/api/v1/incidents").await),
            401,
            "closed"
        );

        let metrics = get("/metrics", Some("read-token-0123456789"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        for (outcome, at_least) in [("ok", 5), ("missing", 3), ("invalid", 4), ("forbidden", 1)] {
            let line = format!("phalanx_http_auth_total{{outcome=\"{outcome}\"}} ");
            let n: u64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&line))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            assert!(n >= at_least, "{outcome}: {n} in\n{metrics}");
        }
    }
}
