//! The imported default model under ONNX Runtime: greedy decoding matches, token for token, the
//! references made by an independent implementation (transformers' export run by Python's
//! onnxruntime; fixtures/smollm2/README.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use common::smollm2;
use revo_models::engine::{self, EngineError, Finish, Geometry, Model};
use revo_models::onnx::llama::{self, LlamaConfig};

struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_decoding_matches_the_reference_token_for_token() {
    let runtime =
        engine::locate_runtime(None).expect("run scripts/fetch-ort.sh (scripts/test.sh does)");
    let g = smollm2();
    let c = LlamaConfig::from_gguf(&g).unwrap();
    let dir = Scratch(std::env::temp_dir().join(format!("revo-engine-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let onnx = dir.0.join("model.onnx");
    let mut data =
        std::io::BufWriter::new(std::fs::File::create(dir.0.join("model.onnx.data")).unwrap());
    let graph = llama::build(&g, &c, &mut data, "model.onnx.data", &mut |_, _| {}).unwrap();
    std::io::Write::flush(&mut data).unwrap();
    std::fs::write(&onnx, graph).unwrap();
    let geometry = Geometry {
        layers: c.layers,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        vocab: c.vocab,
        context: c.context,
    };
    let mut model = Model::load(&runtime, &onnx, geometry, 1).unwrap();
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
    let err = Model::load(&here, &here, geometry, 1).err().unwrap();
    assert!(matches!(err, EngineError::Runtime { .. }), "{err}");
}
