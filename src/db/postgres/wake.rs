//! Wake-ups and leases on Postgres.
//!
//! Commits of this process wake local readers at once (the group committer bumps their signal)
//! and are announced to other processes with one `NOTIFY` per burst, off the commit path. Notifications from other processes wake local
//! readers. While committed events wait for an older open transaction (which no notification
//! announces), readers are woken on a timer that backs off from 10 ms to 1 s, and the wait
//! is exported as `revo_store_held_back_seconds`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use revo_events::store::Lease;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{watch, Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// NOTIFY channel that wakes readers in other processes after a commit.
pub(super) const CHANNEL: &str = "revo_events";

/// Least time between two NOTIFYs of one process: bounds their cost under load, and so how much
/// later than local readers other nodes hear of a commit.
const NOTIFY_GAP: Duration = Duration::from_millis(2);

/// How soon readers look again once events are held back by an open transaction, and at most
/// how long they wait while it stays open: the retry backs off from the first to the second.
const HELD_BACK_RETRY: Duration = Duration::from_millis(10);
const HELD_BACK_RETRY_MAX: Duration = Duration::from_secs(1);

/// Committed events that readers cannot see yet because an older transaction is still open
/// (anywhere on the Postgres server): since when, as a metric, and a wake-up for readers.
pub(super) struct HeldBack {
    notify: Notify,
    since: std::sync::Mutex<Option<std::time::Instant>>,
    gauge: prometheus::Gauge,
}

impl HeldBack {
    pub(super) fn new(gauge: prometheus::Gauge) -> Self {
        HeldBack {
            notify: Notify::new(),
            since: std::sync::Mutex::new(None),
            gauge,
        }
    }

    /// A read found committed events it could not return.
    pub(super) fn held(&self) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        let at = *since.get_or_insert_with(std::time::Instant::now);
        self.gauge.set(at.elapsed().as_secs_f64());
        drop(since);
        self.notify.notify_one();
    }

    /// A read made progress, or found nothing waiting.
    pub(super) fn clear(&self) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if since.take().is_some() {
            self.gauge.set(0.0);
        }
    }

    /// A tenth of the time held so far, from 10 ms to 1 s: quick for the usual short wait,
    /// cheap during a long one.
    fn retry_delay(&self) -> Duration {
        let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
        since
            .map_or(HELD_BACK_RETRY, |s| s.elapsed() / 10)
            .clamp(HELD_BACK_RETRY, HELD_BACK_RETRY_MAX)
    }
}

fn bump(signal: &watch::Sender<u64>) {
    signal.send_modify(|n| *n = n.wrapping_add(1));
}

/// Announces local commits, coalesced, to other processes.
pub(super) async fn announce(
    pool: PgPool,
    mut committed: watch::Receiver<u64>,
    me: String,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = committed.changed() => if changed.is_err() { return },
        }
        committed.borrow_and_update();
        // Commits that land while this NOTIFY runs are covered by the next one.
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&me)
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "NOTIFY failed; other nodes fall back to polling");
        }
        tokio::time::sleep(NOTIFY_GAP).await;
    }
}

/// Wakes local readers when another process commits (LISTEN), or while committed events wait
/// for an older transaction, reconnecting as needed.
pub(super) async fn listen(
    pool: PgPool,
    signal: Arc<watch::Sender<u64>>,
    held_back: Arc<HeldBack>,
    me: String,
    stop: CancellationToken,
) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                // A Notify, not a flag: a reader that finds events held back while this loop
                // already waits must still wake it (a flag was only read when the wait began).
                _ = held_back.notify.notified() => {
                    tokio::time::sleep(held_back.retry_delay()).await;
                    bump(&signal);
                }
                n = listener.try_recv() => match n {
                    Ok(Some(n)) if n.payload() == me => {}
                    Ok(Some(_)) => bump(&signal),
                    // Connection lost and re-established: something may have been missed.
                    Ok(None) => bump(&signal),
                    Err(_) => break,
                },
            }
        }
    }
}

/// A session-level advisory lock on a connection of its own.
pub(super) struct PgLease {
    pub(super) conn: Mutex<PgConnection>,
}

#[async_trait]
impl Lease for PgLease {
    async fn still_held(&self) -> bool {
        let mut conn = self.conn.lock().await;
        let held: Result<bool, _> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
               AND pid = pg_backend_pid() AND granted)",
        )
        .fetch_one(&mut *conn)
        .await;
        held.unwrap_or(false)
    }
}
