//! Workflow definitions: the JSON a user writes, parsed and checked as a whole. Every problem
//! is reported with its JSON path (`steps[2].prompt`), and nothing is stored unless there are
//! none.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use revo_events::Usd;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

mod fields;
mod link;
mod parse;

use super::http::HttpPolicy;
use super::schema;
use fields::{Checker, Fields};

/// Most steps in one definition (a `map`'s inner steps count).
pub const MAX_STEPS: usize = 200;
/// Longest definition, as JSON.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;
/// Headers an `http` step may not set.
const FORBIDDEN_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

/// Most levels of `workflow` steps (a child's child ...).
pub const MAX_DEPTH: u32 = 8;

/// Most items one `map` runs.
pub const MAX_MAP_ITEMS: usize = 10_000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// Where, as a JSON path from the definition's root.
    pub path: String,
    /// `unknown_step`, `cycle`, `unknown_variable`, `bad_type`, `unknown_host`,
    /// `missing_field`, `unknown_field`, `duplicate_step`, `invalid_value`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Definition {
    pub name: String,
    pub input_schema: Option<Value>,
    pub steps: Vec<Step>,
    /// The run's output; default: every step nothing depends on, by id.
    pub output: Option<Value>,
    pub cost_limit: Option<Usd>,
    /// What a step that could exceed `cost_limit` does: fail the run, or ask for approval.
    pub cost_approval: bool,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    pub backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    /// Steps this one waits for: those it references, its `after`, and the condition whose
    /// branch lists it.
    pub deps: BTreeSet<String>,
    pub retry: Retry,
    pub timeout: Option<Duration>,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub struct Gen {
    pub prompt: String,
    pub system: Option<String>,
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub force_local: bool,
    pub cascade: bool,
    pub fallback_allowed: Option<bool>,
    pub cost_limit: Option<Usd>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Equals,
    NotEquals,
    Contains,
    Gt,
    Gte,
    Lt,
    Lte,
    Truthy,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Generate(Gen),
    Template {
        text: String,
    },
    /// JSON from `from` (text); with `prompt`, a model writes the text first. A reply that
    /// does not fit `schema` gets one repair attempt from the model.
    Extract {
        from: Option<String>,
        gen: Gen,
        schema: Value,
        repair: bool,
    },
    Condition {
        value: String,
        op: Op,
        operand: Value,
        then: Vec<String>,
        otherwise: Vec<String>,
    },
    Map {
        items: String,
        concurrency: usize,
        steps: Vec<Step>,
    },
    Http {
        method: String,
        url: String,
        headers: BTreeMap<String, String>,
        body: Option<Value>,
        max_bytes: usize,
    },
    Sleep {
        seconds: f64,
    },
    Approval {
        message: Option<String>,
        timeout: Option<Duration>,
    },
    Workflow {
        workflow_id: Uuid,
        input: Value,
    },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Generate(_) => "generate",
            Kind::Template { .. } => "template",
            Kind::Extract { .. } => "extract",
            Kind::Condition { .. } => "condition",
            Kind::Map { .. } => "map",
            Kind::Http { .. } => "http",
            Kind::Sleep { .. } => "sleep",
            Kind::Approval { .. } => "approval",
            Kind::Workflow { .. } => "workflow",
        }
    }

    /// The model calls a step makes (its worst case is what the run's cost limit checks).
    pub fn gen(&self) -> Option<&Gen> {
        match self {
            Kind::Generate(g) => Some(g),
            Kind::Extract { gen, .. } if !gen.prompt.is_empty() || gen.model.is_some() => Some(gen),
            _ => None,
        }
    }
}

impl Definition {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Steps nothing else depends on.
    pub fn leaves(&self) -> Vec<&str> {
        let used: BTreeSet<&str> = self
            .steps
            .iter()
            .flat_map(|s| s.deps.iter().map(String::as_str))
            .collect();
        self.steps
            .iter()
            .map(|s| s.id.as_str())
            .filter(|id| !used.contains(id))
            .collect()
    }

    /// The condition step whose branch lists `id`, with whether it is the `then` branch.
    pub fn branch_of(&self, id: &str) -> Option<(&str, bool)> {
        self.steps.iter().find_map(|s| match &s.kind {
            Kind::Condition {
                then, otherwise, ..
            } => {
                if then.iter().any(|x| x == id) {
                    Some((s.id.as_str(), true))
                } else if otherwise.iter().any(|x| x == id) {
                    Some((s.id.as_str(), false))
                } else {
                    None
                }
            }
            _ => None,
        })
    }
}

