//! Running a decoder-with-past ONNX model with ONNX Runtime (`ort`, loaded at run time from a
//! shared library), several sequences at once.
//!
//! A new sequence's prompt is prefilled alone; its cache then joins the batch between decode
//! steps. Each step runs every active sequence one token forward in one call: the batch's cache
//! is left-padded to the longest sequence, the attention mask hides the padding and each row
//! keeps its own positions, so a sequence gets the same tokens alone or in a batch. Sequences
//! join and leave between steps. The cache is regrouped (copied, and trimmed to the longest
//! remaining sequence) when one joins; a row that leaves stays, ignored, until then or for a few
//! steps, as a regroup costs about as much as five steps of a dead row.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ort::ep::ExecutionProvider;
use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, Tensor};

pub use crate::runtime::locate_runtime;
use crate::runtime::runtime;
use crate::sampling::Sampler;
pub use crate::sampling::{Logprobs, Sampling, MAX_TOP_LOGPROBS};

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
    #[error("the CUDA execution provider is required but unavailable: {0}")]
    NoCuda(String),
    #[error("this model is decoding other sequences; use start and step")]
    Busy,
    #[error("the graph is not a decoder with a KV cache as Revo runs it: {0}")]
    Layout(String),
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

pub(crate) fn ort_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Ort(e.to_string())
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

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// CUDA device `id`; `required`: fail when unavailable, else warn and use the CPU.
    Cuda { id: i32, required: bool },
}

impl std::fmt::Display for Device {
    /// `cpu` or `cuda:N`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda { id, .. } => write!(f, "cuda:{id}"),
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token (not included in the output), a stop sequence or a cancel.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// A sequence in the batch.
pub type SeqId = u64;

/// What a sequence produced: a new token, and whether it has finished (it then leaves the
/// batch). An end-of-sequence token finishes it without a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    pub seq: SeqId,
    pub token: Option<u32>,
    pub finish: Option<Finish>,
    /// The token's log-probabilities, when the sampling asks for them.
    pub logprobs: Option<Logprobs>,
}

struct Seq {
    id: SeqId,
    sampler: Sampler,
    eos: Vec<u32>,
    produced: usize,
    /// Positions in the cache (prompt and tokens fed so far).
    len: usize,
    /// The last token chosen, fed at the next step.
    next: u32,
    /// Its row in the cache.
    row: usize,
    /// Finished or cancelled: still in the cache, decoded and ignored until the next regroup.
    dead: bool,
}

impl Seq {
    /// Chooses the next token from `logits`.
    fn advance(&mut self, logits: &[f32]) -> Produced {
        let (t, logprobs) = self.sampler.next(logits);
        let mut p = Produced {
            seq: self.id,
            token: Some(t),
            finish: None,
            logprobs,
        };
        if self.eos.contains(&t) {
            p.token = None;
            p.logprobs = None;
            p.finish = Some(Finish::Stop);
        } else {
            self.produced += 1;
            self.next = t;
            if self.produced == self.sampler.sampling.max_tokens {
                p.finish = Some(Finish::Length);
            }
        }
        p
    }
}

pub struct Model {
    session: Session,
    geometry: Geometry,
    /// Whether the graph takes `position_ids` (some exports derive them from the mask).
    positions: bool,
    /// `past_key_values.N.key/value` and `present.N.key/value`, in cache order.
    past_names: Vec<String>,
    present_names: Vec<String>,
    device: Device,
    /// The batch, one row each, in the order of the cache's rows.
    rows: Vec<Seq>,
    /// The batch's cache, `present` of the last step: key then value per layer, each
    /// `[rows, kv_heads, width, head_dim]`. Empty when `rows` is.
    past: Vec<DynValue>,
    width: usize,
    /// Prefilled sequences with their own cache (`[1, kv_heads, len, head_dim]`), joining at the
    /// next step.
    joining: Vec<(Seq, Vec<DynValue>)>,
    /// Steps run, and the step at which the oldest dead row died.
    steps: u64,
    dead_since: Option<u64>,
    next_id: SeqId,
}

