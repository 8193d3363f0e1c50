//! A model directory ready to use: its config, tokenizer, chat template and engine.

use std::path::Path;

use std::collections::HashMap;

use crate::engine::{Device, EngineError, Finish, Geometry, Model, Produced, Sampling, SeqId};
use crate::import::ModelConfig;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {reason}")]
    Dir { path: String, reason: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("this model has no chat template")]
    NoTemplate,
}

pub struct LocalModel {
    pub config: ModelConfig,
    tokenizer: tokenizers::Tokenizer,
    engine: Model,
    streams: HashMap<SeqId, TextStream>,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Renders `messages` with a model's chat template, ending with the assistant's turn.
pub fn render_chat(template: &str, messages: &[Message]) -> Result<String, LocalError> {
    let mut env = minijinja::Environment::new();
    env.add_template("chat", template)
        .map_err(|e| LocalError::Template(e.to_string()))?;
    let t = env
        .get_template("chat")
        .map_err(|e| LocalError::Template(e.to_string()))?;
    t.render(minijinja::context! { messages => messages, add_generation_prompt => true })
        .map_err(|e| LocalError::Template(e.to_string()))
}

impl LocalModel {
    pub fn open(
        dir: &Path,
        runtime: &Path,
        threads: usize,
        device: Device,
    ) -> Result<LocalModel, LocalError> {
        let bad = |reason: String| LocalError::Dir {
            path: dir.display().to_string(),
            reason,
        };
        let config: ModelConfig = std::fs::read(dir.join("config.json"))
            .map_err(|e| bad(format!("config.json: {e}")))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| bad(format!("config.json: {e}")))
            })?;
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| LocalError::Tokenizer(e.to_string()))?;
        let geometry = Geometry {
            layers: config.layers,
            kv_heads: config.kv_heads,
            head_dim: config.head_dim,
            vocab: config.vocab,
            context: config.context_length,
        };
        let engine = Model::load(runtime, &dir.join("model.onnx"), geometry, threads, device)?;
        Ok(LocalModel {
            config,
            tokenizer,
            engine,
            streams: HashMap::new(),
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.engine.device()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LocalError::Tokenizer(e.to_string()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| LocalError::Tokenizer(e.to_string()))
    }

    pub fn chat_prompt(&self, user: &str) -> Result<String, LocalError> {
        self.render(&[Message {
            role: "user".into(),
            content: user.into(),
        }])
    }

    /// `messages` through the model's chat template, ending with the assistant's turn.
    pub fn render(&self, messages: &[Message]) -> Result<String, LocalError> {
        let t = self
            .config
            .chat_template
            .as_deref()
            .ok_or(LocalError::NoTemplate)?;
        render_chat(t, messages)
    }

    /// Generates from `prompt` alone, calling `on_text` with each new piece of text as soon as
    /// it is whole UTF-8 and cannot be the start of a stop sequence; `on_text` returns false to
    /// stop.
    pub fn generate(
        &mut self,
        prompt: &str,
        sampling: &Sampling,
        stop: &[String],
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation, LocalError> {
        if self.engine.active() > 0 {
            return Err(EngineError::Busy.into());
        }
        let (seq, mut update) = self.start(prompt, sampling, stop)?;
        let left = || LocalError::Engine(EngineError::Ort("the sequence left the batch".into()));
        loop {
            let go_on = update.text.as_deref().is_none_or(&mut on_text);
            if let Some(done) = update.done {
                return Ok(done);
            }
            if !go_on {
                // Still running (not done), so cancelling yields what it generated.
                return self.cancel(seq).ok_or_else(left);
            }
            update = match self.step()?.into_iter().find(|(s, _)| *s == seq) {
                Some((_, u)) => u,
                None => return Err(left()),
            };
        }
    }

    /// Starts generating from `prompt` next to whatever else is being generated; its first
    /// update comes at once (prefill), the rest from [`LocalModel::step`].
    pub fn start(
        &mut self,
        prompt: &str,
        sampling: &Sampling,
        stop: &[String],
    ) -> Result<(SeqId, Update), LocalError> {
        let ids = self.encode(prompt)?;
        let eos = self.config.stop_token_ids.clone();
        let p = self.engine.start(&ids, sampling, &eos)?;
        let mut text = TextStream {
            stop: stop.to_vec(),
            prompt_tokens: ids.len(),
            tokens: Vec::new(),
            text: String::new(),
            shown: 0,
            stopped: false,
        };
        let update = text.push(&self.tokenizer, &p);
        if update.done.is_none() {
            self.streams.insert(p.seq, text);
        } else if p.finish.is_none() {
            // A stop sequence in the first token; the engine would go on.
            self.engine.cancel(p.seq);
        }
        Ok((p.seq, update))
    }

    /// Runs every sequence one token forward: an update for each.
    pub fn step(&mut self) -> Result<Vec<(SeqId, Update)>, LocalError> {
        let produced = match self.engine.step() {
            Ok(p) => p,
            Err(e) => {
                self.streams.clear();
                return Err(e.into());
            }
        };
        let mut out = Vec::with_capacity(produced.len());
        for p in produced {
            let Some(stream) = self.streams.get_mut(&p.seq) else {
                continue;
            };
            let update = stream.push(&self.tokenizer, &p);
            if update.done.is_some() {
                self.streams.remove(&p.seq);
                if p.finish.is_none() {
                    // A stop sequence ended it; the engine would go on.
                    self.engine.cancel(p.seq);
                }
            }
            out.push((p.seq, update));
        }
        Ok(out)
    }

    /// Ends a sequence early (its client left): what it had generated.
    pub fn cancel(&mut self, seq: SeqId) -> Option<Generation> {
        self.engine.cancel(seq);
        self.streams
            .remove(&seq)
            .map(|s| s.generation(Finish::Stop))
    }

    /// Sequences being generated.
    pub fn active(&self) -> usize {
        self.streams.len()
    }
}

/// What one step did for a sequence: a piece of text to show, the new token's
/// log-probabilities (when the sampling asks), and the generation when it ended.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub text: Option<String>,
    pub logprobs: Option<TokenLogprob>,
    pub done: Option<Generation>,
}

