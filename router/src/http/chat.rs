//! `POST /v1/chat/completions`: messages rendered with the model's chat template;
//! `chat.completion` objects and `chat.completion.chunk` streams.

use super::HttpState;
use super::assemble::TokenLogprob;
use super::errors::ApiError;
use super::openai::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, ChatDelta, ChatLogprobs,
    ChatMessageOut, ChatRequest, ChatTokenLogprob, ChatTopLogprob, UsageJson,
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
use serde_json::Value;
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
            let format = ChatFormat(Common::new("chatcmpl", &generation.model, &checked));
            run(&state, &entry, generation, checked, format, arrival).await
        }
        Err(err) => err.into_response(),
    }
}

/// Parses and checks the request, renders its messages and tokenizes them.
async fn prepare(
    state: &HttpState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Arc<ModelEntry>, Generation, Checked), ApiError> {
    let request: ChatRequest = parse_body(body)?;
    let entry = model_entry(state, &request.model)?;
    let fields = &request.sampling;
    let max_tokens = request.max_completion_tokens.or(fields.max_tokens);
    let logprobs = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, None) => None,
        (false, Some(_)) => {
            let msg = "top_logprobs needs logprobs to be true.";
            return Err(ApiError::invalid(msg, Some("top_logprobs")));
        }
    };
    let checked = check(state, fields, max_tokens, logprobs)?;
    let slo = slo_class(state, headers)?;
    let messages = normalize(request.messages)?;
    let text = entry
        .template
        .render(&messages)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
    let prompt = tokenize(&entry, text).await?;
    let generation = generation(
        state,
        &entry,
        &request.model,
        prompt,
        &checked,
        slo,
        "messages",
    )?;
    Ok((entry, generation, checked))
}

/// Checks each message has a string `role`, and makes `content` a string (text parts are
/// joined; a missing or null content becomes empty). Other fields pass through.
fn normalize(messages: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    let bad = |i: usize, what: &str| {
        ApiError::invalid(format!("messages[{i}]: {what}"), Some("messages"))
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages must not be empty.",
            Some("messages"),
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, mut message)| {
            let object = message
                .as_object_mut()
                .ok_or_else(|| bad(i, "not an object"))?;
            if !object.get("role").is_some_and(Value::is_string) {
                return Err(bad(i, "`role` must be a string"));
            }
            let content = match object.remove("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s,
                Some(Value::Array(parts)) => {
                    let texts: Option<Vec<&str>> = parts
                        .iter()
                        .map(|p| match p.get("type").and_then(Value::as_str) {
                            Some("text") => p.get("text").and_then(Value::as_str),
                            _ => None,
                        })
                        .collect();
                    texts
                        .ok_or_else(|| bad(i, "only text content parts are supported"))?
                        .join("\n")
                }
                Some(_) => return Err(bad(i, "`content` must be a string or a list of parts")),
            };
            object.insert("content".to_owned(), Value::String(content));
            Ok(message)
        })
        .collect()
}

/// Writes `chat.completion` objects and chunks.
struct ChatFormat(Common);

impl ChatFormat {
    fn chunk_object(
        &self,
        choice: Option<ChatChunkChoice>,
        usage: Option<Option<UsageJson>>,
    ) -> String {
        let object = ChatChunk {
            id: self.0.id.clone(),
            object: "chat.completion.chunk",
            created: self.0.created,
            model: self.0.model.clone(),
            choices: choice.into_iter().collect(),
            usage,
        };
        // Strings, numbers and string-keyed maps always serialize.
        serde_json::to_string(&object).unwrap_or_default()
    }

    fn logprobs(&self, tokens: Vec<TokenLogprob>) -> Option<ChatLogprobs> {
        self.0.logprobs.then(|| ChatLogprobs {
            content: tokens
                .into_iter()
                .map(|t| ChatTokenLogprob {
                    token: t.text,
                    logprob: t.logprob,
                    bytes: t.bytes,
                    top_logprobs: t
                        .top
                        .into_iter()
                        .map(|(token, bytes, logprob)| ChatTopLogprob {
                            token,
                            logprob,
                            bytes,
                        })
                        .collect(),
                })
                .collect(),
        })
    }
}

impl Format for ChatFormat {
    fn opening(&self) -> Option<String> {
        let choice = ChatChunkChoice {
            index: 0,
            delta: ChatDelta {
                role: Some("assistant"),
                content: Some(String::new()),
            },
            logprobs: None,
            finish_reason: None,
        };
        Some(self.chunk_object(Some(choice), self.0.chunk_usage()))
    }

    fn chunk(&self, text: String, logprobs: Vec<TokenLogprob>) -> String {
        let choice = ChatChunkChoice {
            index: 0,
            delta: ChatDelta {
                role: None,
                content: Some(text),
            },
            logprobs: self.logprobs(logprobs),
            finish_reason: None,
        };
        self.chunk_object(Some(choice), self.0.chunk_usage())
    }

    fn finish_chunk(&self, reason: &'static str) -> String {
        let choice = ChatChunkChoice {
            index: 0,
            delta: ChatDelta::default(),
            logprobs: None,
            finish_reason: Some(reason),
        };
        self.chunk_object(Some(choice), self.0.chunk_usage())
    }

    fn usage_chunk(&self, usage: Usage) -> Option<String> {
        let usage = UsageJson::from(usage);
        self.0
            .include_usage
            .then(|| self.chunk_object(None, Some(Some(usage))))
    }

    fn whole(
        &self,
        text: String,
        logprobs: Vec<TokenLogprob>,
        reason: &'static str,
        usage: Usage,
    ) -> String {
        let object = ChatCompletion {
            id: self.0.id.clone(),
            object: "chat.completion",
            created: self.0.created,
            model: self.0.model.clone(),
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessageOut {
                    role: "assistant",
                    content: text,
                },
                logprobs: self.logprobs(logprobs),
                finish_reason: reason,
            }],
            usage: usage.into(),
        };
        // Strings, numbers and string-keyed maps always serialize.
        serde_json::to_string(&object).unwrap_or_default()
    }
}
