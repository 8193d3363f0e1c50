//! Reading a definition's JSON objects field by field, collecting every problem with its path.

use std::collections::BTreeSet;

use revo_events::Usd;
use serde_json::{Map, Value};

use super::Problem;
use crate::workflows::http::HttpPolicy;

pub(super) struct Checker<'a> {
    pub(super) problems: Vec<Problem>,
    pub(super) http: &'a HttpPolicy,
    pub(super) steps_seen: usize,
}

impl Checker<'_> {
    pub(super) fn bad(
        &mut self,
        path: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) {
        if self.problems.len() < 100 {
            self.problems.push(Problem {
                path: path.into(),
                code,
                message: message.into(),
            });
        }
    }
}

/// Reads the fields of one JSON object, remembering each problem with its path.
pub(super) struct Fields<'o> {
    pub(super) path: String,
    pub(super) obj: &'o Map<String, Value>,
    pub(super) used: BTreeSet<&'static str>,
}

impl<'o> Fields<'o> {
    pub(super) fn get(&mut self, key: &'static str) -> Option<&'o Value> {
        self.used.insert(key);
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    pub(super) fn string(
        &mut self,
        c: &mut Checker,
        key: &'static str,
        required: bool,
    ) -> Option<String> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                c.bad(self.at(key), "bad_type", format!("`{key}` is a string"));
                None
            }
            None => {
                if required {
                    c.bad(
                        self.at(key),
                        "missing_field",
                        format!("`{key}` is required"),
                    );
                }
                None
            }
        }
    }

    pub(super) fn uint(&mut self, c: &mut Checker, key: &'static str, max: u64) -> Option<u64> {
        match self.get(key) {
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Some(n),
                _ => {
                    c.bad(
                        self.at(key),
                        "bad_type",
                        format!("`{key}` is a whole number up to {max}"),
                    );
                    None
                }
            },
            None => None,
        }
    }

    pub(super) fn number(
        &mut self,
        c: &mut Checker,
        key: &'static str,
        lo: f64,
        hi: f64,
    ) -> Option<f64> {
        match self.get(key) {
            Some(v) => match v.as_f64() {
                Some(n) if (lo..=hi).contains(&n) => Some(n),
                _ => {
                    c.bad(
                        self.at(key),
                        "bad_type",
                        format!("`{key}` is a number from {lo} to {hi}"),
                    );
                    None
                }
            },
            None => None,
        }
    }

    pub(super) fn boolean(&mut self, c: &mut Checker, key: &'static str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                c.bad(
                    self.at(key),
                    "bad_type",
                    format!("`{key}` is true or false"),
                );
                None
            }
            None => None,
        }
    }

    pub(super) fn ids(&mut self, c: &mut Checker, key: &'static str) -> Vec<String> {
        match self.get(key) {
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                c.bad(
                    self.at(key),
                    "bad_type",
                    format!("`{key}` is a list of step ids"),
                );
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    pub(super) fn usd(&mut self, c: &mut Checker, key: &'static str) -> Option<Usd> {
        let s = match self.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                c.bad(
                    self.at(key),
                    "bad_type",
                    format!("`{key}` is dollars as a decimal string"),
                );
                return None;
            }
            None => return None,
        };
        match Usd::parse(&s) {
            Ok(u) => Some(u),
            Err(e) => {
                c.bad(self.at(key), "invalid_value", format!("`{key}`: {e}"));
                None
            }
        }
    }

    /// Fields nobody asked for.
    pub(super) fn finish(self, c: &mut Checker) {
        for k in self.obj.keys() {
            if !self.used.contains(k.as_str()) {
                c.bad(
                    format!("{}.{k}", self.path),
                    "unknown_field",
                    format!("unknown field `{k}`"),
                );
            }
        }
    }
}

pub(super) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
