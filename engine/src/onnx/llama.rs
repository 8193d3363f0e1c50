//! The ONNX graph of a Llama-family decoder with KV cache, in the standard decoder-with-past
//! layout: inputs `input_ids`, `attention_mask`, `position_ids`, `past_key_values.N.key/value`
//! (`[batch, kv_heads, past, head_dim]`); outputs `logits` and `present.N.key/value`.
//!
//! Weights are stored as initializers in Hugging Face's layout: GGUF's Llama Q/K rows, permuted
//! for ggml's interleaved RoPE, are put back, so the graph uses the usual rotate-half RoPE and
//! the cache holds what other exports hold. [`WeightFormat`] says how: f32, f16 (cast to f32 at
//! load), or the projections 8-bit for ONNX Runtime's `MatMulNBits` (`com.microsoft`). Otherwise
//! only default ONNX ops (opset 17) are used.

use crate::gguf::{Gguf, GgufError};
use crate::onnx::builder::Builder;
use crate::onnx::proto::{self, Attr, Dim, Graph, ValueInfo};

/// How weights are stored in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    /// Half the size on disk; ONNX Runtime casts them to f32 once, at load.
    F16,
    /// The attention and feed-forward projections as 8-bit blocks of 32 with a scale and zero
    /// point each (`MatMulNBits` with int8 activations: ONNX Runtime's fast CPU path);
    /// embeddings, norms and the head stay f32. About 2× faster decoding than f32 on CPU; close
    /// to f32, not identical. (4-bit blocks run no faster there and, requantised from GGUF's
    /// 4-bit blocks, stray much further.)
    Q8,
}

/// What the graph needs to know about the model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub arch: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("architecture `{0}` is not supported (llama, qwen2 are)")]
    Arch(String),
    #[error("{0}")]
    Shape(String),
}

impl LlamaConfig {
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig, GraphError> {
        let arch = g.str("general.architecture")?.to_owned();
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(GraphError::Arch(arch));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let u = |s: &str| -> Result<usize, GraphError> { Ok(g.u64(&k(s))? as usize) };
        let hidden = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let kv_heads = g
            .u64(&k("attention.head_count_kv"))
            .map_or(heads, |v| v as usize);
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(GraphError::Shape(format!(
                "{heads} heads, {kv_heads} kv heads, hidden {hidden}"
            )));
        }
        let embed = g.tensor("token_embd.weight")?;
        let c = LlamaConfig {
            layers: u("block_count")?,
            hidden,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            ffn: u("feed_forward_length")?,
            vocab: embed.dims.get(1).copied().unwrap_or(0) as usize,
            context: u("context_length")?,
            rms_eps: g.f32(&k("attention.layer_norm_rms_epsilon"))?,
            rope_base: g.f32(&k("rope.freq_base")).unwrap_or(10_000.0),
            arch,
        };
        c.check()?;
        Ok(c)
    }

    /// Refuses geometry no model has, before anything is allocated for it (the RoPE tables
    /// alone take `context × head_dim` floats).
    fn check(&self) -> Result<(), GraphError> {
        let bounds = [
            ("block_count", self.layers, 1024),
            ("embedding_length", self.hidden, 1 << 16),
            ("attention.head_count", self.heads, 1024),
            ("feed_forward_length", self.ffn, 1 << 18),
            ("vocabulary", self.vocab, 1 << 22),
            ("context_length", self.context, 1 << 20),
        ];
        for (what, v, max) in bounds {
            if v == 0 || v > max {
                return Err(GraphError::Shape(format!("{what} {v} is not 1 to {max}")));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(GraphError::Shape(format!(
                "head dimension {} is odd (rotary embeddings need pairs)",
                self.head_dim
            )));
        }
        Ok(())
    }
}

