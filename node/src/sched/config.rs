//! Scheduler configuration.

use std::fmt;
use std::str::FromStr;

/// How prefills get KV blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// LayerKV: a prefill starts as soon as blocks exist for some of its layers; the other
    /// layers' K/V go to the host tier while later layers compute.
    Layerwise,
    /// vLLM-style: a prefill starts only when blocks for all its layers are free.
    Baseline,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Layerwise => "layerwise",
            Mode::Baseline => "baseline",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "layerwise" => Ok(Mode::Layerwise),
            "baseline" => Ok(Mode::Baseline),
            _ => Err(format!("unknown mode {s:?} (layerwise, baseline)")),
        }
    }
}

/// Limits and policy of the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub mode: Mode,
    /// Sequences in one step, prefills and decodes together.
    pub max_batch_seqs: usize,
    /// New prompt tokens in one step (a single longer prompt is still admitted alone).
    pub max_prefill_tokens: usize,
    /// Prefill long prompts in chunks of at most this many tokens, one chunk a step beside the
    /// running decodes, so that a long prompt stalls them for one chunk at a time. 0: whole.
    pub prefill_chunk_tokens: usize,
    /// Requests waiting for admission; more are refused.
    pub max_waiting: usize,
    /// GPU blocks kept free for decode growth when admitting.
    pub watermark_blocks: usize,
    /// Blocks of the executor's staging area (per buffer), for staged layers.
    pub staging_blocks: usize,
    /// Longest sequence (prompt + output) the model takes.
    pub max_seq_tokens: usize,
    /// When sequences with offloaded layers may decode by streaming those layers through
    /// staging (if the cost model says the transfer hides under compute).
    pub stream_decode: StreamDecode,
}

/// When offloaded layers may stream through staging during decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamDecode {
    /// When the executor's copies overlap its compute (copy engines); otherwise reload.
    Auto,
    /// Whenever the cost model allows, whatever the executor.
    Always,
    /// Never: offloaded layers are reloaded before the sequence decodes.
    Never,
}

impl std::str::FromStr for StreamDecode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(StreamDecode::Auto),
            "always" => Ok(StreamDecode::Always),
            "never" => Ok(StreamDecode::Never),
            _ => Err(format!(
                "unknown stream-decode policy {s:?} (auto, always, never)"
            )),
        }
    }
}

impl StreamDecode {
    /// Whether streaming is on for an executor whose copies do (`true`) or do not overlap
    /// compute.
    pub fn enabled(self, copies_overlap_compute: bool) -> bool {
        match self {
            StreamDecode::Auto => copies_overlap_compute,
            StreamDecode::Always => true,
            StreamDecode::Never => false,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            mode: Mode::Layerwise,
            max_batch_seqs: 256,
            max_prefill_tokens: 16_384,
            prefill_chunk_tokens: 0,
            max_waiting: 4096,
            watermark_blocks: 0,
            staging_blocks: 0,
            max_seq_tokens: 32_768,
            stream_decode: StreamDecode::Auto,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A limit that must be positive is zero.
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("max_batch_seqs", self.max_batch_seqs),
            ("max_prefill_tokens", self.max_prefill_tokens),
            ("max_waiting", self.max_waiting),
            ("max_seq_tokens", self.max_seq_tokens),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        Ok(())
    }
}
