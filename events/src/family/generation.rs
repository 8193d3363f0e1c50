//! The `generation` family: what the router did for each request. Stream `generation/<id>`,
//! written once per request, when it ends, in one append: one `generation.attempt` per model
//! tried (the last one answered, or the request failed), so a request is never recorded twice
//! and never half-recorded.
//!
//! Each attempt carries the tokens the provider billed, split by kind, the prices it was
//! charged at and the exact cost, so the ledger (`LedgerProjection`) and `revo replay cost`
//! recompute every cent from the events alone, whatever the catalogue says today.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::family::models::{ModelEvent, GENERATION_STREAM};
use crate::family::EventFamily;
use crate::money::{Usd, UsdPerMtok};
use crate::projection::{from_rows, to_rows, Projection, ProjectionError, Rows};

/// Tokens as the provider billed them, by kind. `input` excludes cache reads and writes
/// (OpenAI's `prompt_tokens` includes its `cached_tokens`; they are split out here), and
/// `reasoning` is the part of `output` spent thinking (already counted in `output`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl TokenUsage {
    /// Every token sent to the model (uncached, read from cache, written to cache).
    pub fn prompt(&self) -> u64 {
        self.input + self.cache_read + self.cache_write
    }

    pub fn add(&mut self, o: &TokenUsage) {
        self.input += o.input;
        self.cache_read += o.cache_read;
        self.cache_write += o.cache_write;
        self.output += o.output;
        self.reasoning += o.reasoning;
    }

    /// `self - o`, kind by kind (never below zero).
    pub fn minus(&self, o: &TokenUsage) -> TokenUsage {
        TokenUsage {
            input: self.input.saturating_sub(o.input),
            cache_read: self.cache_read.saturating_sub(o.cache_read),
            cache_write: self.cache_write.saturating_sub(o.cache_write),
            output: self.output.saturating_sub(o.output),
            reasoning: self.reasoning.saturating_sub(o.reasoning),
        }
    }
}

/// Prices per million tokens, as charged (the "price version" of an attempt is these four).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceSheet {
    pub input: UsdPerMtok,
    pub cache_read: UsdPerMtok,
    pub cache_write: UsdPerMtok,
    pub output: UsdPerMtok,
}

impl PriceSheet {
    /// What `u` costs at these prices, exactly (`reasoning` is inside `output`).
    pub fn cost(&self, u: &TokenUsage) -> Usd {
        [
            self.input.cost(u.input),
            self.cache_read.cost(u.cache_read),
            self.cache_write.cost(u.cache_write),
            self.output.cost(u.output),
        ]
        .into_iter()
        .fold(Usd::ZERO, |a, c| a.checked_add(c).unwrap_or(a))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum GenerationEvent {
    /// One model tried for a request.
    #[serde(rename = "generation.attempt")]
    Attempt {
        /// The request (stream id).
        id: String,
        /// 1 for the first model tried.
        attempt: u32,
        user_id: Uuid,
        /// The API key it came through, if any.
        key_id: Option<Uuid>,
        /// The catalogue entry, its provider and the upstream model id.
        model: String,
        provider: String,
        upstream_model: String,
        served_locally: bool,
        /// `completed`, `failed` or `escalated` (held back by the cascade).
        outcome: String,
        /// Why it failed (`upstream_unavailable`, `timeout`, ...), when it did.
        error_code: Option<String>,
        /// `stop`, `length`, `tool_calls`, ... when it completed.
        finish_reason: Option<String>,
        usage: TokenUsage,
        /// Whether the provider reported the usage (a cut stream may not have).
        usage_reported: bool,
        /// Output came back without its usage: `cost_usd` is the attempt's worst case (what
        /// its budgets held), not a price times tokens.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        usage_estimated: bool,
        prices: PriceSheet,
        cost_usd: Usd,
        time_to_first_token_ms: Option<u64>,
        duration_ms: u64,
        /// The budget leases the request spent against (`family::budget`).
        #[serde(default)]
        holds: Vec<crate::family::budget::Hold>,
        /// The geometric mean of the answer's token probabilities (local models, when
        /// computed: the cascade, or `logprobs` asked).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confidence: Option<f64>,
        /// Why the cascade held the answer back (`low_confidence`, `truncated`), with
        /// `outcome: "escalated"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        escalation: Option<String>,
        /// The worker (node) that generated a local answer, and its device.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
}

impl EventFamily for GenerationEvent {
    fn event_type(&self) -> &'static str {
        match self {
            GenerationEvent::Attempt { .. } => "generation.attempt",
        }
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        match event_type {
            "generation.attempt" => Some(1),
            _ => None,
        }
    }
}

/// One row of the ledger: a day's use of one model by one credential.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRow {
    /// UTC, `YYYY-MM-DD`.
    pub day: String,
    pub user_id: Uuid,
    pub key_id: Option<Uuid>,
    pub model: String,
    pub provider: String,
    pub served_locally: bool,
    /// Requests answered by this model, and attempts on it that failed or were held back.
    pub requests: u64,
    pub failed_attempts: u64,
    /// Answers the cascade held back (local, then served by a later model), and their
    /// tokens (in `usage` too): work an all-cloud setup would not have done.
    #[serde(default)]
    pub escalated_attempts: u64,
    #[serde(default)]
    pub escalated_usage: TokenUsage,
    pub usage: TokenUsage,
    pub cost_usd: Usd,
    /// Whether some usage was not reported by the provider (a cut stream).
    pub unreported_usage: u64,
    /// Attempts charged their worst case because output came back without usage.
    #[serde(default)]
    pub usage_estimated: u64,
}

/// The cost ledger: spend and tokens by day, user, key, model and provider, folded from
/// `generation.attempt` events (and the local `generation.completed` records that came
/// before the router, as free local requests).
#[derive(Debug, Default, Clone)]
pub struct LedgerProjection {
    rows: BTreeMap<String, LedgerRow>,
}

/// The row key: day, user, key (or `-`), model.
fn row_key(day: &str, user: Uuid, key: Option<Uuid>, model: &str) -> String {
    let key = key.map_or_else(|| "-".to_owned(), |k| k.to_string());
    format!("{day}|{user}|{key}|{model}")
}

impl LedgerProjection {
    pub fn rows_iter(&self) -> impl Iterator<Item = &LedgerRow> {
        self.rows.values()
    }

