//! The audit log's writer (docs/api.md, "Audit log"). Handlers hand it entries without
//! waiting; it chains them (`revo_events::family::audit`) and appends them to `audit/log` at
//! the stream's exact version, so records from every edge form one chain. A conflict means
//! another edge appended first: it reads that edge's last record and chains after it.
//!
//! Floods are folded: the first failed sign-in (or refused operation) of a source, name and
//! reason in a minute is recorded at once; the rest of that minute become one record with
//! their count.
//! So a flood adds at most one record per source, name and minute, and the folding map is
//! bounded too (past its size, new sources share one entry per action).
//!
//! Each record is also sent as an `audit.record` frame on `<prefix>.sig.audit.<node>`, which
//! every edge delivers to WebSocket sessions subscribed to `audit` (`audit:read`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use revo_events::family::audit::{
    chained, AuditEntry, AuditEvent, AUDIT_LOG, AUDIT_STREAM, GENESIS,
};
use revo_events::{AppendRequest, EventFamily, EventMeta, EventStore, ExpectedVersion, StoreError};
use revo_nats::{Bus, Subjects};
use tokio::sync::mpsc;

use crate::kit::{lock, Context, Supervisor};

/// Entries waiting to be written; past this, new ones are counted as lost and logged.
const QUEUE: usize = 16_384;
/// Sources folded per minute before new ones share one entry per action.
const MAX_FOLDED: usize = 10_000;
/// How often folded repeats are written.
const FOLD_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<AuditEntry>,
    folded: Arc<Mutex<HashMap<FoldKey, Folded>>>,
    lost: prometheus::IntCounter,
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct FoldKey {
    action: String,
    client: Option<String>,
    who: Option<String>,
    target: Option<String>,
    reason: Option<String>,
}

struct Folded {
    /// Repeats since the first (which was recorded at once).
    repeats: u64,
    last: DateTime<Utc>,
    sample: AuditEntry,
}

impl Audit {
    /// Starts the writer under the supervisor.
    pub fn start(
        store: Arc<dyn EventStore>,
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        node: String,
        sup: &Supervisor,
        lost: prometheus::IntCounter,
    ) -> Audit {
        let (tx, rx) = mpsc::channel(QUEUE);
        let audit = Audit {
            tx,
            folded: Arc::default(),
            lost,
        };
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let me = audit.clone();
        sup.spawn("audit", move |ctx| {
            let writer = Writer {
                store: store.clone(),
                bus: bus.clone(),
                subjects: subjects.clone(),
                node: node.clone(),
                version: 0,
                head: GENESIS.to_owned(),
            };
            let (rx, me) = (rx.clone(), me.clone());
            async move { writer.run(ctx, rx, me).await }
        });
        audit
    }

    /// Records `entry` (never waits; a full queue loses it, counted in
    /// `revo_audit_lost_total` and logged).
    pub fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.tx.try_send(entry) {
            self.lost.inc();
            let entry = match e {
                mpsc::error::TrySendError::Full(x) | mpsc::error::TrySendError::Closed(x) => x,
            };
            tracing::error!(action = %entry.action, target = ?entry.target, "audit: record lost (queue full)");
        }
    }

    /// Records a failure that can come in floods (a failed sign-in, a refused operation):
    /// the first of its source, name and target in a minute at once, the rest folded.
    pub fn record_repeatable(&self, entry: AuditEntry) {
        let who = entry
            .actor
            .username
            .clone()
            .or_else(|| entry.actor.user_id.map(|u| u.to_string()));
        let mut key = FoldKey {
            action: entry.action.clone(),
            client: entry.client.clone(),
            who,
            target: entry.target.clone(),
            reason: entry.detail.get("reason").cloned(),
        };
        let first = {
            let mut f = lock(&self.folded);
            if !f.contains_key(&key) && f.len() >= MAX_FOLDED {
                // Bounded: past the limit, new sources fold into one entry per action.
                key.client = None;
                key.who = Some("*".into());
                key.target = None;
                key.reason = None;
            }
            match f.get_mut(&key) {
                Some(x) => {
                    x.repeats += 1;
                    x.last = entry.at;
                    false
                }
                None => {
                    f.insert(
                        key,
                        Folded {
                            repeats: 0,
                            last: entry.at,
                            sample: entry.clone(),
                        },
                    );
                    true
                }
            }
        };
        if first {
            self.record(entry);
        }
    }

    /// The folded repeats of the window that ends now, as records with their count.
    fn drain_folded(&self) -> Vec<AuditEntry> {
        let window = std::mem::take(&mut *lock(&self.folded));
        window
            .into_values()
            .filter(|f| f.repeats > 0)
            .map(|f| {
                let mut e = f.sample;
                e.detail.insert("first_at".into(), e.at.to_rfc3339());
                e.detail.insert("last_at".into(), f.last.to_rfc3339());
                e.at = f.last;
                e.count = f.repeats;
                e.detail.insert("folded".into(), "true".into());
                e
            })
            .collect()
    }
}