impl Model {
    pub fn load(
        runtime_path: &Path,
        onnx: &Path,
        geometry: Geometry,
        threads: usize,
        device: Device,
    ) -> Result<Model, EngineError> {
        let env = runtime(runtime_path)?;
        let mut builder = Session::builder(env)
            .map_err(ort_err)?
            .with_intra_threads(threads.max(1))
            .map_err(ort_err)?;
        let mut used = Device::Cpu;
        if let Device::Cuda { id, required } = device {
            let cuda = ort::ep::CUDA::default().with_device_id(id);
            match cuda.register(&mut builder) {
                Ok(()) => used = device,
                Err(e) if required => return Err(EngineError::NoCuda(e.to_string())),
                Err(e) => tracing::warn!(
                    error = %e,
                    "the CUDA execution provider is unavailable; running on the CPU"
                ),
            }
        }
        let session = builder.commit_from_file(onnx).map_err(ort_err)?;
        let positions = check_layout(&session, &geometry)?;
        let names = |prefix: &str| -> Vec<String> {
            (0..geometry.layers)
                .flat_map(|l| ["key", "value"].map(|k| format!("{prefix}.{l}.{k}")))
                .collect()
        };
        Ok(Model {
            session,
            geometry,
            positions,
            past_names: names("past_key_values"),
            present_names: names("present"),
            device: used,
            rows: Vec::new(),
            past: Vec::new(),
            width: 0,
            joining: Vec::new(),
            steps: 0,
            dead_since: None,
            next_id: 0,
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The device the model actually runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Sequences being decoded (including those joining at the next step).
    pub fn active(&self) -> usize {
        self.rows.iter().filter(|s| !s.dead).count() + self.joining.len()
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

    /// Decodes one sequence alone under `sampling`. `on_token` sees each new id and returns
    /// false to stop (a stop sequence matched, the client left).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        sampling: &Sampling,
        eos: &[u32],
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, Finish), EngineError> {
        if self.active() > 0 {
            return Err(EngineError::Busy);
        }
        let mut out = Vec::new();
        let mut p = self.start(prompt, sampling, eos)?;
        loop {
            if let Some(t) = p.token {
                out.push(t);
                if !on_token(t) {
                    self.cancel(p.seq);
                    return Ok((out, Finish::Stop));
                }
            }
            if let Some(f) = p.finish {
                return Ok((out, f));
            }
            p = match self.step()?.pop() {
                Some(p) => p,
                None => return Err(ort_err("the sequence left the batch")),
            };
        }
    }

    /// Prefills `prompt` alone and chooses its first token. Unless that finishes it, the
    /// sequence joins the batch at the next [`Model::step`].
    pub fn start(
        &mut self,
        prompt: &[u32],
        sampling: &Sampling,
        eos: &[u32],
    ) -> Result<Produced, EngineError> {
        sampling.validate()?;
        let g = self.geometry;
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() + sampling.max_tokens > g.context {
            return Err(EngineError::Context {
                prompt: prompt.len(),
                max_tokens: sampling.max_tokens,
                context: g.context,
            });
        }
        let n = prompt.len();
        let mut empty = Vec::with_capacity(2 * g.layers);
        for _ in 0..2 * g.layers {
            let t = Tensor::<f32>::from_array(([1usize, g.kv_heads, 0, g.head_dim], Vec::new()))
                .map_err(ort_err)?;
            empty.push(t.into_dyn());
        }
        let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let (logits, present) = self.run(ids, vec![1; n], (0..n as i64).collect(), 1, empty)?;
        self.next_id += 1;
        let mut seq = Seq {
            id: self.next_id,
            sampler: Sampler::new(sampling, prompt),
            eos: eos.to_vec(),
            produced: 0,
            len: n,
            next: 0,
            row: 0,
            dead: false,
        };
        let p = seq.advance(&logits);
        if p.finish.is_none() {
            self.joining.push((seq, present));
        }
        Ok(p)
    }

    /// Takes a sequence out of the batch (a stop sequence matched, the client left).
    pub fn cancel(&mut self, seq: SeqId) {
        self.joining.retain(|(s, _)| s.id != seq);
        if let Some(s) = self.rows.iter_mut().find(|s| s.id == seq && !s.dead) {
            s.dead = true;
            self.dead_since.get_or_insert(self.steps);
        }
    }

    /// Runs every active sequence one token forward. Sequences that finish leave the batch.
    /// On an error every sequence is dropped (the caller fails them all).
    pub fn step(&mut self) -> Result<Vec<Produced>, EngineError> {
        let result = self.try_step();
        if result.is_err() {
            self.rows.clear();
            self.joining.clear();
            self.past.clear();
            self.width = 0;
            self.dead_since = None;
        }
        result
    }

    fn try_step(&mut self) -> Result<Vec<Produced>, EngineError> {
        self.regroup()?;
        let b = self.rows.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let w = self.width;
        let mut mask = vec![0i64; b * (w + 1)];
        // After a regroup, row r of the cache is self.rows[r].
        for (r, s) in self.rows.iter().enumerate() {
            // Left padding: a row's positions are the last `len` columns, then the new token.
            mask[r * (w + 1) + (w - s.len)..(r + 1) * (w + 1)].fill(1);
        }
        let ids = self.rows.iter().map(|s| i64::from(s.next)).collect();
        let pos = self.rows.iter().map(|s| s.len as i64).collect();
        let past = std::mem::take(&mut self.past);
        let (logits, present) = self.run(ids, mask, pos, b, past)?;
        self.past = present;
        self.width = w + 1;
        let v = self.geometry.vocab;
        let mut out = Vec::with_capacity(b);
        self.steps += 1;
        for (r, s) in self.rows.iter_mut().enumerate() {
            // A dead row keeps its length, so its position stays inside the context; what it
            // computes is ignored.
            if s.dead {
                continue;
            }
            s.len += 1;
            let p = s.advance(&logits[r * v..(r + 1) * v]);
            if p.finish.is_some() {
                s.dead = true;
                self.dead_since.get_or_insert(self.steps);
            }
            out.push(p);
        }
        Ok(out)
    }

    /// One forward pass over `batch` rows of `ids.len() / batch` new tokens each: the logits of
    /// each row's last position (`[batch, vocab]`, flat) and the new cache.
    fn run(
        &mut self,
        ids: Vec<i64>,
        mask: Vec<i64>,
        pos: Vec<i64>,
        batch: usize,
        past: Vec<DynValue>,
    ) -> Result<(Vec<f32>, Vec<DynValue>), EngineError> {
        let n = ids.len() / batch;
        let total = mask.len() / batch;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + past.len());
        let t = |shape: [usize; 2], v: Vec<i64>| Tensor::from_array((shape, v)).map_err(ort_err);
        inputs.push(("input_ids".into(), t([batch, n], ids)?.into()));
        inputs.push(("attention_mask".into(), t([batch, total], mask)?.into()));
        if self.positions {
            inputs.push(("position_ids".into(), t([batch, n], pos)?.into()));
        }
        for (name, v) in self.past_names.iter().zip(past) {
            inputs.push((name.as_str().into(), v.into()));
        }
        let mut outputs = self.session.run(inputs).map_err(ort_err)?;
        let g = self.geometry;
        let logits = {
            let l = outputs
                .get("logits")
                .ok_or_else(|| ort_err("no logits output"))?;
            let (_, data) = l.try_extract_tensor::<f32>().map_err(ort_err)?;
            // An export whose config disagrees with its graph must fail, not panic.
            if data.len() != batch * n * g.vocab {
                return Err(EngineError::Layout(format!(
                    "logits hold {} values, not batch {batch} × {n} positions × vocabulary {}",
                    data.len(),
                    g.vocab
                )));
            }
            // Only each row's last position is needed.
            let mut last = Vec::with_capacity(batch * g.vocab);
            for r in 0..batch {
                let at = (r * n + n - 1) * g.vocab;
                last.extend_from_slice(&data[at..at + g.vocab]);
            }
            last
        };
        let present = presents(&mut outputs, &self.present_names)?;
        Ok((logits, present))
    }

    /// Rebuilds the cache without dead rows and with joining sequences: each row right-aligned
    /// in a tensor as wide as the longest row. Only when a sequence joins, every row is dead, or
    /// a dead row has lingered `LINGER` steps.
    fn regroup(&mut self) -> Result<(), EngineError> {
        const LINGER: u64 = 4;
        let all_dead = !self.rows.is_empty() && self.rows.iter().all(|s| s.dead);
        let lingered = self
            .dead_since
            .is_some_and(|d| self.steps.saturating_sub(d) >= LINGER);
        if self.joining.is_empty() && !all_dead && !lingered {
            return Ok(());
        }
        self.rows.retain(|s| !s.dead);
        self.dead_since = None;
        let joining = std::mem::take(&mut self.joining);
        if self.rows.is_empty() && joining.is_empty() {
            self.past.clear();
            self.width = 0;
            return Ok(());
        }
        // The common case of a lone sequence keeps its prefilled cache as it is.
        if self.rows.is_empty() && joining.len() == 1 {
            if let Some((seq, cache)) = joining.into_iter().next() {
                self.width = seq.len;
                self.rows.push(seq);
                self.past = cache;
            }
            return Ok(());
        }
        let g = self.geometry;
        let old_rows: Vec<(usize, usize)> = self.rows.iter().map(|s| (s.row, s.len)).collect();
        let old = std::mem::take(&mut self.past);
        let old_width = self.width;
        let width = old_rows
            .iter()
            .map(|&(_, len)| len)
            .chain(joining.iter().map(|(s, _)| s.len))
            .max()
            .unwrap_or(0);
        let rows = old_rows.len() + joining.len();
        let (h, d) = (g.kv_heads, g.head_dim);
        let mut past = Vec::with_capacity(2 * g.layers);
        for k in 0..2 * g.layers {
            let mut dst = vec![0f32; rows * h * width * d];
            let mut copy =
                |src: &[f32], src_row: usize, src_width: usize, len: usize, row: usize| {
                    for head in 0..h {
                        let from = ((src_row * h + head) * src_width + src_width - len) * d;
                        let to = ((row * h + head) * width + width - len) * d;
                        dst[to..to + len * d].copy_from_slice(&src[from..from + len * d]);
                    }
                };
            if let Some(t) = old.get(k) {
                let (_, data) = t.try_extract_tensor::<f32>().map_err(ort_err)?;
                for (row, &(src_row, len)) in old_rows.iter().enumerate() {
                    copy(data, src_row, old_width, len, row);
                }
            }
            for (i, (s, cache)) in joining.iter().enumerate() {
                let (_, data) = cache[k].try_extract_tensor::<f32>().map_err(ort_err)?;
                copy(data, 0, s.len, s.len, old_rows.len() + i);
            }
            let t = Tensor::from_array(([rows, h, width, d], dst)).map_err(ort_err)?;
            past.push(t.into_dyn());
        }
        self.past = past;
        self.width = width;
        self.rows.extend(joining.into_iter().map(|(s, _)| s));
        for (r, s) in self.rows.iter_mut().enumerate() {
            s.row = r;
        }
        Ok(())
    }
}

/// Checks the graph's inputs against the decoder-with-past layout; whether it takes
/// `position_ids`.
fn check_layout(session: &Session, g: &Geometry) -> Result<bool, EngineError> {
    use ort::value::TensorElementType;
    let bad = |m: String| Err(EngineError::Layout(m));
    let mut positions = false;
    let mut cache = 0;
    for input in session.inputs() {
        let name = input.name();
        match name {
            "input_ids" | "attention_mask" => {}
            "position_ids" => positions = true,
            _ if name.starts_with("past_key_values.") => {
                cache += 1;
                let ty = input.dtype().tensor_type();
                if ty != Some(TensorElementType::Float32) {
                    return bad(format!(
                        "{name} is {ty:?}; only float32 caches are supported"
                    ));
                }
                // [batch, kv_heads, past, head_dim]; dynamic dimensions are -1.
                let dims = input.dtype().tensor_shape().map(|d| d.to_vec());
                let fixed = |at: usize, want: usize| {
                    dims.as_ref()
                        .and_then(|d| d.get(at))
                        .is_none_or(|&v| v < 0 || v as usize == want)
                };
                if !fixed(1, g.kv_heads) || !fixed(3, g.head_dim) {
                    return bad(format!(
                        "{name} is {dims:?}, the config says {} kv heads of {}",
                        g.kv_heads, g.head_dim
                    ));
                }
            }
            _ => return bad(format!("unexpected input `{name}`")),
        }
    }
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    for needed in ["input_ids", "attention_mask"] {
        if !names.contains(&needed) {
            return bad(format!("no `{needed}` input"));
        }
    }
    if cache != 2 * g.layers {
        return bad(format!(
            "{cache} past_key_values inputs for {} layers (expected {})",
            g.layers,
            2 * g.layers
        ));
    }
    Ok(positions)
}

/// Takes `present.N.key/value` out of a run's outputs, in the order the next run feeds them.
fn presents(
    outputs: &mut SessionOutputs<'_>,
    names: &[String],
) -> Result<Vec<DynValue>, EngineError> {
    names
        .iter()
        .map(|n| {
            outputs
                .remove(n.as_str())
                .ok_or_else(|| ort_err(format!("no {n} output")))
        })
        .collect()
}
