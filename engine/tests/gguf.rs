//! GGUF reading and dequantisation against an independent implementation (llama.cpp's gguf-py;
//! fixtures/make_quant_fixtures.py), the real default model, and corrupt files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::Write;

use common::smollm2_path;
use revo_engine::quant::dequantize;
use revo_engine::{Gguf, GgufError, TensorType};

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ty(name: &str) -> TensorType {
    match name {
        "F32" => TensorType::F32,
        "F16" => TensorType::F16,
        "Q4_0" => TensorType::Q4_0,
        "Q4_1" => TensorType::Q4_1,
        "Q8_0" => TensorType::Q8_0,
        "Q4_K" => TensorType::Q4K,
        "Q6_K" => TensorType::Q6K,
        other => panic!("fixture type {other}"),
    }
}

#[test]
fn every_block_type_matches_the_reference() {
    let f: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/quant-blocks.json")).unwrap();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let t = ty(case["type"].as_str().unwrap());
        let want: Vec<f64> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let mut got = Vec::new();
        dequantize(
            t,
            &hex(case["bytes_hex"].as_str().unwrap()),
            want.len() as u64,
            &mut got,
        )
        .unwrap();
        assert_eq!(got.len(), want.len(), "{t:?}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(close(f64::from(*g), *w, 1e-6), "{t:?}[{i}]: {g} vs {w}");
        }
    }
}

/// The default model, fetched by scripts/fetch-model.sh (scripts/test.sh runs it).

