//! `NodeConfig`: what a node serves, where, and within which limits. Read from TOML by
//! `strata node --config FILE`; every field has a default, and [`NodeConfig::validate`] names
//! the first bad value.
//!
//! ```toml
//! id = "node-1"
//! listen = "127.0.0.1:7001"
//! model = "tiny"              # a preset (tiny, llama-3-8b, llama-3-70b) or an HF directory
//! executor = "cpu"            # cpu | cuda | sim
//!
//! # Registration with the control plane: the routers' control (QUIC) addresses, tried in
//! # turn until one accepts; none (the default): do not register.
//! routers = ["10.0.0.1:7100", "10.0.0.2:7100", "10.0.0.3:7100"]
//! advertise = "10.0.0.11:7001" # the address routers dial; default: the bound listen address
//!
//! [tls]
//! dir = "certs"               # as written by `strata certs init`
//! member = "node-1"           # default: id
//!
//! [scheduler]
//! mode = "layerwise"          # layerwise | baseline
//!
//! # One stage of a pipeline-parallel instance (absent: the node serves the whole model).
//! # The stage with layers from 0 is the driver; give every stage of a chain the same model,
//! # seed, gpu_mib, host_mib, block_tokens and scheduler settings, and start the last first.
//! [stage]
//! layers = [0, 16]            # first layer, end (exclusive)
//! next = "10.0.0.12:7001"     # the next stage; absent on the last stage
//! next_member = "node-1-s1"   # its certificate's member name (required with next)
//! micro_batches = 2           # driver only: micro-batches per step (default: the stages)
//! ```

use crate::sched::{Mode, SchedulerConfig, StreamDecode};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Which executor runs the steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// Real f32 math on the CPU with the model's weights.
    Cpu,
    /// No math: step times from the cost profile, in real time; no weights are allocated.
    Sim,
    /// bf16 math on the first NVIDIA GPU (CUDA 13 libraries loaded at run time; needs a
    /// strata built with the `cuda` feature, which `cargo build --release` enables).
    Cuda,
}

impl ExecutorKind {
    pub const ALL: [ExecutorKind; 3] = [ExecutorKind::Cpu, ExecutorKind::Cuda, ExecutorKind::Sim];

    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Cpu => "cpu",
            ExecutorKind::Sim => "sim",
            ExecutorKind::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;

    /// `cpu`, `cuda` or `sim` (as on a command line).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExecutorKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("{s:?} is not an executor: use cpu, cuda or sim"))
    }
}

/// Where the node's certificate, key and the cluster CA are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Directory with `ca.pem`, `<member>.pem` and `<member>.key`.
    pub dir: PathBuf,
    /// The member name of the node's certificate; `None`: the node's `id`.
    pub member: Option<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            dir: PathBuf::from("certs"),
            member: None,
        }
    }
}

/// Scheduler policy and limits (see [`SchedulerConfig`] for each field's meaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedSettings {
    /// `layerwise` or `baseline`.
    #[serde(with = "mode_str")]
    pub mode: Mode,
    pub max_batch_seqs: usize,
    pub max_prefill_tokens: usize,
    /// 0: prefill a whole prompt in one step.
    pub prefill_chunk_tokens: usize,
    /// Waiting requests; more are rejected with `QueueFull`.
    pub max_waiting: usize,
    /// Prompt plus output tokens of one sequence; `None`: the model's context.
    pub max_seq_tokens: Option<usize>,
    /// GPU blocks kept free for decode growth; `None`: max(layers, 1% of the GPU tier).
    pub watermark_blocks: Option<usize>,
    /// `auto`, `always` or `never`.
    #[serde(with = "stream_str")]
    pub stream_decode: StreamDecode,
}

impl Default for SchedSettings {
    fn default() -> Self {
        let d = SchedulerConfig::default();
        SchedSettings {
            mode: d.mode,
            max_batch_seqs: d.max_batch_seqs,
            max_prefill_tokens: d.max_prefill_tokens,
            prefill_chunk_tokens: d.prefill_chunk_tokens,
            max_waiting: d.max_waiting,
            max_seq_tokens: None,
            watermark_blocks: None,
            stream_decode: d.stream_decode,
        }
    }
}

/// Bounds on what peers may make the node hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open QUIC connections; more are refused.
    pub max_connections: usize,
    /// Concurrent bidirectional streams a peer may open on one connection.
    pub max_streams_per_connection: u32,
    /// Largest frame the node reads, bytes.
    pub max_frame_bytes: usize,
    /// How long a new stream may take to send its first frame, ms.
    pub first_frame_timeout_ms: u64,
    /// On shutdown, how long in-flight requests may run to their end before they are
    /// cancelled, ms.
    pub shutdown_grace_ms: u64,
    /// Largest `logprobs` a request may ask for.
    pub max_logprobs: u8,
    /// Largest frame on a pipeline's `Stage` stream (a micro-batch's activations), bytes.
    pub max_stage_frame_bytes: usize,
    /// How long a pipeline driver waits for its chain of stages at start, and a stage for
    /// the next one to answer `StageOpen`, ms.
    pub stage_open_timeout_ms: u64,
    /// How long a driver waits for a step's tokens from the chain before it fails the step
    /// and reopens the chain, ms.
    pub stage_step_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_streams_per_connection: 1024,
            max_frame_bytes: 4 << 20,
            first_frame_timeout_ms: 10_000,
            shutdown_grace_ms: 5_000,
            max_logprobs: 20,
            max_stage_frame_bytes: 256 << 20,
            stage_open_timeout_ms: 120_000,
            stage_step_timeout_ms: 120_000,
        }
    }
}

