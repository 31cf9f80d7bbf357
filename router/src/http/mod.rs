//! The OpenAI-compatible HTTP front end.
//!
//! A request is parsed, validated, tokenized and turned into a [`Generation`] here; the
//! [`Backend`] places and runs it; the resulting [`GenStream`] becomes an SSE body or a JSON
//! object. Everything the client can get wrong is rejected before the backend sees it.
//!
//! - `mod.rs` — [`HttpState`], [`HttpLimits`], [`app`], API keys and request counting.
//! - [`registry`] — per model: tokenizer, chat template, vocabulary size.
//! - [`openai`] — request and response bodies.
//! - [`errors`] — [`ApiError`]: OpenAI's error shape and statuses.
//! - `params` — shared validation and the `Generation` a request becomes.
//! - `assemble` — token events to text pieces, stop strings, log-probabilities.
//! - `run` — placing a request and answering with JSON or SSE (`sse`).
//! - `completions`, `chat` — the two generation endpoints.
//! - `health`, `models` — `/health`, `/ready`, `/metrics`, `/v1/models`.
//!
//! [`Generation`]: crate::generation::Generation
//! [`GenStream`]: crate::generation::GenStream

mod assemble;
mod chat;
mod completions;
pub mod errors;
mod health;
mod models;
pub mod openai;
mod params;
pub mod registry;
mod run;
mod slo_table;
mod sse;

pub use errors::ApiError;
pub use registry::{ModelEntry, ModelLoadError, ModelRegistry};
pub use slo_table::SloTable;

use crate::generation::Backend;
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use strata_transport::proto::{SloClass, SloError};

/// Request header that picks an SLO class by name.
pub const SLO_HEADER: &str = "x-strata-slo";
/// Response header naming the instance that served the request.
pub const INSTANCE_HEADER: &str = "x-strata-instance";
/// Response header with the routing time, in microseconds.
pub const ROUTING_HEADER: &str = "x-strata-routing-us";

/// Bounds on what one request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// Largest prompt in tokens (413 beyond).
    pub max_prompt_tokens: u32,
    /// Largest `max_tokens` a request may ask for (400 beyond).
    pub max_output_tokens: u32,
    /// `max_tokens` when the request gives none (lowered to fit the model's context).
    pub default_max_tokens: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 8 << 20,
            max_prompt_tokens: 131_072,
            max_output_tokens: 4096,
            default_max_tokens: 256,
        }
    }
}

/// A front-end configuration that cannot serve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HttpConfigError {
    /// A limit of zero would refuse every request.
    #[error("http limit {field} must be at least 1")]
    ZeroLimit { field: &'static str },
    /// The default output length is over the largest allowed.
    #[error(
        "default_max_tokens {default_max_tokens} exceeds max_output_tokens {max_output_tokens}"
    )]
    DefaultAboveMax {
        default_max_tokens: u32,
        max_output_tokens: u32,
    },
    /// The default SLO class is not among the classes.
    #[error("default SLO class {name:?} is not one of the configured classes")]
    UnknownDefaultSlo { name: String },
    /// An SLO class has bad targets.
    #[error(transparent)]
    BadSlo(#[from] SloError),
    /// API keys were configured, but one is empty.
    #[error("an API key is empty")]
    EmptyApiKey,
}

impl HttpLimits {
    pub fn validate(&self) -> Result<(), HttpConfigError> {
        let fields = [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_prompt_tokens", u64::from(self.max_prompt_tokens)),
            ("max_output_tokens", u64::from(self.max_output_tokens)),
            ("default_max_tokens", u64::from(self.default_max_tokens)),
        ];
        if let Some((field, _)) = fields.into_iter().find(|(_, v)| *v == 0) {
            return Err(HttpConfigError::ZeroLimit { field });
        }
        if self.default_max_tokens > self.max_output_tokens {
            return Err(HttpConfigError::DefaultAboveMax {
                default_max_tokens: self.default_max_tokens,
                max_output_tokens: self.max_output_tokens,
            });
        }
        Ok(())
    }
}

/// Everything the handlers share.
pub struct HttpState {
    pub backend: Arc<dyn Backend>,
    pub models: ModelRegistry,
    pub limits: HttpLimits,
    /// SLO classes by name, for the `x-strata-slo` header, and the class of requests
    /// without it.
    pub slo: SloTable,
    /// Accepted bearer tokens; `None` leaves the API open.
    pub api_keys: Option<Vec<String>>,
    pub metrics: Arc<Metrics>,
}

impl HttpState {
    /// Default limits, the default SLO class only, no API keys, fresh metrics.
    pub fn new(backend: Arc<dyn Backend>, models: ModelRegistry) -> HttpState {
        HttpState {
            backend,
            models,
            limits: HttpLimits::default(),
            slo: SloTable::default(),
            api_keys: None,
            metrics: Arc::new(Metrics::new()),
        }
    }

    pub fn with_limits(mut self, limits: HttpLimits) -> HttpState {
        self.limits = limits;
        self
    }

    /// Replaces the SLO classes; `default` names the class of requests without the header.
    pub fn with_slo_classes(
        self,
        classes: Vec<SloClass>,
        default: &str,
    ) -> Result<HttpState, HttpConfigError> {
        if !classes.iter().any(|c| c.name == default) {
            return Err(HttpConfigError::UnknownDefaultSlo {
                name: default.to_owned(),
            });
        }
        self.slo.set_default_name(default);
        self.slo.replace(classes);
        Ok(self)
    }

    /// Shares `table` (one the control plane's follower updates).
    pub fn with_slo_table(mut self, table: SloTable) -> HttpState {
        self.slo = table;
        self
    }

    pub fn with_api_keys(mut self, keys: Vec<String>) -> HttpState {
        self.api_keys = Some(keys);
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> HttpState {
        self.metrics = metrics;
        self
    }

    pub fn validate(&self) -> Result<(), HttpConfigError> {
        self.limits.validate()?;
        self.slo.validate()?;
        if self.api_keys.iter().flatten().any(String::is_empty) {
            return Err(HttpConfigError::EmptyApiKey);
        }
        Ok(())
    }
}

/// The router's HTTP application. Call [`HttpState::validate`] first.
pub fn app(state: HttpState) -> Router {
    debug_assert_eq!(state.validate(), Ok(()));
    let body_limit = state.limits.max_body_bytes;
    let state = Arc::new(state);
    let v1 = Router::new()
        .route("/v1/completions", post(completions::handle))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/models", get(models::list))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(v1)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::no_route(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            ApiError::no_route(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn require_key(State(state): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    if let Some(keys) = &state.api_keys {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|given| {
            // Compare against every key without stopping early.
            keys.iter()
                .fold(false, |ok, key| ok | constant_time_eq(key, given))
        });
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// When a request's headers arrived: the start of the routing-overhead measurement (before
/// the body is read, parsed and tokenized).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival(pub std::time::Instant);

async fn count_requests(
    State(state): State<Arc<HttpState>>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut()
        .insert(Arrival(std::time::Instant::now()));
    const ENDPOINTS: [&str; 6] = [
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/health",
        "/ready",
        "/metrics",
    ];
    let path = req.uri().path();
    let endpoint = ENDPOINTS
        .into_iter()
        .find(|e| *e == path)
        .unwrap_or("other");
    let response = next.run(req).await;
    state
        .metrics
        .count_request(endpoint, response.status().as_u16());
    response
}
