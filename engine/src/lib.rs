//! `revo-engine`: local models.
//!
//! Today: reading GGUF files (`gguf.rs`), dequantising their tensors (`quant.rs`) and building
//! their tokenizer (`tokenizer.rs`), each checked against an independent implementation. The importer (ONNX graph, tokenizer, config) and the
//! inference engine build on this crate.
//!
//! Must not do network I/O; files are read only where a caller points.

pub mod engine;
pub mod export;
pub mod gguf;
pub mod import;
pub mod local;
pub mod onnx;
pub mod quant;
pub mod runtime;
pub mod sampling;
pub mod tokenizer;

pub use gguf::{Gguf, GgufError, TensorInfo, Value};
pub use quant::{QuantError, TensorType};

/// Where `scripts/fetch-model.sh` keeps the default model (SmolLM2-135M-Instruct, Q4_1 GGUF),
/// unless `TEST_SMOLLM2_GGUF` names another copy.
pub fn default_model_path() -> std::path::PathBuf {
    std::env::var_os("TEST_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            std::path::PathBuf::from(home)
                .join(".cache/revo/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}
