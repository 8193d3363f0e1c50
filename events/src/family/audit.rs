//! The `audit` family: who did what, to what, with what outcome, when and from where. One
//! stream, `audit/log`, appended at its exact version, so its records have one order and form
//! a hash chain: each carries the SHA-256 of its predecessor and its own, computed over its
//! fields (`chain_hash`). Changing, removing or reordering a stored record breaks the chain
//! at that record, which `verify` names (`revo audit verify`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::family::EventFamily;

pub const AUDIT_STREAM: &str = "audit";
/// The one stream id of the audit log.
pub const AUDIT_LOG: &str = "log";
/// The `prev_sha256` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who acted, as the server knew them at the time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditActor {
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub key_id: Option<Uuid>,
    /// The roles in force for the request (a key's own, when narrower).
    pub roles: Vec<String>,
}

/// One audited action, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: AuditActor,
    /// `auth.login`, `user.created`, `key.revoked`, `access.denied`, ... (docs/api.md).
    pub action: String,
    /// What it was done to: `user:<id>`, `key:<id>`, `budget:<id>`, `room:<id>`,
    /// `workflow:<id>`, `run:<id>`, or an operation (`GET /users`).
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// The client address (as `[http] trusted_proxies` resolve it) and user agent.
    pub client: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<Uuid>,
    /// Repeats folded into this record (failed sign-ins under a flood: one record per source
    /// and username per minute).
    pub count: u64,
    /// What else matters for the action (`reason`, `roles_before`, `roles_after`, ...).
    pub detail: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AuditEvent {
    #[serde(rename = "audit.recorded")]
    Recorded {
        #[serde(flatten)]
        entry: AuditEntry,
        prev_sha256: String,
        sha256: String,
    },
}

impl EventFamily for AuditEvent {
    fn event_type(&self) -> &'static str {
        "audit.recorded"
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        (event_type == "audit.recorded").then_some(1)
    }
}

/// The hash of a record: SHA-256 over its predecessor's hash and its fields as JSON (field
/// order fixed by the struct, `detail` sorted), lowercase hex.
pub fn chain_hash(prev: &str, entry: &AuditEntry) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    // A struct of strings, ids, numbers and a sorted map always serialises.
    h.update(serde_json::to_vec(entry).unwrap_or_default());
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Chains `entry` after a record whose hash is `prev`.
pub fn chained(prev: &str, entry: AuditEntry) -> AuditEvent {
    let sha256 = chain_hash(prev, &entry);
    AuditEvent::Recorded {
        entry,
        prev_sha256: prev.to_owned(),
        sha256,
    }
}

/// Where a chain stops fitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The record's version in `audit/log` (1 for the first).
    pub version: i64,
    pub event_id: Uuid,
    pub reason: String,
}

/// Follows a chain record by record; `feed` each stored event in version order.
#[derive(Debug, Clone)]
pub struct Verifier {
    prev: String,
    next_version: i64,
    pub checked: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            prev: GENESIS.to_owned(),
            next_version: 1,
            checked: 0,
        }
    }
}

impl Verifier {
    /// Checks the next record: its place, its link to the one before, and its own hash.
    pub fn feed(&mut self, rec: &RecordedEvent) -> Result<(), Broken> {
        let env = &rec.envelope;
        let broken = |reason: String| Broken {
            version: env.version,
            event_id: env.event_id,
            reason,
        };
        if env.version != self.next_version {
            return Err(broken(format!(
                "expected record {}, found {}: a record is missing",
                self.next_version, env.version
            )));
        }
        let AuditEvent::Recorded {
            entry,
            prev_sha256,
            sha256,
        } = AuditEvent::decode(env).map_err(|e| broken(format!("does not decode: {e}")))?;
        if prev_sha256 != self.prev {
            return Err(broken(format!(
                "its predecessor's hash is {prev_sha256}, but the record before it hashes to {}",
                self.prev
            )));
        }
        let actual = chain_hash(&prev_sha256, &entry);
        if actual != sha256 {
            return Err(broken(format!(
                "its fields hash to {actual}, not the {sha256} it carries: it was changed"
            )));
        }
        self.prev = sha256;
        self.next_version += 1;
        self.checked += 1;
        Ok(())
    }

    /// The hash the next record must carry as `prev_sha256`.
    pub fn head(&self) -> &str {
        &self.prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, EventMeta};

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            at: Utc::now(),
            actor: AuditActor {
                user_id: Some(Uuid::now_v7()),
                username: Some("ann".into()),
                key_id: None,
                roles: vec!["admin".into()],
            },
            action: action.into(),
            target: Some("user:x".into()),
            outcome: "success".into(),
            client: Some("127.0.0.1".into()),
            user_agent: None,
            request_id: None,
            count: 1,
            detail: BTreeMap::from([("reason".into(), "test".into())]),
        }
    }

    fn stored(version: i64, ev: &AuditEvent) -> RecordedEvent {
        let n = ev.to_new_event(EventMeta::default()).unwrap();
        RecordedEvent {
            position: version,
            envelope: Envelope {
                event_id: n.event_id,
                stream_type: AUDIT_STREAM.into(),
                stream_id: AUDIT_LOG.into(),
                version,
                event_type: n.event_type,
                schema: n.schema,
                occurred_at: n.occurred_at,
                meta: n.meta,
                payload: n.payload,
            },
        }
    }

    #[test]
    fn a_chain_verifies_and_names_the_first_altered_record() {
        let mut prev = GENESIS.to_owned();
        let mut recs = Vec::new();
        for (i, a) in ["auth.login", "user.created", "key.revoked"]
            .iter()
            .enumerate()
        {
            let ev = chained(&prev, entry(a));
            let AuditEvent::Recorded { sha256, .. } = &ev;
            prev = sha256.clone();
            recs.push(stored(i as i64 + 1, &ev));
        }
        let mut v = Verifier::default();
        for r in &recs {
            v.feed(r).unwrap();
        }
        assert_eq!(v.checked, 3);

        // Record 2 altered in place (its outcome), its hashes left as they were.
        let AuditEvent::Recorded {
            mut entry,
            prev_sha256,
            sha256,
        } = AuditEvent::decode(&recs[1].envelope).unwrap();
        entry.outcome = "failure".into();
        let forged = AuditEvent::Recorded {
            entry,
            prev_sha256,
            sha256,
        };
        let mut tampered = recs.clone();
        tampered[1] = stored(2, &forged);
        let mut v = Verifier::default();
        v.feed(&tampered[0]).unwrap();
        let e = v.feed(&tampered[1]).unwrap_err();
        assert_eq!(e.version, 2);
        assert!(e.reason.contains("changed"), "{}", e.reason);

        // A record removed: the next one names the gap.
        let mut v = Verifier::default();
        v.feed(&recs[0]).unwrap();
        assert_eq!(v.feed(&recs[2]).unwrap_err().version, 3);
    }
}
