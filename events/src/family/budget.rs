//! The `budget` family: spending limits per user or API key, and the leases through which
//! edges spend them. Stream `budget/<budget id>`.
//!
//! An edge never asks the database per request. It takes a **lease**, a slice of a budget's
//! headroom for the current period, appended with the stream's exact version, so that two
//! edges can never both take the same headroom; it admits requests against its lease in
//! memory, and each request's `generation.attempt` events name the leases they spent
//! (`holds`). A budget's committed amount in a period is then
//!
//! - what its closed leases spent (released, or expired with their edge gone), exactly, from
//!   the attempt events, plus
//! - the whole amount of each live lease (its edge may spend all of it),
//!
//! and a lease is granted only while committed + the new lease ≤ limit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::family::generation::GenerationEvent;
use crate::family::models::GENERATION_STREAM;
use crate::family::EventFamily;
use crate::money::Usd;
use crate::projection::{from_rows, to_rows, Projection, ProjectionError, Rows};

pub const BUDGET_STREAM: &str = "budget";

/// One lease a request spent against (recorded in its attempts).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hold {
    pub budget_id: Uuid,
    pub lease_id: Uuid,
    /// The lease's period (`2026-12-02`, `2026-12`, `total`).
    pub period: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum BudgetEvent {
    /// A budget created, or its limit changed.
    #[serde(rename = "budget.set")]
    Set {
        budget_id: Uuid,
        /// `user` or `key`.
        scope: String,
        subject_id: Uuid,
        /// `day`, `month` or `total`.
        period: String,
        limit_usd: Usd,
    },
    #[serde(rename = "budget.deleted")]
    Deleted { budget_id: Uuid },
    /// An edge took a slice of the budget's headroom in `period`, until `expires_at`.
    #[serde(rename = "budget.lease_granted")]
    LeaseGranted {
        budget_id: Uuid,
        lease_id: Uuid,
        node: String,
        period: String,
        amount_usd: Usd,
        expires_at: DateTime<Utc>,
    },
    /// The edge is alive and still using the lease.
    #[serde(rename = "budget.lease_renewed")]
    LeaseRenewed {
        budget_id: Uuid,
        lease_id: Uuid,
        expires_at: DateTime<Utc>,
    },
    /// The edge gave the lease back; what it spent is final (every request it admitted has
    /// been recorded before this).
    #[serde(rename = "budget.lease_released")]
    LeaseReleased { budget_id: Uuid, lease_id: Uuid },
}

impl EventFamily for BudgetEvent {
    fn event_type(&self) -> &'static str {
        match self {
            BudgetEvent::Set { .. } => "budget.set",
            BudgetEvent::Deleted { .. } => "budget.deleted",
            BudgetEvent::LeaseGranted { .. } => "budget.lease_granted",
            BudgetEvent::LeaseRenewed { .. } => "budget.lease_renewed",
            BudgetEvent::LeaseReleased { .. } => "budget.lease_released",
        }
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        match event_type {
            "budget.set"
            | "budget.deleted"
            | "budget.lease_granted"
            | "budget.lease_renewed"
            | "budget.lease_released" => Some(1),
            _ => None,
        }
    }
}

