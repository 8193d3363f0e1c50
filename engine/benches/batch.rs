//! What a decode step of the default model costs by batch size, and what a sequence joining or
//! leaving a batch of 16 adds (the cache regroup, `engine/src/engine.rs`). f32 weights, 2
//! threads, 32-token prompts; contexts grow from 33 to a few hundred positions as it runs.
//! `cargo bench -p revo-engine --bench batch` (needs scripts/fetch-model.sh and fetch-ort.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use revo_engine::engine::{self, Device, Geometry, Model, Sampling};
use revo_engine::onnx::llama::{self, LlamaConfig, WeightFormat};

fn load(dir: &std::path::Path) -> Model {
    let g = revo_engine::Gguf::open(&revo_engine::default_model_path()).unwrap();
    let c = LlamaConfig::from_gguf(&g).unwrap();
    let mut data =
        std::io::BufWriter::new(std::fs::File::create(dir.join("model.onnx.data")).unwrap());
    let graph = llama::build(
        &g,
        &c,
        WeightFormat::F32,
        &mut data,
        "model.onnx.data",
        &mut |_, _| {},
    )
    .unwrap();
    std::io::Write::flush(&mut data).unwrap();
    std::fs::write(dir.join("model.onnx"), graph).unwrap();
    let geometry = Geometry {
        layers: c.layers,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        vocab: c.vocab,
        context: c.context,
    };
    let runtime = engine::locate_runtime(None).unwrap();
    Model::load(&runtime, &dir.join("model.onnx"), geometry, 2, Device::Cpu).unwrap()
}

/// A 32-token prompt, different per sequence.
fn prompt(i: u32) -> Vec<u32> {
    (0..32).map(|t| 100 + i * 37 + t * 11).collect()
}

/// Fills the batch to `n` sequences that will not finish during the bench.
fn fill(model: &mut Model, n: usize) -> Vec<u64> {
    let long = Sampling::greedy(2000);
    let seqs = (0..n)
        .map(|i| model.start(&prompt(i as u32), &long, &[]).unwrap().seq)
        .collect();
    model.step().unwrap();
    seqs
}

fn steps(c: &mut Criterion) {
    if !revo_engine::default_model_path().exists() {
        eprintln!("the default model is missing: run scripts/fetch-model.sh");
        return;
    }
    let dir = std::env::temp_dir().join(format!("revo-bench-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut model = load(&dir);
    let mut group = c.benchmark_group("decode step");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    // Each sample starts from a fresh batch (32-token prompts), so every row measured below
    // decodes at similar context lengths.
    let mut live: Vec<u64> = Vec::new();
    let mut reset = |model: &mut Model, n: usize| {
        for s in live.drain(..) {
            model.cancel(s);
        }
        model.step().unwrap();
        live = fill(model, n);
    };
    for b in [1usize, 8, 16] {
        group.bench_function(BenchmarkId::new("batch", b), |bench| {
            reset(&mut model, b);
            bench.iter(|| model.step().unwrap())
        });
    }
    let one = Sampling::greedy(2000);
    // A 16th sequence joins a batch of 15, then leaves: the step after each pays a regroup.
    for (name, timed) in [
        ("join (regroup + step)", 0),
        ("leave (regroup + step)", 1),
        ("no change (step)", 2),
    ] {
        group.bench_function(BenchmarkId::new("batch 15", name), |bench| {
            reset(&mut model, 15);
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let p = model.start(&prompt(1000 + i as u32), &one, &[]).unwrap();
                    for phase in 0..3 {
                        if phase == 1 {
                            model.cancel(p.seq);
                        }
                        let t = Instant::now();
                        model.step().unwrap();
                        if phase == timed {
                            total += t.elapsed();
                        }
                    }
                }
                total
            })
        });
    }
    group.finish();
    reset(&mut model, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, steps);
criterion_main!(benches);
