//! Validation shared by both generation endpoints, and the [`Generation`] a request becomes.

use super::errors::ApiError;
use super::openai::{SamplingFields, Stop};
use super::registry::ModelEntry;
use super::{HttpState, SLO_HEADER};
use crate::generation::Generation;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use strata_transport::proto::{SloClass, WireSampling};

/// Most stop strings a request may give.
pub(crate) const MAX_STOPS: usize = 4;
/// Most top log-probabilities a request may ask for.
pub(crate) const MAX_LOGPROBS: i64 = 20;
/// Prompts longer than this (bytes) are tokenized off the async workers.
const BLOCKING_TOKENIZE_BYTES: usize = 16 << 10;

/// The request fields, checked.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    /// `None`: the default, fitted to the context.
    pub max_tokens: Option<u32>,
    pub sampling: WireSampling,
    pub stops: Vec<String>,
    /// Top log-probabilities for the response (`None`: no log-probabilities at all).
    pub logprobs: Option<u8>,
    pub cache_salt: u64,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

/// Parses a JSON body, mapping an over-limit body to 413 and anything else to 400.
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("The request body is too large.", None)
        } else {
            ApiError::invalid(rejection.body_text(), None)
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}"), None))
}

/// The model's entry, or 404.
pub(crate) fn model_entry(state: &HttpState, model: &str) -> Result<Arc<ModelEntry>, ApiError> {
    state
        .models
        .get(model)
        .ok_or_else(|| ApiError::model_not_found(model))
}

/// The SLO class of the `x-strata-slo` header, or the default.
pub(crate) fn slo_class(state: &HttpState, headers: &HeaderMap) -> Result<SloClass, ApiError> {
    let Some(value) = headers.get(SLO_HEADER) else {
        return Ok(state.slo.default_class());
    };
    let name = value.to_str().unwrap_or_default().trim();
    state.slo.get(name).ok_or_else(|| {
        let known = state.slo.names();
        ApiError::invalid(
            format!("Unknown SLO class {name:?} in {SLO_HEADER}; known: {known:?}."),
            None,
        )
    })
}

/// Checks the shared fields. `max_tokens` and `logprobs` come from the endpoint, which knows
/// their names and forms.
pub(crate) fn check(
    state: &HttpState,
    fields: &SamplingFields,
    max_tokens: Option<i64>,
    logprobs: Option<i64>,
) -> Result<Checked, ApiError> {
    let limit = state.limits.max_output_tokens;
    let max_tokens = match max_tokens {
        None => None,
        Some(n) if n >= 1 && n <= i64::from(limit) => Some(n as u32),
        Some(n) => {
            return Err(ApiError::invalid(
                format!("max_tokens must be between 1 and {limit}, got {n}."),
                Some("max_tokens"),
            ));
        }
    };
    let temperature = fields.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        let msg = format!("temperature must be between 0 and 2, got {temperature}.");
        return Err(ApiError::invalid(msg, Some("temperature")));
    }
    let top_p = fields.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        let msg = format!("top_p must be in (0, 1], got {top_p}.");
        return Err(ApiError::invalid(msg, Some("top_p")));
    }
    if let Some(n) = fields.n.filter(|&n| n != 1) {
        let msg = format!("Only n = 1 is supported, got {n}.");
        return Err(ApiError::invalid(msg, Some("n")));
    }
    let logprobs = match logprobs {
        None => None,
        Some(k) if (0..=MAX_LOGPROBS).contains(&k) => Some(k as u8),
        Some(k) => {
            let msg = format!("logprobs must be between 0 and {MAX_LOGPROBS}, got {k}.");
            return Err(ApiError::invalid(msg, Some("logprobs")));
        }
    };
    let stops = match fields.stop.clone() {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    if stops.len() > MAX_STOPS || stops.iter().any(String::is_empty) {
        let msg = format!("stop must be up to {MAX_STOPS} non-empty strings.");
        return Err(ApiError::invalid(msg, Some("stop")));
    }
    let seed = fields.seed.map_or_else(random_u64, |s| s as u64);
    Ok(Checked {
        max_tokens,
        sampling: WireSampling {
            temperature: temperature as f32,
            top_p: top_p as f32,
            seed,
        },
        stops,
        logprobs,
        cache_salt: fields.user.as_deref().map_or(0, cache_salt),
        stream: fields.stream.unwrap_or(false),
        ignore_eos: fields.ignore_eos.unwrap_or(false),
        include_usage: fields
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    })
}

