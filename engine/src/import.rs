//! `revo models import`: a GGUF file to a model directory: `model.onnx` (the decoder graph)
//! with its weights in `model.onnx.data`, `tokenizer.json` and `config.json` (architecture, geometry, special and stop tokens, chat
//! template). The directory appears complete or not at all: it is written beside its final
//! name and renamed into place.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::gguf::{Gguf, GgufError, Value};
use crate::onnx::llama::{self, GraphError, LlamaConfig, WeightFormat};
use crate::tokenizer::{self, TokenizerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// Keep the projections quantised: 8-bit blocks for ONNX Runtime's `MatMulNBits`
    /// (requantised from the file's blocks; int8 activations). Fastest on CPU, not exact.
    Keep,
    /// Dequantised to f32: the reference numerics.
    F32,
    /// Dequantised to f16 on disk (half the size of f32), f32 in memory.
    F16,
}

impl Weights {
    pub fn parse(s: &str) -> Option<Weights> {
        match s {
            "keep" => Some(Weights::Keep),
            "f32" => Some(Weights::F32),
            "f16" => Some(Weights::F16),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("{path}: {reason}")]
    Export { path: PathBuf, reason: String },
}

/// Tokens chat models end a turn with, which end a generation too.
pub const END_OF_TURN: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// Writes a directory beside `dest` with `fill` and renames it into place, so that `dest`
/// appears complete or not at all.
pub(crate) fn write_atomically(
    dest: &Path,
    fill: impl FnOnce(&Path) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let result = std::fs::create_dir_all(&tmp)
        .map_err(io(&tmp))
        .and_then(|()| fill(&tmp))
        .and_then(|()| std::fs::rename(&tmp, dest).map_err(io(dest)));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The external data file of `model.onnx`: every large weight.
pub const DATA_FILE: &str = "model.onnx.data";

/// `config.json` of a model directory (Revo's own, not Hugging Face's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Ids that end a generation.
    pub stop_token_ids: Vec<u32>,
    pub chat_template: Option<String>,
    pub weights: String,
    pub parameters: u64,
    pub source: String,
    pub source_sha256: String,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn sha256_file(path: &Path) -> Result<String, ImportError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads `gguf` and writes the model directory `dest` (which must not exist).
pub fn import(
    gguf: &Path,
    dest: &Path,
    weights: Weights,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<ModelConfig, ImportError> {
    let (format, weights_name) = match weights {
        Weights::F32 => (WeightFormat::F32, "f32"),
        Weights::F16 => (WeightFormat::F16, "f16"),
        Weights::Keep => (WeightFormat::Q8, "q8"),
    };
    if dest.exists() {
        return Err(ImportError::Exists(dest.to_owned()));
    }
    let g = Gguf::open(gguf)?;
    let c = LlamaConfig::from_gguf(&g)?;
    let tok = tokenizer::tokenizer_json(&g)?;
    // Prove the tokenizer loads before writing anything.
    tokenizer::from_gguf(&g)?;
    progress("checksum", 0, 1);
    let source_sha256 = sha256_file(gguf)?;
    let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
    let eos = id("tokenizer.ggml.eos_token_id");
    let mut stop: Vec<u32> = eos.into_iter().collect();
    // Chat models end a turn with a token of their own (`<|im_end|>`, `<|eot_id|>`, ...).
    if let Some(tokens) = g.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
        for (i, t) in tokens.iter().enumerate() {
            if t.as_str().is_some_and(|t| END_OF_TURN.contains(&t)) && !stop.contains(&(i as u32)) {
                stop.push(i as u32);
            }
        }
    }
    let parameters = g.tensors.iter().map(|t| t.elements()).sum();
    let config = ModelConfig {
        architecture: c.arch.clone(),
        layers: c.layers,
        hidden: c.hidden,
        heads: c.heads,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        vocab: c.vocab,
        context_length: c.context,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_id: eos,
        stop_token_ids: stop,
        chat_template: g
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_owned),
        weights: weights_name.into(),
        parameters,
        source: gguf
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source_sha256,
    };
    write_atomically(dest, |tmp| {
        // Weights stream into `model.onnx.data` (ONNX external data) as they are converted;
        // the graph itself is small.
        let data_path = tmp.join(DATA_FILE);
        let file = std::fs::File::create(&data_path).map_err(io(&data_path))?;
        let mut data = std::io::BufWriter::new(file);
        let onnx = llama::build(&g, &c, format, &mut data, DATA_FILE, &mut |l, n| {
            progress("layers", l, n)
        })?;
        std::io::Write::flush(&mut data).map_err(io(&data_path))?;
        let write = |file: &str, bytes: &[u8]| {
            let p = tmp.join(file);
            std::fs::write(&p, bytes).map_err(io(&p))
        };
        write("model.onnx", &onnx)?;
        write("tokenizer.json", tok.to_string().as_bytes())?;
        let json =
            serde_json::to_vec_pretty(&config).map_err(|e| io(tmp)(std::io::Error::other(e)))?;
        write("config.json", &json)
    })?;
    Ok(config)
}
