//! Reading the cost ledger: totals and groups over a window of days, the share served
//! locally, and savings against a cloud reference model. Used by `GET /ai/metrics` (over the
//! live view) and `revo replay cost` (over a fold of the raw events), so both say the same.

use std::collections::BTreeMap;

use revo_events::family::generation::{LedgerRow, PriceSheet};
use revo_events::{TokenUsage, Usd};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    User,
    Key,
    Model,
    Provider,
    Day,
}

impl By {
    pub fn parse(s: &str) -> Option<By> {
        Some(match s {
            "user" => By::User,
            "key" => By::Key,
            "model" => By::Model,
            "provider" => By::Provider,
            "day" => By::Day,
            _ => return None,
        })
    }

    fn key(self, r: &LedgerRow) -> String {
        match self {
            By::User => r.user_id.to_string(),
            By::Key => r.key_id.map_or_else(|| "-".into(), |k| k.to_string()),
            By::Model => r.model.clone(),
            By::Provider => r.provider.clone(),
            By::Day => r.day.clone(),
        }
    }
}

/// Which rows count.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Inclusive, `YYYY-MM-DD` (string order is date order).
    pub from: Option<String>,
    pub to: Option<String>,
    pub user: Option<Uuid>,
    /// Only requests made with this API key.
    pub key: Option<Uuid>,
}

impl Filter {
    pub fn keeps(&self, r: &LedgerRow) -> bool {
        self.from
            .as_ref()
            .is_none_or(|f| r.day.as_str() >= f.as_str())
            && self
                .to
                .as_ref()
                .is_none_or(|t| r.day.as_str() <= t.as_str())
            && self.user.is_none_or(|u| r.user_id == u)
            && self.key.is_none_or(|k| r.key_id == Some(k))
    }
}

