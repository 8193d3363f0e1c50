//! `revo replay list | rebuild | verify | cost` and `revo events tail`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use revo_actors::{fold_from_zero, FoldUntil};
use revo_events::codec::envelope_to_json;
use revo_events::family::system::PROJECTION_STREAM;
use revo_events::projection::diff_rows;
use revo_events::store::wait_for_change;
use revo_events::{
    AppendRequest, EventFamily, EventMeta, EventStore, ExpectedVersion, SystemEvent,
};

use crate::cli::{CostArgs, TailArgs};
use crate::ledger;
use crate::projections;

const BATCH: usize = 4096;

/// How long a rebuild waits for open transactions that hold back the newest events.
const HEAD_WAIT: Duration = Duration::from_secs(30);

fn projection(name: &str) -> anyhow::Result<Box<dyn revo_events::Projection>> {
    projections::by_name(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown projection `{name}`; this build has: {}",
            projections::names().join(", ")
        )
    })
}

pub async fn list(store: &dyn EventStore, out: &mut impl Write) -> anyhow::Result<()> {
    let stored = store.list_read_models().await?;
    let head = store.head_position().await?;
    writeln!(
        out,
        "{:<16} {:>10} {:>12} {:>10}  updated",
        "projection", "generation", "position", "rows"
    )?;
    for name in projections::names() {
        match stored.iter().find(|s| s.name == name) {
            Some(s) => writeln!(
                out,
                "{:<16} {:>10} {:>12} {:>10}  {}",
                s.name,
                s.generation,
                s.position,
                s.rows,
                s.updated_at.to_rfc3339()
            )?,
            None => writeln!(
                out,
                "{name:<16} {:>10} {:>12} {:>10}  never run",
                "-", "-", "-"
            )?,
        }
    }
    writeln!(out, "event log head position: {head}")?;
    Ok(())
}

pub async fn rebuild(
    store: &dyn EventStore,
    name: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut p = projection(name)?;
    let started = Instant::now();
    let stats = fold_from_zero(
        store,
        p.as_mut(),
        FoldUntil::Head { wait: HEAD_WAIT },
        BATCH,
    )
    .await
    .with_context(|| format!("rebuilding `{name}` stopped"))?;
    let rows = p.rows();
    let generation = store
        .replace_read_model(name, &rows, stats.position)
        .await?;
    let event = SystemEvent::ProjectionRebuilt {
        projection: name.to_owned(),
        generation,
        position: stats.position,
        rows: rows.len() as u64,
        events: stats.events,
    };
    let meta = EventMeta {
        actor: Some("system".into()),
        ..Default::default()
    };
    store
        .append(AppendRequest::new(
            PROJECTION_STREAM,
            name,
            ExpectedVersion::Any,
            vec![event.to_new_event(meta)?],
        ))
        .await?;
    writeln!(
        out,
        "rebuilt `{name}`: generation {generation}, {} events folded in {:.2?}, {} rows, checkpoint {}",
        stats.events,
        started.elapsed(),
        rows.len(),
        stats.position
    )?;
    Ok(())
}

/// Returns whether the live read model matches a rebuild (printing the diff if not).
pub async fn verify(
    store: &dyn EventStore,
    name: &str,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let mut p = projection(name)?;
    let live = store.load_read_model(name).await?;
    let stats = fold_from_zero(store, p.as_mut(), FoldUntil::Position(live.position), BATCH)
        .await
        .with_context(|| format!("rebuilding `{name}` into scratch stopped"))?;
    let diff = diff_rows(&live.rows, &p.rows());
    if diff.is_empty() {
        writeln!(
            out,
            "`{name}` verified: {} rows match a rebuild of {} events (checkpoint {}, generation {})",
            live.rows.len(),
            stats.events,
            live.position,
            live.generation
        )?;
        return Ok(true);
    }
    writeln!(
        out,
        "`{name}` has DRIFTED: {} of its rows differ from a rebuild of {} events (checkpoint {}):",
        diff.len(),
        stats.events,
        live.position
    )?;
    for d in diff {
        writeln!(out, "{d}")?;
    }
    Ok(false)
}

