//! A model directory ready to use: its config, tokenizer, chat template and engine.

use std::path::Path;

use crate::engine::{EngineError, Finish, Geometry, Model};
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

    /// Greedy generation from `prompt`, calling `on_text` with each new piece of text as soon
    /// as it is whole UTF-8.
    pub fn generate(
        &mut self,
        prompt: &str,
        max_tokens: usize,
        mut on_text: impl FnMut(&str),
    ) -> Result<(Vec<u32>, Finish, usize), LocalError> {
        let ids = self.encode(prompt)?;
        let stop = self.config.stop_token_ids.clone();
        let mut produced: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let tokenizer = &self.tokenizer;
        let (out, finish) = self.engine.greedy(&ids, max_tokens, &stop, |t| {
            produced.push(t);
            // A byte-level token can end inside a character: wait until it is whole.
            if let Ok(text) = tokenizer.decode(&produced, true) {
                if !text.ends_with('\u{FFFD}') && text.len() > shown && text.is_char_boundary(shown)
                {
                    on_text(&text[shown..]);
                    shown = text.len();
                }
            }
        })?;
        Ok((out, finish, ids.len()))
    }
}
