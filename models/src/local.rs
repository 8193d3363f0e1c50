//! A model directory ready to use: its config, tokenizer, chat template and engine.

use std::path::Path;

use crate::engine::{EngineError, Finish, Geometry, Model, Sampling};
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
}

/// One chat message.
#[derive(Debug, Clone, serde::Serialize)]
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
    pub fn open(dir: &Path, runtime: &Path, threads: usize) -> Result<LocalModel, LocalError> {
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
        let engine = Model::load(runtime, &dir.join("model.onnx"), geometry, threads)?;
        Ok(LocalModel {
            config,
            tokenizer,
            engine,
        })
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
        let t = self
            .config
            .chat_template
            .as_deref()
            .ok_or(LocalError::NoTemplate)?;
        render_chat(
            t,
            &[Message {
                role: "user".into(),
                content: user.into(),
            }],
        )
    }

    /// Generates from `prompt`, calling `on_text` with each new piece of text as soon as it is
    /// whole UTF-8 and cannot be the start of a stop sequence; `on_text` returns false to stop.
    pub fn generate(
        &mut self,
        prompt: &str,
        sampling: &Sampling,
        stop: &[String],
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation, LocalError> {
        let ids = self.encode(prompt)?;
        let eos = self.config.stop_token_ids.clone();
        let mut produced: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let mut text = String::new();
        let mut stopped_by_text = false;
        let tokenizer = &self.tokenizer;
        let (out, finish) = self.engine.generate(&ids, sampling, &eos, |t| {
            produced.push(t);
            let Ok(full) = tokenizer.decode(&produced, true) else {
                return true;
            };
            // A byte-level token can end inside a character: wait until it is whole.
            if full.ends_with('\u{FFFD}') {
                return true;
            }
            text = full;
            if let Some(at) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(at);
                stopped_by_text = true;
            }
            let safe = if stopped_by_text {
                text.len()
            } else {
                text.len() - held_back(&text, stop)
            };
            if safe > shown && text.is_char_boundary(shown) && text.is_char_boundary(safe) {
                let go_on = on_text(&text[shown..safe]);
                shown = safe;
                if !go_on {
                    return false;
                }
            }
            !stopped_by_text
        })?;
        if !stopped_by_text && shown < text.len() {
            on_text(&text[shown..]);
        }
        Ok(Generation {
            text,
            prompt_tokens: ids.len(),
            completion_tokens: out.len(),
            finish: if stopped_by_text {
                Finish::Stop
            } else {
                finish
            },
        })
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
