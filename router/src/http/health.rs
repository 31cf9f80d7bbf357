//! `GET /health` (the process serves), `GET /ready` (the backend can serve a request now) and
//! `GET /metrics` (Prometheus text).

use super::HttpState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::sync::Arc;

pub(crate) async fn health() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

pub(crate) async fn ready(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    if state.backend.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

pub(crate) async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
