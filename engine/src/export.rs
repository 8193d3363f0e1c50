//! Importing an existing ONNX export: a directory with `model.onnx` (decoder with past, as
//! Hugging Face optimum or onnxruntime-genai write it), its external data, `tokenizer.json`, and
//! `config.json` (Hugging Face's) or `genai_config.json`. The files are copied; Revo's own
//! `config.json` is written from theirs (with `tokenizer_config.json`'s chat template and
//! `generation_config.json`'s end tokens). Whether the graph runs is checked by the caller,
//! which loads it before registering it.

use std::path::Path;

use serde_json::Value;

use crate::import::{io, sha256_file, write_atomically, ImportError, ModelConfig, END_OF_TURN};

fn bad(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Export {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, ImportError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| bad(path, format!("not JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Token ids from a number or a list of numbers.
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// The geometry from Hugging Face's `config.json` or onnxruntime-genai's `genai_config.json`.
fn geometry(dir: &Path) -> Result<(ModelConfig, Vec<u32>), ImportError> {
    let field = |v: &Value, k: &str, path: &Path| -> Result<usize, ImportError> {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| bad(path, format!("no `{k}`")))
    };
    let hf = dir.join("config.json");
    let genai = dir.join("genai_config.json");
    let (c, eos, path) = if let Some(c) = read_json(&hf)? {
        let eos = ids(c.get("eos_token_id"));
        (c, eos, hf)
    } else if let Some(g) = read_json(&genai)? {
        let m = g.get("model").cloned().unwrap_or(Value::Null);
        let d = m.get("decoder").cloned().unwrap_or(Value::Null);
        let c = serde_json::json!({
            "model_type": m.get("type"),
            "num_hidden_layers": d.get("num_hidden_layers"),
            "hidden_size": d.get("hidden_size"),
            "num_attention_heads": d.get("num_attention_heads"),
            "num_key_value_heads": d.get("num_key_value_heads"),
            "head_dim": d.get("head_size"),
            "vocab_size": m.get("vocab_size"),
            "max_position_embeddings": m.get("context_length"),
            "bos_token_id": m.get("bos_token_id"),
        });
        (c, ids(m.get("eos_token_id")), genai)
    } else {
        return Err(bad(dir, "no config.json or genai_config.json"));
    };
    let layers = field(&c, "num_hidden_layers", &path)?;
    let hidden = field(&c, "hidden_size", &path)?;
    let heads = field(&c, "num_attention_heads", &path)?;
    let kv_heads = field(&c, "num_key_value_heads", &path).unwrap_or(heads);
    let head_dim = field(&c, "head_dim", &path).unwrap_or(hidden / heads.max(1));
    let config = ModelConfig {
        architecture: c
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned(),
        layers,
        hidden,
        heads,
        kv_heads,
        head_dim,
        vocab: field(&c, "vocab_size", &path)?,
        context_length: field(&c, "max_position_embeddings", &path)?,
        bos_token_id: ids(c.get("bos_token_id")).first().copied(),
        eos_token_id: eos.first().copied(),
        stop_token_ids: Vec::new(),
        chat_template: None,
        weights: "onnx".into(),
        parameters: 0,
        source: String::new(),
        source_sha256: String::new(),
    };
    Ok((config, eos))
}

/// The chat template: `tokenizer_config.json` (a string, or named templates with a `default`),
/// else `chat_template.jinja`.
fn chat_template(dir: &Path) -> Result<Option<String>, ImportError> {
    if let Some(t) = read_json(&dir.join("tokenizer_config.json"))? {
        match t.get("chat_template") {
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(Value::Array(named)) => {
                let default = named
                    .iter()
                    .find(|n| n.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|n| n.get("template"))
                    .and_then(Value::as_str);
                if let Some(s) = default {
                    return Ok(Some(s.to_owned()));
                }
            }
            _ => {}
        }
    }
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&jinja)(e)),
    }
}