pub async fn tail(
    store: Arc<dyn EventStore>,
    args: &TailArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut after = args.from;
    let mut signal = store.append_signal();
    // Without --follow, print at least through the newest event committed before the call,
    // waiting (bounded) for older open transactions that hold it back.
    let head = store.head_position().await?;
    let mut seen_head = head <= args.from;
    let deadline = tokio::time::Instant::now() + HEAD_WAIT;
    loop {
        signal.borrow_and_update();
        let events = store.read_all(after, BATCH).await?;
        if events.is_empty() {
            if !args.follow && (seen_head || tokio::time::Instant::now() >= deadline) {
                return Ok(());
            }
            out.flush()?;
            wait_for_change(
                &mut signal,
                Duration::from_millis(if args.follow { 250 } else { 20 }),
            )
            .await;
            continue;
        }
        for ev in &events {
            after = ev.position;
            seen_head |= ev.position == head;
            let env = &ev.envelope;
            if args
                .stream_type
                .as_deref()
                .is_some_and(|t| t != env.stream_type)
                || args
                    .stream_id
                    .as_deref()
                    .is_some_and(|i| i != env.stream_id)
            {
                continue;
            }
            let json = match envelope_to_json(ev.position, env) {
                Ok(j) => j,
                Err(e) => bail!("event {} at position {}: {e}", env.event_id, ev.position),
            };
            writeln!(out, "{json}")?;
        }
    }
}

/// `revo replay cost`: every cent recomputed from the raw events (a fresh fold of the ledger,
/// never the stored read model).
pub async fn cost(
    store: &dyn EventStore,
    args: &CostArgs,
    reference: Option<(&str, revo_events::PriceSheet)>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let by = ledger::By::parse(&args.by)
        .with_context(|| format!("--by `{}`: one of user, key, model, provider, day", args.by))?;
    for d in [&args.from, &args.to].into_iter().flatten() {
        if !ledger::valid_day(d) {
            bail!("`{d}` is not a day (YYYY-MM-DD)");
        }
    }
    if !matches!(args.format.as_str(), "table" | "json" | "csv") {
        bail!("--format `{}`: one of table, json, csv", args.format);
    }
    let mut p = revo_events::LedgerProjection::default();
    let stats = fold_from_zero(store, &mut p, FoldUntil::Head { wait: HEAD_WAIT }, BATCH)
        .await
        .context("folding the generation events")?;
    let filter = ledger::Filter {
        from: args.from.clone(),
        to: args.to.clone(),
        user: None,
        key: None,
    };
    let r = ledger::report(p.rows_iter(), &filter, by, reference);
    match args.format.as_str() {
        "json" => writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?,
        "csv" => {
            writeln!(out, "{},requests,served_locally,failed_attempts,input_tokens,cache_read_tokens,cache_write_tokens,output_tokens,reasoning_tokens,cost_usd,escalated_attempts", args.by)?;
            for l in r.groups.iter().chain(std::iter::once(&r.total)) {
                let t = &l.tokens;
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{}",
                    l.key,
                    l.requests,
                    l.served_locally,
                    l.failed_attempts,
                    t.input,
                    t.cache_read,
                    t.cache_write,
                    t.output,
                    t.reasoning,
                    l.cost_usd,
                    l.escalated_attempts
                )?;
            }
        }
        _ => {
            writeln!(
                out,
                "{:<38} {:>9} {:>7} {:>7} {:>9} {:>12} {:>12} {:>10} {:>16}",
                args.by,
                "requests",
                "local",
                "failed",
                "escalated",
                "input",
                "cache r/w",
                "output",
                "cost (USD)"
            )?;
            for l in r.groups.iter().chain(std::iter::once(&r.total)) {
                let t = &l.tokens;
                writeln!(
                    out,
                    "{:<38} {:>9} {:>7} {:>7} {:>9} {:>12} {:>12} {:>10} {:>16}",
                    l.key,
                    l.requests,
                    l.served_locally,
                    l.failed_attempts,
                    l.escalated_attempts,
                    t.input,
                    format!("{}/{}", t.cache_read, t.cache_write),
                    t.output,
                    l.cost_usd
                )?;
            }
            writeln!(
                out,
                "served locally: {:.1}% of requests, {:.1}% of tokens",
                r.local_request_share * 100.0,
                r.local_token_share * 100.0
            )?;
            if let Some(s) = &r.savings {
                writeln!(
                    out,
                    "savings against {}: ${} (the same tokens there: ${})",
                    s.reference_model, s.savings_usd, s.reference_cost_usd
                )?;
            }
            writeln!(
                out,
                "({} events folded, through position {})",
                stats.events, stats.position
            )?;
        }
    }
    Ok(())
}
