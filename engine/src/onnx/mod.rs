//! Writing ONNX models: a minimal protobuf encoder (`proto.rs`), a graph builder that streams
//! weights (`builder.rs`), the Llama-family decoder graph (`llama.rs`) and the 8-bit weight
//! blocks it can use (`q8.rs`).

mod builder;
pub mod llama;
pub mod proto;
pub mod q8;
