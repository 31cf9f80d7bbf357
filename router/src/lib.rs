//! Strata's router: an OpenAI-compatible HTTP endpoint that places each request on the instance
//! with the lowest predicted TTFT.
//!
//! Module map:
//! - [`generation`] — the seam between HTTP and forwarding: `Generation` in, `GenStream` out.
//! - [`http`] — the OpenAI-compatible API (`/v1/completions`, `/v1/chat/completions`, SSE),
//!   `/v1/models`, `/health`, `/ready`, `/metrics`, errors in OpenAI's shape.
//! - [`template`] — chat templates (`tokenizer_config.json`), rendered with minijinja.
//! - [`detok`] — incremental detokenization and stop strings.
//! - [`metrics`] — counters and histograms in Prometheus text format.
//! - [`config`] — the router's TOML configuration (static deployments until Raft lands).
//! - [`view`] — the cluster view: instances, their load reports and the KV event index.
//! - [`predict`] — the TTFT predictor.
//! - [`place`] — placement policies, the SLO check and early rejection.
//! - [`forward`] — links to nodes, request streams, cancellation and failover.

pub mod config;
pub mod detok;
pub mod forward;
pub mod generation;
pub mod http;
pub mod metrics;
pub mod place;
pub mod predict;
pub mod server;
pub mod template;
pub mod view;
