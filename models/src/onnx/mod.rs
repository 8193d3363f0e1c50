//! Writing ONNX models: a minimal protobuf encoder (`proto.rs`) and the Llama-family decoder
//! graph (`llama.rs`).

pub mod llama;
pub mod proto;
