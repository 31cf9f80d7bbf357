//! The models the front end can tokenize for: per served name, a tokenizer and a chat template.

use crate::template::{ChatTemplate, TemplateError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use strata_transport::vocab::{Tokenizer, TokenizerError};

/// What the front end needs to turn one model's requests into token ids and back.
#[derive(Debug)]
pub struct ModelEntry {
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    /// Token ids in a prompt must be below this (`None`: not checked).
    pub vocab_size: Option<u32>,
}

impl ModelEntry {
    /// An entry whose vocabulary is the HF tokenizer's; the byte tokenizer leaves it unchecked
    /// (a model using it may have a larger vocabulary). See [`ModelEntry::with_vocab_size`].
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate) -> ModelEntry {
        let vocab_size = match &tokenizer {
            Tokenizer::Hf(_) => u32::try_from(tokenizer.vocab_size()).ok(),
            Tokenizer::Bytes => None,
        };
        ModelEntry {
            tokenizer: Arc::new(tokenizer),
            template,
            vocab_size,
        }
    }

    /// The byte tokenizer with the built-in chat template (the `tiny` preset).
    pub fn bytes() -> ModelEntry {
        ModelEntry::new(Tokenizer::Bytes, ChatTemplate::builtin())
    }

    /// Sets the model's vocabulary size (its embedding rows).
    pub fn with_vocab_size(mut self, vocab_size: u32) -> ModelEntry {
        self.vocab_size = Some(vocab_size);
        self
    }

    /// Loads a model directory: `tokenizer.json` (the byte tokenizer when absent) and the chat
    /// template (see [`ChatTemplate::load`]).
    pub fn load(dir: &Path) -> Result<ModelEntry, ModelLoadError> {
        let path = dir.join("tokenizer.json");
        let tokenizer = if path.exists() {
            Tokenizer::from_file(&path)?
        } else {
            Tokenizer::Bytes
        };
        Ok(ModelEntry::new(tokenizer, ChatTemplate::load(dir)?))
    }
}

/// A model directory that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ModelLoadError {
    /// The tokenizer does not load.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The chat template does not load.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// Served model names and their entries. Cheap to clone; clones share the entries, so the
/// control plane's follower can add and remove models while handlers read them.
#[derive(Debug, Default, Clone)]
pub struct ModelRegistry {
    models: Arc<RwLock<HashMap<String, Arc<ModelEntry>>>>,
}

impl ModelRegistry {
    pub fn new() -> ModelRegistry {
        ModelRegistry::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<ModelEntry>>> {
        // Every update is one map operation: a poisoned lock still guards a valid map.
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<ModelEntry>>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces the entry of `name`.
    pub fn insert(&self, name: impl Into<String>, entry: ModelEntry) {
        self.write().insert(name.into(), Arc::new(entry));
    }

    /// Removes the entry of `name`.
    pub fn remove(&self, name: &str) {
        self.write().remove(name);
    }

    /// `insert` by value, for building a registry in one expression.
    pub fn with(self, name: impl Into<String>, entry: ModelEntry) -> ModelRegistry {
        self.insert(name, entry);
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.read().get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// The served names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort_unstable();
        names
    }
}
