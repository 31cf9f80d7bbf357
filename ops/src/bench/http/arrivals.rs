//! The open-loop schedule: Poisson arrival times and random prompts, the same for a seed.
//!
//! Arrivals are drawn one at a time as the run reaches them, so a long, fast run holds no
//! more than the requests in flight.

use serde::Serialize;
use std::time::Duration;
use strata_node::model::rng::Rng;

/// Longest prompt or output the bench asks for, tokens.
pub const MAX_TOKENS_PER_REQUEST: u32 = 1 << 20;

/// A range of token counts, `MIN-MAX` (or one number) on the command line, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenRange {
    pub min: u32,
    pub max: u32,
}

impl std::str::FromStr for TokenRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|e| format!("`{t}` is not a token count: {e}"))
        };
        let (min, max) = match s.split_once('-') {
            Some((lo, hi)) => (num(lo)?, num(hi)?),
            None => (num(s)?, num(s)?),
        };
        if min == 0 || min > max || max > MAX_TOKENS_PER_REQUEST {
            return Err(format!(
                "need 1 ≤ MIN ≤ MAX ≤ {MAX_TOKENS_PER_REQUEST}, got {min}-{max}"
            ));
        }
        Ok(TokenRange { min, max })
    }
}

impl std::fmt::Display for TokenRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// What a request's prompt is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    /// Token ids uniform in `[3, vocab)`: exact lengths.
    TokenIds { vocab: u32 },
    /// Lowercase words and spaces, one byte per wanted token: exact for a byte tokenizer.
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    TokenIds(Vec<u32>),
    Text(String),
}

impl Prompt {
    /// The prompt in the `prompt` field of `/v1/completions`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Prompt::TokenIds(ids) => serde_json::json!(ids),
            Prompt::Text(text) => serde_json::json!(text),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// Sequence number from 0.
    pub index: u64,
    /// When to send, from the start of the run.
    pub at: Duration,
    pub prompt: Prompt,
    pub max_tokens: u32,
}

/// Poisson arrivals at `rate_per_s` until `duration`.
#[derive(Debug)]
pub struct Arrivals {
    rng: Rng,
    rate_per_s: f64,
    duration: Duration,
    prompt: TokenRange,
    output: TokenRange,
    kind: PromptKind,
    t_s: f64,
    index: u64,
}

impl Arrivals {
    pub fn new(
        seed: u64,
        rate_per_s: f64,
        duration: Duration,
        prompt: TokenRange,
        output: TokenRange,
        kind: PromptKind,
    ) -> Self {
        debug_assert!(rate_per_s > 0.0);
        Arrivals {
            rng: Rng::new(seed),
            rate_per_s,
            duration,
            prompt,
            output,
            kind,
            t_s: 0.0,
            index: 0,
        }
    }

    fn prompt(&mut self, len: usize) -> Prompt {
        match self.kind {
            PromptKind::TokenIds { vocab } => {
                // Ids 0–2 are special in the byte tokenizer.
                let span = u64::from(vocab.saturating_sub(3).max(1));
                Prompt::TokenIds(
                    (0..len)
                        .map(|_| 3 + (self.rng.next_u64() % span) as u32)
                        .collect(),
                )
            }
            PromptKind::Text => {
                let mut text = String::with_capacity(len);
                while text.len() < len {
                    if !text.is_empty() && self.rng.next_u64().is_multiple_of(6) {
                        text.push(' ');
                    } else {
                        text.push(char::from(b'a' + (self.rng.next_u64() % 26) as u8));
                    }
                }
                Prompt::Text(text)
            }
        }
    }
}

impl Iterator for Arrivals {
    type Item = Arrival;

    fn next(&mut self) -> Option<Arrival> {
        self.t_s += self.rng.exponential(self.rate_per_s);
        let at = Duration::try_from_secs_f64(self.t_s).ok()?;
        if at > self.duration {
            return None;
        }
        let len = self
            .rng
            .range(u64::from(self.prompt.min), u64::from(self.prompt.max));
        let max_tokens =
            self.rng
                .range(u64::from(self.output.min), u64::from(self.output.max)) as u32;
        let prompt = self.prompt(len as usize);
        let index = self.index;
        self.index += 1;
        Some(Arrival {
            index,
            at,
            prompt,
            max_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> TokenRange {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(
            range("256-2048"),
            TokenRange {
                min: 256,
                max: 2048
            }
        );
        assert_eq!(range(" 7 "), TokenRange { min: 7, max: 7 });
        for bad in ["0-3", "5-4", "x-9", "3-", "", "1-99999999"] {
            assert!(bad.parse::<TokenRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn same_seed_same_schedule_within_bounds() {
        let make = |kind| {
            Arrivals::new(
                9,
                50.0,
                Duration::from_secs(4),
                range("10-20"),
                range("2-3"),
                kind,
            )
            .collect::<Vec<_>>()
        };
        let ids = make(PromptKind::TokenIds { vocab: 259 });
        assert_eq!(ids, make(PromptKind::TokenIds { vocab: 259 }));
        // About rate × duration arrivals, in order, all before the end.
        assert!((150..=250).contains(&ids.len()), "{}", ids.len());
        assert!(ids.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(ids.iter().all(|a| a.at <= Duration::from_secs(4)));
        assert!(ids.iter().enumerate().all(|(i, a)| a.index == i as u64));
        for a in &ids {
            assert!((2..=3).contains(&a.max_tokens));
            let Prompt::TokenIds(p) = &a.prompt else {
                panic!("token ids asked for")
            };
            assert!((10..=20).contains(&p.len()));
            assert!(p.iter().all(|&t| (3..259).contains(&t)));
        }
        for a in make(PromptKind::Text) {
            let Prompt::Text(t) = &a.prompt else {
                panic!("text asked for")
            };
            assert!((10..=20).contains(&t.len()), "{t:?}");
            assert!(t.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()));
        }
    }
}