/// Parses and checks a definition. `Err` holds every problem found.
pub fn parse(v: &Value, http: &HttpPolicy) -> Result<Definition, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
        http,
        steps_seen: 0,
    };
    let Some(obj) = v.as_object() else {
        c.bad("$", "bad_type", "a definition is a JSON object");
        return Err(c.problems);
    };
    let mut f = Fields {
        path: "$".into(),
        obj,
        used: BTreeSet::new(),
    };
    let name = f.string(&mut c, "name", true).unwrap_or_default();
    let name = name.trim().to_owned();
    if obj.contains_key("name") && (name.is_empty() || name.chars().count() > 100) {
        c.bad("$.name", "invalid_value", "`name` is 1-100 characters");
    }
    let input_schema = f.get("input").cloned();
    if let Some(s) = &input_schema {
        let mut bad = Vec::new();
        schema::check(s, "$.input", &mut bad);
        for (p, m) in bad {
            c.bad(p, "bad_type", m);
        }
    }
    let cost_limit = f.usd(&mut c, "cost_limit");
    let cost_approval = match f.string(&mut c, "on_cost_limit", false).as_deref() {
        None | Some("fail") => false,
        Some("approval") => true,
        Some(_) => {
            c.bad(
                "$.on_cost_limit",
                "invalid_value",
                "`on_cost_limit` is `fail` or `approval`",
            );
            false
        }
    };
    let timeout = f
        .uint(&mut c, "timeout_s", 30 * 86_400)
        .map(Duration::from_secs);
    let output = f.get("output").cloned();
    let steps = match f.get("steps") {
        Some(Value::Array(a)) if !a.is_empty() => parse::parse_steps(&mut c, a, "$.steps", false),
        Some(Value::Array(_)) => {
            c.bad(
                "$.steps",
                "invalid_value",
                "`steps` needs at least one step",
            );
            Vec::new()
        }
        Some(_) => {
            c.bad("$.steps", "bad_type", "`steps` is a list");
            Vec::new()
        }
        None => {
            c.bad("$.steps", "missing_field", "`steps` is required");
            Vec::new()
        }
    };
    f.finish(&mut c);
    let mut def = Definition {
        name,
        input_schema,
        steps,
        output,
        cost_limit,
        cost_approval,
        timeout,
    };
    link::link(&mut c, &mut def);
    if c.problems.is_empty() {
        Ok(def)
    } else {
        Err(c.problems)
    }
}

/// Checks a run's input against the definition's schema.
pub fn check_input(def: &Definition, input: &Value) -> Vec<Problem> {
    let Some(s) = &def.input_schema else {
        return Vec::new();
    };
    let mut out = Vec::new();
    schema::validate(s, input, "$.input", &mut out);
    out.into_iter()
        .map(|(path, message)| Problem {
            path,
            code: "bad_type",
            message,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> HttpPolicy {
        HttpPolicy::new(vec!["api.example.com".into()], Vec::new()).unwrap()
    }

    #[test]
    fn a_good_definition_links_its_dependencies() {
        let d = parse(
            &json!({"name": "brief", "input": {"type": "object", "properties": {"text": {"type": "string"}}},
                "steps": [
                    {"id": "summary", "type": "generate", "prompt": "Summarise: {{ input.text }}", "max_tokens": 64},
                    {"id": "ok", "type": "approval", "after": ["summary"]},
                    {"id": "t", "type": "template", "template": "{{ steps.summary.output }}!"}
                ]}),
            &policy(),
        )
        .unwrap();
        assert!(d.step("ok").unwrap().deps.contains("summary"));
        assert!(d.step("t").unwrap().deps.contains("summary"));
        assert_eq!(d.leaves(), vec!["ok", "t"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let e = parse(
            &json!({"name": "x", "input": {"type": "object", "properties": {"a": {"type": "string"}}},
                "steps": [
                    {"id": "a", "type": "template", "template": "{{ steps.b.output }}"},
                    {"id": "b", "type": "template", "template": "{{ steps.a.output }} {{ input.zz }}"},
                    {"id": "c", "type": "template", "template": "{{ steps.nope.output }} {{ foo }}"},
                    {"id": "d", "type": "generate", "prompt": "x", "max_tokens": "many"},
                    {"id": "e", "type": "http", "url": "https://evil.example.net/x"}
                ]}),
            &policy(),
        )
        .unwrap_err();
        let codes: Vec<(&str, &str)> = e.iter().map(|p| (p.path.as_str(), p.code)).collect();
        for want in [
            ("$.steps[1].template", "unknown_variable"),
            ("$.steps[2].template", "unknown_step"),
            ("$.steps[2].template", "unknown_variable"),
            ("$.steps[3].max_tokens", "bad_type"),
            ("$.steps[4].url", "unknown_host"),
            ("$.steps[0]", "cycle"),
            ("$.steps[1]", "cycle"),
        ] {
            assert!(codes.contains(&want), "{want:?} not in {codes:?}");
        }
    }
}
