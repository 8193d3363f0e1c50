//! `revo-models`: local models.
//!
//! Today: reading GGUF files (`gguf.rs`), dequantising their tensors (`quant.rs`) and building
//! their tokenizer (`tokenizer.rs`), each checked against an independent implementation. The importer (ONNX graph, tokenizer, config) and the
//! inference engine build on this crate.
//!
//! Must not do network I/O; files are read only where a caller points.

pub mod engine;
pub mod gguf;
pub mod import;
pub mod local;
pub mod onnx;
pub mod quant;
pub mod tokenizer;

pub use gguf::{Gguf, GgufError, TensorInfo, Value};
pub use quant::{QuantError, TensorType};
