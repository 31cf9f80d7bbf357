//! Tokenizers live in `strata_transport::vocab`, shared with routers; the model re-exports them.

pub use strata_transport::vocab::{Tokenizer, TokenizerError};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{TempDir, WORD_LEVEL};
    use std::path::PathBuf;

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
    fn bytes_decode_is_lossy() {
        let tok = Tokenizer::Bytes;
        assert_eq!(
            tok.decode(&[0xff + 3, b'a' as u32 + 3]).expect("lossy"),
            "\u{fffd}a"
        );
        assert_eq!(
            tok.decode(&[b'a' as u32 + 3, 259, 511]).expect("no byte"),
            "a\u{fffd}\u{fffd}"
        );
    }
}
