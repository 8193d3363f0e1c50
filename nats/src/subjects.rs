//! Every NATS subject Revo uses, built from typed parts in this one place.
//!
//! - `<prefix>.evt.<stream_type>.<stream_id>`: committed events (JetStream, persisted).
//! - `<prefix>.sig.<kind>.<id>`: ephemeral signals (core NATS, not persisted).
//!
//! The prefix is `revo` in production; tests use their own so they can run in parallel.

/// Subject builder for one deployment (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` cannot be part of a NATS subject (1-128 characters, no dots, wildcards or spaces)")]
pub struct BadToken(pub String);

/// Whether `t` can be a single subject token.
pub fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '='))
}

fn token(t: &str) -> Result<&str, BadToken> {
    if valid_token(t) {
        Ok(t)
    } else {
        Err(BadToken(t.to_owned()))
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            prefix: "revo".into(),
        }
    }
}

impl Subjects {
    /// A deployment prefix: one token of lower-case letters, digits, `-` or `_`.
    pub fn new(prefix: &str) -> Result<Self, BadToken> {
        if !valid_token(prefix) || prefix.contains(':') || prefix.contains('=') {
            return Err(BadToken(prefix.to_owned()));
        }
        Ok(Subjects {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The JetStream stream holding committed events: `REVO_EVENTS` for prefix `revo`.
    pub fn events_stream(&self) -> String {
        format!(
            "{}_EVENTS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// `<prefix>.evt.>`: every event.
    pub fn all_events(&self) -> String {
        format!("{}.evt.>", self.prefix)
    }

    /// `<prefix>.evt.<stream_type>.<stream_id>`.
    pub fn event(&self, stream_type: &str, stream_id: &str) -> Result<String, BadToken> {
        Ok(format!(
            "{}.evt.{}.{}",
            self.prefix,
            token(stream_type)?,
            token(stream_id)?
        ))
    }

    /// `<prefix>.evt.<stream_type>.*`: every stream of one type.
    pub fn events_of_type(&self, stream_type: &str) -> Result<String, BadToken> {
        Ok(format!("{}.evt.{}.*", self.prefix, token(stream_type)?))
    }

    /// `<prefix>.sig.<kind>.<id>`.
    pub fn signal(&self, kind: &str, id: &str) -> Result<String, BadToken> {
        Ok(format!(
            "{}.sig.{}.{}",
            self.prefix,
            token(kind)?,
            token(id)?
        ))
    }

    /// `<prefix>.sig.<kind>.*`: every signal of one kind.
    pub fn signals_of_kind(&self, kind: &str) -> Result<String, BadToken> {
        Ok(format!("{}.sig.{}.*", self.prefix, token(kind)?))
    }

    /// `<prefix>.cmd.model.<model>`: generation requests, taken by the model's workers as one
    /// queue group.
    pub fn model_requests(&self, model: &str) -> Result<String, BadToken> {
        Ok(format!("{}.cmd.model.{}", self.prefix, token(model)?))
    }

    /// `<prefix>.cmd.worker.<worker>.cancel`: requests a worker should drop (payload: the
    /// request's reply subject).
    pub fn worker_cancel(&self, worker: &str) -> Result<String, BadToken> {
        Ok(format!(
            "{}.cmd.worker.{}.cancel",
            self.prefix,
            token(worker)?
        ))
    }

    /// `<prefix>.sig.>`.
    pub fn all_signals(&self) -> String {
        format!("{}.sig.>", self.prefix)
    }
}

/// NATS subject matching: `*` matches one token, a final `>` one or more.
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_subjects() {
        let s = Subjects::default();
        assert_eq!(s.event("node", "n-1").unwrap(), "revo.evt.node.n-1");
        assert_eq!(s.events_stream(), "REVO_EVENTS");
        assert_eq!(
            s.signal("typing", "room1").unwrap(),
            "revo.sig.typing.room1"
        );
        assert!(s.event("a.b", "x").is_err());
        assert!(s.event("a", "*").is_err());
        assert!(s.event("a", "").is_err());
        assert_eq!(
            Subjects::new("t-1x").unwrap().events_stream(),
            "T_1X_EVENTS"
        );
        assert!(Subjects::new("a.b").is_err());
        assert_eq!(
            s.model_requests("smollm2").unwrap(),
            "revo.cmd.model.smollm2"
        );
        assert!(s.model_requests("a.b").is_err());
        assert_eq!(s.worker_cancel("w1").unwrap(), "revo.cmd.worker.w1.cancel");
    }

    #[test]
    fn wildcards() {
        assert!(matches("revo.evt.>", "revo.evt.node.1"));
        assert!(!matches("revo.evt.>", "revo.evt"));
        assert!(matches("revo.evt.node.*", "revo.evt.node.1"));
        assert!(!matches("revo.evt.node.*", "revo.evt.node.1.2"));
        assert!(!matches("revo.evt.node.*", "revo.evt.room.1"));
        assert!(matches("revo.evt.node.1", "revo.evt.node.1"));
        assert!(!matches("revo.evt.node.1", "revo.evt.node.2"));
    }
}
