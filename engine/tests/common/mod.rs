//! Shared by the model tests: the default model, fetched by scripts/fetch-model.sh.

#![allow(clippy::unwrap_used, clippy::panic, dead_code)] // test code; not every test uses all

use revo_engine::Gguf;

/// The default model's path, or a failure saying how to get it.
pub fn smollm2_path() -> std::path::PathBuf {
    let path = revo_engine::default_model_path();
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn smollm2() -> Gguf {
    Gguf::open(&smollm2_path()).unwrap()
}

/// One JSON value per non-empty line (the `.jsonl` fixtures).
pub fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}