/// Copies the export in `src` to the model directory `dest` (which must not exist).
pub fn import_export(
    src: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<ModelConfig, ImportError> {
    if dest.exists() {
        return Err(ImportError::Exists(dest.to_owned()));
    }
    for needed in ["model.onnx", "tokenizer.json"] {
        if !src.join(needed).is_file() {
            return Err(bad(src, format!("no {needed}")));
        }
    }
    let (mut config, mut stop) = geometry(src)?;
    if let Some(g) = read_json(&src.join("generation_config.json"))? {
        for id in ids(g.get("eos_token_id")) {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
    }
    let tokenizer = tokenizers::Tokenizer::from_file(src.join("tokenizer.json"))
        .map_err(|e| bad(&src.join("tokenizer.json"), e.to_string()))?;
    for t in END_OF_TURN {
        if let Some(id) = tokenizer.token_to_id(t) {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
    }
    if stop.is_empty() {
        return Err(bad(src, "no end-of-sequence token in its configs"));
    }
    config.stop_token_ids = stop;
    config.chat_template = chat_template(src)?;
    config.source = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    progress("checksum", 0, 1);
    config.source_sha256 = sha256_file(&src.join("model.onnx"))?;
    let files: Vec<_> = std::fs::read_dir(src)
        .map_err(io(src))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .filter(|n| n != "config.json")
        .collect();
    write_atomically(dest, |tmp| {
        for (i, name) in files.iter().enumerate() {
            progress("copying", i, files.len());
            let to = tmp.join(name);
            std::fs::copy(src.join(name), &to).map_err(io(&to))?;
        }
        progress("copying", files.len(), files.len());
        let json =
            serde_json::to_vec_pretty(&config).map_err(|e| io(tmp)(std::io::Error::other(e)))?;
        let p = tmp.join("config.json");
        std::fs::write(&p, json).map_err(io(&p))
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str, files: &[(&str, &str)]) -> Dir {
        let d = std::env::temp_dir().join(format!("revo-export-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (f, text) in files {
            std::fs::write(d.join(f), text).unwrap();
        }
        Dir(d)
    }

    #[test]
    fn reads_genai_and_hugging_face_configs() {
        let genai = dir(
            "genai",
            &[(
                "genai_config.json",
                r#"{"model": {"type": "qwen2", "bos_token_id": 1, "eos_token_id": [2, 7],
                    "context_length": 4096, "vocab_size": 100,
                    "decoder": {"head_size": 16, "hidden_size": 64, "num_attention_heads": 4,
                                "num_hidden_layers": 3, "num_key_value_heads": 2}}}"#,
            )],
        );
        let (c, eos) = geometry(&genai.0).unwrap();
        assert_eq!(
            (
                c.architecture.as_str(),
                c.layers,
                c.heads,
                c.kv_heads,
                c.head_dim
            ),
            ("qwen2", 3, 4, 2, 16)
        );
        assert_eq!(
            (c.vocab, c.context_length, c.bos_token_id),
            (100, 4096, Some(1))
        );
        assert_eq!(eos, vec![2, 7]);

        // Hugging Face: no num_key_value_heads means multi-head attention; named templates.
        let hf = dir(
            "hf",
            &[
                (
                    "config.json",
                    r#"{"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
                        "num_attention_heads": 4, "vocab_size": 10,
                        "max_position_embeddings": 128, "eos_token_id": 3}"#,
                ),
                (
                    "tokenizer_config.json",
                    r#"{"chat_template": [{"name": "tool_use", "template": "x"},
                                           {"name": "default", "template": "{{ messages }}"}]}"#,
                ),
            ],
        );
        let (c, eos) = geometry(&hf.0).unwrap();
        assert_eq!((c.kv_heads, c.head_dim), (4, 16));
        assert_eq!(eos, vec![3]);
        assert_eq!(
            chat_template(&hf.0).unwrap().as_deref(),
            Some("{{ messages }}")
        );

        let missing = dir("missing", &[("config.json", r#"{"model_type": "llama"}"#)]);
        let e = geometry(&missing.0).unwrap_err().to_string();
        assert!(e.contains("num_hidden_layers"), "{e}");
        let none = dir("none", &[]);
        let e = geometry(&none.0).unwrap_err().to_string();
        assert!(e.contains("no config.json or genai_config.json"), "{e}");
    }
}
