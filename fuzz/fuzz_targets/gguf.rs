//! The GGUF reader on arbitrary bytes: it may refuse them, never panic, hang or allocate past
//! its documented bounds (libFuzzer's `-rss_limit_mb` catches the last).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use revo_engine::gguf::Gguf;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::read(Path::new("fuzz.gguf"), data, data.len() as u64) else {
        return;
    };
    // What import does next with a header: geometry and the tokenizer from metadata.
    let _ = revo_engine::onnx::llama::LlamaConfig::from_gguf(&g);
    let _ = revo_engine::tokenizer::tokenizer_json(&g);
    for t in &g.tensors {
        let _ = t.elements();
    }
});
