//! Budgets on the hot path: admission against this edge's leases, in memory.
//!
//! A request's worst case is held on a lease of every budget that applies to it (its user's,
//! its key's and those of every key above it, so a key cannot shed its budget by minting a
//! child; each of day, month, total). A lease with room admits at once; one without asks
//! the log for another slice of the budget (`budget.lease_granted`, appended at the budget
//! stream's exact version, so concurrent edges never share headroom). When the request ends,
//! its attempts are recorded naming the leases (`holds`), and the holds settle to the exact
//! cost. The `router.budgets` actor renews leases in use and releases idle ones, so another
//! edge can use what is left. A dead edge's leases expire (`lease_ttl`), after which they count
//! only what their recorded attempts spent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use revo_events::family::budget::{period_key, BudgetEvent, BUDGET_STREAM};
use revo_events::{
    AppendRequest, BudgetsProjection, Directory, EventFamily, EventMeta, EventStore,
    ExpectedVersion, Hold, StoreError, Usd,
};
use uuid::Uuid;

use crate::kit::Supervisor;
use crate::LiveView;

#[derive(Debug, Clone)]
pub struct BudgetSettings {
    /// How long a lease lives unless renewed (its edge renews it while in use).
    pub lease_ttl: Duration,
    /// A slice is about 1/`slices` of the limit (at least one request's worst case).
    pub slices: u32,
    /// A lease unused this long is given back.
    pub idle_release: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            lease_ttl: Duration::from_secs(30),
            slices: 16,
            idle_release: Duration::from_secs(2),
        }
    }
}

/// This edge's use of one lease.
#[derive(Debug)]
struct Lease {
    id: Uuid,
    period: String,
    amount: Usd,
    /// Settled spend, and worst cases of requests in flight.
    used: Usd,
    held: Usd,
    in_flight: usize,
    expires_at: chrono::DateTime<Utc>,
    last_use: Instant,
}

impl Lease {
    fn room(&self) -> Usd {
        let taken = self.used.checked_add(self.held).unwrap_or(self.amount);
        self.amount.checked_sub(taken).unwrap_or(Usd::ZERO)
    }
}

/// One request's hold on one lease.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub hold: Hold,
    worst: Usd,
}

/// A budget refused the request.
#[derive(Debug, Clone)]
pub struct Exceeded {
    pub budget_id: Uuid,
    pub period: String,
    /// What the budget has left in the period (less than the request's worst case).
    pub remaining: Usd,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("budget exceeded")]
    Exceeded(Exceeded),
    #[error("the budget store is unavailable: {0}")]
    Store(String),
}

struct Inner {
    view: LiveView<BudgetsProjection>,
    /// The users directory: which key minted which.
    directory: LiveView<Directory>,
    store: Arc<dyn EventStore>,
    node: String,
    settings: BudgetSettings,
    /// Per budget: its leases here, behind an async lock that serialises taking a new slice.
    local: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Vec<Lease>>>>>,
    /// Per budget: the stream version of this edge's latest append (grant, renewal, release).
    /// A refusal first waits for the view to show it, so a lease given back a moment ago is
    /// not still counted as held.
    appended: Mutex<HashMap<Uuid, i64>>,
}

#[derive(Clone)]
pub struct Budgets {
    inner: Arc<Inner>,
}

/// How long admission waits for the view to show a grant it (or another edge) appended.
const CATCH_UP: Duration = Duration::from_secs(2);
const GRANT_TRIES: usize = 50;

