//! Chat templates: the Jinja template of an HF `tokenizer_config.json` (or a built-in default),
//! rendered with minijinja the way `transformers` renders it (`trim_blocks`, `lstrip_blocks`,
//! `raise_exception`, a Python-compatible `tojson`, and the string and dict methods that
//! Llama-3 and Qwen2 templates call).

use minijinja::value::{Kwargs, Value, ValueKind, from_args};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The template of models that ship none (the `tiny` preset): `<|role|>\ncontent\n` per
/// message, then `<|assistant|>\n`.
pub const BUILTIN_TEMPLATE: &str = "{% for message in messages %}<|{{ message.role }}|>\n\
     {{ message.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// A chat template that cannot be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `tokenizer_config.json` is not the JSON we expect.
    #[error("tokenizer_config.json is not valid: {source}")]
    Config {
        #[source]
        source: serde_json::Error,
    },
    /// The list of named templates has none named `default`.
    #[error("tokenizer_config.json has named chat templates ({names:?}) but none is `default`")]
    NoDefault { names: Vec<String> },
    /// The template does not compile.
    #[error("chat template does not compile: {source}")]
    Syntax {
        #[source]
        source: Error,
    },
    /// Rendering failed: the template raised an exception (e.g. roles that do not alternate)
    /// or used something unsupported.
    #[error("{message}")]
    Render { message: String },
}

/// A compiled chat template with the special tokens it refers to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenizerConfig {
    chat_template: Option<TemplateField>,
    bos_token: Option<TokenField>,
    eos_token: Option<TokenField>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// A special token as a string or as an `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenField {
    Text(String),
    Added { content: String },
}

impl TokenField {
    fn into_string(self) -> String {
        match self {
            TokenField::Text(s) | TokenField::Added { content: s } => s,
        }
    }
}

impl ChatTemplate {
    /// Compiles `source` with the given special tokens.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(python_method);
        env.add_template_owned(TEMPLATE_NAME, source.into())
            .map_err(|source| TemplateError::Syntax { source })?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The built-in template ([`BUILTIN_TEMPLATE`]), with no special tokens.
    pub fn builtin() -> ChatTemplate {
        // The built-in template is a constant that the tests compile.
        ChatTemplate::new(BUILTIN_TEMPLATE, "", "").expect("the built-in template compiles")
    }

    /// The template of a `tokenizer_config.json` (`chat_template` as a string, or a list of
    /// named templates of which `default` is taken); `None` when it has none.
    pub fn from_tokenizer_config(json: &str) -> Result<Option<ChatTemplate>, TemplateError> {
        let config: TokenizerConfig =
            serde_json::from_str(json).map_err(|source| TemplateError::Config { source })?;
        let source = match config.chat_template {
            None => return Ok(None),
            Some(TemplateField::One(source)) => source,
            Some(TemplateField::Named(list)) => {
                let names: Vec<String> = list.iter().map(|t| t.name.clone()).collect();
                list.into_iter()
                    .find(|t| t.name == "default")
                    .ok_or(TemplateError::NoDefault { names })?
                    .template
            }
        };
        let bos = config.bos_token.map(TokenField::into_string);
        let eos = config.eos_token.map(TokenField::into_string);
        ChatTemplate::new(source, bos.unwrap_or_default(), eos.unwrap_or_default()).map(Some)
    }

