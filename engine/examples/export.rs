//! `cargo run -p revo-engine --example export -- MODEL.gguf OUT.onnx`: the decoder graph alone,
//! with its weights in `OUT.onnx.data` beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a developer tool

use std::io::Write;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let g = revo_engine::Gguf::open(Path::new(&args[1])).unwrap();
    let c = revo_engine::onnx::llama::LlamaConfig::from_gguf(&g).unwrap();
    eprintln!("{c:?}");
    let out = Path::new(&args[2]);
    let data_name = format!("{}.data", out.file_name().unwrap().to_string_lossy());
    let mut data =
        std::io::BufWriter::new(std::fs::File::create(out.with_file_name(&data_name)).unwrap());
    let graph = revo_engine::onnx::llama::build(
        &g,
        &c,
        revo_engine::onnx::llama::WeightFormat::F32,
        &mut data,
        &data_name,
        &mut |l, n| eprint!("\rlayer {l}/{n}"),
    )
    .unwrap();
    data.flush().unwrap();
    std::fs::write(out, graph).unwrap();
    eprintln!("\nwrote {}", out.display());
}
