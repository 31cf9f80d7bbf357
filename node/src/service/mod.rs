//! The node service: a QUIC server (mutual TLS) in front of one [`Engine`](crate::engine::Engine).
//!
//! How it fits together:
//! - [`setup`] builds the engine from a [`NodeConfig`] (model, executor, pools, cost profile):
//!   [`prepare`] is blocking work; [`Prepared::serve`] binds the endpoint and starts serving.
//! - [`gpu`] is the `cuda` executor's part of that: the GPU probe, default budgets, weights.
//! - `engine_loop` runs the engine on its own OS thread, as an actor behind a bounded command
//!   channel: it drains commands, steps while there is work and routes each request's events to
//!   that request's bounded channel. It publishes load figures on a `watch` channel and prefix
//!   cache changes on a `broadcast` channel.
//! - `server` accepts connections and streams within [`Limits`](config::Limits), and reads the
//!   first frame of each stream: `Generate` goes to `request`, `Subscribe` to `report`.
//! - `stage_setup` and `stage_server` are a pipeline stage's part: a driver opens its chain
//!   of stages before its engine starts; a worker (a later stage) serves `Stage` streams and
//!   subscriptions instead of requests.
//! - [`register`] registers the node with the control plane when `routers` is set, and
//!   reports where that stands as a [`RegistrationState`].
//! - [`NodeService`] is the running service: its address, its registration, and a clean
//!   shutdown in phases.
//!
//! The protocol is `strata_transport::proto::msg`'s. A stream that misbehaves is closed with one
//! of the [`codes`] and a log line; the node goes on serving every other stream.
//!
//! Stop tokens: a `Generate`'s `stop_tokens` is the whole set that ends generation. The node does
//! not add the model's end-of-sequence ids; it announces them in `NodeInfo::eos_tokens` so a
//! router can (and may leave them out, to ignore EOS).

pub mod config;
mod engine_loop;
pub mod gpu;
mod logprobs;
pub mod register;
mod report;
mod request;
mod server;
pub mod setup;
mod stage_server;
mod stage_setup;

pub use config::{
    ConfigError, ExecutorKind, Limits, NodeConfig, SchedSettings, StageSettings, TlsConfig,
};
pub use register::RegistrationState;
pub use server::NodeService;
pub use setup::{Prepared, Role, prepare};

/// Application error codes the node closes streams and connections with.
pub mod codes {
    /// A frame could not be decoded: truncated, too large, or not a valid message.
    pub const BAD_FRAME: u32 = 0x10;
    /// A valid message where the protocol does not allow it (e.g. a `Token` as a first frame).
    pub const UNEXPECTED: u32 = 0x11;
    /// A new stream sent no first frame in time.
    pub const TIMEOUT: u32 = 0x12;
    /// A subscriber fell too far behind the prefix-cache events; subscribe again for a fresh
    /// snapshot.
    pub const LAGGED: u32 = 0x13;
    /// The request was cancelled (the node resets its send side when the peer went away).
    pub const CANCELLED: u32 = 0x14;
    /// Connection close: the node is shutting down.
    pub const SHUTDOWN: u32 = 0x20;
}

/// A node that cannot start or could not shut down cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificates could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] strata_transport::tls::TlsError),
    /// The model could not be found or loaded.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The cost profile file could not be read or parsed.
    #[error("cost profile {path}: {reason}")]
    Profile {
        path: std::path::PathBuf,
        reason: String,
    },
    /// Calibration of the executor (cpu, cuda) failed.
    #[error(transparent)]
    Calibrate(#[from] crate::engine::calibrate::CalibrateError),
    /// The executor refused the model or pools.
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    /// The engine refused its configuration.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The model is too large for the cpu executor.
    #[error(
        "{model} has {params} layer parameters, too many for the cpu executor; use executor = \"cuda\" (or \"sim\" without a GPU)"
    )]
    TooLargeForCpu { model: String, params: usize },
    /// `cuda` was chosen, and this strata was built without the `cuda` feature.
    #[error(
        "executor cuda: this strata was built without the `cuda` feature; build it with `cargo build --release` (the feature is on by default; `--no-default-features` removes it)"
    )]
    CudaNotBuilt,
    /// `cuda` was chosen, and no GPU or CUDA library could be used; `reason` says which.
    #[error("executor cuda: no usable GPU: {reason}")]
    NoGpu { reason: String },
    /// The executor's reserve (weights, workspace) leaves no room for KV in the GPU memory a
    /// node may take.
    #[error(
        "{model} needs {reserved_mib} MiB on the GPU beside its KV cache, and each of {nodes} node(s) may take {share_mib} MiB of the {free_mib} MiB free on the {device}; use a smaller model, or fewer nodes on this GPU"
    )]
    GpuTooSmall {
        model: String,
        device: String,
        reserved_mib: u64,
        share_mib: u64,
        free_mib: u64,
        nodes: usize,
    },
    /// `scheduler.max_seq_tokens` is past the model's context.
    #[error("scheduler.max_seq_tokens = {max_seq_tokens} exceeds the model's context of {context}")]
    ContextTooLong {
        max_seq_tokens: usize,
        context: usize,
    },
    /// The GPU budget cannot hold the staging area and one block per layer.
    #[error(
        "gpu_mib = {gpu_mib} holds {blocks} blocks of {block_bytes} bytes; staging needs {staging} and the layers {layers} more"
    )]
    GpuBudget {
        gpu_mib: u64,
        blocks: usize,
        block_bytes: u64,
        staging: usize,
        layers: usize,
    },
    /// The endpoint could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        addr: std::net::SocketAddr,
        reason: String,
    },
    /// A pipeline stage could not start: its chain, its layers or its peers.
    #[error("pipeline: {0}")]
    Pipeline(String),
    /// The engine thread could not start, or panicked.
    #[error("engine thread: {0}")]
    EngineThread(String),
}