    fn fold(&mut self, day: String, a: AttemptFold, dirty: &mut BTreeSet<String>) {
        let key = row_key(&day, a.user_id, a.key_id, &a.model);
        dirty.insert(key.clone());
        let row = self.rows.entry(key).or_insert_with(|| LedgerRow {
            day,
            user_id: a.user_id,
            key_id: a.key_id,
            model: a.model,
            provider: a.provider,
            served_locally: a.served_locally,
            ..LedgerRow::default()
        });
        match a.outcome {
            Fold::Answered => row.requests += 1,
            Fold::Escalated => {
                row.escalated_attempts += 1;
                row.escalated_usage.add(&a.usage);
            }
            Fold::Failed => row.failed_attempts += 1,
        }
        row.usage.add(&a.usage);
        row.cost_usd = row.cost_usd.checked_add(a.cost).unwrap_or(row.cost_usd);
        if !a.usage_reported {
            row.unreported_usage += 1;
        }
        if a.usage_estimated {
            row.usage_estimated += 1;
        }
    }
}

enum Fold {
    Answered,
    Escalated,
    Failed,
}

struct AttemptFold {
    user_id: Uuid,
    key_id: Option<Uuid>,
    model: String,
    provider: String,
    served_locally: bool,
    outcome: Fold,
    usage: TokenUsage,
    usage_reported: bool,
    usage_estimated: bool,
    cost: Usd,
}

/// `user:<uuid>` or `key:<uuid>` of an event's actor.
fn actor_ids(actor: Option<&str>) -> (Option<Uuid>, Option<Uuid>) {
    let parse = |p: &str, s: &str| s.strip_prefix(p).and_then(|id| Uuid::parse_str(id).ok());
    match actor {
        Some(a) => (parse("user:", a), parse("key:", a)),
        None => (None, None),
    }
}

impl Projection for LedgerProjection {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        let env = &event.envelope;
        if env.stream_type != GENERATION_STREAM {
            return Ok(());
        }
        let day = env.occurred_at.format("%Y-%m-%d").to_string();
        if env.event_type == "generation.completed" {
            // Before the router: a local model's request. The actor names a user or a key
            // (whose owner is not in the event), so a key's requests fold under the nil user.
            let ModelEvent::GenerationCompleted {
                model,
                prompt_tokens,
                completion_tokens,
                ..
            } = ModelEvent::decode(env).map_err(|e| ProjectionError::decode(event, e))?
            else {
                return Ok(());
            };
            let (user, key) = actor_ids(env.meta.actor.as_deref());
            let fold = AttemptFold {
                user_id: user.unwrap_or_default(),
                key_id: key,
                model,
                provider: "local".into(),
                served_locally: true,
                outcome: Fold::Answered,
                usage: TokenUsage {
                    input: prompt_tokens,
                    output: completion_tokens,
                    ..TokenUsage::default()
                },
                usage_reported: true,
                usage_estimated: false,
                cost: Usd::ZERO,
            };
            self.fold(day, fold, dirty);
            return Ok(());
        }
        let GenerationEvent::Attempt {
            user_id,
            key_id,
            model,
            provider,
            served_locally,
            outcome,
            usage,
            usage_reported,
            usage_estimated,
            cost_usd,
            ..
        } = GenerationEvent::decode(env).map_err(|e| ProjectionError::decode(event, e))?;
        let fold = AttemptFold {
            user_id,
            key_id,
            model,
            provider,
            served_locally,
            outcome: match outcome.as_str() {
                "completed" => Fold::Answered,
                "escalated" => Fold::Escalated,
                _ => Fold::Failed,
            },
            usage,
            usage_reported,
            usage_estimated,
            cost: cost_usd,
        };
        self.fold(day, fold, dirty);
        Ok(())
    }

