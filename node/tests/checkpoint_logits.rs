//! A safetensors checkpoint written by the test reloads to the same logits as the weights it
//! was written from: exactly for f32, and for bf16 exactly as the bf16-rounded weights do.

use std::path::PathBuf;
use strata_node::engine::replay::replay;
use strata_node::engine::{Engine, EngineConfig};
use strata_node::exec::PoolSizes;
use strata_node::exec::cpu::CpuExecutor;
use strata_node::kv::KvLayout;
use strata_node::model::{DType, ModelConfig, ModelSource, Preset, Weights};
use strata_node::sched::{Request, SchedulerConfig};
use strata_transport::proto::{CostProfile, RequestId};

fn logits(cfg: &ModelConfig, w: Weights) -> Vec<Vec<f32>> {
    let layout = KvLayout::for_model(cfg, 16, 4);
    let pools = PoolSizes {
        gpu_blocks: 256,
        host_blocks: 64,
        staging_blocks: 0,
    };
    let exec = CpuExecutor::new(cfg, w, layout, pools).unwrap();
    let sched = SchedulerConfig {
        staging_blocks: 0,
        ..Default::default()
    };
    let mut e = Engine::new(
        EngineConfig { sched, pools },
        layout,
        CostProfile::default(),
        Box::new(exec),
    )
    .unwrap();
    let mut r = Request::new(
        RequestId(1),
        (0..77).map(|t| 3 + t * 13 % 400).collect(),
        12,
    );
    r.want_logits = true;
    let recs = replay(&mut e, vec![r], 10_000, |_, _| {}).unwrap();
    assert_eq!(recs[0].logits.len(), 12);
    recs.into_iter().next().unwrap().logits
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("strata-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn round_bf16(w: &mut Weights) {
    let r = |v: &mut Vec<f32>| {
        v.iter_mut()
            .for_each(|x| *x = half::bf16::from_f32(*x).to_f32())
    };
    r(&mut w.embed.data);
    r(&mut w.final_norm);
    if let Some(h) = &mut w.lm_head {
        r(&mut h.data);
    }
    for l in &mut w.layers {
        for m in [
            &mut l.wq,
            &mut l.wk,
            &mut l.wv,
            &mut l.wo,
            &mut l.w_gate,
            &mut l.w_up,
            &mut l.w_down,
        ] {
            r(&mut m.data);
        }
        for v in [&mut l.attn_norm, &mut l.mlp_norm] {
            r(v);
        }
        for b in [&mut l.bq, &mut l.bk, &mut l.bv].into_iter().flatten() {
            r(b);
        }
    }
}

#[test]
fn checkpoint_round_trip_keeps_logits() {
    // Untied head and Qwen2-style biases, so every tensor kind is written and read.
    let cfg = ModelConfig {
        tie_word_embeddings: false,
        attention_bias: true,
        ..Preset::Tiny.config()
    };
    let w = Weights::random(&cfg, 5, 0..cfg.num_layers).unwrap();
    for (dtype, name) in [(DType::F32, "f32"), (DType::BF16, "bf16")] {
        let dir = temp_dir(name);
        std::fs::write(dir.join("config.json"), cfg.to_hf_json().to_string()).unwrap();
        w.save(&dir, &cfg, dtype).unwrap();
        let source: ModelSource = dir.to_str().unwrap().parse().unwrap();
        let loaded = source.load(0, 0..cfg.num_layers).unwrap();
        let mut expected = w.clone();
        if dtype == DType::BF16 {
            round_bf16(&mut expected);
        }
        assert_eq!(
            loaded.weights, expected,
            "{name}: weights differ after the round trip"
        );
        assert_eq!(
            logits(&loaded.config, loaded.weights),
            logits(&cfg, expected),
            "{name}: logits differ"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
