//! `revo budgets set | list | delete`: budgets from the command line, against the configured
//! store (the same events as `POST /budgets`; see docs/api.md, "Budgets").

use std::io::Write;

use anyhow::{bail, Context};
use chrono::Utc;
use revo_actors::{fold_from_zero, FoldUntil};
use revo_events::family::budget::{period_key, BudgetEvent, BUDGET_STREAM};
use revo_events::{
    AppendRequest, BudgetsProjection, Directory, EventFamily, EventMeta, EventStore,
    ExpectedVersion, StoreError, Usd,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// One budget per scope, subject and period: its id is derived from them, so two admins
/// setting the same budget at once update one stream instead of creating two.
pub fn budget_id(scope: &str, subject: Uuid, period: &str) -> Uuid {
    let digest = Sha256::digest(format!("revo-budget:{scope}:{subject}:{period}"));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Checks a budget's fields; the limit, parsed.
pub fn check(scope: &str, period: &str, limit_usd: &str) -> Result<Usd, String> {
    if !matches!(scope, "user" | "key") {
        return Err("scope is `user` or `key`".into());
    }
    if !matches!(period, "day" | "month" | "total") {
        return Err("period is `day`, `month` or `total`".into());
    }
    Usd::parse(limit_usd).map_err(|e| format!("limit_usd: {e}"))
}

fn cli_meta() -> EventMeta {
    EventMeta {
        actor: Some("cli".into()),
        ..Default::default()
    }
}

/// Appends a budget event to its budget's stream (at any version: a budget's definition is
/// last-writer-wins); the stream's new version. Shared by the CLI and the HTTP API.
pub async fn append(
    store: &dyn EventStore,
    id: Uuid,
    ev: &BudgetEvent,
    meta: EventMeta,
) -> Result<i64, StoreError> {
    let new = ev
        .to_new_event(meta)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let req = AppendRequest::new(
        BUDGET_STREAM,
        id.to_string(),
        ExpectedVersion::Any,
        vec![new],
    );
    Ok(store.append(req).await?.stream_version)
}

const BATCH: usize = 4096;
const HEAD: FoldUntil = FoldUntil::Head {
    wait: std::time::Duration::from_secs(5),
};

pub async fn set(
    store: &dyn EventStore,
    scope: &str,
    subject: Uuid,
    period: &str,
    limit_usd: &str,
) -> anyhow::Result<Uuid> {
    let limit = check(scope, period, limit_usd).map_err(|e| anyhow::anyhow!(e))?;
    let mut dir = Directory::default();
    fold_from_zero(store, &mut dir, HEAD, BATCH)
        .await
        .context("reading the users and keys")?;
    let exists = match scope {
        "user" => dir.user(&subject).is_some(),
        _ => dir.key(&subject).is_some(),
    };
    if !exists {
        bail!("no {scope} with id {subject}");
    }
    let id = budget_id(scope, subject, period);
    let ev = BudgetEvent::Set {
        budget_id: id,
        scope: scope.into(),
        subject_id: subject,
        period: period.into(),
        limit_usd: limit,
    };
    append(store, id, &ev, cli_meta()).await?;
    Ok(id)
}

pub async fn delete(store: &dyn EventStore, id: Uuid) -> anyhow::Result<()> {
    let mut p = BudgetsProjection::default();
    fold_from_zero(store, &mut p, HEAD, BATCH).await?;
    if p.get(&id).is_none() {
        bail!("no budget {id}");
    }
    append(
        store,
        id,
        &BudgetEvent::Deleted { budget_id: id },
        cli_meta(),
    )
    .await?;
    Ok(())
}

pub async fn list(store: &dyn EventStore, out: &mut impl Write) -> anyhow::Result<()> {
    let mut p = BudgetsProjection::default();
    fold_from_zero(store, &mut p, HEAD, BATCH).await?;
    let now = Utc::now();
    writeln!(
        out,
        "{:<36} {:<5} {:<36} {:<10} {:>14} {:>14} {:>14}",
        "budget", "scope", "subject", "period", "limit", "spent", "held"
    )?;
    for b in p.all() {
        let period = period_key(&b.period, now);
        writeln!(
            out,
            "{:<36} {:<5} {:<36} {:<10} {:>14} {:>14} {:>14}",
            b.budget_id,
            b.scope,
            b.subject_id,
            period,
            b.limit_usd.to_string(),
            b.spent(&period).to_string(),
            b.held(&period, now).to_string()
        )?;
    }
    Ok(())
}