/// The period key of `at` for a budget period (`day`, `month`, `total`).
pub fn period_key(period: &str, at: DateTime<Utc>) -> String {
    match period {
        "day" => at.format("%Y-%m-%d").to_string(),
        "month" => format!("{:04}-{:02}", at.year(), at.month()),
        _ => "total".to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRow {
    pub lease_id: Uuid,
    pub node: String,
    pub period: String,
    pub amount_usd: Usd,
    pub expires_at: DateTime<Utc>,
    /// Spent so far, from the attempt events that name it.
    pub used_usd: Usd,
    /// When this process takes the lease for expired, on its own monotonic clock: the lease's
    /// duration as its edge wrote it (`expires_at` less the event's time, both that edge's
    /// clock) counted from when this process folded the grant or renewal. So edges whose
    /// clocks disagree still agree on how long a lease lives (judging `expires_at` against
    /// another edge's wall clock let a skew of ~25 s count a live lease as expired). Not
    /// saved: a lease loaded from saved rows is judged by `expires_at` until it is renewed.
    #[serde(skip)]
    pub local_deadline: Option<std::time::Instant>,
}

/// How long a lease event says its lease lives from when it was written (0 to a day).
fn lease_duration(expires_at: DateTime<Utc>, written: DateTime<Utc>) -> std::time::Duration {
    (expires_at - written)
        .to_std()
        .unwrap_or_default()
        .min(std::time::Duration::from_secs(86_400))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetRow {
    pub budget_id: Uuid,
    pub scope: String,
    pub subject_id: Uuid,
    pub period: String,
    pub limit_usd: Usd,
    pub created_at: DateTime<Utc>,
    /// The stream's version (a lease is granted against exactly this).
    pub version: i64,
    /// Spent by closed leases, by period.
    pub settled: BTreeMap<String, Usd>,
    /// Leases not released (live, or expired with their edge gone).
    pub leases: BTreeMap<Uuid, LeaseRow>,
    /// Deleted: limits nothing and is not shown, but keeps what was spent, so setting the
    /// same budget again (the same derived id) does not forget the period's spend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// How long after its expiry a lease still counts in full: the attempts its edge recorded
/// just before dying reach every edge's view within this.
pub const EXPIRY_GRACE_SECS: i64 = 5;

impl BudgetRow {
    /// Spent in `period`: closed leases, and what the others have spent so far.
    pub fn spent(&self, period: &str) -> Usd {
        let open: Usd = self
            .leases
            .values()
            .filter(|l| l.period == period)
            .fold(Usd::ZERO, |s, l| s.checked_add(l.used_usd).unwrap_or(s));
        let settled = self.settled.get(period).copied().unwrap_or_default();
        settled.checked_add(open).unwrap_or(settled)
    }

    fn live(l: &LeaseRow, now: DateTime<Utc>) -> bool {
        match l.local_deadline {
            Some(d) => {
                std::time::Instant::now()
                    < d + std::time::Duration::from_secs(EXPIRY_GRACE_SECS as u64)
            }
            None => now < l.expires_at + chrono::Duration::seconds(EXPIRY_GRACE_SECS),
        }
    }

    /// Held in `period`: the unspent part of live leases.
    pub fn held(&self, period: &str, now: DateTime<Utc>) -> Usd {
        self.leases
            .values()
            .filter(|l| l.period == period && Self::live(l, now))
            .fold(Usd::ZERO, |s, l| {
                let left = l.amount_usd.checked_sub(l.used_usd).unwrap_or(Usd::ZERO);
                s.checked_add(left).unwrap_or(s)
            })
    }

    /// Committed in `period`: spent, plus what live leases may still spend.
    pub fn committed(&self, period: &str, now: DateTime<Utc>) -> Usd {
        let spent = self.spent(period);
        spent.checked_add(self.held(period, now)).unwrap_or(spent)
    }
}

/// Every budget with its leases: the `budgets` projection.
#[derive(Debug, Default, Clone)]
pub struct BudgetsProjection {
    budgets: BTreeMap<Uuid, BudgetRow>,
    /// Subject (user or key) → its budgets: admission looks a request's budgets up here on
    /// every request, so it must not scan them all.
    by_subject: HashMap<Uuid, Vec<Uuid>>,
}

impl BudgetsProjection {
    pub fn get(&self, id: &Uuid) -> Option<&BudgetRow> {
        self.budgets.get(id).filter(|b| !b.deleted)
    }

    pub fn all(&self) -> impl Iterator<Item = &BudgetRow> {
        self.budgets.values().filter(|b| !b.deleted)
    }

    /// The budgets of `subject` (a user's or a key's id) in `scope` (`user` or `key`).
    pub fn of(&self, scope: &'static str, subject: Uuid) -> impl Iterator<Item = &BudgetRow> {
        self.by_subject
            .get(&subject)
            .into_iter()
            .flatten()
            .filter_map(|id| self.budgets.get(id))
            .filter(move |b| b.scope == scope)
    }

    /// The budgets that apply to a request by `user` through `keys`: the request's key and
    /// every key above it (`Directory::key_lineage`), none for a token.
    pub fn applying(&self, user: Uuid, keys: &[Uuid]) -> Vec<&BudgetRow> {
        let mut out: Vec<&BudgetRow> = self.of("user", user).collect();
        for k in keys {
            out.extend(self.of("key", *k));
        }
        out
    }

    /// The budget for (scope, subject, period), if one is set.
    pub fn find(&self, scope: &str, subject: Uuid, period: &str) -> Option<&BudgetRow> {
        self.by_subject
            .get(&subject)?
            .iter()
            .filter_map(|id| self.budgets.get(id))
            .find(|b| b.scope == scope && b.period == period)
    }

    fn index(&mut self) {
        self.by_subject.clear();
        for b in self.budgets.values().filter(|b| !b.deleted) {
            self.by_subject
                .entry(b.subject_id)
                .or_default()
                .push(b.budget_id);
        }
    }

    fn charge(&mut self, hold: &Hold, cost: Usd) {
        let Some(b) = self.budgets.get_mut(&hold.budget_id) else {
            return;
        };
        match b.leases.get_mut(&hold.lease_id) {
            Some(l) => l.used_usd = l.used_usd.checked_add(cost).unwrap_or(l.used_usd),
            // Released already (a late record): it still counts.
            None => {
                let s = b.settled.entry(hold.period.clone()).or_default();
                *s = s.checked_add(cost).unwrap_or(*s);
            }
        }
    }
}

impl Projection for BudgetsProjection {
    fn name(&self) -> &'static str {
        "budgets"
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        let env = &event.envelope;
        if env.stream_type == GENERATION_STREAM && env.event_type == "generation.attempt" {
            let GenerationEvent::Attempt {
                holds, cost_usd, ..
            } = GenerationEvent::decode(env).map_err(|e| ProjectionError::decode(event, e))?;
            for h in &holds {
                dirty.insert(h.budget_id.to_string());
                self.charge(h, cost_usd);
            }
            return Ok(());
        }
        if env.stream_type != BUDGET_STREAM {
            return Ok(());
        }
        let ev = BudgetEvent::decode(env).map_err(|e| ProjectionError::decode(event, e))?;
        let version = env.version;
        match ev {
            BudgetEvent::Set {
                budget_id,
                scope,
                subject_id,
                period,
                limit_usd,
            } => {
                dirty.insert(budget_id.to_string());
                if self.get(&budget_id).is_none() {
                    self.by_subject
                        .entry(subject_id)
                        .or_default()
                        .push(budget_id);
                }
                let row = self.budgets.entry(budget_id).or_insert_with(|| BudgetRow {
                    budget_id,
                    scope: scope.clone(),
                    subject_id,
                    period: period.clone(),
                    limit_usd,
                    created_at: env.occurred_at,
                    version,
                    settled: BTreeMap::new(),
                    leases: BTreeMap::new(),
                    deleted: false,
                });
                row.limit_usd = limit_usd;
                row.version = version;
                row.deleted = false;
            }
            BudgetEvent::Deleted { budget_id } => {
                dirty.insert(budget_id.to_string());
                if let Some(b) = self.budgets.get_mut(&budget_id) {
                    b.deleted = true;
                    b.version = version;
                    if let Some(ids) = self.by_subject.get_mut(&b.subject_id) {
                        ids.retain(|id| *id != budget_id);
                        if ids.is_empty() {
                            self.by_subject.remove(&b.subject_id);
                        }
                    }
                }
            }
            BudgetEvent::LeaseGranted {
                budget_id,
                lease_id,
                node,
                period,
                amount_usd,
                expires_at,
            } => {
                dirty.insert(budget_id.to_string());
                if let Some(b) = self.budgets.get_mut(&budget_id) {
                    b.version = version;
                    b.leases.insert(
                        lease_id,
                        LeaseRow {
                            lease_id,
                            node,
                            period,
                            amount_usd,
                            expires_at,
                            used_usd: Usd::ZERO,
                            local_deadline: Some(
                                std::time::Instant::now()
                                    + lease_duration(expires_at, env.occurred_at),
                            ),
                        },
                    );
                }
            }
            BudgetEvent::LeaseRenewed {
                budget_id,
                lease_id,
                expires_at,
            } => {
                dirty.insert(budget_id.to_string());
                if let Some(b) = self.budgets.get_mut(&budget_id) {
                    b.version = version;
                    if let Some(l) = b.leases.get_mut(&lease_id) {
                        l.expires_at = l.expires_at.max(expires_at);
                        let d =
                            std::time::Instant::now() + lease_duration(expires_at, env.occurred_at);
                        l.local_deadline = Some(l.local_deadline.map_or(d, |x| x.max(d)));
                    }
                }
            }
            BudgetEvent::LeaseReleased {
                budget_id,
                lease_id,
            } => {
                dirty.insert(budget_id.to_string());
                if let Some(b) = self.budgets.get_mut(&budget_id) {
                    b.version = version;
                    if let Some(l) = b.leases.remove(&lease_id) {
                        let s = b.settled.entry(l.period).or_default();
                        *s = s.checked_add(l.used_usd).unwrap_or(*s);
                    }
                }
            }
        }
        Ok(())
    }

    fn row(&self, key: &str) -> Option<serde_json::Value> {
        let id = Uuid::parse_str(key).ok()?;
        self.budgets
            .get(&id)
            .and_then(|r| serde_json::to_value(r).ok())
    }

    fn rows(&self) -> Rows {
        let by_key: BTreeMap<String, &BudgetRow> = self
            .budgets
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        to_rows(&by_key)
    }

    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError> {
        let by_key: BTreeMap<String, BudgetRow> = from_rows(rows)?;
        self.budgets = by_key.into_values().map(|r| (r.budget_id, r)).collect();
        self.index();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn lease(amount: &str, used: &str, expires_at: DateTime<Utc>) -> LeaseRow {
        LeaseRow {
            lease_id: Uuid::now_v7(),
            node: "n".into(),
            period: "total".into(),
            amount_usd: Usd::parse(amount).unwrap(),
            expires_at,
            used_usd: Usd::parse(used).unwrap(),
            local_deadline: None,
        }
    }

    #[test]
    fn live_leases_count_in_full_and_expired_ones_by_what_they_spent() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
        let mut b = BudgetRow {
            budget_id: Uuid::now_v7(),
            scope: "user".into(),
            subject_id: Uuid::nil(),
            period: "total".into(),
            limit_usd: Usd::parse("10").unwrap(),
            created_at: now,
            version: 1,
            settled: BTreeMap::from([("total".into(), Usd::parse("1").unwrap())]),
            leases: BTreeMap::new(),
            deleted: false,
        };
        let live = lease("2", "0.5", now + chrono::Duration::seconds(30));
        let dead = lease("3", "0.25", now - chrono::Duration::seconds(60));
        b.leases.insert(live.lease_id, live);
        b.leases.insert(dead.lease_id, dead);
        assert_eq!(b.spent("total").to_string(), "1.75");
        assert_eq!(b.held("total", now).to_string(), "1.5");
        assert_eq!(b.committed("total", now).to_string(), "3.25");
        // Just expired: still in full during the grace period.
        let recent = lease("1", "0", now - chrono::Duration::seconds(1));
        b.leases.insert(recent.lease_id, recent);
        assert_eq!(b.committed("total", now).to_string(), "4.25");
        assert_eq!(period_key("month", now), "2026-12");
        assert_eq!(period_key("day", now), "2026-12-02");
    }

    #[test]
    fn a_request_finds_its_user_and_key_budgets_through_the_index() {
        use crate::envelope::{Envelope, EventMeta};
        let at = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
        let recorded = |version: i64, id: Uuid, ev: &BudgetEvent| {
            let new = ev.to_new_event(EventMeta::default()).unwrap();
            RecordedEvent {
                position: version,
                envelope: Envelope {
                    event_id: new.event_id,
                    stream_type: BUDGET_STREAM.into(),
                    stream_id: id.to_string(),
                    version,
                    event_type: new.event_type,
                    schema: new.schema,
                    occurred_at: at,
                    meta: new.meta,
                    payload: new.payload,
                },
            }
        };
        let (user, other, key) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let set = |id: u128, scope: &str, subject: Uuid, period: &str| BudgetEvent::Set {
            budget_id: Uuid::from_u128(id),
            scope: scope.into(),
            subject_id: subject,
            period: period.into(),
            limit_usd: Usd::parse("1").unwrap(),
        };
        let mut p = BudgetsProjection::default();
        let mut dirty = BTreeSet::new();
        for (id, ev) in [
            (10, set(10, "user", user, "day")),
            (11, set(11, "user", user, "month")),
            (12, set(12, "user", other, "day")),
            (13, set(13, "key", key, "total")),
            // Set again: a new limit, not a second entry.
            (10, set(10, "user", user, "day")),
        ] {
            p.apply(&recorded(1, Uuid::from_u128(id), &ev), &mut dirty)
                .unwrap();
        }
        let ids = |v: Vec<&BudgetRow>| {
            let mut ids: Vec<u128> = v.iter().map(|b| b.budget_id.as_u128()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(p.applying(user, &[])), [10, 11]);
        assert_eq!(ids(p.applying(user, &[key])), [10, 11, 13]);
        assert_eq!(ids(p.applying(other, &[key])), [12, 13]);
        // A key's id used as a user finds no user budget.
        assert!(p.applying(key, &[]).is_empty());
        assert_eq!(
            p.find("user", user, "month").map(|b| b.budget_id.as_u128()),
            Some(11)
        );
        // A key minted by `key` is held to `key`'s budgets too (its lineage names both).
        let child = Uuid::from_u128(4);
        assert_eq!(ids(p.applying(user, &[child, key])), [10, 11, 13]);
        let b11 = Uuid::from_u128(11);
        p.budgets
            .get_mut(&b11)
            .unwrap()
            .settled
            .insert("2026-12".into(), Usd::parse("0.75").unwrap());
        let gone = BudgetEvent::Deleted { budget_id: b11 };
        p.apply(&recorded(2, b11, &gone), &mut dirty).unwrap();
        assert_eq!(ids(p.applying(user, &[])), [10]);
        assert!(p.get(&b11).is_none());
        assert_eq!(p.all().count(), 3);
        // Rebuilt from saved rows, the index is the same.
        let mut q = BudgetsProjection::default();
        q.load(p.rows()).unwrap();
        assert_eq!(ids(q.applying(user, &[key])), [10, 13]);
        // Set again after its deletion: the period's spend is still there.
        q.apply(
            &recorded(3, b11, &set(11, "user", user, "month")),
            &mut dirty,
        )
        .unwrap();
        assert_eq!(ids(q.applying(user, &[])), [10, 11]);
        assert_eq!(q.get(&b11).unwrap().spent("2026-12").to_string(), "0.75");

        // A lease granted by an edge whose clock is far behind (its `expires_at` is in this
        // process's past) still lives its whole duration here, counted from when it was
        // folded; loaded from saved rows, it falls back to `expires_at`.
        let lease_id = Uuid::from_u128(99);
        let grant = BudgetEvent::LeaseGranted {
            budget_id: Uuid::from_u128(10),
            lease_id,
            node: "slow-clock".into(),
            period: "2026-12-02".into(),
            amount_usd: Usd::parse("0.5").unwrap(),
            expires_at: at + chrono::Duration::seconds(30),
        };
        p.apply(&recorded(5, Uuid::from_u128(10), &grant), &mut dirty)
            .unwrap();
        let b10 = p.get(&Uuid::from_u128(10)).unwrap();
        assert_eq!(b10.held("2026-12-02", Utc::now()).to_string(), "0.5");
        let mut r = BudgetsProjection::default();
        r.load(p.rows()).unwrap();
        let b10 = r.get(&Uuid::from_u128(10)).unwrap();
        assert_eq!(b10.held("2026-12-02", Utc::now()), Usd::ZERO);
    }
}
