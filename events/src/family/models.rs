//! The `model` family: the local model registry. Stream `model/<name>`: a model is imported
//! (its directory written and complete) and may later be removed.
//!
//! The `models` projection is the registry: one row per model present.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::RecordedEvent;
use crate::family::EventFamily;
use crate::projection::{from_rows, to_rows, Projection, ProjectionError, Rows};

pub const MODEL_STREAM: &str = "model";
pub const GENERATION_STREAM: &str = "generation";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ModelEvent {
    #[serde(rename = "model.imported")]
    Imported {
        name: String,
        architecture: String,
        /// The file it came from (its name only) and that file's SHA-256.
        source: String,
        source_sha256: String,
        /// `f32`: weights dequantised to 32-bit floats.
        weights: String,
        parameters: u64,
        context_length: u64,
        /// The model directory, relative to the models directory.
        dir: String,
    },
    #[serde(rename = "model.removed")]
    Removed { name: String },
    /// One generation by a local model (stream `generation/<id>`).
    #[serde(rename = "generation.completed")]
    GenerationCompleted {
        id: String,
        model: String,
        /// The node (process) that ran it, and on what.
        node: String,
        device: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        time_to_first_token_ms: u64,
        duration_ms: u64,
        /// `stop` or `length`.
        finish_reason: String,
    },
}

impl EventFamily for ModelEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ModelEvent::Imported { .. } => "model.imported",
            ModelEvent::Removed { .. } => "model.removed",
            ModelEvent::GenerationCompleted { .. } => "generation.completed",
        }
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        match event_type {
            "model.imported" | "model.removed" | "generation.completed" => Some(1),
            _ => None,
        }
    }
}

/// `[a-z0-9][a-z0-9_-]{0,63}`: a stream id and a directory name.
pub fn valid_model_name(name: &str) -> bool {
    crate::family::identity::valid_username(name)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRow {
    pub name: String,
    pub architecture: String,
    pub source: String,
    pub source_sha256: String,
    pub weights: String,
    pub parameters: u64,
    pub context_length: u64,
    pub dir: String,
    pub imported_at: DateTime<Utc>,
}

#[derive(Debug, Default, Clone)]
pub struct ModelsProjection {
    models: BTreeMap<String, ModelRow>,
}

impl ModelsProjection {
    pub fn get(&self, name: &str) -> Option<&ModelRow> {
        self.models.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &ModelRow> {
        self.models.values()
    }
}

impl Projection for ModelsProjection {
    fn name(&self) -> &'static str {
        "models"
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        if event.envelope.stream_type != MODEL_STREAM {
            return Ok(());
        }
        match ModelEvent::decode(&event.envelope).map_err(|e| ProjectionError::decode(event, e))? {
            ModelEvent::Imported {
                name,
                architecture,
                source,
                source_sha256,
                weights,
                parameters,
                context_length,
                dir,
            } => {
                dirty.insert(name.clone());
                self.models.insert(
                    name.clone(),
                    ModelRow {
                        name,
                        architecture,
                        source,
                        source_sha256,
                        weights,
                        parameters,
                        context_length,
                        dir,
                        imported_at: event.envelope.occurred_at,
                    },
                );
            }
            ModelEvent::Removed { name } => {
                self.models.remove(&name);
                dirty.insert(name);
            }
            ModelEvent::GenerationCompleted { .. } => {}
        }
        Ok(())
    }

    fn row(&self, key: &str) -> Option<serde_json::Value> {
        self.models
            .get(key)
            .and_then(|r| serde_json::to_value(r).ok())
    }

    fn rows(&self) -> Rows {
        to_rows(&self.models)
    }

    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError> {
        self.models = from_rows(rows)?;
        Ok(())
    }
}
