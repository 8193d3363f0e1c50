//! The tokenizer of a GGUF model, as a Hugging Face `tokenizer.json`: the vocabulary, merges
//! and special tokens from the GGUF metadata, and the pre-tokenizer its `tokenizer.ggml.pre`
//! names. The `tokenizers` crate runs it.
//!
//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) is supported, with the pre-tokenizers of
//! SmolLM (`smollm`: digits one by one, then GPT-2's split), GPT-2 (`gpt2`, `default`),
//! Llama 3 (`llama-bpe`) and Qwen2 (`qwen2`); so are SentencePiece BPE vocabularies
//! (`llama`: Llama 2, Mistral), whose merges are derived from the pieces' scores.

use serde_json::{json, Value as Json};

use crate::gguf::{Gguf, GgufError, Value};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tokenizer model `{0}` is not supported (`gpt2`: byte-level BPE, and `llama`: SentencePiece BPE, are)")]
    Model(String),
    #[error("pre-tokenizer `{0}` is not supported (smollm, gpt2, default, llama-bpe, qwen2 are)")]
    Pre(String),
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    #[error("the tokenizer does not load: {0}")]
    Build(String),
}

/// GGUF token types (`tokenizer.ggml.token_type`).
const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;
/// SentencePiece's word-boundary mark, which stands for a space.
const SPACE: &str = "\u{2581}";

/// Llama 3's split (`llama-bpe`): contractions, letters with one leading non-letter, numbers of
/// up to three digits, punctuation runs, newlines, other whitespace.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: as Llama 3's, with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn strings<'a>(g: &'a Gguf, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
    g.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| TokenizerError::Metadata(format!("`{key}` is missing")))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| TokenizerError::Metadata(format!("`{key}` holds a non-string")))
        })
        .collect()
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_bytes(pattern: &str) -> Json {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

/// The pre-tokenizer named by `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Result<Json, TokenizerError> {
    Ok(match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "gpt2" | "default" => byte_level(true),
        "llama-bpe" | "llama3" => split_then_bytes(LLAMA3_SPLIT),
        "qwen2" => split_then_bytes(QWEN2_SPLIT),
        other => return Err(TokenizerError::Pre(other.to_owned())),
    })
}

/// Builds `tokenizer.json` from the model's metadata.
pub fn tokenizer_json(g: &Gguf) -> Result<Json, TokenizerError> {
    let model = g.str("tokenizer.ggml.model")?;
    if model != "gpt2" && model != "llama" {
        return Err(TokenizerError::Model(model.to_owned()));
    }
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let types: Vec<u64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(t) if t.len() == tokens.len() => t.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        Some(_) => {
            return Err(TokenizerError::Metadata(
                "token types and tokens differ in number".into(),
            ))
        }
        None => vec![1; tokens.len()],
    };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if vocab.insert((*t).to_owned(), json!(id)).is_some() {
            return Err(TokenizerError::Metadata(format!(
                "token `{t}` appears twice"
            )));
        }
    }
    let added = added_tokens(&tokens, &types);
    if model == "llama" {
        return sentencepiece(g, &tokens, &types, vocab, added);
    }
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let merges: Vec<Json> = strings(g, "tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| TokenizerError::Metadata(format!("merge `{m}` is not `a b`")))
        })
        .collect::<Result<_, _>>()?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// Control tokens (special: never produced from text by accident, skipped when decoding) and
/// user-defined ones (matched whole in text).
fn added_tokens(tokens: &[&str], types: &[u64]) -> Vec<Json> {
    types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
        .map(|(id, t)| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": *t == CONTROL})
        })
        .collect()
}

/// A SentencePiece BPE vocabulary (`llama`) as a BPE with byte fallback. SentencePiece merges
/// the adjacent pair whose union scores highest; a BPE whose merges are every split of every
/// piece into two pieces, ranked by the union's score, merges the same way. Spaces become `▁`
/// and one is put before the text (unless `tokenizer.ggml.add_space_prefix` is false); decoding
/// keeps a leading space, as a completion continues its prompt.
fn sentencepiece(
    g: &Gguf,
    tokens: &[&str],
    types: &[u64],
    vocab: serde_json::Map<String, Json>,
    added: Vec<Json>,
) -> Result<Json, TokenizerError> {
    let scores: Vec<f32> = match g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
        Some(s) if s.len() == tokens.len() => s.iter().map(|v| v.as_f32().unwrap_or(0.0)).collect(),
        _ => {
            return Err(TokenizerError::Metadata(
                "`tokenizer.ggml.scores` is missing or differs in number from the tokens".into(),
            ))
        }
    };
    let id = |t: &str| vocab.get(t).and_then(Json::as_u64);
    let mut merges: Vec<(f32, u64, u64, u64, &str, &str)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types[i] != NORMAL {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(li), Some(ri)) = (id(l), id(r)) {
                merges.push((scores[i], i as u64, li, ri, l, r));
            }
        }
    }
    // Highest score first; ties by the union's id, then the parts'.
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    let merges: Vec<Json> = merges.iter().map(|m| json!([m.4, m.5])).collect();
    let unk = types
        .iter()
        .position(|t| *t == UNKNOWN)
        .map(|i| tokens[i].to_owned());
    let prefix = g
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let mut normalizers = Vec::new();
    if prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": SPACE}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE}));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        // Normalizers, not a Metaspace pre-tokenizer: that one skips the prefix when the text
        // already starts with a space, and SentencePiece does not.
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// The model's tokenizer, ready to encode.
pub fn from_gguf(g: &Gguf) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let json = tokenizer_json(g)?;
    json.to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| TokenizerError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_pre_tokenizer_loads() {
        for pre in ["smollm", "gpt2", "default", "llama-bpe", "qwen2"] {
            let t = json!({"version": "1.0", "pre_tokenizer": pre_tokenizer(pre).unwrap(),
                "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": []});
            assert!(
                t.to_string().parse::<tokenizers::Tokenizer>().is_ok(),
                "{pre}"
            );
        }
        assert!(matches!(
            pre_tokenizer("falcon"),
            Err(TokenizerError::Pre(_))
        ));
    }
}
