//! HTTP server: `/metrics`, `/healthz`, `/api/v1/...`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;

use crate::flow::FlowTable;

/// Shared state behind the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Metrics registry, encoded on each scrape.
    pub registry: Arc<Registry>,
    /// Live flow table.
    pub flows: Arc<Mutex<FlowTable>>,
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/flows", get(flows))
        .with_state(state)
}

/// Binds the listener; a bind failure is reported before anything runs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
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
    flows: Vec<crate::flow::FlowSummary>,
}

async fn flows(State(s): State<ApiState>) -> Response {
    let report = match s.flows.lock() {
        Ok(t) => FlowsResponse {
            flows: t.snapshot(),
        },
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "flow table poisoned\n").into_response()
        }
    };
    Json(report).into_response()
}
