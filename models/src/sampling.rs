//! Choosing the next token from a sequence's logits: greedy, or sampled with temperature,
//! top-k, top-p and a repetition penalty, reproducibly under a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::EngineError;

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

/// One sequence's sampling state: its parameters, random stream and the tokens seen so far
/// (prompt and output, for the repetition penalty).
pub(crate) struct Sampler {
    pub(crate) sampling: Sampling,
    rng: StdRng,
    history: Vec<u32>,
}

impl Sampler {
    pub(crate) fn new(sampling: &Sampling, prompt: &[u32]) -> Sampler {
        Sampler {
            rng: match sampling.seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_entropy(),
            },
            sampling: sampling.clone(),
            history: prompt.to_vec(),
        }
    }

    /// Chooses the next token and remembers it.
    pub(crate) fn next(&mut self, logits: &[f32]) -> u32 {
        let t = self.sampling.choose(logits, &self.history, &mut self.rng);
        self.history.push(t);
        t
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
