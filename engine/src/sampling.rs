//! Choosing the next token from a sequence's logits: greedy, or sampled with temperature,
//! top-k, top-p and a repetition penalty, reproducibly under a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::EngineError;

/// How the next token is chosen. `temperature` 0 is greedy (argmax).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Report each chosen token's log-probability and this many most likely alternatives
    /// (at most [`MAX_TOP_LOGPROBS`]); `None` computes none (it costs a pass over the
    /// vocabulary per token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
}

/// Most alternatives a token's log-probabilities may list (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A chosen token's natural-log probability under the model (its raw distribution: before
/// temperature, penalties, top-k or top-p), and the most likely tokens with theirs, most
/// likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl Logprobs {
    /// Log-softmax of `logits` at `chosen`, and its `k` largest entries.
    pub fn of(logits: &[f32], chosen: u32, k: usize) -> Logprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
        let lse = f64::from(max) + sum.ln();
        let lp = |i: usize| (f64::from(logits[i]) - lse) as f32;
        let mut top = Vec::new();
        if k > 0 && !logits.is_empty() {
            let k = k.min(logits.len());
            let mut order: Vec<usize> = (0..logits.len()).collect();
            let desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
            if k < order.len() {
                order.select_nth_unstable_by(k - 1, desc);
                order.truncate(k);
            }
            order.sort_unstable_by(desc);
            top = order.into_iter().map(|i| (i as u32, lp(i))).collect();
        }
        Logprobs {
            logprob: logits
                .get(chosen as usize)
                .map_or(f32::NEG_INFINITY, |_| lp(chosen as usize)),
            top,
        }
    }
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
            logprobs: None,
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
        if self.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return bad("top_logprobs is 0 to 20");
        }
        Ok(())
    }

    fn choose(&self, logits: &[f32], history: &[u32], rng: &mut StdRng) -> u32 {
        let penalised;
        let l: &[f32] = if self.repetition_penalty == 1.0 {
            logits
        } else {
            let mut p = logits.to_vec();
            for &t in history {
                if let Some(x) = p.get_mut(t as usize) {
                    *x = if *x > 0.0 {
                        *x / self.repetition_penalty
                    } else {
                        *x * self.repetition_penalty
                    };
                }
            }
            penalised = p;
            &penalised
        };
        if self.temperature == 0.0 {
            return argmax(l);
        }
        // Candidates: the top_k most likely (a selection, not a sort of the whole vocabulary).
        let desc = |a: &usize, b: &usize| l[*b].total_cmp(&l[*a]);
        let mut order: Vec<usize> = (0..l.len()).collect();
        if self.top_k > 0 && self.top_k < order.len() {
            order.select_nth_unstable_by(self.top_k - 1, desc);
            order.truncate(self.top_k);
        }
        let top = order
            .iter()
            .map(|&i| l[i])
            .fold(f32::NEG_INFINITY, f32::max);
        let weight = |i: usize| ((l[i] - top) / self.temperature).exp();
        let sum: f32 = order.iter().map(|&i| weight(i)).sum();
        // The nucleus: the smallest most-likely prefix reaching top_p. Only that prefix needs
        // sorting; grow it until it reaches top_p.
        let mut kept = order.len();
        if self.top_p < 1.0 {
            let mut n = 64.min(order.len());
            loop {
                if n < order.len() {
                    order.select_nth_unstable_by(n - 1, desc);
                }
                order[..n].sort_unstable_by(desc);
                let mut acc = 0.0;
                let reached = order[..n].iter().position(|&i| {
                    acc += weight(i) / sum;
                    acc >= self.top_p
                });
                if let Some(at) = reached {
                    kept = at + 1;
                    break;
                }
                if n == order.len() {
                    break;
                }
                n = (n * 4).min(order.len());
            }
        }
        let candidates = &order[..kept];
        let total: f32 = candidates.iter().map(|&i| weight(i)).sum();
        let mut r = rng.gen::<f32>() * total;
        for &i in candidates {
            r -= weight(i);
            if r <= 0.0 {
                return i as u32;
            }
        }
        candidates[kept - 1] as u32
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

    /// Chooses the next token and remembers it, with its log-probabilities when asked.
    pub(crate) fn next(&mut self, logits: &[f32]) -> (u32, Option<Logprobs>) {
        let t = self.sampling.choose(logits, &self.history, &mut self.rng);
        self.history.push(t);
        (
            t,
            self.sampling.logprobs.map(|k| Logprobs::of(logits, t, k)),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_p: f32, top_k: usize) -> Sampling {
        Sampling {
            max_tokens: 1,
            temperature,
            top_p,
            top_k,
            repetition_penalty: 1.0,
            seed: Some(1),
            logprobs: None,
        }
    }

    fn frequencies(s: &Sampling, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(42);
        let mut n = vec![0usize; logits.len()];
        for _ in 0..draws {
            n[s.choose(logits, &[], &mut rng) as usize] += 1;
        }
        n.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn draws_follow_the_distribution_top_k_and_top_p() {
        // Probabilities 0.5, 0.25, 0.125, 0.125.
        let logits = [2f32.ln() * 3.0, 2f32.ln() * 2.0, 2f32.ln(), 2f32.ln()];
        let all = frequencies(&sampling(1.0, 1.0, 0), &logits, 40_000);
        for (f, p) in all.iter().zip([0.5, 0.25, 0.125, 0.125]) {
            assert!((f - p).abs() < 0.01, "{all:?}");
        }
        // top_k 2: the two most likely, renormalised (2:1).
        let k = frequencies(&sampling(1.0, 1.0, 2), &logits, 30_000);
        assert!(
            (k[0] - 2.0 / 3.0).abs() < 0.015 && k[2] == 0.0 && k[3] == 0.0,
            "{k:?}"
        );
        // top_p 0.5: the most likely token alone reaches it.
        let p = frequencies(&sampling(1.0, 0.5, 0), &logits, 1_000);
        assert_eq!(p[0], 1.0, "{p:?}");
        // top_p 0.7: the first two.
        let p = frequencies(&sampling(1.0, 0.7, 0), &logits, 30_000);
        assert!((p[0] - 2.0 / 3.0).abs() < 0.015 && p[2] == 0.0, "{p:?}");
        // Greedy, and the repetition penalty turning it.
        assert_eq!(
            sampling(0.0, 1.0, 0).choose(&logits, &[], &mut StdRng::seed_from_u64(0)),
            0
        );
        let mut s = sampling(0.0, 1.0, 0);
        s.repetition_penalty = 4.0;
        assert_eq!(s.choose(&logits, &[0], &mut StdRng::seed_from_u64(0)), 1);
    }

    #[test]
    fn a_large_nucleus_matches_a_full_sort() {
        // 5,000 logits where the 0.9 nucleus holds hundreds of tokens (past the first prefix
        // of 64 that is sorted).
        let mut rng = StdRng::seed_from_u64(3);
        let logits: Vec<f32> = (0..5000).map(|_| rng.gen::<f32>() * 4.0).collect();
        let s = sampling(1.0, 0.9, 0);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top = logits[order[0]];
        let w: Vec<f32> = order.iter().map(|&i| (logits[i] - top).exp()).collect();
        let sum: f32 = w.iter().sum();
        let mut acc = 0.0;
        let size = w.iter().position(|x| {
            acc += x / sum;
            acc >= 0.9
        });
        let nucleus: std::collections::HashSet<usize> =
            order[..size.unwrap() + 1].iter().copied().collect();
        assert!(nucleus.len() > 256, "{}", nucleus.len());
        for _ in 0..2000 {
            let t = s.choose(&logits, &[], &mut rng) as usize;
            assert!(nucleus.contains(&t), "{t} is outside the nucleus");
        }
    }

    #[test]
    fn logprobs_are_the_log_softmax_with_the_likeliest_alternatives() {
        // Probabilities 0.5, 0.25, 0.125, 0.125, shifted: a softmax ignores the shift.
        let logits = [
            2f32.ln() * 3.0 + 7.0,
            2f32.ln() * 2.0 + 7.0,
            2f32.ln() + 7.0,
            2f32.ln() + 7.0,
        ];
        let l = Logprobs::of(&logits, 1, 3);
        assert!((l.logprob - 0.25f32.ln()).abs() < 1e-5, "{l:?}");
        let ids: Vec<u32> = l.top.iter().map(|t| t.0).collect();
        // Ties keep the lower id first.
        assert_eq!(ids, [0, 1, 2]);
        assert!((l.top[0].1 - 0.5f32.ln()).abs() < 1e-5);
        assert!((l.top[2].1 - 0.125f32.ln()).abs() < 1e-5);
        assert!(Logprobs::of(&logits, 3, 0).top.is_empty());
        // Asked for more than the vocabulary: all of it.
        assert_eq!(Logprobs::of(&logits, 0, 20).top.len(), 4);
        let mut s = Sampling::greedy(1);
        s.logprobs = Some(21);
        assert!(s.validate().is_err());
    }
}
