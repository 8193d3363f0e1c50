//! The imported default model under ONNX Runtime: greedy decoding matches, token for token, the
//! references made by an independent implementation (transformers' export run by Python's
//! onnxruntime; fixtures/smollm2/README.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use common::{ids, lines, smollm2};
use std::collections::HashMap;

use revo_engine::engine::{self, Device, EngineError, Finish, Geometry, Model, Sampling, SeqId};
use revo_engine::onnx::llama::{self, LlamaConfig};

struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn geometry(c: &LlamaConfig) -> Geometry {
    Geometry {
        layers: c.layers,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        vocab: c.vocab,
        context: c.context,
    }
}

/// The default model's graph, built into a scratch directory.
fn build_default() -> (Scratch, Model, LlamaConfig) {
    build_as(llama::WeightFormat::F32)
}

fn build_as(format: llama::WeightFormat) -> (Scratch, Model, LlamaConfig) {
    let runtime =
        engine::locate_runtime(None).expect("run scripts/fetch-ort.sh (scripts/test.sh does)");
    let g = smollm2();
    let c = LlamaConfig::from_gguf(&g).unwrap();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Scratch(std::env::temp_dir().join(format!("revo-engine-{}-{n}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let onnx = dir.0.join("model.onnx");
    let mut data =
        std::io::BufWriter::new(std::fs::File::create(dir.0.join("model.onnx.data")).unwrap());
    let graph = llama::build(&g, &c, format, &mut data, "model.onnx.data", &mut |_, _| {}).unwrap();
    std::io::Write::flush(&mut data).unwrap();
    std::fs::write(&onnx, graph).unwrap();
    let geometry = geometry(&c);
    let model = Model::load(&runtime, &onnx, geometry, 1, Device::Cpu).unwrap();
    (dir, model, c)
}

/// Other weight formats against the reference, teacher-forced: at each position of each
/// reference completion, does the model pick the reference's next token? f16 weights always do;
/// 8-bit blocks (`--weights keep`: requantised weights, int8 activations) nearly always, though
/// free-running greedy output can drift from the reference after a near tie.
#[test]
fn other_weight_formats_pick_the_reference_tokens() {
    for (format, at_least) in [
        (llama::WeightFormat::F16, 1.0),
        (llama::WeightFormat::Q8, 0.9),
    ] {
        let (_dir, mut model, _) = build_as(format);
        let (mut same, mut total) = (0, 0);
        for case in cases() {
            let mut context = ids(&case["prompt_ids"]);
            // The first 24 positions of each case keep the test short.
            for want in ids(&case["completion_ids"]).into_iter().take(24) {
                let (got, _) = model.greedy(&context, 1, &[], |_| true).unwrap();
                same += usize::from(got == [want]);
                total += 1;
                context.push(want);
            }
        }
        let share = same as f64 / total as f64;
        eprintln!("{format:?}: {same} of {total} next tokens as the reference");
        assert!(share >= at_least, "{format:?}: {same} of {total}");
    }
}

#[test]
fn cuda_is_required_or_preferred_as_configured() {
    let (dir, model, _) = build_default();
    let runtime = engine::locate_runtime(None).unwrap();
    let geometry = model.geometry();
    drop(model);
    let onnx = dir.0.join("model.onnx");
    // The GPU build of ONNX Runtime ships its CUDA provider beside the library.
    let gpu_build = runtime
        .with_file_name("libonnxruntime_providers_cuda.so")
        .exists();
    let cuda = |required| Device::Cuda { id: 0, required };
    let required = Model::load(&runtime, &onnx, geometry, 1, cuda(true));
    let preferred = Model::load(&runtime, &onnx, geometry, 1, cuda(false)).unwrap();
    if gpu_build {
        assert_eq!(required.unwrap().device(), cuda(true));
        assert_eq!(preferred.device(), cuda(false));
    } else {
        let err = required.err().unwrap();
        assert!(matches!(err, EngineError::NoCuda(_)), "{err}");
        assert!(err.to_string().contains("CUDA"), "{err}");
        // Preferred: the CPU, and it still generates.
        assert_eq!(preferred.device(), Device::Cpu);
        let mut m = preferred;
        let (out, _) = m
            .greedy(&[6403, 1980, 253, 655], 3, &[2], |_| true)
            .unwrap();
        assert_eq!(out, vec![28, 260, 2240]);
    }
}

fn cases() -> Vec<serde_json::Value> {
    lines(include_str!("fixtures/smollm2/greedy-cases.jsonl"))
}

#[test]
fn greedy_decoding_matches_the_reference_token_for_token() {
    let (_dir, mut model, c) = build_default();
    let cases = include_str!("fixtures/smollm2/greedy-cases.jsonl");
    let mut n = 0;
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut streamed = Vec::new();
        let (out, finish) = model
            .greedy(
                &ids(&case["prompt_ids"]),
                case["max_tokens"].as_u64().unwrap() as usize,
                &[2],
                |t| {
                    streamed.push(t);
                    true
                },
            )
            .unwrap();
        assert_eq!(out, ids(&case["completion_ids"]), "{}", case["prompt"]);
        assert_eq!(streamed, out, "every token is streamed");
        let want = match case["finish_reason"].as_str().unwrap() {
            "stop" => Finish::Stop,
            _ => Finish::Length,
        };
        assert_eq!(finish, want, "{}", case["prompt"]);
        n += 1;
    }
    assert_eq!(n, 5);

    // Bad input is refused before running.
    assert!(matches!(
        model.greedy(&[], 4, &[2], |_| true),
        Err(EngineError::EmptyPrompt)
    ));
    let long = vec![1u32; c.context];
    assert!(matches!(
        model.greedy(&long, 1, &[2], |_| true),
        Err(EngineError::Context { .. })
    ));
}

/// Runs `start`ed sequences to the end, starting the rest of `pending` a few steps apart so that
/// they join a batch already decoding; returns each sequence's tokens and finish by index.
fn run_batched(
    model: &mut Model,
    mut pending: Vec<(usize, Vec<u32>, Sampling)>,
    every: usize,
    cancel_after: Option<(usize, usize)>,
) -> HashMap<usize, (Vec<u32>, Finish)> {
    let mut of: HashMap<SeqId, usize> = HashMap::new();
    let mut out: HashMap<usize, (Vec<u32>, Option<Finish>)> = HashMap::new();
    let mut steps = 0;
    pending.reverse();
    let mut widest = 0;
    loop {
        if steps % every == 0 {
            if let Some((i, prompt, sampling)) = pending.pop() {
                let p = model.start(&prompt, &sampling, &[2]).unwrap();
                of.insert(p.seq, i);
                let e = out.entry(i).or_default();
                e.0.extend(p.token);
                e.1 = p.finish;
            }
        }
        widest = widest.max(model.active());
        if model.active() == 0 && pending.is_empty() {
            break;
        }
        for p in model.step().unwrap() {
            let e = out.get_mut(&of[&p.seq]).unwrap();
            e.0.extend(p.token);
            e.1 = p.finish;
        }
        steps += 1;
        if let Some((i, n)) = cancel_after {
            if out.get(&i).is_some_and(|e| e.0.len() == n && e.1.is_none()) {
                let seq = *of.iter().find(|(_, v)| **v == i).unwrap().0;
                model.cancel(seq);
                out.get_mut(&i).unwrap().1 = Some(Finish::Stop);
            }
        }
    }
    assert!(
        widest > 2,
        "sequences decoded together (at most {widest} at once)"
    );
    out.into_iter()
        .map(|(i, (t, f))| (i, (t, f.unwrap())))
        .collect()
}

#[test]
fn a_batch_gives_each_sequence_the_tokens_it_gets_alone() {
    let (_dir, mut model, _) = build_default();
    let cases = cases();
    // Greedy: the references, with the cases joining two steps apart (different prompt
    // lengths, so rows are padded differently as they join and leave).
    let greedy: Vec<(usize, Vec<u32>, Sampling)> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let max = c["max_tokens"].as_u64().unwrap() as usize;
            (i, ids(&c["prompt_ids"]), Sampling::greedy(max))
        })
        .collect();
    let got = run_batched(&mut model, greedy.clone(), 2, None);
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(got[&i].0, ids(&c["completion_ids"]), "{}", c["prompt"]);
    }
    // The first cancelled after 2 tokens, while the others keep joining (its dead row is in the
    // cache when they join).
    let got = run_batched(&mut model, greedy.clone(), 3, Some((0, 2)));
    for (i, c) in cases.iter().enumerate() {
        let want = ids(&c["completion_ids"]);
        let want = if i == 0 { &want[..2] } else { &want[..] };
        assert_eq!(got[&i].0, want, "{} (after a cancel)", c["prompt"]);
    }
    // Seeded sampling: the same tokens alone and batched; a cancelled neighbour changes nothing.
    let sampled: Vec<(usize, Vec<u32>, Sampling)> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let s = Sampling {
                max_tokens: 24,
                temperature: 0.8,
                top_p: 0.95,
                top_k: 40,
                repetition_penalty: 1.1,
                seed: Some(7 + i as u64),
                logprobs: None,
            };
            (i, ids(&c["prompt_ids"]), s)
        })
        .collect();
    let mut alone = HashMap::new();
    for (i, prompt, s) in &sampled {
        alone.insert(*i, model.generate(prompt, s, &[2], |_| true).unwrap());
    }
    let together = run_batched(&mut model, sampled, 1, Some((1, 5)));
    for (i, (tokens, finish)) in &alone {
        if *i == 1 {
            assert_eq!(together[i].0, tokens[..5], "cancelled after 5 tokens");
            continue;
        }
        assert_eq!(&together[i].0, tokens, "case {i}");
        assert_eq!(together[i].1, *finish, "case {i}");
    }
    assert_eq!(model.active(), 0);
}