#[test]
fn the_default_model_reads_and_dequantises_like_the_reference() {
    let g = Gguf::open(&smollm2_path()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    assert_eq!(g.u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(g.u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(g.f32("llama.rope.freq_base").unwrap(), 100_000.0);
    assert_eq!(g.str("tokenizer.ggml.pre").unwrap(), "smollm");
    let tokens = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[2].as_str(), Some("<|im_end|>"));
    assert!(g
        .str("tokenizer.chat_template")
        .unwrap()
        .contains("<|im_start|>"));

    let f: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/smollm2-tensors.json")).unwrap();
    let want = f["tensors"].as_array().unwrap();
    assert_eq!(g.tensors.len(), want.len());
    for (t, w) in g.tensors.iter().zip(want) {
        assert_eq!(t.name, w["name"].as_str().unwrap());
        assert_eq!(t.ty, ty(w["type"].as_str().unwrap()), "{}", t.name);
        // gguf-py lists shapes in the file's order too.
        let shape: Vec<u64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, shape, "{}", t.name);
        let v = g.dequantize(t).unwrap();
        let sum: f64 = v.iter().map(|x| f64::from(*x)).sum();
        let abs: f64 = v.iter().map(|x| f64::from(x.abs())).sum();
        assert!(
            close(sum, w["sum"].as_f64().unwrap(), 1e-6),
            "{}: sum {sum}",
            t.name
        );
        assert!(
            close(abs, w["abs_sum"].as_f64().unwrap(), 1e-9),
            "{}: abs {abs}",
            t.name
        );
        // serde_json parses floats to within one ulp; values are f32 anyway.
        for (i, x) in w["first"].as_array().unwrap().iter().enumerate() {
            assert!(
                close(f64::from(v[i]), x.as_f64().unwrap(), 1e-12),
                "{}[{i}]",
                t.name
            );
        }
        let last = f64::from(*v.last().unwrap());
        assert!(
            close(last, w["last"].as_f64().unwrap(), 1e-12),
            "{}",
            t.name
        );
    }
}

/// A minimal GGUF file: one string key and one tensor of `ty_id` with `data`.
fn tiny(version: u32, ty_id: u32, dims: &[u64], data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // key-values
    let s = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    s(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "w");
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty_id.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend_from_slice(data);
    b
}

/// Opens `bytes` as a file, then runs `check` on the result while the file still exists.
fn with_file<T>(bytes: &[u8], check: impl FnOnce(Result<Gguf, GgufError>) -> T) -> T {
    let path = std::env::temp_dir().join(format!(
        "revo-gguf-{}-{}.gguf",
        std::process::id(),
        bytes.len()
    ));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    let out = check(Gguf::open(&path));
    let _ = std::fs::remove_file(&path);
    out
}

fn open_bytes(bytes: &[u8]) -> Result<Gguf, GgufError> {
    with_file(bytes, |r| r)
}

#[test]
fn bad_files_are_clear_errors() {
    let floats: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    let good = tiny(3, 0, &[4], &floats);
    with_file(&good, |g| {
        let g = g.unwrap();
        assert_eq!(
            g.dequantize(g.tensor("w").unwrap()).unwrap(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert!(matches!(g.tensor("nope"), Err(GgufError::NoTensor(_))));
    });

    // Every truncation is an error, never a panic.
    for cut in 0..good.len() {
        let err = open_bytes(&good[..cut]).err();
        assert!(err.is_some(), "a file cut at {cut} bytes opened");
    }
    let mut magic = good.clone();
    magic[0] = b'X';
    assert!(matches!(open_bytes(&magic), Err(GgufError::Magic(_))));
    assert!(matches!(
        open_bytes(&tiny(1, 0, &[4], &floats)),
        Err(GgufError::Version(1))
    ));
    // An unsupported tensor type (Q5_0 = 6) names the tensor.
    let err = open_bytes(&tiny(3, 6, &[32], &[0; 22])).err().unwrap();
    assert!(
        err.to_string().contains("`w`") && err.to_string().contains("not supported"),
        "{err}"
    );
    // A count that cannot fit in the file is refused before allocating.
    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(open_bytes(&huge), Err(GgufError::Corrupt(_))));
    // A length that cannot fit either.
    let mut long_key = good.clone();
    long_key[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(open_bytes(&long_key), Err(GgufError::Corrupt(_))));
}

/// A header with one metadata array of `count` items of GGUF type `item`, followed by `body`.
fn with_array(item: u32, count: u64, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // key-values
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'a');
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    b.extend_from_slice(&item.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(body);
    b
}

fn read(bytes: &[u8]) -> Result<Gguf, GgufError> {
    Gguf::read(std::path::Path::new("mem.gguf"), bytes, bytes.len() as u64)
}

/// Fix 10 of issue #9: counts, sizes and shapes that would allocate without bound, overflow or
/// disagree with the data are errors.
#[test]
fn hostile_headers_are_refused_without_allocating_or_panicking() {
    // 8-byte items counted as if they were bytes: the count must fit the encoding.
    let err = read(&with_array(10, 100, &[0; 100])).err().unwrap();
    assert!(err.to_string().contains("cannot fit"), "{err}");
    // Byte-sized items that do fit, but more than any vocabulary: refused before decoding
    // into ~32 bytes of memory each.
    let n = revo_engine::gguf::MAX_ARRAY_ITEMS + 1;
    let err = read(&with_array(0, n, &vec![0; n as usize])).err().unwrap();
    assert!(err.to_string().contains("at most"), "{err}");
    // A string length beyond the bound, even in a file that long.
    let mut b = with_array(8, 1, &[]);
    b.extend_from_slice(&((revo_engine::gguf::MAX_STRING_BYTES + 1).to_le_bytes()));
    b.resize(
        b.len() + revo_engine::gguf::MAX_STRING_BYTES as usize + 1,
        b'x',
    );
    assert!(read(&b).is_err());

    let floats = [0u8; 16];
    // A zero dimension.
    assert!(matches!(
        read(&tiny(3, 0, &[4, 0], &floats)),
        Err(GgufError::Corrupt(_))
    ));
    // Q4_0 rows of 16 values are not whole blocks of 32, though 16 × 2 is one block.
    let err = read(&tiny(3, 2, &[16, 2], &[0; 18])).err().unwrap();
    assert!(err.to_string().contains("whole blocks"), "{err}");
    // An element count whose byte size overflows u64 (2^63 f32 values): an error, not a wrap
    // (or, in a debug build, a panic).
    let err = read(&tiny(3, 0, &[1 << 32, 1 << 31], &floats))
        .err()
        .unwrap();
    assert!(err.to_string().contains("`w`"), "{err}");
    // Dimensions overflowing u64 altogether.
    assert!(read(&tiny(3, 0, &[1 << 32, 1 << 32, 1 << 32], &floats)).is_err());
}

/// Metadata that disagrees with the tensors (here a vocabulary the embedding does not have)
/// is a shape error from the graph builder, not an out-of-bounds copy.
#[test]
fn a_model_whose_metadata_and_tensors_disagree_is_refused() {
    let mut bad = common::smollm2();
    let embd = bad
        .tensors
        .iter_mut()
        .find(|t| t.name == "token_embd.weight")
        .unwrap();
    embd.dims[0] += 32;
    let err = revo_engine::onnx::llama::LlamaConfig::from_gguf(&bad)
        .and_then(|c| {
            revo_engine::onnx::llama::build(
                &bad,
                &c,
                revo_engine::onnx::llama::WeightFormat::F32,
                &mut std::io::sink(),
                "x",
                &mut |_, _| {},
            )
        })
        .err()
        .unwrap();
    assert!(err.to_string().contains("token_embd.weight"), "{err}");
}