impl Budgets {
    pub fn new(
        view: LiveView<BudgetsProjection>,
        directory: LiveView<Directory>,
        store: Arc<dyn EventStore>,
        node: String,
        settings: BudgetSettings,
    ) -> Budgets {
        Budgets {
            inner: Arc::new(Inner {
                view,
                directory,
                store,
                node,
                settings,
                local: Mutex::new(HashMap::new()),
                appended: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn view(&self) -> &LiveView<BudgetsProjection> {
        &self.inner.view
    }

    /// The keys whose budgets a request through `key` is held to: the key and every key
    /// above it. A key this edge's directory has not folded yet (minted a moment ago, maybe
    /// on another edge) is waited for, so its parents are never missed.
    pub async fn lineage(&self, key: Option<Uuid>) -> Result<Vec<Uuid>, BudgetError> {
        let Some(k) = key else {
            return Ok(Vec::new());
        };
        let known = |d: &Directory| d.key(&k).map(|_| d.key_lineage(k));
        if let Some(l) = known(&self.inner.directory.read()) {
            return Ok(l);
        }
        self.inner
            .directory
            .wait_until(CATCH_UP, known)
            .await
            .ok_or_else(|| BudgetError::Store(format!("key {k} is not in the directory yet")))
    }

    /// Whether any budget applies to this caller (requests without one skip admission);
    /// `keys` is the request's key lineage.
    pub fn applies(&self, user: Uuid, keys: &[Uuid]) -> bool {
        !self.inner.view.read().applying(user, keys).is_empty()
    }

    fn local(&self, budget: Uuid) -> Arc<tokio::sync::Mutex<Vec<Lease>>> {
        let mut l = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        l.entry(budget).or_default().clone()
    }

    /// Holds `worst` on every budget that applies, or none of them.
    pub async fn admit(
        &self,
        user: Uuid,
        keys: &[Uuid],
        worst: Usd,
    ) -> Result<Vec<Ticket>, BudgetError> {
        if worst == Usd::ZERO {
            return Ok(Vec::new());
        }
        let mut ids: Vec<Uuid> = {
            let v = self.inner.view.read();
            v.applying(user, keys).iter().map(|b| b.budget_id).collect()
        };
        ids.sort();
        let mut tickets = Vec::with_capacity(ids.len());
        for id in ids {
            match self.admit_one(id, worst).await {
                Ok(Some(t)) => tickets.push(t),
                Ok(None) => {}
                Err(e) => {
                    for t in tickets {
                        self.settle(t, Usd::ZERO).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(tickets)
    }

    async fn admit_one(&self, budget: Uuid, worst: Usd) -> Result<Option<Ticket>, BudgetError> {
        let local = self.local(budget);
        let mut leases = local.lock().await;
        for _ in 0..GRANT_TRIES {
            let now = Utc::now();
            let (limit, version, period, committed) = {
                let v = self.inner.view.read();
                let Some(b) = v.get(&budget) else {
                    return Ok(None); // deleted meanwhile
                };
                let period = period_key(&b.period, now);
                (
                    b.limit_usd,
                    b.version,
                    period.clone(),
                    b.committed(&period, now),
                )
            };
            // A lease of this period with room, not about to expire.
            let margin =
                chrono::Duration::from_std(self.inner.settings.lease_ttl / 3).unwrap_or_default();
            if let Some(l) = leases
                .iter_mut()
                .find(|l| l.period == period && l.expires_at - margin > now && l.room() >= worst)
            {
                l.held = l.held.checked_add(worst).unwrap_or(l.held);
                l.in_flight += 1;
                l.last_use = Instant::now();
                return Ok(Some(Ticket {
                    hold: Hold {
                        budget_id: budget,
                        lease_id: l.id,
                        period,
                    },
                    worst,
                }));
            }
            // A lease with room that is only close to its expiry (the tending actor is late
            // renewing it, e.g. on a starved machine) is renewed here rather than left
            // unused while the view still counts it in full.
            if let Some(l) = leases
                .iter_mut()
                .find(|l| l.period == period && l.expires_at > now && l.room() >= worst)
            {
                let expires_at = now
                    + chrono::Duration::from_std(self.inner.settings.lease_ttl).unwrap_or_default();
                let ev = BudgetEvent::LeaseRenewed {
                    budget_id: budget,
                    lease_id: l.id,
                    expires_at,
                };
                match self.append(budget, ev, ExpectedVersion::Any).await {
                    Ok(_) => {
                        l.expires_at = expires_at;
                        continue;
                    }
                    Err(e) => return Err(BudgetError::Store(e.to_string())),
                }
            }
            let headroom = limit.checked_sub(committed).unwrap_or(Usd::ZERO);
            let ours = self.appended_version(budget);
            if headroom < worst && version < ours {
                // The view has not yet seen this edge's own latest change (a release).
                self.catch_up(budget, ours).await;
                continue;
            }
            if headroom < worst {
                return Err(BudgetError::Exceeded(Exceeded {
                    budget_id: budget,
                    period,
                    remaining: headroom,
                }));
            }
            let amount = slice(limit, headroom, worst, self.inner.settings.slices);
            let lease_id = Uuid::now_v7();
            let expires_at =
                now + chrono::Duration::from_std(self.inner.settings.lease_ttl).unwrap_or_default();
            let ev = BudgetEvent::LeaseGranted {
                budget_id: budget,
                lease_id,
                node: self.inner.node.clone(),
                period: period.clone(),
                amount_usd: amount,
                expires_at,
            };
            match self
                .append(budget, ev, ExpectedVersion::Exact(version))
                .await
            {
                Ok(v) => {
                    leases.push(Lease {
                        id: lease_id,
                        period,
                        amount,
                        used: Usd::ZERO,
                        held: Usd::ZERO,
                        in_flight: 0,
                        expires_at,
                        last_use: Instant::now(),
                    });
                    self.catch_up(budget, v).await;
                }
                // Another edge took a slice first: see it, then decide again.
                Err(StoreError::Conflict { .. }) => self.catch_up(budget, version + 1).await,
                Err(e) => return Err(BudgetError::Store(e.to_string())),
            }
        }
        Err(BudgetError::Store(
            "could not take a budget lease (too much contention)".into(),
        ))
    }

    /// Waits until the view has folded the budget stream through `version`.
    async fn catch_up(&self, budget: Uuid, version: i64) {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let seen = self
                .inner
                .view
                .read()
                .get(&budget)
                .map_or(i64::MAX, |b| b.version);
            if seen >= version || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn append(
        &self,
        budget: Uuid,
        ev: BudgetEvent,
        expected: ExpectedVersion,
    ) -> Result<i64, StoreError> {
        let meta = EventMeta {
            actor: Some("system".into()),
            ..EventMeta::default()
        };
        let new = ev
            .to_new_event(meta)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let req = AppendRequest::new(BUDGET_STREAM, budget.to_string(), expected, vec![new]);
        let v = self.inner.store.append(req).await?.stream_version;
        let mut a = self
            .inner
            .appended
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let e = a.entry(budget).or_default();
        *e = (*e).max(v);
        Ok(v)
    }

    fn appended_version(&self, budget: Uuid) -> i64 {
        let a = self
            .inner
            .appended
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        a.get(&budget).copied().unwrap_or(0)
    }

    /// Ends a hold: its worst case is released and `cost` counted (after the request's
    /// attempts were recorded, so a release that follows never precedes them in the log).
    pub async fn settle(&self, t: Ticket, cost: Usd) {
        let local = self.local(t.hold.budget_id);
        let mut leases = local.lock().await;
        if let Some(l) = leases.iter_mut().find(|l| l.id == t.hold.lease_id) {
            l.held = l.held.checked_sub(t.worst).unwrap_or(Usd::ZERO);
            l.used = l.used.checked_add(cost).unwrap_or(l.used);
            l.in_flight = l.in_flight.saturating_sub(1);
            l.last_use = Instant::now();
        }
    }

    /// Renews leases in use, releases idle ones, and forgets those of deleted budgets.
    pub async fn tend(&self) -> Result<(), StoreError> {
        let budgets: Vec<(Uuid, Arc<tokio::sync::Mutex<Vec<Lease>>>)> = {
            let l = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
            l.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        let s = &self.inner.settings;
        let ttl = chrono::Duration::from_std(s.lease_ttl).unwrap_or_default();
        let mut failed = None;
        for (budget, local) in budgets {
            let mut leases = local.lock().await;
            let now = Utc::now();
            let mut keep = Vec::with_capacity(leases.len());
            for mut l in std::mem::take(&mut *leases) {
                let idle = l.in_flight == 0 && l.last_use.elapsed() >= s.idle_release;
                let spent_out = l.in_flight == 0 && l.room() == Usd::ZERO;
                if failed.is_none() && (idle || spent_out) {
                    let ev = BudgetEvent::LeaseReleased {
                        budget_id: budget,
                        lease_id: l.id,
                    };
                    match self.append(budget, ev, ExpectedVersion::Any).await {
                        Ok(_) => continue,
                        Err(e) => failed = Some(e),
                    }
                } else if failed.is_none() && l.expires_at - now < ttl * 2 / 3 {
                    let expires_at = now + ttl;
                    let ev = BudgetEvent::LeaseRenewed {
                        budget_id: budget,
                        lease_id: l.id,
                        expires_at,
                    };
                    match self.append(budget, ev, ExpectedVersion::Any).await {
                        Ok(_) => l.expires_at = expires_at,
                        Err(e) => failed = Some(e),
                    }
                }
                keep.push(l);
            }
            *leases = keep;
        }
        failed.map_or(Ok(()), Err)
    }

    /// Runs [`Budgets::tend`] every `every` under the supervisor as `router.budgets`; at
    /// shutdown gives every idle lease back.
    pub fn start(&self, sup: &Supervisor, every: Duration) {
        let b = self.clone();
        sup.spawn("router.budgets", move |ctx| {
            let b = b.clone();
            async move {
                ctx.health.ready();
                loop {
                    match b.tend().await {
                        Ok(()) => ctx.health.ready(),
                        Err(e) => ctx
                            .health
                            .degraded(format!("cannot tend budget leases: {e}")),
                    }
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            }
        });
    }
}

/// A slice: about `limit / slices`, a whole number of `worst` (so identical requests use all
/// of it), at least one `worst`, at most the headroom.
pub fn slice(limit: Usd, headroom: Usd, worst: Usd, slices: u32) -> Usd {
    let w = worst.picos().max(1);
    let target = limit.picos() / u128::from(slices.max(1));
    let n = (target / w).max(1);
    let fits = headroom.picos() / w;
    Usd::from_picos(n.min(fits).max(1) * w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_whole_requests_within_the_headroom() {
        let u = |s: &str| Usd::parse(s).unwrap();
        // Limit 50 requests of 1: a sixteenth is 3.125, so 3 requests.
        assert_eq!(slice(u("50"), u("50"), u("1"), 16), u("3"));
        // Near the end, only what fits.
        assert_eq!(slice(u("50"), u("2"), u("1"), 16), u("2"));
        // A request bigger than a sixteenth gets a slice of its own size.
        assert_eq!(slice(u("50"), u("50"), u("10"), 16), u("10"));
    }
}