/// Tokenizes `text` (off the async workers when it is long).
pub(crate) async fn tokenize(entry: &Arc<ModelEntry>, text: String) -> Result<Vec<u32>, ApiError> {
    let fail = |e: strata_transport::vocab::TokenizerError| {
        ApiError::invalid(format!("Cannot tokenize the prompt: {e}"), None)
    };
    if text.len() < BLOCKING_TOKENIZE_BYTES {
        return entry.tokenizer.encode(&text).map_err(fail);
    }
    let tokenizer = Arc::clone(&entry.tokenizer);
    tokio::task::spawn_blocking(move || tokenizer.encode(&text))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
        .map_err(fail)
}

/// Checks the prompt against the limits and the model, fits `max_tokens` to the context, and
/// builds the generation.
pub(crate) fn generation(
    state: &HttpState,
    entry: &ModelEntry,
    model: &str,
    prompt: Vec<u32>,
    checked: &Checked,
    slo: SloClass,
    prompt_param: &'static str,
) -> Result<Generation, ApiError> {
    if prompt.is_empty() {
        let msg = format!("{prompt_param} must not be empty.");
        return Err(ApiError::invalid(msg, Some(prompt_param)));
    }
    let prompt_len = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
    let limit = state.limits.max_prompt_tokens;
    if prompt_len > limit {
        let msg = format!("The prompt has {prompt_len} tokens; the limit is {limit}.");
        return Err(ApiError::too_large(msg, Some(prompt_param)));
    }
    if let Some(vocab) = entry.vocab_size
        && let Some(bad) = prompt.iter().find(|&&id| id >= vocab)
    {
        let msg = format!("Token id {bad} is outside the vocabulary of {vocab} tokens.");
        return Err(ApiError::invalid(msg, Some(prompt_param)));
    }
    let card = state.backend.model(model);
    let context = card.as_ref().and_then(|c| c.max_context);
    let max_tokens = match (checked.max_tokens, context) {
        (Some(n), Some(ctx)) if u64::from(prompt_len) + u64::from(n) > u64::from(ctx) => {
            return Err(ApiError::context_length(format!(
                "This model's maximum context length is {ctx} tokens. However, you requested \
                 {} tokens ({prompt_len} in the prompt, {n} for the completion).",
                u64::from(prompt_len) + u64::from(n)
            )));
        }
        (Some(n), _) => n,
        (None, Some(ctx)) if prompt_len >= ctx => {
            return Err(ApiError::context_length(format!(
                "This model's maximum context length is {ctx} tokens. However, the prompt has \
                 {prompt_len} tokens, leaving none for the completion."
            )));
        }
        (None, Some(ctx)) => state.limits.default_max_tokens.min(ctx - prompt_len),
        (None, None) => state.limits.default_max_tokens,
    };
    Ok(Generation {
        model: model.to_owned(),
        prompt,
        max_tokens,
        stop_tokens: Vec::new(),
        sampling: checked.sampling,
        slo,
        // The sampled token's log-probability comes with top-k of at least 1.
        logprobs: checked.logprobs.map_or(0, |k| k.max(1)),
        cache_salt: checked.cache_salt,
        ignore_eos: checked.ignore_eos,
    })
}

/// A stable (FNV-1a) hash of the OpenAI `user`, never 0 (0 means no salt). Stable across
/// processes, so every router replica salts one tenant alike.
pub(crate) fn cache_salt(user: &str) -> u64 {
    let hash = user.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash.max(1)
}

/// A random 64-bit number (for seeds and ids) from the standard library's per-process keys.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_salt_is_stable_and_never_zero() {
        assert_eq!(cache_salt("alice"), cache_salt("alice"));
        assert_ne!(cache_salt("alice"), cache_salt("bob"));
        // FNV-1a of the empty string is the offset basis.
        assert_eq!(cache_salt(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(random_u64(), random_u64());
    }
}
