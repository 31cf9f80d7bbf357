//! Incremental detokenization and text-level stop strings.
//!
//! [`Detokenizer`] turns output ids, one at a time, into text deltas that never split a UTF-8
//! character; [`StopMatcher`] cuts the text before the first stop string, holding back a tail
//! that could still become one. Both are pure: ids and text in, text out.
//!
//! Order of calls: `Detokenizer::push` per token, each delta into `StopMatcher::push`; at the
//! end of the generation `Detokenizer::finish`, that text into `StopMatcher::push`, then
//! `StopMatcher::finish`.

use std::sync::Arc;
use strata_transport::vocab::{Tokenizer, TokenizerError};

const REPLACEMENT: char = '\u{fffd}';
/// An incomplete UTF-8 character has at most 3 bytes, so it spans at most this many tokens.
const MAX_PARTIAL_TOKENS: usize = 3;

/// Output ids in, text deltas out.
///
/// Decodes a short window of recent ids (`prefix_offset..`) and emits what it adds to the text
/// of `prefix_offset..read_offset`, so tokenizers that strip a leading space from the first
/// token of a decode still produce the right text. While the decoded tail ends with U+FFFD
/// (a character whose bytes have not all arrived) it holds the last tokens back; a U+FFFD that
/// more than [`MAX_PARTIAL_TOKENS`] tokens have not completed is genuine and is emitted.
#[derive(Debug)]
pub struct Detokenizer {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    /// Start of the decode window (ids before it are already text).
    prefix_offset: usize,
    /// Ids in `prefix_offset..read_offset` have been emitted as text.
    read_offset: usize,
    /// Characters emitted so far.
    emitted_chars: usize,
}

impl Detokenizer {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Detokenizer {
        Detokenizer {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            emitted_chars: 0,
        }
    }

    /// Characters emitted so far (the offset, in the output text, of the next delta).
    pub fn emitted_chars(&self) -> usize {
        self.emitted_chars
    }

    /// Adds one output id; returns the text it completes (often empty while a character is
    /// incomplete, sometimes the text of several held tokens).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        if !full.ends_with(REPLACEMENT) {
            return Ok(self.advance(&prefix, &full, self.ids.len()));
        }
        // The tail may be an incomplete character: emit only what comes before it.
        let pending = self.ids.len() - self.read_offset;
        for held in 1..=MAX_PARTIAL_TOKENS.min(pending) {
            let end = self.ids.len() - held;
            let candidate = self.decode(self.prefix_offset, end)?;
            if !candidate.ends_with(REPLACEMENT) && candidate.len() > prefix.len() {
                return Ok(self.advance(&prefix, &candidate, end));
            }
        }
        if pending > MAX_PARTIAL_TOKENS {
            // Tokens this far back cannot belong to the incomplete tail: their U+FFFD is real.
            let end = self.ids.len() - MAX_PARTIAL_TOKENS;
            let candidate = self.decode(self.prefix_offset, end)?;
            return Ok(self.advance(&prefix, &candidate, end));
        }
        Ok(String::new())
    }

    /// Ends the output: returns the text still held back (an incomplete character becomes
    /// U+FFFD).
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        Ok(self.advance(&prefix, &full, self.ids.len()))
    }

    fn decode(&self, start: usize, end: usize) -> Result<String, TokenizerError> {
        self.tokenizer.decode(&self.ids[start..end])
    }

    /// Emits what `text` (the decode of `prefix_offset..end`) adds to `prefix`, and moves the
    /// window so that `prefix_offset..read_offset` covers the ids just emitted.
    fn advance(&mut self, prefix: &str, text: &str, end: usize) -> String {
        let delta = match text.strip_prefix(prefix) {
            Some(delta) => delta.to_owned(),
            // The new ids changed earlier text (a tokenizer merged across the window): emit
            // what follows the common prefix, on a character boundary.
            None => {
                let common = prefix
                    .char_indices()
                    .zip(text.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(prefix.len().min(text.len()), |((i, _), _)| i);
                text.get(common..).unwrap_or_default().to_owned()
            }
        };
        if !delta.is_empty() || end == self.ids.len() {
            self.prefix_offset = self.read_offset;
            self.read_offset = end;
        }
        self.emitted_chars += delta.chars().count();
        delta
    }
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is final: no stop string can start in it.
    pub text: String,
    /// A stop string matched; `text` ends right before it and the generation is over.
    pub stopped: bool,
}

