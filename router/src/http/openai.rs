//! OpenAI's request and response bodies, as serde types. Unknown request fields are ignored.
//!
//! Numeric request fields are read wide (`i64`, `f64`) so that validation, not the JSON
//! parser, reports a bad value with the field it belongs to.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Top log-probabilities per token (0–20); `None`: no log-probabilities.
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    /// Objects with `role` and `content` (a string or text parts); other fields pass through
    /// to the chat template.
    pub messages: Vec<serde_json::Value>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Takes precedence over `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

/// The fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub user: Option<String>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Extension (as in vLLM): keep generating past end-of-sequence tokens, to `max_tokens`.
    pub ignore_eos: Option<bool>,
}

/// A completion prompt: text or token ids, alone or as a batch of one.
///
/// Deserialized by hand rather than `#[serde(untagged)]`: untagged buffers the whole value and
/// retries each variant, which costs milliseconds on a 32k-token id array. Here the first
/// element of an array decides its kind and the rest parse straight into it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prompt, D::Error> {
        d.deserialize_any(PromptVisitor)
    }
}

struct PromptVisitor;

/// The first element of a prompt array.
#[derive(Deserialize)]
#[serde(untagged)]
enum FirstElem {
    Token(u32),
    Text(String),
    Tokens(Vec<u32>),
}

impl<'de> serde::de::Visitor<'de> for PromptVisitor {
    type Value = Prompt;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, an array of token ids, or an array of one of those")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Prompt, E> {
        Ok(Prompt::Text(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Prompt, E> {
        Ok(Prompt::Text(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Prompt, A::Error> {
        let cap = seq.size_hint().unwrap_or(0).min(1 << 16);
        match seq.next_element::<FirstElem>()? {
            None => Ok(Prompt::Tokens(Vec::new())),
            Some(FirstElem::Token(t)) => {
                let mut ids = Vec::with_capacity(cap.max(1));
                ids.push(t);
                while let Some(t) = seq.next_element::<u32>()? {
                    ids.push(t);
                }
                Ok(Prompt::Tokens(ids))
            }
            Some(FirstElem::Text(t)) => {
                let mut texts = vec![t];
                while let Some(t) = seq.next_element::<String>()? {
                    texts.push(t);
                }
                Ok(Prompt::Texts(texts))
            }
            Some(FirstElem::Tokens(ids)) => {
                let mut lists = vec![ids];
                while let Some(ids) = seq.next_element::<Vec<u32>>()? {
                    lists.push(ids);
                }
                Ok(Prompt::TokenLists(lists))
            }
        }
    }
}

/// `stop`: one string or a list of up to 4.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `usage` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UsageJson {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl From<crate::generation::Usage> for UsageJson {
    fn from(u: crate::generation::Usage) -> UsageJson {
        UsageJson {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_tokens,
            },
        }
    }
}

/// A `text_completion` object, whole or as a stream chunk.
#[derive(Debug, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// Absent: not asked for; `Some(None)`: `null` on chunks before the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageJson>>,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// The legacy completions log-probability shape.
#[derive(Debug, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<TopMap>,
    pub text_offset: Vec<usize>,
}

/// `{token: logprob, …}`, most likely first, one entry per distinct token text.
#[derive(Debug, Default)]
pub struct TopMap(pub Vec<(String, f32)>);

impl Serialize for TopMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut map = serializer.serialize_map(None)?;
        for (token, logprob) in &self.0 {
            if seen.insert(token.as_str()) {
                map.serialize_entry(token, logprob)?;
            }
        }
        map.end()
    }
}

/// A `chat.completion` object.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageJson,
}

#[derive(Debug, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ChatMessageOut {
    pub role: &'static str,
    pub content: String,
}

/// A `chat.completion.chunk` object.
#[derive(Debug, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageJson>>,
}

#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// The chat log-probability shape.
#[derive(Debug, Default, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

#[derive(Debug, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
}

#[cfg(test)]
mod prompt_tests {
    use super::Prompt;

    fn parse(json: &str) -> Result<Prompt, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn every_prompt_shape_parses() {
        assert_eq!(parse(r#""hi""#).ok(), Some(Prompt::Text("hi".into())));
        assert_eq!(parse("[1, 2, 3]").ok(), Some(Prompt::Tokens(vec![1, 2, 3])));
        assert_eq!(parse("[]").ok(), Some(Prompt::Tokens(vec![])));
        assert_eq!(
            parse(r#"["a", "b"]"#).ok(),
            Some(Prompt::Texts(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            parse("[[1], [2, 3]]").ok(),
            Some(Prompt::TokenLists(vec![vec![1], vec![2, 3]]))
        );
    }

    #[test]
    fn mixed_or_invalid_prompts_fail() {
        for bad in [
            r#"[1, "a"]"#,
            "[-1]",
            "[1.5]",
            "[4294967296]",
            "{}",
            "3",
            r#"["a", 1]"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
