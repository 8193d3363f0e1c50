//! Wake-ups and leases on Postgres.
//!
//! Commits of this process wake local readers at once (the group committer bumps their signal)
//! and are announced to other processes with one `NOTIFY` per burst, off the commit path. Notifications from other processes wake local
//! readers. While committed events wait for an older open transaction (which no notification
//! announces), readers are woken on a short timer.

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

/// How often readers are woken while events are held back by an open transaction.
const HELD_BACK_RETRY: Duration = Duration::from_millis(10);

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
    held_back: Arc<Notify>,
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
                _ = held_back.notified() => {
                    tokio::time::sleep(HELD_BACK_RETRY).await;
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
