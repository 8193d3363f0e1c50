//! `revo audit`: the audit log's hash chain checked from the first record (`verify`), and
//! records written out as JSON lines with their hashes for an outside archive (`export`).

use std::io::Write;

use chrono::{DateTime, Utc};
use revo_events::family::audit::{AuditEvent, Verifier, AUDIT_LOG, AUDIT_STREAM};
use revo_events::{EventFamily, EventStore};

const PAGE: usize = 1000;

/// Recomputes the chain; prints the first record that does not fit. `Ok(false)`: broken.
pub async fn verify(store: &dyn EventStore, out: &mut impl Write) -> anyhow::Result<bool> {
    let mut v = Verifier::default();
    let mut from = 1;
    loop {
        let page = store
            .read_stream(AUDIT_STREAM, AUDIT_LOG, from, PAGE)
            .await?;
        let n = page.len();
        for rec in &page {
            if let Err(b) = v.feed(rec) {
                writeln!(
                    out,
                    "audit log broken at record {} (event {}): {}",
                    b.version, b.event_id, b.reason
                )?;
                writeln!(out, "{} records before it verify", v.checked)?;
                return Ok(false);
            }
            from = rec.envelope.version + 1;
        }
        if n < PAGE {
            break;
        }
    }
    writeln!(
        out,
        "audit log verifies: {} records, head sha256 {}",
        v.checked,
        v.head()
    )?;
    Ok(true)
}

/// Writes the records of `[from, to)` (by their time) as JSON lines: `seq`, the record's
/// fields, `prev_sha256` and `sha256`, so an archive can check the chain again.
pub async fn export(
    store: &dyn EventStore,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut n = 0;
    let mut next = 1;
    loop {
        let page = store
            .read_stream(AUDIT_STREAM, AUDIT_LOG, next, PAGE)
            .await?;
        let len = page.len();
        for rec in &page {
            next = rec.envelope.version + 1;
            let AuditEvent::Recorded {
                entry,
                prev_sha256,
                sha256,
            } = AuditEvent::decode(&rec.envelope)?;
            if from.is_some_and(|f| entry.at < f) || to.is_some_and(|t| entry.at >= t) {
                continue;
            }
            let mut line = serde_json::to_value(&entry)?;
            line["seq"] = rec.envelope.version.into();
            line["prev_sha256"] = prev_sha256.into();
            line["sha256"] = sha256.into();
            writeln!(out, "{line}")?;
            n += 1;
        }
        if len < PAGE {
            return Ok(n);
        }
    }
}
