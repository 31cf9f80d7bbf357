//! `POST /v1/completions`: a prompt as text or token ids; `text_completion` objects.

use super::HttpState;
use super::assemble::TokenLogprob;
use super::errors::ApiError;
use super::openai::{
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Prompt, TopMap, UsageJson,
};
use super::params::{Checked, check, generation, model_entry, parse_body, slo_class, tokenize};
use super::registry::ModelEntry;
use super::run::{Common, Format, run};
use crate::generation::{Generation, Usage};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

pub(crate) async fn handle(
    State(state): State<Arc<HttpState>>,
    arrival: Option<axum::Extension<super::Arrival>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrival = arrival.map_or_else(Instant::now, |a| a.0.0);
    match prepare(&state, &headers, body).await {
        Ok((entry, generation, checked)) => {
            let format = CompletionFormat(Common::new("cmpl", &generation.model, &checked));
            run(&state, &entry, generation, checked, format, arrival).await
        }
        Err(err) => err.into_response(),
    }
}

/// Parses and checks the request and tokenizes its prompt.
async fn prepare(
    state: &HttpState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Arc<ModelEntry>, Generation, Checked), ApiError> {
    let request: CompletionRequest = parse_body(body)?;
    let entry = model_entry(state, &request.model)?;
    let fields = &request.sampling;
    let checked = check(state, fields, fields.max_tokens, request.logprobs)?;
    unsupported(&request)?;
    let slo = slo_class(state, headers)?;
    let prompt = match request.prompt {
        Prompt::Text(text) => tokenize(&entry, text).await?,
        Prompt::Tokens(ids) => ids,
        Prompt::Texts(texts) if texts.len() == 1 => {
            let text = texts.into_iter().next().unwrap_or_default();
            tokenize(&entry, text).await?
        }
        Prompt::TokenLists(lists) if lists.len() == 1 => {
            lists.into_iter().next().unwrap_or_default()
        }
        Prompt::Texts(_) | Prompt::TokenLists(_) => {
            let msg = "Batched prompts are not supported: send one prompt per request.";
            return Err(ApiError::invalid(msg, Some("prompt")));
        }
    };
    let generation = generation(
        state,
        &entry,
        &request.model,
        prompt,
        &checked,
        slo,
        "prompt",
    )?;
    Ok((entry, generation, checked))
}

/// Fields OpenAI has that this endpoint does not implement: rejected, not ignored.
fn unsupported(request: &CompletionRequest) -> Result<(), ApiError> {
    if request.echo == Some(true) {
        return Err(ApiError::invalid("echo is not supported.", Some("echo")));
    }
    if request.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid(
            "Only best_of = 1 is supported.",
            Some("best_of"),
        ));
    }
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix is not supported.",
            Some("suffix"),
        ));
    }
    Ok(())
}

/// Writes `text_completion` objects.
struct CompletionFormat(Common);

impl CompletionFormat {
    fn object(&self, choice: Option<CompletionChoice>, usage: Option<Option<UsageJson>>) -> String {
        let object = Completion {
            id: self.0.id.clone(),
            object: "text_completion",
            created: self.0.created,
            model: self.0.model.clone(),
            choices: choice.into_iter().collect(),
            usage,
        };
        // Strings, numbers and string-keyed maps always serialize.
        serde_json::to_string(&object).unwrap_or_default()
    }

    fn logprobs(&self, tokens: Vec<TokenLogprob>) -> Option<CompletionLogprobs> {
        if !self.0.logprobs {
            return None;
        }
        let mut out = CompletionLogprobs::default();
        for token in tokens {
            out.tokens.push(token.text);
            out.token_logprobs.push(token.logprob);
            let top = token.top.into_iter().map(|(text, _, lp)| (text, lp));
            out.top_logprobs.push(TopMap(top.collect()));
            out.text_offset.push(token.offset);
        }
        Some(out)
    }
}

impl Format for CompletionFormat {
    fn opening(&self) -> Option<String> {
        None
    }

    fn chunk(&self, text: String, logprobs: Vec<TokenLogprob>) -> String {
        let choice = CompletionChoice {
            index: 0,
            text,
            logprobs: self.logprobs(logprobs),
            finish_reason: None,
        };
        self.object(Some(choice), self.0.chunk_usage())
    }

    fn finish_chunk(&self, reason: &'static str) -> String {
        let choice = CompletionChoice {
            index: 0,
            text: String::new(),
            logprobs: None,
            finish_reason: Some(reason),
        };
        self.object(Some(choice), self.0.chunk_usage())
    }

    fn usage_chunk(&self, usage: Usage) -> Option<String> {
        let usage = UsageJson::from(usage);
        self.0
            .include_usage
            .then(|| self.object(None, Some(Some(usage))))
    }

    fn whole(
        &self,
        text: String,
        logprobs: Vec<TokenLogprob>,
        reason: &'static str,
        usage: Usage,
    ) -> String {
        let choice = CompletionChoice {
            index: 0,
            text,
            logprobs: self.logprobs(logprobs),
            finish_reason: Some(reason),
        };
        self.object(Some(choice), Some(Some(usage.into())))
    }
}
