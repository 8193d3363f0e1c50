//! `revo-models`: local models.
//!
//! Today: reading GGUF files (`gguf.rs`) and dequantising their tensors (`quant.rs`), checked
//! against an independent implementation. The importer (ONNX graph, tokenizer, config) and the
//! inference engine build on this crate.
//!
//! Must not do network I/O; files are read only where a caller points.

pub mod gguf;
pub mod quant;

pub use gguf::{Gguf, GgufError, TensorInfo, Value};
pub use quant::{QuantError, TensorType};
