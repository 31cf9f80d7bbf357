//! Tokenizers (filled in by the model work).

/// A tokenizer.
pub enum Tokenizer {
    /// Bytes as tokens.
    Bytes,
}