/// This node's place in a pipeline-parallel instance (see [`pipeline`](crate::pipeline)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSettings {
    /// `[first, end)` of the model's layers this node computes.
    pub layers: [usize; 2],
    /// The next stage's QUIC address; `None` on the last stage.
    #[serde(default)]
    pub next: Option<SocketAddr>,
    /// The next stage's certificate member name, checked on connect.
    #[serde(default)]
    pub next_member: Option<String>,
    /// Driver only: micro-batches a step is cut into; `None`: one per stage.
    #[serde(default)]
    pub micro_batches: Option<usize>,
}

impl StageSettings {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.layers[0]..self.layers[1]
    }

    /// The first stage of its chain: it runs the scheduler and serves requests.
    pub fn is_driver(&self) -> bool {
        self.layers[0] == 0
    }
}

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's id in the cluster.
    pub id: String,
    /// UDP address of the QUIC endpoint; port 0 picks a free one.
    pub listen: SocketAddr,
    /// A preset name or an HF checkpoint directory.
    pub model: String,
    /// The name routers use for the model; `None`: the preset name or the directory's name.
    pub model_name: Option<String>,
    pub executor: ExecutorKind,
    pub tls: TlsConfig,
    /// GPU tier budget, MiB (staging included); `None`: 1024 on `cpu`, an H200's (90% of
    /// 140 GiB less the weights) on `sim`, and on `cuda` 90% of the device's free memory at
    /// start less what the executor reserves (weights, RoPE tables, step workspace), capped at
    /// the KV the scheduler can use at once (`service::gpu::useful_kv_mib`).
    pub gpu_mib: Option<u64>,
    /// Host tier budget, MiB; `None`: 2048 on `cpu`, 256 GiB on `sim`, 32 GiB on `cuda`
    /// (pinned host memory, allocated at start; capped like `gpu_mib`).
    pub host_mib: Option<u64>,
    /// Tokens per KV block.
    pub block_tokens: usize,
    /// A cost profile (TOML). `None`: a quick calibration at start on `cpu` and `cuda`, the
    /// analytic H200 roofline on `sim`.
    pub profile: Option<PathBuf>,
    pub scheduler: SchedSettings,
    /// Interval of load reports to subscribers, ms.
    pub load_report_ms: u64,
    /// Seeds a preset's random weights and the `sim` executor's tokens.
    pub seed: u64,
    pub limits: Limits,
    /// The routers' control (QUIC) addresses to register with, tried in turn; empty: do not
    /// register.
    pub routers: Vec<SocketAddr>,
    /// The address routers dial to reach this node; `None`: the bound listen address (so a
    /// node that listens on `0.0.0.0` and registers must set it).
    pub advertise: Option<SocketAddr>,
    /// A stage of a pipeline; `None`: the whole model on this node.
    pub stage: Option<StageSettings>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "node-1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            model: "tiny".into(),
            model_name: None,
            executor: ExecutorKind::Cpu,
            tls: TlsConfig::default(),
            gpu_mib: None,
            host_mib: None,
            block_tokens: 16,
            profile: None,
            scheduler: SchedSettings::default(),
            load_report_ms: 100,
            seed: 0,
            limits: Limits::default(),
            routers: Vec::new(),
            advertise: None,
            stage: None,
        }
    }
}

/// A configuration that cannot be read or cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The TOML is malformed or names unknown keys.
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    /// A name that must be non-empty letters, digits, '-', '_' or '.'.
    #[error("{field} {value:?}: use letters, digits, '-', '_' and '.'")]
    BadName { field: &'static str, value: String },
    /// The model field is empty.
    #[error("model is empty: give a preset (tiny, llama-3-8b, …) or a checkpoint directory")]
    NoModel,
    /// A limit that must be positive is zero.
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
    /// A value outside its allowed range.
    #[error("{field} = {value} is outside {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    /// A `[stage]` section that cannot describe a pipeline stage.
    #[error("stage: {0}")]
    Stage(String),
    /// The address routers would be told to dial cannot be dialled: its IP is unspecified
    /// (`0.0.0.0`, `::`) or its port is 0.
    #[error(
        "advertise = {value}{hint}: routers cannot dial it; set `advertise` to an address they can reach"
    )]
    BadAdvertise {
        value: SocketAddr,
        /// `""`, or why the value came from `listen`.
        hint: &'static str,
    },
}