    fn row(&self, key: &str) -> Option<serde_json::Value> {
        self.rows
            .get(key)
            .and_then(|r| serde_json::to_value(r).ok())
    }

    fn rows(&self) -> Rows {
        to_rows(&self.rows)
    }

    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError> {
        self.rows = from_rows(rows)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, EventMeta};
    use chrono::{TimeZone, Utc};

    fn recorded(position: i64, ev: &GenerationEvent) -> RecordedEvent {
        let new = ev.to_new_event(EventMeta::default()).unwrap();
        RecordedEvent {
            position,
            envelope: Envelope {
                event_id: new.event_id,
                stream_type: GENERATION_STREAM.into(),
                stream_id: "g1".into(),
                version: position,
                event_type: new.event_type,
                schema: new.schema,
                occurred_at: Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, 0).unwrap(),
                meta: new.meta,
                payload: new.payload,
            },
        }
    }

    fn attempt(n: u32, outcome: &str, usage: TokenUsage, prices: PriceSheet) -> GenerationEvent {
        GenerationEvent::Attempt {
            id: "g1".into(),
            attempt: n,
            user_id: Uuid::nil(),
            key_id: None,
            model: "gpt-4o".into(),
            provider: "openai".into(),
            upstream_model: "gpt-4o".into(),
            served_locally: false,
            outcome: outcome.into(),
            error_code: None,
            finish_reason: None,
            usage,
            usage_reported: true,
            usage_estimated: false,
            prices,
            cost_usd: prices.cost(&usage),
            time_to_first_token_ms: None,
            duration_ms: 5,
            holds: Vec::new(),
            confidence: None,
            escalation: None,
            node: None,
            device: None,
        }
    }

    #[test]
    fn the_ledger_sums_exact_costs_and_counts_answers_apart_from_failures() {
        let prices = PriceSheet {
            input: UsdPerMtok::parse("2.50").unwrap(),
            cache_read: UsdPerMtok::parse("1.25").unwrap(),
            cache_write: UsdPerMtok::ZERO,
            output: UsdPerMtok::parse("10").unwrap(),
        };
        let u = TokenUsage {
            input: 1000,
            cache_read: 24,
            output: 7,
            ..TokenUsage::default()
        };
        // 1000 × 2.5 + 24 × 1.25 + 7 × 10 = 2,600 µUSD per million → $0.0026
        assert_eq!(prices.cost(&u).to_string(), "0.0026");
        let mut l = LedgerProjection::default();
        let mut dirty = BTreeSet::new();
        l.apply(&recorded(1, &attempt(1, "failed", u, prices)), &mut dirty)
            .unwrap();
        l.apply(
            &recorded(2, &attempt(2, "completed", u, prices)),
            &mut dirty,
        )
        .unwrap();
        let row = l.rows_iter().next().unwrap();
        assert_eq!((row.requests, row.failed_attempts), (1, 1));
        assert_eq!(row.cost_usd.to_string(), "0.0052");
        assert_eq!(row.day, "2026-12-02");
        assert_eq!(row.usage.prompt(), 2048);
    }
}