/// Checks a `YYYY-MM-DD` day.
pub fn valid_day(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Tokens {
    pub input: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl From<TokenUsage> for Tokens {
    fn from(u: TokenUsage) -> Self {
        Tokens {
            input: u.input,
            cache_read: u.cache_read,
            cache_write: u.cache_write,
            output: u.output,
            reasoning: u.reasoning,
        }
    }
}

/// One group (or the total).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Line {
    /// The group's value (a user or key id, a model, provider or day); `total` for the total.
    pub key: String,
    pub requests: u64,
    pub served_locally: u64,
    pub failed_attempts: u64,
    /// Local answers the cascade held back and escalated to a later model.
    pub escalated_attempts: u64,
    /// Attempts whose usage the provider never reported (cut streams).
    pub unreported_usage: u64,
    /// Of those, the attempts that had sent output: each is charged its worst case.
    pub usage_estimated: u64,
    pub tokens: Tokens,
    /// Exact dollars.
    #[schema(value_type = String)]
    pub cost_usd: String,
    #[serde(skip)]
    cost: Usd,
    #[serde(skip)]
    usage: TokenUsage,
    #[serde(skip)]
    local_tokens: u64,
    /// Tokens of the work an all-cloud setup would have done too (all but the answers the
    /// cascade held back), what savings are priced on.
    #[serde(skip)]
    served_usage: TokenUsage,
}

impl Line {
    fn add(&mut self, r: &LedgerRow) {
        self.requests += r.requests;
        self.failed_attempts += r.failed_attempts;
        self.escalated_attempts += r.escalated_attempts;
        self.unreported_usage += r.unreported_usage;
        self.usage_estimated += r.usage_estimated;
        let served = r.usage.minus(&r.escalated_usage);
        if r.served_locally {
            self.served_locally += r.requests;
            self.local_tokens += served.prompt() + served.output;
        }
        self.usage.add(&r.usage);
        self.served_usage.add(&served);
        self.cost = self.cost.checked_add(r.cost_usd).unwrap_or(self.cost);
    }

    fn close(mut self) -> Line {
        self.tokens = self.usage.into();
        self.cost_usd = self.cost.to_string();
        self
    }
}

/// Savings: the same tokens at the reference model's prices, minus what was spent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Savings {
    pub reference_model: String,
    /// What all of it would have cost at the reference model's prices.
    #[schema(value_type = String)]
    pub reference_cost_usd: String,
    /// Reference cost minus actual spend; negative when the mix cost more (shown, not hidden).
    #[schema(value_type = String)]
    pub savings_usd: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Report {
    pub total: Line,
    /// Requests answered by a local model, as a fraction of all answered.
    pub local_request_share: f64,
    /// Tokens (prompt and output) of local answers, as a fraction of all.
    pub local_token_share: f64,
    pub savings: Option<Savings>,
    pub groups: Vec<Line>,
}

/// `a - b` as a signed decimal string.
fn signed_difference(a: Usd, b: Usd) -> String {
    match a.checked_sub(b) {
        Some(d) => d.to_string(),
        None => format!("-{}", b.checked_sub(a).unwrap_or(Usd::ZERO)),
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

pub fn report<'a>(
    rows: impl Iterator<Item = &'a LedgerRow>,
    filter: &Filter,
    by: By,
    reference: Option<(&str, PriceSheet)>,
) -> Report {
    let mut total = Line::default();
    let mut groups: BTreeMap<String, Line> = BTreeMap::new();
    for r in rows.filter(|r| filter.keeps(r)) {
        total.add(r);
        let k = by.key(r);
        groups
            .entry(k.clone())
            .or_insert_with(|| Line {
                key: k,
                ..Line::default()
            })
            .add(r);
    }
    let savings = reference.map(|(name, prices)| {
        let reference_cost = prices.cost(&total.served_usage);
        Savings {
            reference_model: name.to_owned(),
            reference_cost_usd: reference_cost.to_string(),
            savings_usd: signed_difference(reference_cost, total.cost),
        }
    });
    let all_tokens = total.served_usage.prompt() + total.served_usage.output;
    Report {
        local_request_share: share(total.served_locally, total.requests),
        local_token_share: share(total.local_tokens, all_tokens),
        savings,
        total: Line {
            key: "total".into(),
            ..total
        }
        .close(),
        groups: groups.into_values().map(Line::close).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use revo_events::UsdPerMtok;

    #[test]
    fn savings_may_be_negative_and_say_so() {
        assert_eq!(
            signed_difference(Usd::parse("1").unwrap(), Usd::parse("0.25").unwrap()),
            "0.75"
        );
        assert_eq!(
            signed_difference(Usd::parse("0.25").unwrap(), Usd::parse("1").unwrap()),
            "-0.75"
        );
    }

    #[test]
    fn a_report_groups_filters_and_prices_the_reference() {
        let row = |day: &str, model: &str, local: bool, cost: &str| LedgerRow {
            day: day.into(),
            model: model.into(),
            provider: if local { "local" } else { "openai" }.into(),
            served_locally: local,
            requests: 1,
            usage: TokenUsage {
                input: 1000,
                output: 100,
                ..TokenUsage::default()
            },
            cost_usd: Usd::parse(cost).unwrap(),
            ..LedgerRow::default()
        };
        let rows = [
            row("2026-12-01", "small", true, "0"),
            row("2026-12-02", "gpt", false, "0.0035"),
            row("2026-12-03", "gpt", false, "0.0035"),
        ];
        let prices = PriceSheet {
            input: UsdPerMtok::parse("2.5").unwrap(),
            output: UsdPerMtok::parse("10").unwrap(),
            ..PriceSheet::default()
        };
        let f = Filter {
            to: Some("2026-12-02".into()),
            ..Filter::default()
        };
        let r = report(rows.iter(), &f, By::Model, Some(("gpt", prices)));
        assert_eq!(r.total.requests, 2);
        assert_eq!(r.total.cost_usd, "0.0035");
        assert_eq!(r.local_request_share, 0.5);
        let s = r.savings.unwrap();
        assert_eq!(s.reference_cost_usd, "0.007");
        assert_eq!(s.savings_usd, "0.0035");
        assert_eq!(r.groups.len(), 2);

        // An answer the cascade held back: its tokens were spent locally but an all-cloud
        // setup would not have produced them, so savings are not priced on them.
        let mut held = row("2026-12-02", "small", true, "0");
        held.requests = 0;
        held.escalated_attempts = 1;
        held.escalated_usage = held.usage;
        let rows = [held, row("2026-12-02", "gpt", false, "0.0035")];
        let r = report(
            rows.iter(),
            &Filter::default(),
            By::Model,
            Some(("gpt", prices)),
        );
        let s = r.savings.unwrap();
        assert_eq!(
            (s.reference_cost_usd.as_str(), s.savings_usd.as_str()),
            ("0.0035", "0")
        );
        assert_eq!(r.total.escalated_attempts, 1);
        assert_eq!(r.local_token_share, 0.0);
    }
}
