//! Workflow definitions: the JSON a user writes, parsed and checked as a whole. Every problem
//! is reported with its JSON path (`steps[2].prompt`), and nothing is stored unless there are
//! none.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use revo_events::Usd;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::http::HttpPolicy;
use super::schema;
use super::template::{self, Ref};

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

struct Checker<'a> {
    problems: Vec<Problem>,
    http: &'a HttpPolicy,
    steps_seen: usize,
}

impl Checker<'_> {
    fn bad(&mut self, path: impl Into<String>, code: &'static str, message: impl Into<String>) {
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
struct Fields<'o> {
    path: String,
    obj: &'o Map<String, Value>,
    used: BTreeSet<&'static str>,
}

impl<'o> Fields<'o> {
    fn get(&mut self, key: &'static str) -> Option<&'o Value> {
        self.used.insert(key);
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn string(&mut self, c: &mut Checker, key: &'static str, required: bool) -> Option<String> {
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

    fn uint(&mut self, c: &mut Checker, key: &'static str, max: u64) -> Option<u64> {
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

    fn number(&mut self, c: &mut Checker, key: &'static str, lo: f64, hi: f64) -> Option<f64> {
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

    fn boolean(&mut self, c: &mut Checker, key: &'static str) -> Option<bool> {
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

    fn ids(&mut self, c: &mut Checker, key: &'static str) -> Vec<String> {
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

    fn usd(&mut self, c: &mut Checker, key: &'static str) -> Option<Usd> {
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
    fn finish(self, c: &mut Checker) {
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

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
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
        Some(Value::Array(a)) if !a.is_empty() => parse_steps(&mut c, a, "$.steps", false),
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
    link(&mut c, &mut def);
    if c.problems.is_empty() {
        Ok(def)
    } else {
        Err(c.problems)
    }
}

fn parse_steps(c: &mut Checker, a: &[Value], path: &str, inner: bool) -> Vec<Step> {
    let mut out = Vec::new();
    for (i, v) in a.iter().enumerate() {
        let p = format!("{path}[{i}]");
        c.steps_seen += 1;
        if c.steps_seen > MAX_STEPS {
            c.bad(p, "invalid_value", format!("more than {MAX_STEPS} steps"));
            break;
        }
        if let Some(s) = parse_step(c, v, &p, inner) {
            out.push(s);
        }
    }
    out
}

fn parse_gen(c: &mut Checker, f: &mut Fields, prompt_required: bool) -> Gen {
    let prompt = f.string(c, "prompt", prompt_required).unwrap_or_default();
    let route = f.string(c, "route", false);
    let cascade = match route.as_deref() {
        None | Some("auto") => false,
        Some("cascade") => true,
        Some(_) => {
            c.bad(
                f.at("route"),
                "invalid_value",
                "`route` is `auto` or `cascade`",
            );
            false
        }
    };
    Gen {
        prompt,
        system: f.string(c, "system", false),
        model: f.string(c, "model", false).filter(|m| m != "auto"),
        max_tokens: f.uint(c, "max_tokens", 1_000_000).map(|n| n.max(1) as u32),
        temperature: f.number(c, "temperature", 0.0, 2.0).map(|t| t as f32),
        force_local: f.boolean(c, "force_local").unwrap_or(false),
        cascade,
        fallback_allowed: f.boolean(c, "fallback_allowed"),
        cost_limit: f.usd(c, "cost_limit"),
    }
}

fn parse_step(c: &mut Checker, v: &Value, path: &str, inner: bool) -> Option<Step> {
    let Some(obj) = v.as_object() else {
        c.bad(path, "bad_type", "a step is an object");
        return None;
    };
    let mut f = Fields {
        path: path.into(),
        obj,
        used: BTreeSet::new(),
    };
    let id = f.string(c, "id", true).unwrap_or_default();
    if obj.contains_key("id") && !valid_id(&id) {
        c.bad(
            f.at("id"),
            "invalid_value",
            "a step id is 1-64 characters of a-z, A-Z, 0-9, `_`, `-`",
        );
    }
    let ty = f.string(c, "type", true).unwrap_or_default();
    let after: BTreeSet<String> = f.ids(c, "after").into_iter().collect();
    let max_attempts = f.uint(c, "max_attempts", 20).unwrap_or(3).max(1) as u32;
    let backoff = Duration::from_millis(f.uint(c, "retry_backoff_ms", 600_000).unwrap_or(500));
    let timeout = f.uint(c, "timeout_s", 86_400).map(Duration::from_secs);
    let kind = match ty.as_str() {
        "generate" => Kind::Generate(parse_gen(c, &mut f, true)),
        "template" => Kind::Template {
            text: f.string(c, "template", true).unwrap_or_default(),
        },
        "extract" => {
            let from = f.string(c, "from", false);
            let gen = parse_gen(c, &mut f, false);
            if from.is_none() && gen.prompt.is_empty() {
                c.bad(
                    f.at("from"),
                    "missing_field",
                    "`extract` reads `from` (text), or asks a model with `prompt`",
                );
            }
            let schema = f.get("schema").cloned().unwrap_or(Value::Null);
            if schema.is_null() {
                c.bad(f.at("schema"), "missing_field", "`schema` is required");
            } else {
                let mut bad = Vec::new();
                schema::check(&schema, &f.at("schema"), &mut bad);
                for (p, m) in bad {
                    c.bad(p, "bad_type", m);
                }
            }
            let repair = f.boolean(c, "repair").unwrap_or(true);
            Kind::Extract {
                from,
                gen,
                schema,
                repair,
            }
        }
        "condition" if !inner => {
            let value = f.string(c, "value", true).unwrap_or_default();
            let op = match f.string(c, "op", false).as_deref().unwrap_or("truthy") {
                "equals" => Op::Equals,
                "not_equals" => Op::NotEquals,
                "contains" => Op::Contains,
                "gt" => Op::Gt,
                "gte" => Op::Gte,
                "lt" => Op::Lt,
                "lte" => Op::Lte,
                "truthy" => Op::Truthy,
                other => {
                    c.bad(
                        f.at("op"),
                        "invalid_value",
                        format!("unknown op `{other}` (equals, not_equals, contains, gt, gte, lt, lte, truthy)"),
                    );
                    Op::Truthy
                }
            };
            let operand = f.get("operand").cloned().unwrap_or(Value::Null);
            if op != Op::Truthy && !obj.contains_key("operand") {
                c.bad(
                    f.at("operand"),
                    "missing_field",
                    "this `op` compares with `operand`",
                );
            }
            Kind::Condition {
                value,
                op,
                operand,
                then: f.ids(c, "then"),
                otherwise: f.ids(c, "else"),
            }
        }
        "map" if inner => {
            c.bad(f.at("type"), "bad_type", "a map cannot hold a map");
            return None;
        }
        "map" => {
            let items = f.string(c, "items", true).unwrap_or_default();
            let concurrency = f.uint(c, "concurrency", 64).unwrap_or(4).max(1) as usize;
            let steps = match f.get("steps") {
                Some(Value::Array(a)) if !a.is_empty() => parse_steps(c, a, &f.at("steps"), true),
                _ => {
                    c.bad(
                        f.at("steps"),
                        "missing_field",
                        "a map runs a non-empty list of `steps` per item",
                    );
                    Vec::new()
                }
            };
            Kind::Map {
                items,
                concurrency,
                steps,
            }
        }
        "http" => {
            let method = f
                .string(c, "method", false)
                .unwrap_or_else(|| "GET".into())
                .to_ascii_uppercase();
            if !matches!(
                method.as_str(),
                "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD"
            ) {
                c.bad(
                    f.at("method"),
                    "invalid_value",
                    "`method` is GET, POST, PUT, PATCH, DELETE or HEAD",
                );
            }
            let url = f.string(c, "url", true).unwrap_or_default();
            if !url.is_empty() {
                if let Err(e) = c.http.check_url_template(&url) {
                    c.bad(f.at("url"), e.0, e.1);
                }
            }
            let headers = match f.get("headers") {
                Some(Value::Object(h)) => h
                    .iter()
                    .filter_map(|(k, v)| match v.as_str() {
                        // The request's framing and target are the client's, not the step's.
                        _ if FORBIDDEN_HEADERS.contains(&k.to_ascii_lowercase().as_str()) => {
                            c.bad(
                                format!("{path}.headers.{k}"),
                                "invalid_value",
                                format!("`{k}` is set by the client, not the step"),
                            );
                            None
                        }
                        Some(s) => Some((k.clone(), s.to_owned())),
                        None => {
                            c.bad(
                                format!("{path}.headers.{k}"),
                                "bad_type",
                                "a header is a string",
                            );
                            None
                        }
                    })
                    .collect(),
                Some(_) => {
                    c.bad(
                        f.at("headers"),
                        "bad_type",
                        "`headers` is an object of strings",
                    );
                    BTreeMap::new()
                }
                None => BTreeMap::new(),
            };
            let body = f.get("body").cloned();
            let max_bytes = f
                .uint(c, "max_bytes", 16 * 1024 * 1024)
                .unwrap_or(1024 * 1024) as usize;
            Kind::Http {
                method,
                url,
                headers,
                body,
                max_bytes,
            }
        }
        "sleep" | "approval" | "workflow" | "condition" if inner => {
            c.bad(
                f.at("type"),
                "bad_type",
                format!("a `{ty}` step cannot run inside a map"),
            );
            return None;
        }
        "sleep" => {
            let seconds = f.number(c, "seconds", 0.0, 366.0 * 86_400.0);
            if seconds.is_none() && !obj.contains_key("seconds") {
                c.bad(f.at("seconds"), "missing_field", "`seconds` is required");
            }
            Kind::Sleep {
                seconds: seconds.unwrap_or(0.0),
            }
        }
        "approval" => Kind::Approval {
            message: f.string(c, "message", false),
            timeout: f
                .uint(c, "approval_timeout_s", 366 * 86_400)
                .map(Duration::from_secs),
        },
        "workflow" => {
            let id = f.string(c, "workflow_id", true).unwrap_or_default();
            let workflow_id = match Uuid::try_parse(&id) {
                Ok(u) => u,
                Err(_) => {
                    if obj.contains_key("workflow_id") {
                        c.bad(
                            f.at("workflow_id"),
                            "bad_type",
                            "`workflow_id` is a workflow's id",
                        );
                    }
                    Uuid::nil()
                }
            };
            Kind::Workflow {
                workflow_id,
                input: f.get("input").cloned().unwrap_or(Value::Object(Map::new())),
            }
        }
        "" => return None,
        other => {
            c.bad(
                f.at("type"),
                "bad_type",
                format!("unknown step type `{other}` (generate, template, extract, condition, map, http, sleep, approval, workflow)"),
            );
            return None;
        }
    };
    f.finish(c);
    Some(Step {
        id,
        deps: after,
        retry: Retry {
            max_attempts,
            backoff,
        },
        timeout,
        kind,
    })
}

/// Every template string of a step, with its field's path.
fn templates(s: &Step, path: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut text = |field: &str, t: &str| out.push((format!("{path}.{field}"), Value::from(t)));
    match &s.kind {
        Kind::Generate(g) => {
            text("prompt", &g.prompt);
            if let Some(sys) = &g.system {
                text("system", sys);
            }
        }
        Kind::Template { text: t } => text("template", t),
        Kind::Extract { from, gen, .. } => {
            if let Some(t) = from {
                text("from", t);
            }
            text("prompt", &gen.prompt);
            if let Some(sys) = &gen.system {
                text("system", sys);
            }
        }
        Kind::Condition { value, .. } => text("value", value),
        Kind::Map { items, .. } => text("items", items),
        Kind::Http {
            url, headers, body, ..
        } => {
            text("url", url);
            for (k, v) in headers {
                text(&format!("headers.{k}"), v);
            }
            if let Some(b) = body {
                out.push((format!("{path}.body"), b.clone()));
            }
        }
        Kind::Workflow { input, .. } => out.push((format!("{path}.input"), input.clone())),
        Kind::Sleep { .. } | Kind::Approval { .. } => {}
    }
    out
}

/// The first segment of `input.<x>` must be a declared property when the input schema
/// declares properties.
fn check_ref(
    c: &mut Checker,
    r: &Ref,
    path: &str,
    def_schema: Option<&Value>,
    known: &dyn Fn(&str) -> bool,
    in_map: bool,
) -> Option<String> {
    match r.path[0].as_str() {
        "input" => {
            if let (Some(name), Some(props)) = (
                r.path.get(1),
                def_schema
                    .and_then(|s| s.get("properties"))
                    .and_then(Value::as_object),
            ) {
                if !props.contains_key(name) {
                    c.bad(
                        path,
                        "unknown_variable",
                        format!("`input.{name}` is not in the input schema"),
                    );
                }
            }
            None
        }
        "steps" => {
            let Some(id) = r.step() else {
                c.bad(
                    path,
                    "unknown_variable",
                    "`steps` needs a step id: `steps.<id>.output`",
                );
                return None;
            };
            if r.path.get(2).map(String::as_str) != Some("output") {
                c.bad(
                    path,
                    "unknown_variable",
                    format!("a step is read as `steps.{id}.output`"),
                );
            }
            if !known(id) {
                c.bad(path, "unknown_step", format!("no step `{id}`"));
                return None;
            }
            Some(id.to_owned())
        }
        "item" | "index" if in_map => None,
        other => {
            c.bad(
                path,
                "unknown_variable",
                format!(
                    "unknown variable `{other}` (input, steps{})",
                    if in_map { ", item, index" } else { "" }
                ),
            );
            None
        }
    }
}

/// Resolves references into dependencies, and checks ids, branches and cycles.
fn link(c: &mut Checker, def: &mut Definition) {
    let ids: Vec<String> = def.steps.iter().map(|s| s.id.clone()).collect();
    let mut seen = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        if !seen.insert(id.clone()) {
            c.bad(
                format!("$.steps[{i}].id"),
                "duplicate_step",
                format!("two steps are called `{id}`"),
            );
        }
    }
    let known = |id: &str| ids.iter().any(|x| x == id);
    let schema = def.input_schema.clone();
    // Branch members depend on their condition.
    let mut branch_deps: Vec<(String, String)> = Vec::new();
    for (i, s) in def.steps.iter().enumerate() {
        if let Kind::Condition {
            then, otherwise, ..
        } = &s.kind
        {
            for (field, list) in [("then", then), ("else", otherwise)] {
                for (j, t) in list.iter().enumerate() {
                    if !known(t) {
                        c.bad(
                            format!("$.steps[{i}].{field}[{j}]"),
                            "unknown_step",
                            format!("no step `{t}`"),
                        );
                    } else if t == &s.id {
                        c.bad(
                            format!("$.steps[{i}].{field}[{j}]"),
                            "cycle",
                            "a condition cannot branch to itself",
                        );
                    } else {
                        branch_deps.push((t.clone(), s.id.clone()));
                    }
                }
            }
        }
    }
    let mut out = def.output.clone();
    if let Some(o) = &out {
        let mut refs = Vec::new();
        match template::value_refs(o, &mut refs) {
            Ok(()) => {
                for r in refs {
                    check_ref(c, &r, "$.output", schema.as_ref(), &known, false);
                }
            }
            Err(e) => c.bad("$.output", "invalid_value", e),
        }
    }
    for (i, s) in def.steps.iter_mut().enumerate() {
        let path = format!("$.steps[{i}]");
        for (j, a) in s.deps.clone().iter().enumerate() {
            if !known(a) {
                c.bad(
                    format!("{path}.after[{j}]"),
                    "unknown_step",
                    format!("no step `{a}`"),
                );
                s.deps.remove(a);
            }
        }
        let mut deps = BTreeSet::new();
        for (p, t) in templates(s, &path) {
            let mut refs = Vec::new();
            if let Err(e) = template::value_refs(&t, &mut refs) {
                c.bad(p, "invalid_value", e);
                continue;
            }
            for r in refs {
                if let Some(d) = check_ref(c, &r, &p, schema.as_ref(), &known, false) {
                    deps.insert(d);
                }
            }
        }
        if let Kind::Map { steps, .. } = &mut s.kind {
            // Inner steps read the item, earlier inner steps, and outer steps (which the map
            // then depends on).
            let inner_ids: Vec<String> = steps.iter().map(|x| x.id.clone()).collect();
            for (k, inner) in steps.iter().enumerate() {
                let ip = format!("{path}.steps[{k}]");
                let earlier = &inner_ids[..k];
                for (p, t) in templates(inner, &ip) {
                    let mut refs = Vec::new();
                    if let Err(e) = template::value_refs(&t, &mut refs) {
                        c.bad(p, "invalid_value", e);
                        continue;
                    }
                    for r in refs {
                        let is_inner = r.step().is_some_and(|id| earlier.iter().any(|x| x == id));
                        if is_inner {
                            continue;
                        }
                        let known_outer = |id: &str| known(id);
                        if let Some(d) = check_ref(c, &r, &p, schema.as_ref(), &known_outer, true) {
                            deps.insert(d);
                        }
                    }
                }
            }
        }
        deps.remove(&s.id);
        s.deps.extend(deps);
        for (member, cond) in &branch_deps {
            if member == &s.id {
                s.deps.insert(cond.clone());
            }
        }
    }
    if let Some(o) = out.take() {
        def.output = Some(o);
    }
    // Cycles: Kahn's algorithm; what is left over is on a cycle.
    let mut indeg: BTreeMap<&str, usize> = def
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.deps.len()))
        .collect();
    let mut ready: Vec<&str> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut done = 0;
    while let Some(id) = ready.pop() {
        done += 1;
        for s in &def.steps {
            if s.deps.contains(id) {
                if let Some(d) = indeg.get_mut(s.id.as_str()) {
                    *d -= 1;
                    if *d == 0 {
                        ready.push(s.id.as_str());
                    }
                }
            }
        }
    }
    if done < def.steps.len() {
        for (i, s) in def.steps.iter().enumerate() {
            if indeg.get(s.id.as_str()).is_some_and(|d| *d > 0) {
                c.bad(
                    format!("$.steps[{i}]"),
                    "cycle",
                    format!(
                        "`{}` depends on itself through {}",
                        s.id,
                        s.deps.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
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
