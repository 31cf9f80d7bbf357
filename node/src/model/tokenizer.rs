//! Tokenizers: an HF `tokenizer.json` through the `tokenizers` crate, or bytes as tokens.
//!
//! `encode` adds no special tokens (a chat template or the engine adds BOS where the model
//! wants one); `decode` skips special tokens.

use std::path::{Path, PathBuf};

/// Text ↔ token ids.
pub enum Tokenizer {
    /// An HF tokenizer loaded from `tokenizer.json`.
    Hf(Box<tokenizers::Tokenizer>),
    /// Each byte is a token: id = byte + 3, after pad (0), bos (1) and eos (2).
    Bytes,
}

/// A tokenizer that cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a tokenizer the `tokenizers` crate can load.
    #[error("{path}: not a valid tokenizer.json: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
    /// The HF tokenizer failed to encode the text.
    #[error("cannot encode text: {source}")]
    Encode {
        #[source]
        source: tokenizers::Error,
    },
    /// The HF tokenizer failed to decode the ids.
    #[error("cannot decode ids: {source}")]
    Decode {
        #[source]
        source: tokenizers::Error,
    },
    /// An id outside the byte tokenizer's vocabulary.
    #[error(
        "token id {id} is outside the byte tokenizer's vocabulary of {}",
        Tokenizer::BYTES_VOCAB
    )]
    ByteId { id: u32 },
}

impl Tokenizer {
    /// The byte tokenizer's padding id.
    pub const PAD: u32 = 0;
    /// The byte tokenizer's beginning-of-sequence id.
    pub const BOS: u32 = 1;
    /// The byte tokenizer's end-of-sequence id.
    pub const EOS: u32 = 2;
    /// The byte tokenizer's id of byte 0.
    const BYTE_OFFSET: u32 = 3;
    /// The byte tokenizer's vocabulary: 3 specials and 256 bytes.
    pub const BYTES_VOCAB: usize = 259;

    /// Loads an HF `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let tok =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|source| TokenizerError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Tokenizer::Hf(Box::new(tok)))
    }

    /// The ids of `text`, without special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match self {
            Tokenizer::Hf(tok) => tok
                .encode(text, false)
                .map(|enc| enc.get_ids().to_vec())
                .map_err(|source| TokenizerError::Encode { source }),
            Tokenizer::Bytes => Ok(text
                .bytes()
                .map(|b| u32::from(b) + Tokenizer::BYTE_OFFSET)
                .collect()),
        }
    }

    /// The text of `ids`, special tokens skipped. Invalid UTF-8 from the byte tokenizer is
    /// replaced with U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        match self {
            Tokenizer::Hf(tok) => tok
                .decode(ids, true)
                .map_err(|source| TokenizerError::Decode { source }),
            Tokenizer::Bytes => {
                let mut bytes = Vec::with_capacity(ids.len());
                for &id in ids {
                    let byte = id.checked_sub(Tokenizer::BYTE_OFFSET);
                    match byte.map(u8::try_from) {
                        None => {} // pad, bos, eos
                        Some(Ok(b)) => bytes.push(b),
                        Some(Err(_)) => return Err(TokenizerError::ByteId { id }),
                    }
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// One past the largest id the tokenizer produces (added tokens included): the smallest
    /// embedding table that can hold every id.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Hf(tok) => tok
                .get_vocab(true)
                .values()
                .max()
                .map_or(0, |&id| id as usize + 1),
            Tokenizer::Bytes => Tokenizer::BYTES_VOCAB,
        }
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokenizer::Hf(_) => write!(f, "Tokenizer::Hf(vocab {})", self.vocab_size()),
            Tokenizer::Bytes => f.write_str("Tokenizer::Bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{TempDir, WORD_LEVEL};

    fn write(tag: &str, text: &str) -> (TempDir, PathBuf) {
        let tmp = TempDir::new(tag);
        let path = tmp.path().join("tokenizer.json");
        std::fs::write(&path, text).expect("write tokenizer.json");
        (tmp, path)
    }

    #[test]
    fn hf_tokenizer_encodes_and_decodes() {
        let (_tmp, path) = write("tok-wl", WORD_LEVEL);
        let tok = Tokenizer::from_file(&path).expect("load");
        assert_eq!(tok.encode("hello world!").expect("encode"), [1, 2, 3]);
        assert_eq!(tok.encode("hello mars").expect("encode"), [1, 0]);
        assert_eq!(tok.decode(&[1, 2, 3]).expect("decode"), "hello world !");
        assert_eq!(
            tok.decode(&[0, 7]).expect("decode"),
            "strata",
            "<unk> is special"
        );
        assert_eq!(tok.vocab_size(), 8, "largest id + 1");
    }

    #[test]
    fn hf_load_errors_name_the_file() {
        let (tmp, path) = write("tok-bad", "{\"model\": 3}");
        let err = Tokenizer::from_file(&path).expect_err("not a tokenizer");
        assert!(matches!(err, TokenizerError::Parse { .. }));
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
        let gone = tmp.path().join("gone.json");
        let err = Tokenizer::from_file(&gone).expect_err("no file");
        assert!(matches!(err, TokenizerError::Io { .. }));
        assert!(err.to_string().contains("gone.json"), "{err}");
    }

    #[test]
    fn bytes_round_trip() {
        let tok = Tokenizer::Bytes;
        let text = "héllo, wörld — 字";
        let ids = tok.encode(text).expect("encode");
        assert_eq!(ids.len(), text.len());
        assert!(ids.iter().all(|&id| (3..259).contains(&id)));
        assert_eq!(tok.encode("A").expect("encode"), [65 + 3]);
        let mut framed = vec![Tokenizer::BOS];
        framed.extend(&ids);
        framed.extend([Tokenizer::EOS, Tokenizer::PAD]);
        assert_eq!(tok.decode(&framed).expect("decode"), text);
        assert_eq!(tok.vocab_size(), 259);
    }

    #[test]
    fn bytes_decode_is_lossy_and_rejects_large_ids() {
        let tok = Tokenizer::Bytes;
        assert_eq!(
            tok.decode(&[0xff + 3, b'a' as u32 + 3]).expect("lossy"),
            "\u{fffd}a"
        );
        let err = tok.decode(&[3, 259]).expect_err("259 is no byte");
        assert!(matches!(err, TokenizerError::ByteId { id: 259 }));
    }
}