/// Undoes llama.cpp's Q/K row permutation: GGUF row `h·d + 2j + t` is HF row `h·d + t·d/2 + j`.
fn unpermute(w: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let src = (h * head_dim + 2 * j + t) * cols;
                let dst = (h * head_dim + t * half + j) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// Everything `build` reports as it goes (for a progress bar).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Builds the graph and serialises the model. Weights are written to `data`, the external
/// data file that the model names `data_name` (beside `model.onnx`).
pub fn build(
    g: &Gguf,
    c: &LlamaConfig,
    format: WeightFormat,
    data: &mut dyn std::io::Write,
    data_name: &str,
    progress: Progress<'_>,
) -> Result<Vec<u8>, GraphError> {
    let mut b = Builder::new(format, data, data_name);
    let (h, hd, nh, kvh) = (
        c.hidden as i64,
        c.head_dim as i64,
        c.heads as i64,
        c.kv_heads as i64,
    );
    // Each weight must have the shape the configuration implies (GGUF order: columns first),
    // so a file whose metadata and tensors disagree is an error, not an out-of-bounds copy.
    let load = |name: &str, shape: &[usize]| -> Result<Vec<f32>, GraphError> {
        let t = g.tensor(name)?;
        if t.dims.iter().map(|&d| d as usize).ne(shape.iter().copied()) {
            return Err(GraphError::Shape(format!(
                "`{name}` is {:?}, the model's configuration needs {shape:?}",
                t.dims
            )));
        }
        Ok(g.dequantize(t)?)
    };
    let has = |name: &str| g.tensor(name).is_ok();

    // Shapes and the mask: [batch, 1, seq, total] of 0 (attend) or -1e9.
    let eps = b.scalar_f32(c.rms_eps);
    let i0 = b.scalar_i64(0);
    let i1 = b.scalar_i64(1);
    let ids_shape = b.op("Shape", &["input_ids"], vec![]);
    let seq = b.op("Gather", &[&ids_shape, &i1], vec![("axis", Attr::Int(0))]);
    let mask_shape = b.op("Shape", &["attention_mask"], vec![]);
    let total = b.op("Gather", &[&mask_shape, &i1], vec![("axis", Attr::Int(0))]);
    let past = b.op("Sub", &[&total, &seq], vec![]);
    let kpos = b.op("Range", &[&i0, &total, &i1], vec![]);
    let qpos = b.op("Range", &[&past, &total, &i1], vec![]);
    let ax0 = b.ints(&[0]);
    let ax1 = b.ints(&[1]);
    let krow = b.op("Unsqueeze", &[&kpos, &ax0], vec![]);
    let qcol = b.op("Unsqueeze", &[&qpos, &ax1], vec![]);
    let causal = b.op("LessOrEqual", &[&krow, &qcol], vec![]);
    let one = b.scalar_i64(1);
    let keep = b.op("Equal", &["attention_mask", &one], vec![]);
    let ax12 = b.ints(&[1, 2]);
    let keep4 = b.op("Unsqueeze", &[&keep, &ax12], vec![]);
    let allowed = b.op("And", &[&causal, &keep4], vec![]);
    let zero_f = b.scalar_f32(0.0);
    let neg = b.scalar_f32(-1e9);
    let mask = b.op("Where", &[&allowed, &zero_f, &neg], vec![]);

    // RoPE tables, gathered by position: [batch, 1, seq, head_dim].
    let halfd = c.head_dim / 2;
    let (mut cos, mut sin) = (
        Vec::with_capacity(c.context * halfd),
        Vec::with_capacity(c.context * halfd),
    );
    for p in 0..c.context {
        for i in 0..halfd {
            let inv = c.rope_base.powf(-(2.0 * i as f32) / c.head_dim as f32);
            let angle = p as f32 * inv;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos_t = b.weight("rope.cos", &[c.context as i64, halfd as i64], &cos)?;
    let sin_t = b.weight("rope.sin", &[c.context as i64, halfd as i64], &sin)?;
    let rope = |b: &mut Builder, table: &str| {
        let gathered = b.op(
            "Gather",
            &[table, "position_ids"],
            vec![("axis", Attr::Int(0))],
        );
        let full = b.op(
            "Concat",
            &[&gathered, &gathered],
            vec![("axis", Attr::Int(-1))],
        );
        let ax = b.ints(&[1]);
        b.op("Unsqueeze", &[&full, &ax], vec![])
    };
    let cos4 = rope(&mut b, &cos_t);
    let sin4 = rope(&mut b, &sin_t);
    let starts_lo = b.ints(&[0]);
    let ends_lo = b.ints(&[halfd as i64]);
    let starts_hi = b.ints(&[halfd as i64]);
    let ends_hi = b.ints(&[hd]);
    let last_axis = b.ints(&[-1]);
    let apply_rope = |b: &mut Builder, x: &str| {
        let x1 = b.op("Slice", &[x, &starts_lo, &ends_lo, &last_axis], vec![]);
        let x2 = b.op("Slice", &[x, &starts_hi, &ends_hi, &last_axis], vec![]);
        let nx2 = b.op("Neg", &[&x2], vec![]);
        let rot = b.op("Concat", &[&nx2, &x1], vec![("axis", Attr::Int(-1))]);
        let a = b.op("Mul", &[x, &cos4], vec![]);
        let r = b.op("Mul", &[&rot, &sin4], vec![]);
        b.op("Add", &[&a, &r], vec![])
    };

    let embed = load("token_embd.weight", &[c.hidden, c.vocab])?;
    let embed_t = b.weight("embed_tokens", &[c.vocab as i64, h], &embed)?;
    let mut x = b.op(
        "Gather",
        &[&embed_t, "input_ids"],
        vec![("axis", Attr::Int(0))],
    );

    let heads_shape = b.ints(&[0, 0, nh, hd]);
    let kv_shape = b.ints(&[0, 0, kvh, hd]);
    let to_heads = b.ints(&[0, 0, nh * hd]);
    let rep = b.ints(&[1, 1, c.heads as i64 / kvh, 1, 1]);
    let rep_shape = b.ints(&[0, nh, -1, hd]);
    let ax2 = b.ints(&[2]);
    let scale = b.scalar_f32(1.0 / (c.head_dim as f32).sqrt());
    let permute_qk = c.arch == "llama";

    for l in 0..c.layers {
        progress(l, c.layers);
        let p = |n: &str| format!("blk.{l}.{n}");
        let proj = |b: &mut Builder,
                    x: &str,
                    name: &str,
                    out: usize,
                    inn: usize,
                    unperm: Option<usize>|
         -> Result<String, GraphError> {
            let mut w = load(&p(&format!("{name}.weight")), &[inn, out])?;
            if let Some(heads) = unperm {
                w = unpermute(&w, heads, c.head_dim, inn);
            }
            let y = b.linear(x, &format!("layers.{l}.{name}.weight"), &w, out, inn)?;
            let bias_name = p(&format!("{name}.bias"));
            if has(&bias_name) {
                let bias = load(&bias_name, &[out])?;
                let bn = b.weight(&format!("layers.{l}.{name}.bias"), &[out as i64], &bias)?;
                return Ok(b.op("Add", &[&y, &bn], vec![]));
            }
            Ok(y)
        };
        let norm_w = load(&p("attn_norm.weight"), &[c.hidden])?;
        let nw = b.weight(&format!("layers.{l}.attn_norm"), &[h], &norm_w)?;
        let hn = b.rms_norm(&x, &nw, &eps);
        let (qd, kd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let q = proj(
            &mut b,
            &hn,
            "attn_q",
            qd,
            c.hidden,
            permute_qk.then_some(c.heads),
        )?;
        let k = proj(
            &mut b,
            &hn,
            "attn_k",
            kd,
            c.hidden,
            permute_qk.then_some(c.kv_heads),
        )?;
        let v = proj(&mut b, &hn, "attn_v", kd, c.hidden, None)?;
        let perm = || vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))];
        let q = b.op("Reshape", &[&q, &heads_shape], vec![]);
        let q = b.op("Transpose", &[&q], perm());
        let k = b.op("Reshape", &[&k, &kv_shape], vec![]);
        let k = b.op("Transpose", &[&k], perm());
        let v = b.op("Reshape", &[&v, &kv_shape], vec![]);
        let v = b.op("Transpose", &[&v], perm());
        let q = apply_rope(&mut b, &q);
        let k = apply_rope(&mut b, &k);
        let (pk, pv) = (
            format!("past_key_values.{l}.key"),
            format!("past_key_values.{l}.value"),
        );
        let (ok, ov) = (format!("present.{l}.key"), format!("present.{l}.value"));
        b.op_to("Concat", &[&pk, &k], &[&ok], vec![("axis", Attr::Int(2))]);
        b.op_to("Concat", &[&pv, &v], &[&ov], vec![("axis", Attr::Int(2))]);
        let expand = |b: &mut Builder, t: &str| {
            let u = b.op("Unsqueeze", &[t, &ax2], vec![]);
            let e = b.op("Expand", &[&u, &rep], vec![]);
            b.op("Reshape", &[&e, &rep_shape], vec![])
        };
        let kk = expand(&mut b, &ok);
        let vv = expand(&mut b, &ov);
        let kt = b.op(
            "Transpose",
            &[&kk],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        );
        let scores = b.op("MatMul", &[&q, &kt], vec![]);
        let scores = b.op("Mul", &[&scores, &scale], vec![]);
        let scores = b.op("Add", &[&scores, &mask], vec![]);
        let probs = b.op("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
        let ctx = b.op("MatMul", &[&probs, &vv], vec![]);
        let ctx = b.op("Transpose", &[&ctx], perm());
        let ctx = b.op("Reshape", &[&ctx, &to_heads], vec![]);
        let o = proj(&mut b, &ctx, "attn_output", c.hidden, qd, None)?;
        x = b.op("Add", &[&x, &o], vec![]);

        let norm_w = load(&p("ffn_norm.weight"), &[c.hidden])?;
        let nw = b.weight(&format!("layers.{l}.ffn_norm"), &[h], &norm_w)?;
        let hn = b.rms_norm(&x, &nw, &eps);
        let gate = proj(&mut b, &hn, "ffn_gate", c.ffn, c.hidden, None)?;
        let up = proj(&mut b, &hn, "ffn_up", c.ffn, c.hidden, None)?;
        let sig = b.op("Sigmoid", &[&gate], vec![]);
        let silu = b.op("Mul", &[&gate, &sig], vec![]);
        let act = b.op("Mul", &[&silu, &up], vec![]);
        let down = proj(&mut b, &act, "ffn_down", c.hidden, c.ffn, None)?;
        x = b.op("Add", &[&x, &down], vec![]);
    }
    progress(c.layers, c.layers);

    let norm_w = load("output_norm.weight", &[c.hidden])?;
    let nw = b.weight("norm", &[h], &norm_w)?;
    let hn = b.rms_norm(&x, &nw, &eps);
    // Tied embeddings (no `output.weight`) reuse the embedding matrix: Gemm with transB.
    let head = if has("output.weight") {
        let w = load("output.weight", &[c.hidden, c.vocab])?;
        b.weight("lm_head", &[c.vocab as i64, h], &w)?
    } else {
        embed_t.clone()
    };
    let flat_shape = b.ints(&[-1, h]);
    let flat = b.op("Reshape", &[&hn, &flat_shape], vec![]);
    let logits2 = b.op("Gemm", &[&flat, &head], vec![("transB", Attr::Int(1))]);
    let vocab = b.ints(&[c.vocab as i64]);
    let out_shape = b.op(
        "Concat",
        &[&ids_shape, &vocab],
        vec![("axis", Attr::Int(0))],
    );
    b.op_to("Reshape", &[&logits2, &out_shape], &["logits"], vec![]);

    let named = |s: &str| Dim::Named(s.to_owned());
    let mut inputs = vec![
        ValueInfo {
            name: "input_ids".into(),
            elem: proto::INT64,
            dims: vec![named("batch"), named("seq")],
        },
        ValueInfo {
            name: "attention_mask".into(),
            elem: proto::INT64,
            dims: vec![named("batch"), named("total")],
        },
        ValueInfo {
            name: "position_ids".into(),
            elem: proto::INT64,
            dims: vec![named("batch"), named("seq")],
        },
    ];
    let mut outputs = vec![ValueInfo {
        name: "logits".into(),
        elem: proto::FLOAT,
        dims: vec![named("batch"), named("seq"), Dim::Fixed(c.vocab as i64)],
    }];
    for l in 0..c.layers {
        for kind in ["key", "value"] {
            let dims =
                |len: &str| vec![named("batch"), Dim::Fixed(kvh), named(len), Dim::Fixed(hd)];
            inputs.push(ValueInfo {
                name: format!("past_key_values.{l}.{kind}"),
                elem: proto::FLOAT,
                dims: dims("past"),
            });
            outputs.push(ValueInfo {
                name: format!("present.{l}.{kind}"),
                elem: proto::FLOAT,
                dims: dims("total"),
            });
        }
    }
    let graph = Graph {
        name: format!("{}-decoder-with-past", c.arch),
        nodes: b.nodes,
        initializers: b.inits,
        inputs,
        outputs,
    };
    let extra: &[(&str, i64)] = if format == WeightFormat::Q8 {
        &[("com.microsoft", 1)]
    } else {
        &[]
    };
    Ok(proto::model(&graph, 17, extra, "revo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // HF rows for one head of dim 4: [a0, a1, b0, b1] (first half, second half).
        // llama.cpp interleaves them: [a0, b0, a1, b1].
        let gguf = [10.0, 20.0, 11.0, 21.0];
        assert_eq!(unpermute(&gguf, 1, 4, 1), [10.0, 11.0, 20.0, 21.0]);
    }
}