/// Bounds of the numeric settings, `(min, max)`.
const BLOCK_TOKENS: (u64, u64) = (1, 1024);
const LOAD_REPORT_MS: (u64, u64) = (1, 60_000);
const MAX_FRAME_BYTES: (u64, u64) = (4 << 10, 1 << 30);
/// Router addresses a node registers with.
const ROUTERS: (u64, u64) = (0, 64);

fn check_name(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadName {
            field,
            value: value.to_string(),
        })
    }
}

fn check_range(field: &'static str, value: u64, (min, max): (u64, u64)) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

impl NodeConfig {
    /// Parses TOML text; `path` names it in errors. Does not validate.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let cfg = NodeConfig::from_toml_str(&text, path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The certificate's member name: `tls.member`, else `id`.
    pub fn member(&self) -> &str {
        self.tls.member.as_deref().unwrap_or(&self.id)
    }

    /// The model name routers use: `model_name`, else the preset name or the directory's
    /// last component.
    pub fn model_name(&self) -> String {
        if let Some(name) = &self.model_name {
            return name.clone();
        }
        let trimmed = self.model.trim_end_matches('/');
        Path::new(trimmed)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(trimmed)
            .to_string()
    }

    /// An explicit `advertise` must be dialable; so must `listen` when it stands in for it on
    /// a node that registers (port 0 is fine there: the bound port is advertised).
    fn check_advertise(&self) -> Result<(), ConfigError> {
        if let Some(value) = self.advertise {
            if value.ip().is_unspecified() || value.port() == 0 {
                return Err(ConfigError::BadAdvertise { value, hint: "" });
            }
        } else if !self.routers.is_empty() && self.listen.ip().is_unspecified() {
            return Err(ConfigError::BadAdvertise {
                value: self.listen,
                hint: " (from listen, as advertise is not set)",
            });
        }
        Ok(())
    }

    fn check_stage(&self) -> Result<(), ConfigError> {
        let Some(st) = &self.stage else {
            return Ok(());
        };
        let bad = |m: String| Err(ConfigError::Stage(m));
        let [first, end] = st.layers;
        if first >= end {
            return bad(format!(
                "layers = [{first}, {end}] is empty; write [first, end)"
            ));
        }
        match (&st.next, &st.next_member) {
            (Some(_), None) => {
                return bad("next needs next_member (its certificate's member name)".into());
            }
            (None, Some(_)) => return bad("next_member without next".into()),
            (Some(_), Some(m)) => check_name("stage.next_member", m)?,
            (None, None) if first == 0 => {
                return bad(
                    "the driver (layers from 0) needs next: a pipeline has two or more stages"
                        .into(),
                );
            }
            (None, None) => {}
        }
        if let Some(m) = st.micro_batches {
            check_range(
                "stage.micro_batches",
                m as u64,
                (1, crate::pipeline::driver::MAX_MICRO_BATCHES as u64),
            )?;
        }
        if self.executor == ExecutorKind::Sim {
            return bad("pipeline stages run on cpu or cuda, not sim".into());
        }
        Ok(())
    }

    /// Checks every field that can be checked without the filesystem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("id", &self.id)?;
        check_name("tls.member", self.member())?;
        if self.model.trim().is_empty() {
            return Err(ConfigError::NoModel);
        }
        if let Some(name) = &self.model_name {
            check_name("model_name", name)?;
        }
        check_range("block_tokens", self.block_tokens as u64, BLOCK_TOKENS)?;
        check_range("load_report_ms", self.load_report_ms, LOAD_REPORT_MS)?;
        check_range(
            "limits.max_frame_bytes",
            self.limits.max_frame_bytes as u64,
            MAX_FRAME_BYTES,
        )?;
        check_range("routers", self.routers.len() as u64, ROUTERS)?;
        check_range(
            "limits.max_stage_frame_bytes",
            self.limits.max_stage_frame_bytes as u64,
            MAX_FRAME_BYTES,
        )?;
        self.check_advertise()?;
        self.check_stage()?;
        let s = &self.scheduler;
        for (field, v) in [
            ("gpu_mib", self.gpu_mib.unwrap_or(1)),
            ("host_mib", self.host_mib.unwrap_or(1)),
            ("scheduler.max_batch_seqs", s.max_batch_seqs as u64),
            ("scheduler.max_prefill_tokens", s.max_prefill_tokens as u64),
            ("scheduler.max_waiting", s.max_waiting as u64),
            (
                "scheduler.max_seq_tokens",
                s.max_seq_tokens.unwrap_or(1) as u64,
            ),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.max_streams_per_connection",
                u64::from(self.limits.max_streams_per_connection),
            ),
            (
                "limits.first_frame_timeout_ms",
                self.limits.first_frame_timeout_ms,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        Ok(())
    }
}

/// Reads and writes a [`Mode`] as its name.
mod mode_str {
    use crate::sched::Mode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Reads and writes a [`StreamDecode`] policy as its name.
mod stream_str {
    use crate::sched::StreamDecode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &StreamDecode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match p {
            StreamDecode::Auto => "auto",
            StreamDecode::Always => "always",
            StreamDecode::Never => "never",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StreamDecode, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
