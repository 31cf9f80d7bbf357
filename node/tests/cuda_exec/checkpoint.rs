//! A checkpoint written as an HF directory (`config.json` and safetensors, f32 and bf16) and
//! loaded through `ModelSource`: cuda logits against the cpu's on the loaded weights.

use super::gpu::gpu;
use super::pair::{Pair, batch_on, tiny_with};
use std::path::PathBuf;
use strata_node::model::{DType, ModelSource, Weights};

/// A fresh temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("strata-cuda-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn checkpoint_from_safetensors_matches_cpu() {
    if !gpu() {
        return;
    }
    // Untied head and attention biases, so every tensor kind is written and read.
    let cfg = tiny_with(|c| {
        c.tie_word_embeddings = false;
        c.attention_bias = true;
    });
    let written = Weights::random(&cfg, 301, 0..cfg.num_layers).expect("random weights");
    for (dtype, name) in [(DType::BF16, "bf16"), (DType::F32, "f32")] {
        let dir = TempDir::new(name);
        std::fs::write(dir.0.join("config.json"), cfg.to_hf_json().to_string())
            .expect("config.json");
        written
            .save(&dir.0, &cfg, dtype)
            .expect("safetensors written");
        let source: ModelSource = dir.0.to_str().expect("utf-8 path").parse().expect("source");
        let model = source
            .load(0, 0..cfg.num_layers)
            .unwrap_or_else(|e| panic!("{name} checkpoint did not load: {e}"));
        assert_eq!(model.config.num_layers, cfg.num_layers);
        assert_eq!(model.config.vocab_size, cfg.vocab_size);
        let mut p = Pair::new(&model.config, model.weights, 16);
        batch_on(
            &mut p,
            &[1, 17, 100, 300],
            302,
            &format!("{name} checkpoint"),
        );
    }
}