#[test]
fn a_missing_runtime_is_a_clear_error() {
    // An explicit path that exists wins; one that does not is skipped (and named if nothing else
    // is found).
    let here = std::env::current_exe().unwrap();
    assert_eq!(engine::locate_runtime(Some(&here)).unwrap(), here);
    let bogus = std::env::temp_dir().join("no-such-libonnxruntime.so");
    match engine::locate_runtime(Some(&bogus)) {
        Ok(found) => assert_ne!(found, bogus),
        Err(e) => assert!(e.to_string().contains("no-such-libonnxruntime.so"), "{e}"),
    }
    // A file that is not the library fails to load, with its path in the message.
    let geometry = Geometry {
        layers: 1,
        kv_heads: 1,
        head_dim: 2,
        vocab: 2,
        context: 8,
    };
    let err = Model::load(&here, &here, geometry, 1, Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::Runtime { .. }), "{err}");
}

/// Tiny random Llama (grouped-query attention, tied embeddings, llama.cpp's Q/K permutation)
/// and Qwen2 (q/k/v biases, a separate output matrix) models: the graph's greedy tokens match an
/// independent numpy forward pass (fixtures/tiny), alone and batched.
#[test]
fn llama_and_qwen2_graphs_match_an_independent_forward_pass() {
    let runtime = engine::locate_runtime(None).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let cases: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/tiny/tiny-cases.json")).unwrap();
    for arch in ["llama", "qwen2"] {
        let g = revo_engine::Gguf::open(&fixtures.join(format!("tiny-{arch}.gguf"))).unwrap();
        let c = LlamaConfig::from_gguf(&g).unwrap();
        assert_eq!(c.arch, arch);
        let dir =
            Scratch(std::env::temp_dir().join(format!("revo-tiny-{arch}-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let mut data = Vec::new();
        let graph = llama::build(
            &g,
            &c,
            llama::WeightFormat::F32,
            &mut data,
            "model.onnx.data",
            &mut |_, _| {},
        )
        .unwrap();
        std::fs::write(dir.0.join("model.onnx.data"), data).unwrap();
        std::fs::write(dir.0.join("model.onnx"), graph).unwrap();
        let geometry = geometry(&c);
        let mut model = Model::load(
            &runtime,
            &dir.0.join("model.onnx"),
            geometry,
            1,
            Device::Cpu,
        )
        .unwrap();
        let cases = cases[arch].as_array().unwrap();
        let mut batch = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let want = ids(&case["completion_ids"]);
            let (got, finish) = model
                .greedy(&ids(&case["prompt_ids"]), want.len(), &[], |_| true)
                .unwrap();
            assert_eq!(got, want, "{arch} {}", case["prompt_ids"]);
            assert_eq!(finish, Finish::Length);
            batch.push((i, ids(&case["prompt_ids"]), Sampling::greedy(want.len())));
        }
        let together = run_batched(&mut model, batch, 1, None);
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(
                together[&i].0,
                ids(&case["completion_ids"]),
                "{arch} batched {i}"
            );
        }
    }
}