struct Writer {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    node: String,
    /// The stream's version and last hash as this writer knows them.
    version: i64,
    head: String,
}

impl Writer {
    async fn run(
        mut self,
        ctx: Context,
        rx: Arc<tokio::sync::Mutex<mpsc::Receiver<AuditEntry>>>,
        audit: Audit,
    ) -> Result<(), String> {
        let mut rx = rx.lock().await;
        ctx.health.ready();
        let mut fold = tokio::time::interval(FOLD_WINDOW);
        fold.tick().await;
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(e) => {
                        batch.push(e);
                        // Whatever else is waiting goes in the same append.
                        while batch.len() < 256 {
                            match rx.try_recv() {
                                Ok(e) => batch.push(e),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return Ok(()),
                },
                _ = fold.tick() => batch.extend(audit.drain_folded()),
                _ = ctx.cancel.cancelled() => {
                    // What is queued still lands before the store closes.
                    while let Ok(e) = rx.try_recv() {
                        batch.push(e);
                    }
                    batch.extend(audit.drain_folded());
                    if !batch.is_empty() {
                        let _ = self.write(&batch).await;
                    }
                    return Ok(());
                }
            }
            if batch.is_empty() {
                continue;
            }
            // Kept until written: a store outage delays records, it does not lose them.
            let mut wait = Duration::from_millis(100);
            loop {
                match self.write(&batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "audit: not written yet; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = ctx.cancel.cancelled() => return Ok(()),
                        }
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
            batch.clear();
        }
    }

    /// Chains `entries` after the head and appends them at the exact version; after another
    /// edge's append, reads its last record and chains again.
    async fn write(&mut self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let meta = EventMeta {
            actor: Some("system".into()),
            ..EventMeta::default()
        };
        for _ in 0..50 {
            let mut prev = self.head.clone();
            let mut events = Vec::with_capacity(entries.len());
            let mut frames = Vec::with_capacity(entries.len());
            for e in entries {
                let ev = chained(&prev, e.clone());
                let AuditEvent::Recorded { sha256, .. } = &ev;
                prev = sha256.clone();
                frames.push(ev.clone());
                events.push(
                    ev.to_new_event(meta.clone())
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                );
            }
            let expected = if self.version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(self.version)
            };
            let req = AppendRequest::new(AUDIT_STREAM, AUDIT_LOG, expected, events);
            match self.store.append(req).await {
                Ok(a) => {
                    self.version = a.stream_version;
                    self.head = prev;
                    self.publish(&frames).await;
                    return Ok(());
                }
                Err(StoreError::Conflict { actual, .. }) => self.catch_up(actual).await?,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(
            "the audit log kept changing; will retry".into(),
        ))
    }

    /// Learns the stream's last record (at `version`) and its hash.
    async fn catch_up(&mut self, version: i64) -> Result<(), StoreError> {
        let page = self
            .store
            .read_stream(AUDIT_STREAM, AUDIT_LOG, version.max(1), 1)
            .await?;
        let Some(rec) = page.last() else {
            self.version = 0;
            self.head = GENESIS.to_owned();
            return Ok(());
        };
        let AuditEvent::Recorded { sha256, .. } =
            AuditEvent::decode(&rec.envelope).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.version = rec.envelope.version;
        self.head = sha256;
        Ok(())
    }

    async fn publish(&self, records: &[AuditEvent]) {
        let Ok(subject) = self.subjects.signal("audit", &self.node) else {
            return;
        };
        for r in records {
            let AuditEvent::Recorded { entry, .. } = r;
            let mut f = serde_json::to_value(entry).unwrap_or_default();
            f["type"] = "audit.record".into();
            let _ = self
                .bus
                .publish_signal(&subject, Bytes::from(f.to_string()))
                .await;
        }
    }
}