/// A generated token's log-probability and its likeliest alternatives, as text. A token's text
/// is the token decoded alone: a token holding part of a character shows U+FFFD.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

fn token_text(tokenizer: &tokenizers::Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

/// Turns a sequence's tokens into text: whole characters only, stop sequences cut and held back
/// while they might still match.
struct TextStream {
    stop: Vec<String>,
    prompt_tokens: usize,
    tokens: Vec<u32>,
    text: String,
    shown: usize,
    stopped: bool,
}

impl TextStream {
    fn push(&mut self, tokenizer: &tokenizers::Tokenizer, p: &Produced) -> Update {
        let mut update = Update::default();
        if let (Some(t), Some(l)) = (p.token, &p.logprobs) {
            update.logprobs = Some(TokenLogprob {
                token: token_text(tokenizer, t),
                logprob: l.logprob,
                top: l
                    .top
                    .iter()
                    .map(|&(id, logprob)| TopLogprob {
                        token: token_text(tokenizer, id),
                        logprob,
                    })
                    .collect(),
            });
        }
        if let Some(t) = p.token {
            self.tokens.push(t);
            if let Ok(full) = tokenizer.decode(&self.tokens, true) {
                // A byte-level token can end inside a character: wait until it is whole.
                if !full.ends_with('\u{FFFD}') {
                    self.text = full;
                    if let Some(at) = self
                        .stop
                        .iter()
                        .filter_map(|s| self.text.find(s.as_str()))
                        .min()
                    {
                        self.text.truncate(at);
                        self.stopped = true;
                    }
                }
            }
        }
        let finished = self.stopped || p.finish.is_some();
        let safe = if finished {
            self.text.len()
        } else {
            self.text.len() - held_back(&self.text, &self.stop)
        };
        if safe > self.shown
            && self.text.is_char_boundary(self.shown)
            && self.text.is_char_boundary(safe)
        {
            update.text = Some(self.text[self.shown..safe].to_owned());
            self.shown = safe;
        }
        if finished {
            let finish = if self.stopped {
                Finish::Stop
            } else {
                p.finish.unwrap_or(Finish::Stop)
            };
            update.done = Some(self.generation(finish));
        }
        update
    }

    fn generation(&self, finish: Finish) -> Generation {
        Generation {
            text: self.text[..self.shown.min(self.text.len())].to_owned(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.tokens.len(),
            finish,
        }
    }
}

/// The result of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: Finish,
}

/// Bytes at the end of `text` that could still grow into a stop sequence.
fn held_back(text: &str, stop: &[String]) -> usize {
    stop.iter()
        .map(|s| {
            (1..s.len().min(text.len() + 1))
                .rev()
                .find(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_possible_stop_prefix_is_held_back() {
        let stop = vec!["\n\nUser:".to_owned()];
        assert_eq!(super::held_back("Hello\n\nUs", &stop), 4);
        assert_eq!(super::held_back("Hello", &stop), 0);
        assert_eq!(super::held_back("", &stop), 0);
    }
}
