//! `POST /ai/optimize`: recommendations computed from the ledger over a recent window.
//!
//! - **run_locally**: a cloud model whose requests, on average, fit the window of a local
//!   model of the catalogue (prompt plus output). Those requests could have been answered
//!   for free (`route: "cascade"` tries the local model first and escalates only unsure
//!   answers). Requests the cascade already tried locally are not counted again.
//! - **cascade_threshold**: a local model whose answers the cascade escalates more often
//!   than not: its bar is above what the model reaches on this traffic.
//! - **Forecasts**: each budget in scope, its spend so far in the period, the average daily
//!   spend over the window, the projected spend at the period's end and the day it runs out at
//!   that pace. Every figure is exact (integer picodollars); a forecast is only a projection.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use revo_actors::router::catalog::Catalog;
use revo_events::family::budget::{period_key, BudgetRow};
use revo_events::family::generation::{LedgerRow, TokenUsage};
use revo_events::Usd;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ledger::Filter;

/// Longest window looked at, days.
pub const MAX_WINDOW_DAYS: u32 = 90;

/// Attempts a local model needs in the window before its escalation rate means anything.
const MIN_CASCADE_ATTEMPTS: u64 = 10;

#[derive(Debug, Serialize, ToSchema)]
pub struct Recommendation {
    /// `run_locally` or `cascade_threshold`.
    pub kind: &'static str,
    /// The model the recommendation is about.
    pub model: String,
    /// The local model that could serve instead (`run_locally`).
    pub local_model: Option<String>,
    /// Requests it covers in the window.
    pub requests: u64,
    /// What those requests cost, dollars (exact decimal).
    #[schema(value_type = String)]
    pub cost_usd: String,
    /// At most what following it would have saved over the window.
    #[schema(value_type = String)]
    pub savings_usd: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Forecast {
    pub budget_id: Uuid,
    /// `user` or `key`, and its id.
    pub scope: String,
    pub id: Uuid,
    /// `day`, `month` or `total`.
    pub period: String,
    #[schema(value_type = String)]
    pub limit_usd: String,
    /// Spent in the current period.
    #[schema(value_type = String)]
    pub spent_usd: String,
    /// Average daily spend of the budget's user or key over the window.
    #[schema(value_type = String)]
    pub daily_spend_usd: String,
    /// Spend at the end of the period at that pace (`total` has no end: null).
    #[schema(value_type = Option<String>)]
    pub projected_usd: Option<String>,
    /// When the budget runs out at that pace (RFC 3339), if it does within its period.
    pub exhausted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Optimization {
    /// The window, `YYYY-MM-DD` (UTC), inclusive.
    pub from: String,
    pub to: String,
    /// Spend over the window, dollars.
    #[schema(value_type = String)]
    pub spend_usd: String,
    /// Requests answered over the window, and by cloud models.
    pub requests: u64,
    pub cloud_requests: u64,
    pub recommendations: Vec<Recommendation>,
    pub forecasts: Vec<Forecast>,
}

/// Sums of the rows of one model over the window.
#[derive(Default)]
struct ModelSum {
    local: bool,
    requests: u64,
    escalated: u64,
    usage: TokenUsage,
    cost: Usd,
}

fn add(a: Usd, b: Usd) -> Usd {
    a.checked_add(b).unwrap_or(a)
}

/// `v × num / den`, exact to the picodollar (rounded down).
fn scale(v: Usd, num: u128, den: u128) -> Usd {
    if den == 0 {
        return Usd::ZERO;
    }
    Usd::from_picos(v.picos().saturating_mul(num) / den)
}

/// The window's first day for `days` days ending `today`.
pub fn window_start(today: NaiveDate, days: u32) -> NaiveDate {
    today - Duration::days(i64::from(days.max(1)) - 1)
}

/// The recommendations and forecasts for `rows` (already limited to the caller's scope by
/// `scope`) and the `budgets` in scope, over `days` days ending `now`.
pub fn optimize<'a>(
    rows: impl Iterator<Item = &'a LedgerRow>,
    scope: &Filter,
    catalog: &Catalog,
    budgets: &[&BudgetRow],
    now: DateTime<Utc>,
    days: u32,
) -> Optimization {
    let today = now.date_naive();
    let from = window_start(today, days).format("%Y-%m-%d").to_string();
    let to = today.format("%Y-%m-%d").to_string();
    let filter = Filter {
        from: Some(from.clone()),
        to: Some(to.clone()),
        ..scope.clone()
    };
    let mut by_model: BTreeMap<String, ModelSum> = BTreeMap::new();
    // Window spend per budget subject (a user's or a key's).
    let mut by_subject: BTreeMap<Uuid, Usd> = BTreeMap::new();
    let (mut spend, mut requests, mut cloud_requests) = (Usd::ZERO, 0, 0);
    for r in rows.filter(|r| filter.keeps(r)) {
        let m = by_model.entry(r.model.clone()).or_default();
        m.local = r.served_locally;
        m.requests += r.requests;
        m.escalated += r.escalated_attempts;
        m.usage.add(&r.usage);
        m.cost = add(m.cost, r.cost_usd);
        spend = add(spend, r.cost_usd);
        requests += r.requests;
        if !r.served_locally {
            cloud_requests += r.requests;
        }
        let user = by_subject.entry(r.user_id).or_default();
        *user = add(*user, r.cost_usd);
        if let Some(k) = r.key_id {
            let key = by_subject.entry(k).or_default();
            *key = add(*key, r.cost_usd);
        }
    }
    let mut recommendations = Vec::new();
    // Cloud requests the cascade already tried locally could not have been served there.
    let mut tried_locally: u64 = by_model.values().map(|m| m.escalated).sum();
    for (name, m) in by_model.iter().filter(|(_, m)| !m.local && m.requests > 0) {
        let per_request = (m.usage.prompt() + m.usage.output) / m.requests;
        let fits = catalog
            .entries
            .iter()
            .filter(|e| e.provider.is_local())
            .find(|e| u64::from(e.context_window) > per_request);
        let Some(local) = fits else { continue };
        let already = tried_locally.min(m.requests);
        tried_locally -= already;
        let n = m.requests - already;
        if n == 0 || m.cost == Usd::ZERO {
            continue;
        }
        let cost = scale(m.cost, u128::from(n), u128::from(m.requests));
        recommendations.push(Recommendation {
            kind: "run_locally",
            model: name.clone(),
            local_model: Some(local.name.clone()),
            requests: n,
            cost_usd: cost.to_string(),
            savings_usd: cost.to_string(),
            message: format!(
                "{n} requests to {name} averaged {per_request} tokens (prompt and output), \
                 within {}'s {}-token window: sent with route \"cascade\" (and no \
                 model_preference), the local model answers first and only unsure answers \
                 go to the cloud; up to ${cost} saved over the window",
                local.name, local.context_window
            ),
        });
    }
    for (name, m) in by_model.iter().filter(|(_, m)| m.local) {
        let attempts = m.requests + m.escalated;
        if attempts < MIN_CASCADE_ATTEMPTS || m.escalated * 2 <= attempts {
            continue;
        }
        recommendations.push(Recommendation {
            kind: "cascade_threshold",
            model: name.clone(),
            local_model: None,
            requests: m.escalated,
            cost_usd: "0".into(),
            savings_usd: "0".into(),
            message: format!(
                "the cascade escalated {} of {attempts} answers of {name}: its confidence bar is \
                 above what the model reaches on this traffic; lower confidence_threshold for \
                 it, or send these requests to the cloud directly and skip the local attempt",
                m.escalated
            ),
        });
    }
    let forecasts = budgets
        .iter()
        .map(|b| forecast(b, by_subject.get(&b.subject_id).copied(), now, days))
        .collect();
    Optimization {
        from,
        to,
        spend_usd: spend.to_string(),
        requests,
        cloud_requests,
        recommendations,
        forecasts,
    }
}

/// When the current period ends (`None` for `total`).
fn period_end(period: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let d = now.date_naive();
    let next = match period {
        "day" => d.succ_opt()?,
        "month" => {
            let (y, m) = if d.month() == 12 {
                (d.year() + 1, 1)
            } else {
                (d.year(), d.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, 1)?
        }
        _ => return None,
    };
    Some(next.and_hms_opt(0, 0, 0)?.and_utc())
}

fn forecast(b: &BudgetRow, window_spend: Option<Usd>, now: DateTime<Utc>, days: u32) -> Forecast {
    const DAY: u128 = 86_400;
    let spent = b.spent(&period_key(&b.period, now));
    let daily = scale(window_spend.unwrap_or_default(), 1, u128::from(days.max(1)));
    let end = period_end(&b.period, now);
    let secs_left = |until: DateTime<Utc>| (until - now).num_seconds().max(0) as u128;
    let projected = end.map(|e| add(spent, scale(daily, secs_left(e), DAY)));
    let left = b.limit_usd.checked_sub(spent).unwrap_or(Usd::ZERO);
    let exhausted_at = if left == Usd::ZERO {
        Some(now)
    } else if daily == Usd::ZERO {
        None
    } else {
        let secs = left.picos().saturating_mul(DAY) / daily.picos();
        let at = i64::try_from(secs)
            .ok()
            .and_then(|s| now.checked_add_signed(Duration::seconds(s)));
        at.filter(|at| end.is_none_or(|e| *at < e))
    };
    Forecast {
        budget_id: b.budget_id,
        scope: b.scope.clone(),
        id: b.subject_id,
        period: b.period.clone(),
        limit_usd: b.limit_usd.to_string(),
        spent_usd: spent.to_string(),
        daily_spend_usd: daily.to_string(),
        projected_usd: projected.map(|p| p.to_string()),
        exhausted_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(day: &str, model: &str, local: bool, requests: u64, cost: &str) -> LedgerRow {
        LedgerRow {
            day: day.into(),
            user_id: Uuid::nil(),
            key_id: None,
            model: model.into(),
            provider: if local { "local" } else { "openai" }.into(),
            served_locally: local,
            requests,
            usage: TokenUsage {
                input: 300 * requests,
                output: 100 * requests,
                ..TokenUsage::default()
            },
            cost_usd: Usd::parse(cost).unwrap(),
            ..LedgerRow::default()
        }
    }

    fn budget(period: &str, limit: &str, spent: &str, now: DateTime<Utc>) -> BudgetRow {
        BudgetRow {
            budget_id: Uuid::from_u128(1),
            scope: "user".into(),
            subject_id: Uuid::nil(),
            period: period.into(),
            limit_usd: Usd::parse(limit).unwrap(),
            created_at: now,
            version: 1,
            settled: [(period_key(period, now), Usd::parse(spent).unwrap())].into(),
            leases: BTreeMap::new(),
            deleted: false,
        }
    }

    #[test]
    fn cloud_requests_that_fit_a_local_window_and_budgets_burning_out_are_reported() {
        let now = Utc.with_ymd_and_hms(2026, 12, 10, 12, 0, 0).unwrap();
        let mut escalating = row("2026-12-09", "smollm2", true, 4, "0");
        escalating.escalated_attempts = 8;
        let rows = [
            row("2026-12-09", "gpt", false, 10, "1.00"),
            row("2026-12-10", "gpt", false, 10, "1.00"),
            // Outside a 7-day window.
            row("2026-11-01", "gpt", false, 100, "50.00"),
            escalating,
        ];
        let catalog = Catalog::default_hierarchy();
        let b = budget("month", "20.00", "8.00", now);
        let o = optimize(rows.iter(), &Filter::default(), &catalog, &[&b], now, 7);
        assert_eq!(
            (o.from.as_str(), o.to.as_str()),
            ("2026-12-04", "2026-12-10")
        );
        assert_eq!(
            (o.spend_usd.as_str(), o.requests, o.cloud_requests),
            ("2", 24, 20)
        );
        let local = &o.recommendations[0];
        assert_eq!((local.kind, local.model.as_str()), ("run_locally", "gpt"));
        assert_eq!(local.local_model.as_deref(), Some("smollm2"));
        // 8 of the 20 were already tried locally by the cascade: 12 left, 12/20 of $2.
        assert_eq!((local.requests, local.savings_usd.as_str()), (12, "1.2"));
        let cascade = &o.recommendations[1];
        assert_eq!((cascade.kind, cascade.requests), ("cascade_threshold", 8));
        // $2 over 7 days: $0.285714285714 a day (to the picodollar); 21.5 days left in
        // December at that pace, and $12 left runs out after 42 days: not this month.
        let f = &o.forecasts[0];
        assert_eq!(f.daily_spend_usd, "0.285714285714");
        assert_eq!(f.projected_usd.as_deref(), Some("14.142857142851"));
        assert_eq!(f.exhausted_at, None);
        // A day budget nearly spent runs out today.
        let d = budget("day", "1.00", "0.90", now);
        let o = optimize(rows.iter(), &Filter::default(), &catalog, &[&d], now, 7);
        let at = o.forecasts[0].exhausted_at.unwrap();
        assert!(at > now && at < now + Duration::hours(12), "{at}");
        // A spent one has run out now; a quiet scope never does.
        let spent = budget("total", "1.00", "1.00", now);
        let o = optimize(
            std::iter::empty(),
            &Filter::default(),
            &catalog,
            &[&spent],
            now,
            7,
        );
        assert_eq!(o.forecasts[0].exhausted_at, Some(now));
        assert_eq!(o.forecasts[0].projected_usd, None);
        assert!(o.recommendations.is_empty());
    }
}
