//! Running a decoder-with-past ONNX model with ONNX Runtime (`ort`, loaded at run time from a
//! shared library): prefill the prompt, then one token per step with the KV cache carried
//! between steps.
//!
//! Today: one sequence at a time, greedy. Sampling, batching and the worker threads build on it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the ONNX Runtime library was not found (looked at: {0}); run scripts/fetch-ort.sh or \
         set REVO_ORT_DYLIB"
    )]
    NoRuntime(String),
    #[error("the ONNX Runtime library at {path} does not load: {reason}")]
    Runtime { path: PathBuf, reason: String },
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
    #[error(
        "{prompt} prompt tokens + {max_tokens} new tokens exceed the context window of {context}"
    )]
    Context {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
}

fn ort_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Ort(e.to_string())
}

/// Where the library is looked for, in order: `explicit` (REVO_ORT_DYLIB), `ORT_DYLIB_PATH`,
/// then where `scripts/fetch-ort.sh` puts it.
pub fn locate_runtime(explicit: Option<&Path>) -> Result<PathBuf, EngineError> {
    let mut tried = Vec::new();
    let env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let cache = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/revo/ort/libonnxruntime.so.1.31.1"));
    for p in [explicit.map(Path::to_path_buf), env, cache]
        .into_iter()
        .flatten()
    {
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    Err(EngineError::NoRuntime(tried.join(", ")))
}

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads the library once per process.
fn runtime(path: &Path) -> Result<&'static ort::environment::Environment, EngineError> {
    RUNTIME
        .get_or_init(|| {
            ort::init_from(path)
                .map_err(|e| e.to_string())?
                .with_name("revo")
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| EngineError::Runtime {
            path: path.to_owned(),
            reason: reason.clone(),
        })
}

/// The cache geometry the graph expects.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
}

pub struct Model {
    session: Session,
    geometry: Geometry,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token (not included in the output).
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl Model {
    pub fn load(
        runtime_path: &Path,
        onnx: &Path,
        geometry: Geometry,
        threads: usize,
    ) -> Result<Model, EngineError> {
        let env = runtime(runtime_path)?;
        let session = Session::builder(env)
            .map_err(ort_err)?
            .with_intra_threads(threads.max(1))
            .map_err(ort_err)?
            .commit_from_file(onnx)
            .map_err(ort_err)?;
        Ok(Model { session, geometry })
    }

    /// Greedy decoding of one sequence: the ids produced, and why it stopped.
    pub fn greedy(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        eos: &[u32],
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, Finish), EngineError> {
        self.generate(prompt, &Sampling::greedy(max_tokens), eos, on_token)
    }

    /// Decodes one sequence under `sampling`. `on_token` sees each new id and returns false to
    /// stop (a stop sequence matched, the client left).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        sampling: &Sampling,
        eos: &[u32],
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, Finish), EngineError> {
        sampling.validate()?;
        let max_tokens = sampling.max_tokens;
        let mut rng = match sampling.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let mut history: Vec<u32> = prompt.to_vec();
        let g = self.geometry;
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() + max_tokens > g.context {
            return Err(EngineError::Context {
                prompt: prompt.len(),
                max_tokens,
                context: g.context,
            });
        }
        let mut past: Vec<DynValue> = Vec::with_capacity(2 * g.layers);
        for _ in 0..2 * g.layers {
            let empty =
                Tensor::<f32>::from_array(([1usize, g.kv_heads, 0, g.head_dim], Vec::<f32>::new()))
                    .map_err(ort_err)?;
            past.push(empty.into_dyn());
        }
        let mut step: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let mut done = 0usize;
        let mut out = Vec::new();
        loop {
            if out.len() == max_tokens {
                return Ok((out, Finish::Length));
            }
            let total = done + step.len();
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                Vec::with_capacity(3 + past.len());
            let n = step.len();
            let ids =
                Tensor::from_array(([1usize, n], std::mem::take(&mut step))).map_err(ort_err)?;
            let mask = Tensor::from_array(([1usize, total], vec![1i64; total])).map_err(ort_err)?;
            let pos =
                Tensor::from_array(([1usize, n], (done as i64..total as i64).collect::<Vec<_>>()))
                    .map_err(ort_err)?;
            inputs.push(("input_ids".into(), ids.into()));
            inputs.push(("attention_mask".into(), mask.into()));
            inputs.push(("position_ids".into(), pos.into()));
            for (i, v) in std::mem::take(&mut past).into_iter().enumerate() {
                let kind = if i % 2 == 0 { "key" } else { "value" };
                inputs.push((format!("past_key_values.{}.{kind}", i / 2).into(), v.into()));
            }
            let mut outputs = self.session.run(inputs).map_err(ort_err)?;
            let next = {
                let logits = outputs
                    .get("logits")
                    .ok_or_else(|| ort_err("no logits output"))?;
                let (_, data) = logits.try_extract_tensor::<f32>().map_err(ort_err)?;
                let last = &data[(n - 1) * g.vocab..n * g.vocab];
                sampling.choose(last, &history, &mut rng)
            };
            for l in 0..g.layers {
                for kind in ["key", "value"] {
                    let v = outputs
                        .remove(format!("present.{l}.{kind}"))
                        .ok_or_else(|| ort_err(format!("no present.{l}.{kind} output")))?;
                    past.push(v);
                }
            }
            drop(outputs);
            done = total;
            if eos.contains(&next) {
                return Ok((out, Finish::Stop));
            }
            out.push(next);
            history.push(next);
            if !on_token(next) {
                return Ok((out, Finish::Stop));
            }
            step = vec![i64::from(next)];
        }
    }
}

/// How the next token is chosen. `temperature` 0 is greedy (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_tokens: usize,
    pub temperature: f32,
    /// Nucleus: keep the smallest set of tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// > 1 makes tokens already in the prompt or output less likely (1: off).
    pub repetition_penalty: f32,
    /// Same seed, same parameters, same prompt: same output.
    pub seed: Option<u64>,
}

impl Sampling {
    pub fn greedy(max_tokens: usize) -> Sampling {
        Sampling {
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: &str| Err(EngineError::Sampling(m.to_owned()));
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1");
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature is 0 to 2");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p is in (0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return bad("repetition_penalty is in (0, 10]");
        }
        Ok(())
    }

    fn choose(&self, logits: &[f32], history: &[u32], rng: &mut StdRng) -> u32 {
        let mut l = logits.to_vec();
        if self.repetition_penalty != 1.0 {
            for &t in history {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 {
                        *x / self.repetition_penalty
                    } else {
                        *x * self.repetition_penalty
                    };
                }
            }
        }
        if self.temperature == 0.0 {
            return argmax(&l);
        }
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_unstable_by(|&a, &b| l[b].total_cmp(&l[a]));
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        let top = l[order[0]];
        let mut probs: Vec<f32> = order
            .iter()
            .map(|&i| ((l[i] - top) / self.temperature).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        let mut kept = probs.len();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= self.top_p {
                kept = i + 1;
                break;
            }
        }
        let total: f32 = probs[..kept].iter().sum();
        let mut r = rng.gen::<f32>() * total;
        for (i, p) in probs[..kept].iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return order[i] as u32;
            }
        }
        order[kept - 1] as u32
    }
}

/// The index of the largest value (the first one on ties), as a token id.
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