    /// The template of a model directory: `chat_template.jinja` if present, else the one in
    /// `tokenizer_config.json`, else [`ChatTemplate::builtin`].
    pub fn load(dir: &Path) -> Result<ChatTemplate, TemplateError> {
        let read = |path: PathBuf| match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TemplateError::Io { path, source }),
        };
        let config = read(dir.join("tokenizer_config.json"))?;
        if let Some(source) = read(dir.join("chat_template.jinja"))? {
            let (bos, eos) = match &config {
                Some(json) => {
                    let config: TokenizerConfig = serde_json::from_str(json)
                        .map_err(|source| TemplateError::Config { source })?;
                    let bos = config.bos_token.map(TokenField::into_string);
                    let eos = config.eos_token.map(TokenField::into_string);
                    (bos.unwrap_or_default(), eos.unwrap_or_default())
                }
                None => Default::default(),
            };
            return ChatTemplate::new(source, bos, eos);
        }
        match config {
            Some(json) => {
                Ok(ChatTemplate::from_tokenizer_config(&json)?
                    .unwrap_or_else(ChatTemplate::builtin))
            }
            None => Ok(ChatTemplate::builtin()),
        }
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders `messages` (objects with at least `role` and `content`) followed by the
    /// generation prompt.
    pub fn render(&self, messages: &[serde_json::Value]) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Syntax { source: e })?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => true,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => Value::from(()),
            documents => Value::from(()),
        };
        template.render(ctx).map_err(|e| TemplateError::Render {
            message: e.detail().map_or_else(|| e.to_string(), str::to_owned),
        })
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as `transformers` defines
/// the filter (separators `", "` and `": "`, or `","` when indenting).
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_py_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&J::String(key.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Python's `str` and `dict` methods that chat templates call.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        return string_method(s, method, args);
    }
    if value.kind() == ValueKind::Map {
        match method {
            "items" => return state.apply_filter("items", std::slice::from_ref(value)),
            "keys" => {
                let _: () = from_args(args)?;
                return Ok(Value::from(value.try_iter()?.collect::<Vec<_>>()));
            }
            "values" => {
                let _: () = from_args(args)?;
                let keys = value.try_iter()?;
                let values: Result<Vec<_>, _> = keys.map(|k| value.get_item(&k)).collect();
                return Ok(Value::from(values?));
            }
            "get" => {
                let (key, default): (Value, Option<Value>) = from_args(args)?;
                let item = value.get_item(&key)?;
                return Ok(if item.is_undefined() {
                    default.unwrap_or(Value::from(()))
                } else {
                    item
                });
            }
            _ => {}
        }
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    let strip_set = |chars: Option<&str>| {
        let chars: Vec<char> = chars.map(|c| c.chars().collect()).unwrap_or_default();
        move |c: char| {
            if chars.is_empty() {
                c.is_whitespace()
            } else {
                chars.contains(&c)
            }
        }
    };
    let affix = |args: &[Value]| -> Result<Vec<String>, Error> {
        let (affix,): (Value,) = from_args(args)?;
        match affix.as_str() {
            Some(one) => Ok(vec![one.to_owned()]),
            None => affix
                .try_iter()?
                .map(|v| Ok(v.as_str().unwrap_or_default().to_owned()))
                .collect(),
        }
    };
    let out = match method {
        "strip" => Value::from(s.trim_matches(strip_set(from_args::<(Option<&str>,)>(args)?.0))),
        "lstrip" => {
            Value::from(s.trim_start_matches(strip_set(from_args::<(Option<&str>,)>(args)?.0)))
        }
        "rstrip" => {
            Value::from(s.trim_end_matches(strip_set(from_args::<(Option<&str>,)>(args)?.0)))
        }
        "startswith" => Value::from(affix(args)?.iter().any(|p| s.starts_with(p.as_str()))),
        "endswith" => Value::from(affix(args)?.iter().any(|p| s.ends_with(p.as_str()))),
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        "title" | "capitalize" => {
            let mut chars = s.chars();
            let first: String = chars
                .next()
                .map(|c| c.to_uppercase().collect())
                .unwrap_or_default();
            Value::from(first + &chars.as_str().to_lowercase())
        }
        "replace" => {
            let (from, to): (&str, &str) = from_args(args)?;
            Value::from(s.replace(from, to))
        }
        "split" => {
            let (sep, max): (Option<&str>, Option<i64>) = from_args(args)?;
            let max = max.filter(|&m| m >= 0).map(|m| m as usize + 1);
            let parts: Vec<Value> = match (sep, max) {
                (None, _) => s.split_whitespace().map(Value::from).collect(),
                (Some(sep), Some(n)) => s.splitn(n, sep).map(Value::from).collect(),
                (Some(sep), None) => s.split(sep).map(Value::from).collect(),
            };
            Value::from(parts)
        }
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    };
    Ok(out)
}

/// `strftime_now(format)`: the current UTC date and time (`%d %m %Y %y %b %B %H %M %S %%`).
fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs, format)
}

