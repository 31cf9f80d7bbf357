//! Token events in, response pieces out: detokenization, stop strings and per-token
//! log-probabilities, for both endpoints and both modes. No I/O; the caller passes `now`.

use crate::detok::{Detokenizer, StopMatcher};
use crate::generation::{FinishReason, GenEvent, Usage};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use strata_transport::vocab::Tokenizer;

/// Log-probabilities reported as numbers (JSON has no -inf).
const MIN_LOGPROB: f32 = -9999.0;

/// One output token, as log-probability responses show it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenLogprob {
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// `(text, bytes, log-probability)`, most likely first.
    pub top: Vec<(String, Vec<u8>, f32)>,
    /// Offset of the token's text in the output, in characters.
    pub offset: usize,
}

/// What the client gets next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    /// New text, with the log-probabilities of the tokens whose text starts in it.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// The end. After a stop string the generation is cut short: drop the stream.
    Finish { reason: FinishReason, usage: Usage },
    /// The generation failed.
    Failed { message: String },
}

/// Turns a generation's events into pieces.
#[derive(Debug)]
pub(crate) struct Assembler {
    tokenizer: Arc<Tokenizer>,
    detok: Detokenizer,
    stops: StopMatcher,
    /// Top log-probabilities to report (`None`: none at all).
    logprobs: Option<u8>,
    pending: VecDeque<TokenLogprob>,
    emitted_chars: usize,
    prompt_tokens: u32,
    completion_tokens: u32,
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
    done: bool,
}

impl Assembler {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        stops: Vec<String>,
        logprobs: Option<u8>,
        prompt_tokens: u32,
    ) -> Assembler {
        Assembler {
            detok: Detokenizer::new(Arc::clone(&tokenizer)),
            tokenizer,
            stops: StopMatcher::new(stops),
            logprobs,
            pending: VecDeque::new(),
            emitted_chars: 0,
            prompt_tokens,
            completion_tokens: 0,
            first_token_at: None,
            last_token_at: None,
            done: false,
        }
    }

    /// Output tokens received.
    pub fn completion_tokens(&self) -> u32 {
        self.completion_tokens
    }

    /// Handles the next event (`None`: the stream ended without one). Returns at most a
    /// `Text` and then a terminal piece; nothing once a terminal piece was returned.
    pub fn handle(&mut self, event: Option<GenEvent>, now: Instant) -> Vec<Piece> {
        if self.done {
            return Vec::new();
        }
        match self.step(event, now) {
            Ok(pieces) => pieces,
            Err(message) => {
                self.done = true;
                vec![Piece::Failed { message }]
            }
        }
    }

    fn step(&mut self, event: Option<GenEvent>, now: Instant) -> Result<Vec<Piece>, String> {
        let decode_failed = |e: strata_transport::vocab::TokenizerError| e.to_string();
        match event {
            Some(GenEvent::Token {
                token,
                logprob,
                top_logprobs,
                ..
            }) => {
                self.first_token_at.get_or_insert(now);
                self.last_token_at = Some(now);
                self.completion_tokens += 1;
                if let Some(k) = self.logprobs {
                    let entry = self.token_logprob(token, logprob, &top_logprobs, k);
                    self.pending.push_back(entry);
                }
                let delta = self.detok.push(token).map_err(decode_failed)?;
                let outcome = self.stops.push(&delta);
                let mut pieces = self.text(outcome.text);
                if outcome.stopped {
                    let usage = Usage {
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: self.completion_tokens,
                        cached_tokens: 0,
                    };
                    pieces.push(self.finish(FinishReason::Stop, usage));
                }
                Ok(pieces)
            }
            Some(GenEvent::Finish { reason, usage }) => {
                let tail = self.detok.finish().map_err(decode_failed)?;
                let outcome = self.stops.push(&tail);
                let (text, reason) = if outcome.stopped {
                    (outcome.text, FinishReason::Stop)
                } else {
                    (outcome.text + &self.stops.finish(), reason)
                };
                let mut pieces = self.text(text);
                if !outcome.stopped {
                    // Tokens with no text of their own (end of sequence) come out last.
                    let rest: Vec<_> = self.pending.drain(..).collect();
                    match pieces.last_mut() {
                        Some(Piece::Text { logprobs, .. }) => logprobs.extend(rest),
                        _ if !rest.is_empty() => pieces.push(Piece::Text {
                            text: String::new(),
                            logprobs: rest,
                        }),
                        _ => {}
                    }
                }
                pieces.push(self.finish(reason, usage));
                Ok(pieces)
            }
            Some(GenEvent::Failed { message }) => Err(message),
            None => Err("the generation ended without finishing".to_owned()),
        }
    }

    /// A `Text` piece for `text`, carrying the pending log-probabilities whose text starts in
    /// what has now been emitted (none if there is nothing to carry).
    fn text(&mut self, text: String) -> Vec<Piece> {
        self.emitted_chars += text.chars().count();
        let mut logprobs = Vec::new();
        while self
            .pending
            .front()
            .is_some_and(|t| t.offset < self.emitted_chars)
        {
            logprobs.extend(self.pending.pop_front());
        }
        if text.is_empty() && logprobs.is_empty() {
            return Vec::new();
        }
        vec![Piece::Text { text, logprobs }]
    }

    fn finish(&mut self, reason: FinishReason, usage: Usage) -> Piece {
        self.done = true;
        // Tokens past a stop string are not part of the output.
        self.pending.clear();
        Piece::Finish { reason, usage }
    }

    fn token_logprob(&self, token: u32, logprob: f32, top: &[(u32, f32)], k: u8) -> TokenLogprob {
        let (text, bytes) = token_text(&self.tokenizer, token);
        let top = top
            .iter()
            .take(usize::from(k))
            .map(|&(id, lp)| {
                let (text, bytes) = token_text(&self.tokenizer, id);
                (text, bytes, lp.max(MIN_LOGPROB))
            })
            .collect();
        TokenLogprob {
            text,
            bytes,
            logprob: logprob.max(MIN_LOGPROB),
            top,
            offset: self.detok.emitted_chars(),
        }
    }
}

