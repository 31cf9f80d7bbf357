//! Where a model comes from: a built-in [`Preset`] (seeded random weights, byte tokenizer) or
//! an HF checkpoint directory (`config.json`, safetensors, `tokenizer.json`).

use super::config::{ConfigError, ModelConfig};
use super::preset::Preset;
use super::tokenizer::{Tokenizer, TokenizerError};
use super::weights::{Weights, WeightsError};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A loaded model, or the layers of one that a pipeline stage runs.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
}

/// A preset name or a checkpoint directory, as given on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A built-in shape with seeded random weights.
    Preset(Preset),
    /// An HF checkpoint directory.
    Dir(PathBuf),
}

/// A model that cannot be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The spec names neither a preset nor an existing directory.
    #[error("{spec:?} is neither a preset ({presets}) nor an existing directory")]
    UnknownSource { spec: String, presets: String },
    /// `config.json` is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The weights are unreadable or do not fit the config.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// `tokenizer.json` is unreadable or invalid.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// No `tokenizer.json`, and the vocabulary is too small for the byte tokenizer.
    #[error(
        "{dir}: no tokenizer.json, and a vocabulary of {vocab_size} is too small for the byte tokenizer (it needs {})",
        Tokenizer::BYTES_VOCAB
    )]
    NoTokenizer { dir: PathBuf, vocab_size: usize },
    /// The tokenizer produces ids past the end of the embedding table.
    #[error(
        "{path}: tokenizer ids reach {tokenizer_vocab}, past the model's vocabulary of {model_vocab}"
    )]
    VocabMismatch {
        path: PathBuf,
        tokenizer_vocab: usize,
        model_vocab: usize,
    },
}

/// The config file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer file of a checkpoint directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

impl FromStr for ModelSource {
    type Err = ModelError;

    /// A preset name, else the path of an existing directory.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(p) = s.parse::<Preset>() {
            return Ok(ModelSource::Preset(p));
        }
        let path = Path::new(s);
        if path.is_dir() {
            return Ok(ModelSource::Dir(path.to_path_buf()));
        }
        let presets: Vec<_> = Preset::ALL.iter().map(|p| p.name()).collect();
        Err(ModelError::UnknownSource {
            spec: s.to_string(),
            presets: presets.join(", "),
        })
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Preset(p) => write!(f, "{p}"),
            ModelSource::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

impl ModelSource {
    /// The model's config, without loading weights or tokenizer.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        match self {
            ModelSource::Preset(p) => Ok(p.config()),
            ModelSource::Dir(dir) => Ok(ModelConfig::from_file(&dir.join(CONFIG_FILE))?),
        }
    }

    /// Loads the config, the weights of `layer_range` and the tokenizer. `seed` draws a
    /// preset's random weights; a directory's weights come from its safetensors. A directory
    /// without `tokenizer.json` gets the byte tokenizer if its vocabulary can hold it.
    pub fn load(&self, seed: u64, layer_range: Range<usize>) -> Result<Model, ModelError> {
        let config = self.config()?;
        let (weights, tokenizer) = match self {
            ModelSource::Preset(p) => {
                let tokenizer = bytes_tokenizer(&config, Path::new(p.name()))?;
                (Weights::random(&config, seed, layer_range)?, tokenizer)
            }
            ModelSource::Dir(dir) => {
                // The tokenizer first: it is cheap, and a failure should not wait on weights.
                let tokenizer = dir_tokenizer(&config, dir)?;
                (Weights::load(dir, &config, layer_range)?, tokenizer)
            }
        };
        Ok(Model {
            config,
            weights,
            tokenizer,
        })
    }
}

fn bytes_tokenizer(config: &ModelConfig, dir: &Path) -> Result<Tokenizer, ModelError> {
    if config.vocab_size < Tokenizer::BYTES_VOCAB {
        return Err(ModelError::NoTokenizer {
            dir: dir.to_path_buf(),
            vocab_size: config.vocab_size,
        });
    }
    Ok(Tokenizer::Bytes)
}