fn format_utc(secs: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    // Howard Hinnant's civil_from_days.
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let secs_of_day = secs % 86_400;
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('H') => out.push_str(&format!("{:02}", secs_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs_of_day % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}\
{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    const QWEN2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}\
{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn chat(pairs: &[(&str, &str)]) -> Vec<serde_json::Value> {
        pairs
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect()
    }

    #[test]
    fn renders_a_llama3_template() {
        let t = ChatTemplate::new(LLAMA3, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let out = t
            .render(&chat(&[
                ("system", "You are helpful."),
                ("user", "  Hi there \n"),
            ]))
            .unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>\
<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
<|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn renders_a_qwen2_chatml_template() {
        let t = ChatTemplate::new(QWEN2, "", "<|im_end|>").unwrap();
        let out = t.render(&chat(&[("user", "Hello")])).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(&chat(&[("system", "Be brief."), ("user", "Hi")]))
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn block_tags_trim_like_transformers_and_methods_work() {
        // Multi-line template in the Qwen2.5 style: whitespace control, string methods,
        // dict methods, tojson with Python separators.
        let source = "{%- for message in messages %}
    {%- if message.role == 'assistant' and message.content.startswith('<think>') %}
        {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
    {%- else %}
        {%- set content = message.content.strip() %}
    {%- endif %}
{{- '[' + message.role.upper() + '] ' + content + '\\n' }}
{%- endfor %}
{{- {'a': [1, 2], 'b': 'é'} | tojson }}|{{ message_count | default(messages|length) }}|{{ {'k': 1}.get('k') }}{{ {'k': 1}.get('z', 'none') }}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        let out = t
            .render(&chat(&[
                ("user", "  hi  "),
                ("assistant", "<think>hm</think>\n\nyes"),
            ]))
            .unwrap();
        assert_eq!(
            out,
            "[USER] hi\n[ASSISTANT] yes\n{\"a\": [1, 2], \"b\": \"é\"}|2|1none"
        );
    }

    #[test]
    fn raise_exception_becomes_a_render_error_with_its_message() {
        let source = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        match t.render(&chat(&[("assistant", "x")])) {
            Err(TemplateError::Render { message }) => {
                assert_eq!(message, "Conversation must start with a user message")
            }
            other => panic!("expected a render error, got {other:?}"),
        }
    }

    #[test]
    fn the_builtin_template_frames_roles() {
        let out = ChatTemplate::builtin()
            .render(&chat(&[("system", "S"), ("user", "U")]))
            .unwrap();
        assert_eq!(out, "<|system|>\nS\n<|user|>\nU\n<|assistant|>\n");
    }

    #[test]
    fn tokenizer_config_forms() {
        let config = json!({
            "bos_token": {"content": "<s>", "lstrip": false, "__type": "AddedToken"},
            "eos_token": "</s>",
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}
            ],
            "model_max_length": 4096
        });
        let t = ChatTemplate::from_tokenizer_config(&config.to_string())
            .unwrap()
            .unwrap();
        assert_eq!((t.bos_token(), t.eos_token()), ("<s>", "</s>"));
        assert_eq!(t.render(&chat(&[("user", "x")])).unwrap(), "<s>x</s>");

        let none = json!({"eos_token": "</s>"}).to_string();
        assert!(
            ChatTemplate::from_tokenizer_config(&none)
                .unwrap()
                .is_none()
        );
        let no_default = json!({"chat_template": [{"name": "rag", "template": "r"}]}).to_string();
        assert!(matches!(
            ChatTemplate::from_tokenizer_config(&no_default),
            Err(TemplateError::NoDefault { .. })
        ));
        let bad = json!({"chat_template": "{% for %}"}).to_string();
        assert!(matches!(
            ChatTemplate::from_tokenizer_config(&bad),
            Err(TemplateError::Syntax { .. })
        ));
    }

    #[test]
    fn tojson_indents_like_python() {
        let t = ChatTemplate::new("{{ messages[0] | tojson(indent=2) }}", "", "").unwrap();
        let out = t
            .render(&[json!({"content": [1, {}], "role": "u"})])
            .unwrap();
        assert_eq!(
            out,
            "{\n  \"content\": [\n    1,\n    {}\n  ],\n  \"role\": \"u\"\n}"
        );
    }

    #[test]
    fn formats_utc_dates() {
        // 2024-07-26 13:25:09 UTC.
        assert_eq!(
            format_utc(1_722_000_309, "%d %b %Y %H:%M:%S %B %%"),
            "26 Jul 2024 13:25:09 July %"
        );
    }
}
