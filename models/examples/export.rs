//! `cargo run -p revo-models --example export -- MODEL.gguf OUT.onnx`: the decoder graph alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a developer tool

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let g = revo_models::Gguf::open(std::path::Path::new(&args[1])).unwrap();
    let c = revo_models::onnx::llama::LlamaConfig::from_gguf(&g).unwrap();
    eprintln!("{c:?}");
    let bytes =
        revo_models::onnx::llama::build(&g, &c, &mut |l, n| eprint!("\rlayer {l}/{n}")).unwrap();
    std::fs::write(&args[2], bytes).unwrap();
    eprintln!("\nwrote {}", args[2]);
}