fn dir_tokenizer(config: &ModelConfig, dir: &Path) -> Result<Tokenizer, ModelError> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return bytes_tokenizer(config, dir);
    }
    let tokenizer = Tokenizer::from_file(&path)?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(ModelError::VocabMismatch {
            path,
            tokenizer_vocab: tokenizer.vocab_size(),
            model_vocab: config.vocab_size,
        });
    }
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::DType;
    use crate::model::testutil::{TempDir, WORD_LEVEL};

    /// A checkpoint directory of `cfg` with seed-5 weights, and `tokenizer.json` if given.
    fn checkpoint(cfg: &ModelConfig, tokenizer: Option<&str>, tag: &str) -> (TempDir, Weights) {
        let tmp = TempDir::new(tag);
        let w = Weights::random(cfg, 5, 0..cfg.num_layers).expect("random");
        w.save(tmp.path(), cfg, DType::F32).expect("save");
        let json = cfg.to_hf_json().to_string();
        std::fs::write(tmp.path().join(CONFIG_FILE), json).expect("config.json");
        if let Some(text) = tokenizer {
            std::fs::write(tmp.path().join(TOKENIZER_FILE), text).expect("tokenizer.json");
        }
        (tmp, w)
    }

    fn dir_source(tmp: &TempDir) -> ModelSource {
        let spec = tmp.path().to_str().expect("temp path is UTF-8");
        spec.parse().expect("existing directory")
    }

    #[test]
    fn parses_presets_and_directories() {
        assert_eq!(
            "tiny".parse::<ModelSource>().ok(),
            Some(ModelSource::Preset(Preset::Tiny))
        );
        let tmp = TempDir::new("src-parse");
        assert_eq!(dir_source(&tmp), ModelSource::Dir(tmp.path().to_path_buf()));
        assert_eq!(
            dir_source(&tmp).to_string(),
            tmp.path().display().to_string()
        );
        let err = "no-such-model".parse::<ModelSource>().expect_err("unknown");
        assert!(matches!(err, ModelError::UnknownSource { .. }));
        assert!(err.to_string().contains("tiny"), "{err}");
    }

    #[test]
    fn the_first_layers_are_those_of_a_shallower_load() {
        let src = ModelSource::Preset(Preset::Tiny);
        let whole = src.load(9, 0..4).expect("load").weights;
        let cut = whole.first_layers(2);
        assert_eq!(cut, src.load(9, 0..2).expect("load").weights);
        assert_eq!(cut.layer_range, 0..2);
        assert_ne!(cut.layers[1], whole.layers[2]);
        assert_eq!(whole.first_layers(9), whole);
    }

    #[test]
    fn preset_loads_random_weights_and_bytes() {
        let src = ModelSource::Preset(Preset::Tiny);
        let cfg = src.config().expect("config");
        let model = src.load(9, 1..3).expect("load");
        assert_eq!(model.config, cfg);
        assert_eq!(
            model.weights,
            Weights::random(&cfg, 9, 1..3).expect("random")
        );
        assert!(matches!(model.tokenizer, Tokenizer::Bytes));
    }

    #[test]
    fn directory_loads_config_weights_and_tokenizer() {
        let cfg = Preset::Tiny.config();
        let (tmp, w) = checkpoint(&cfg, Some(WORD_LEVEL), "src-dir");
        let src = dir_source(&tmp);
        assert_eq!(src.config().expect("config"), cfg);
        let model = src.load(0, 0..4).expect("load");
        assert_eq!(model.weights, w);
        assert_eq!(
            model.tokenizer.encode("hello world").expect("encode"),
            [1, 2]
        );
        let stage = src.load(0, 2..4).expect("stage");
        assert_eq!(stage.weights.layers, w.layers[2..4]);
    }

    #[test]
    fn directory_without_tokenizer_falls_back_to_bytes_if_it_fits() {
        let (tmp, _) = checkpoint(&Preset::Tiny.config(), None, "src-bytes");
        let model = dir_source(&tmp).load(0, 0..4).expect("load");
        assert!(matches!(model.tokenizer, Tokenizer::Bytes));

        let small = ModelConfig {
            vocab_size: 200,
            ..Preset::Tiny.config()
        };
        let (tmp, _) = checkpoint(&small, None, "src-small");
        let err = dir_source(&tmp).load(0, 0..4).expect_err("too small");
        assert!(matches!(
            err,
            ModelError::NoTokenizer {
                vocab_size: 200,
                ..
            }
        ));
    }

    #[test]
    fn tokenizer_past_the_vocabulary_is_refused() {
        let small = ModelConfig {
            vocab_size: 5,
            ..Preset::Tiny.config()
        };
        let (tmp, _) = checkpoint(&small, Some(WORD_LEVEL), "src-vocab");
        let err = dir_source(&tmp).load(0, 0..4).expect_err("ids reach 8");
        assert!(matches!(
            err,
            ModelError::VocabMismatch {
                tokenizer_vocab: 8,
                ..
            }
        ));
    }

    #[test]
    fn directory_errors_name_the_file() {
        let tmp = TempDir::new("src-empty");
        let err = dir_source(&tmp).load(0, 0..4).expect_err("no config.json");
        assert!(matches!(err, ModelError::Config(ConfigError::Io { .. })));
        assert!(err.to_string().contains("config.json"), "{err}");

        let (tmp, _) = checkpoint(&Preset::Tiny.config(), None, "src-noweights");
        std::fs::remove_file(tmp.path().join("model.safetensors")).expect("remove");
        let err = dir_source(&tmp).load(0, 0..4).expect_err("no weights");
        assert!(matches!(
            err,
            ModelError::Weights(WeightsError::NoCheckpoint { .. })
        ));
    }
}