/// A token's own text and bytes. A byte that is not valid UTF-8 on its own is shown as
/// `bytes:\xNN`, as OpenAI does.
pub(crate) fn token_text(tokenizer: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    match tokenizer {
        Tokenizer::Bytes => match id.checked_sub(3).map(u8::try_from) {
            Some(Ok(byte)) => match std::str::from_utf8(&[byte]) {
                Ok(s) => (s.to_owned(), vec![byte]),
                Err(_) => (format!("bytes:\\x{byte:02x}"), vec![byte]),
            },
            Some(Err(_)) => ("\u{fffd}".to_owned(), "\u{fffd}".as_bytes().to_vec()),
            None => (String::new(), Vec::new()),
        },
        Tokenizer::Hf(tok) => {
            let text = tok.decode(&[id], false).unwrap_or_default();
            let bytes = text.as_bytes().to_vec();
            (text, bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(index: u32, byte: u8) -> GenEvent {
        let id = u32::from(byte) + 3;
        GenEvent::Token {
            index,
            token: id,
            logprob: -0.5,
            top_logprobs: vec![(id, -0.5), (Tokenizer::EOS, f32::NEG_INFINITY)],
        }
    }

    fn feed(asm: &mut Assembler, bytes: &[u8]) -> Vec<Piece> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            out.extend(asm.handle(Some(token(i as u32, b)), now));
        }
        out
    }

    fn finish(completion_tokens: u32) -> GenEvent {
        GenEvent::Finish {
            reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens,
                cached_tokens: 1,
            },
        }
    }

    #[test]
    fn logprobs_travel_with_the_text_they_start() {
        let mut asm = Assembler::new(Arc::new(Tokenizer::Bytes), vec![], Some(1), 3);
        let pieces = feed(&mut asm, "a€".as_bytes());
        assert_eq!(pieces.len(), 2);
        let Piece::Text { text, logprobs } = &pieces[1] else {
            panic!("expected text, got {pieces:?}");
        };
        assert_eq!(text, "€");
        let shown: Vec<&str> = logprobs.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(shown, ["bytes:\\xe2", "bytes:\\x82", "bytes:\\xac"]);
        assert!(logprobs.iter().all(|t| t.offset == 1 && t.top.len() == 1));
        assert_eq!(logprobs[0].bytes, [0xe2]);
        // End of sequence: no text, but its log-probability still comes out, floored.
        let pieces = asm.handle(
            Some(GenEvent::Token {
                index: 4,
                token: Tokenizer::EOS,
                logprob: f32::NEG_INFINITY,
                top_logprobs: vec![],
            }),
            Instant::now(),
        );
        assert!(pieces.is_empty());
        let pieces = asm.handle(Some(finish(4)), Instant::now());
        assert!(
            matches!(&pieces[0], Piece::Text { text, logprobs } if text.is_empty() && logprobs[0].logprob == MIN_LOGPROB)
        );
        assert!(
            matches!(pieces[1], Piece::Finish { reason: FinishReason::Length, usage } if usage.cached_tokens == 1)
        );
        assert!(asm.handle(None, Instant::now()).is_empty());
    }

    #[test]
    fn a_stop_string_finishes_with_the_tokens_seen() {
        let mut asm = Assembler::new(Arc::new(Tokenizer::Bytes), vec!["lo".into()], Some(0), 3);
        let pieces = feed(&mut asm, b"Hello world");
        let text: String = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Hel");
        let logprobs: usize = pieces
            .iter()
            .map(|p| match p {
                Piece::Text { logprobs, .. } => logprobs.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(logprobs, 3, "H, e and the first l");
        let Some(Piece::Finish { reason, usage }) = pieces.last() else {
            panic!("no finish in {pieces:?}");
        };
        assert_eq!(*reason, FinishReason::Stop);
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 5));
    }

    #[test]
    fn a_stream_that_ends_without_finish_fails() {
        let mut asm = Assembler::new(Arc::new(Tokenizer::Bytes), vec![], None, 3);
        feed(&mut asm, b"ab");
        let pieces = asm.handle(None, Instant::now());
        assert!(matches!(&pieces[..], [Piece::Failed { .. }]));
        let mut asm = Assembler::new(Arc::new(Tokenizer::Bytes), vec!["xyz".into()], None, 3);
        let mut pieces = feed(&mut asm, b"abxy");
        pieces.extend(asm.handle(Some(finish(4)), Instant::now()));
        let text: String = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "abxy", "a held stop prefix is released at the end");
    }
}
