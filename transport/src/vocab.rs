//! Tokenizers, shared by nodes (prompt checks) and routers (tokenizing requests): an HF `tokenizer.json` through the `tokenizers` crate, or bytes as tokens.
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

    /// The text of `ids`, special tokens skipped. For the byte tokenizer, invalid UTF-8 and ids
    /// past its 256 bytes (a model's vocabulary may be larger) become U+FFFD.
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
                        // Not a byte: a token with no text of its own.
                        Some(Err(_)) => bytes.extend("\u{fffd}".as_bytes()),
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