/// Finds the first of a few stop strings in text that arrives in pieces.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// The tail that is a prefix of some stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// `stops` must be non-empty strings (empty ones are ignored).
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has matched.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds text; returns the part that is final.
    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome {
                text: String::new(),
                stopped: true,
            };
        }
        let mut buffer = std::mem::take(&mut self.held);
        buffer.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|stop| buffer.find(stop.as_str()))
            .min();
        if let Some(at) = first {
            buffer.truncate(at);
            self.stopped = true;
            return StopOutcome {
                text: buffer,
                stopped: true,
            };
        }
        let keep = self.longest_stop_prefix_suffix(&buffer);
        self.held = buffer.split_off(buffer.len() - keep);
        StopOutcome {
            text: buffer,
            stopped: false,
        }
    }

    /// Ends the text: returns what was held back (it did not become a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `text` that is a proper prefix of a stop string.
    fn longest_stop_prefix_suffix(&self, text: &str) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let longest = (stop.len() - 1).min(text.len());
            for len in (best + 1..=longest).rev() {
                let start = text.len() - len;
                if text.is_char_boundary(start) && stop.starts_with(&text[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_detok() -> Detokenizer {
        Detokenizer::new(Arc::new(Tokenizer::Bytes))
    }

    fn byte_ids(text: &str) -> Vec<u32> {
        Tokenizer::Bytes.encode(text).expect("bytes encode")
    }

    /// Pushes every id and returns the deltas (finish last).
    fn deltas(ids: &[u32]) -> Vec<String> {
        let mut detok = bytes_detok();
        let mut out: Vec<String> = ids.iter().map(|&id| detok.push(id).unwrap()).collect();
        out.push(detok.finish().unwrap());
        out
    }

    #[test]
    fn ascii_comes_out_token_by_token() {
        assert_eq!(deltas(&byte_ids("Hi!")), ["H", "i", "!", ""]);
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        // € is E2 82 AC; 😀 is F0 9F 98 80.
        assert_eq!(deltas(&byte_ids("a€")), ["a", "", "", "€", ""]);
        assert_eq!(deltas(&byte_ids("😀b")), ["", "", "", "😀", "b", ""]);
    }

    #[test]
    fn genuine_replacement_characters_are_emitted() {
        // Ids past the byte range decode to U+FFFD: held while they could be a partial
        // character, emitted when the next text arrives, at the end, or after 3 more ids.
        assert_eq!(deltas(&[300, 'a' as u32 + 3]), ["", "\u{fffd}a", ""]);
        assert_eq!(deltas(&[300]), ["", "\u{fffd}"]);
        assert_eq!(
            deltas(&[300; 5]),
            [
                "",
                "",
                "",
                "\u{fffd}",
                "\u{fffd}",
                "\u{fffd}\u{fffd}\u{fffd}"
            ]
        );
        // A real replacement followed by a split character.
        let mut ids = vec![300];
        ids.extend(byte_ids("€"));
        assert_eq!(deltas(&ids).concat(), "\u{fffd}€");
    }

    #[test]
    fn an_incomplete_character_at_the_end_becomes_a_replacement() {
        assert_eq!(deltas(&[0xE2 + 3, 0x82 + 3]), ["", "", "\u{fffd}"]);
    }

    #[test]
    fn special_ids_have_no_text_and_count_no_chars() {
        let mut detok = bytes_detok();
        assert_eq!(detok.push(byte_ids("a")[0]).unwrap(), "a");
        assert_eq!(detok.push(Tokenizer::EOS).unwrap(), "");
        assert_eq!(detok.emitted_chars(), 1);
    }

    /// A Llama-style (SentencePiece BPE with byte fallback) tokenizer: `▁Hello`, `▁world`,
    /// `!` and the 256 byte tokens, whose decoder strips the first token's leading space.
    fn llama_style() -> Arc<Tokenizer> {
        let mut vocab = serde_json::Map::new();
        for (i, special) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert(special.to_string(), i.into());
        }
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), (b + 3).into());
        }
        for (i, word) in ["\u{2581}Hello", "\u{2581}world", "!"].iter().enumerate() {
            vocab.insert(word.to_string(), (259 + i).into());
        }
        let added: Vec<_> = ["<unk>", "<s>", "</s>"]
            .iter()
            .enumerate()
            .map(|(id, content)| {
                serde_json::json!({"id": id, "content": content, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "vocab": vocab, "merges": []}
        });
        let path = std::env::temp_dir().join(format!("strata-detok-{}.json", std::process::id()));
        std::fs::write(&path, json.to_string()).unwrap();
        let tokenizer = Tokenizer::from_file(&path);
        let _ = std::fs::remove_file(&path);
        Arc::new(tokenizer.unwrap())
    }

    #[test]
    fn hf_tokenizers_keep_spaces_between_tokens_and_bytes_whole() {
        let tokenizer = llama_style();
        assert_eq!(tokenizer.decode(&[259, 260, 261]).unwrap(), "Hello world!");
        let mut detok = Detokenizer::new(tokenizer);
        // ▁Hello ▁world <0xE2> <0x82> <0xAC> ! </s>
        let ids = [259, 260, 0xE2 + 3, 0x82 + 3, 0xAC + 3, 261, 2];
        let deltas: Vec<String> = ids.iter().map(|&id| detok.push(id).unwrap()).collect();
        assert_eq!(deltas, ["Hello", " world", "", "", "€", "!", ""]);
        assert_eq!(detok.finish().unwrap(), "");
        assert_eq!(detok.emitted_chars(), "Hello world€!".chars().count());
    }

    fn run_stops(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for piece in pieces {
            let outcome = matcher.push(piece);
            out.push(outcome.text);
            if outcome.stopped {
                return (out, true);
            }
        }
        out.push(matcher.finish());
        (out, false)
    }

    #[test]
    fn a_stop_string_across_pieces_cuts_before_it() {
        let (out, stopped) = run_stops(&["lo"], &["Hel", "lo", " world"]);
        assert!(stopped);
        assert_eq!(out, ["He", "l"]);
        let (out, stopped) = run_stops(&["\n\n"], &["a\n", "\nb"]);
        assert!(stopped);
        assert_eq!(out.concat(), "a");
    }

    #[test]
    fn a_held_prefix_that_does_not_match_is_released() {
        let (out, stopped) = run_stops(&["abc"], &["xab", "d", "ab"]);
        assert!(!stopped);
        assert_eq!(out, ["x", "abd", "", "ab"]);
    }

    #[test]
    fn the_earliest_stop_wins_and_multibyte_text_is_safe() {
        let (out, stopped) = run_stops(&["world", "o w"], &["hello world"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hell");
        let (out, stopped) = run_stops(&["é!"], &["caféé", "!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "café");
    }
}
