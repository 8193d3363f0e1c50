//! What each step type does. `inline` steps (template, condition) are computed while the run
//! actor plans; the others run as tasks (`execute`): model calls through the router, HTTP
//! through the guard in `http.rs`, and a map item's inner steps one after another.

use std::collections::HashMap;
use std::time::Duration;

use revo_events::{EventMeta, RunState, Usd};
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::definition::{Gen, Kind, Op, Step};
use super::schema;
use super::template::{self, Scope};
use super::Engine;
use crate::router::provider::ChatMessage;
use crate::router::{Input, RouteOptions, RouteRequest, Update};

/// How often streamed text goes out as one `workflow.progress` frame.
const COALESCE: Duration = Duration::from_millis(50);

pub(super) struct StepCtx {
    pub engine: Engine,
    pub run: Uuid,
    pub user: Uuid,
    pub key: Option<Uuid>,
    pub step: String,
    pub item: Option<u32>,
    pub attempt: u32,
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub(super) struct Done {
    pub output: Value,
    pub cost: Usd,
    pub generation: Option<String>,
}

#[derive(Debug)]
pub(super) struct Fail {
    pub code: String,
    pub message: String,
    pub cost: Usd,
    pub retryable: bool,
}

impl Fail {
    pub fn new(code: &str, message: impl Into<String>) -> Fail {
        Fail {
            code: code.into(),
            message: message.into(),
            cost: Usd::ZERO,
            retryable: false,
        }
    }
}

fn add(a: Usd, b: Usd) -> Usd {
    a.checked_add(b).unwrap_or(a)
}

fn scope<'a>(
    input: &'a Value,
    steps: &'a (dyn Fn(&str) -> Option<Value> + Sync),
    item: Option<(&'a Value, usize)>,
    limit: usize,
) -> Scope<'a> {
    Scope {
        input,
        step: steps,
        item,
        limit,
        secrets: None,
    }
}

fn render(s: &str, sc: &Scope) -> Result<String, Fail> {
    template::render(s, sc).map_err(|e| Fail::new("template_error", e))
}

/// A value with its templates rendered (a child run's input, the run's output).
pub(super) fn render_input(
    v: &Value,
    input: &Value,
    steps: &(dyn Fn(&str) -> Option<Value> + Sync),
    limit: usize,
) -> Result<Value, Fail> {
    template::render_value(v, &scope(input, steps, None, limit))
        .map_err(|e| Fail::new("template_error", e))
}

/// A map's list.
pub(super) fn map_items(
    items: &str,
    input: &Value,
    steps: &(dyn Fn(&str) -> Option<Value> + Sync),
    limit: usize,
) -> Result<Vec<Value>, Fail> {
    match template::render_value(&Value::from(items), &scope(input, steps, None, limit)) {
        Ok(Value::Array(a)) if a.len() <= super::definition::MAX_MAP_ITEMS => Ok(a),
        Ok(Value::Array(a)) => Err(Fail::new(
            "too_many_items",
            format!(
                "{} items, over the limit of {}",
                a.len(),
                super::definition::MAX_MAP_ITEMS
            ),
        )),
        Ok(other) => Err(Fail::new(
            "bad_items",
            format!("`items` must give a list, not {other}"),
        )),
        Err(e) => Err(Fail::new("template_error", e)),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty() && s != "false",
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Compares as values, and as text when one side is text (a model's output is text).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), other) | (other, Value::String(x)) if !other.is_string() => {
            *x.trim() == *other.to_string()
        }
        (Value::String(x), Value::String(y)) => x.trim() == y.trim(),
        _ => a == b,
    }
}

/// Template and condition steps: computed at once.
pub(super) fn inline(
    kind: &Kind,
    input: &Value,
    steps: &(dyn Fn(&str) -> Option<Value> + Sync),
    limit: usize,
) -> Result<Value, Fail> {
    let sc = scope(input, steps, None, limit);
    match kind {
        Kind::Template { text } => Ok(Value::String(render(text, &sc)?)),
        Kind::Condition {
            value, op, operand, ..
        } => {
            let v = template::render_value(&Value::from(value.as_str()), &sc)
                .map_err(|e| Fail::new("template_error", e))?;
            let cmp = |f: fn(f64, f64) -> bool| match (number(&v), number(operand)) {
                (Some(a), Some(b)) => Ok(f(a, b)),
                _ => Err(Fail::new(
                    "not_a_number",
                    format!("cannot compare {v} and {operand} as numbers"),
                )),
            };
            let r = match op {
                Op::Truthy => truthy(&v),
                Op::Equals => same(&v, operand),
                Op::NotEquals => !same(&v, operand),
                Op::Contains => match (&v, operand) {
                    (Value::String(s), Value::String(x)) => s.contains(x.as_str()),
                    (Value::Array(a), x) => a.iter().any(|e| same(e, x)),
                    (Value::Object(o), Value::String(k)) => o.contains_key(k),
                    _ => false,
                },
                Op::Gt => cmp(|a, b| a > b)?,
                Op::Gte => cmp(|a, b| a >= b)?,
                Op::Lt => cmp(|a, b| a < b)?,
                Op::Lte => cmp(|a, b| a <= b)?,
            };
            Ok(Value::Bool(r))
        }
        _ => Err(Fail::new("internal", "not an inline step")),
    }
}

fn route_request(
    ctx_like: (&Engine, Uuid, Uuid, Option<Uuid>),
    id: String,
    g: &Gen,
    prompt: String,
    system: Option<String>,
) -> RouteRequest {
    let (engine, run, user, key) = ctx_like;
    let mut messages = Vec::new();
    if let Some(s) = system.filter(|s| !s.is_empty()) {
        messages.push(ChatMessage {
            role: "system".into(),
            content: s,
        });
    }
    messages.push(ChatMessage {
        role: "user".into(),
        content: prompt,
    });
    let registry_model = g.model.as_ref().is_some_and(|m| {
        !engine
            .inner
            .router
            .catalog()
            .entries
            .iter()
            .any(|e| &e.name == m)
            && engine.inner.models.read().get(m).is_some()
    });
    RouteRequest {
        id,
        user_id: user,
        key_id: key,
        meta: EventMeta {
            actor: Some(format!("user:{user}")),
            correlation_id: Some(run),
            causation_id: None,
        },
        input: Input::Chat(messages),
        max_tokens: g.max_tokens,
        temperature: g.temperature,
        top_p: None,
        stop: Vec::new(),
        seed: None,
        tools: None,
        tool_choice: None,
        top_k: None,
        repetition_penalty: None,
        logprobs: None,
        stream: true,
        options: RouteOptions {
            force_local: g.force_local,
            model_preference: g.model.clone(),
            cost_limit: g.cost_limit,
            fallback_allowed: g.fallback_allowed.unwrap_or(g.model.is_none()),
            cascade: g.cascade,
            confidence_threshold: None,
            registry_model,
        },
    }
}

/// The most a model call of `g` can cost now.
pub(super) fn worst_case(
    engine: &Engine,
    state: &RunState,
    g: &Gen,
    input: &Value,
    steps: &(dyn Fn(&str) -> Option<Value> + Sync),
    item: Option<&Value>,
) -> Result<Usd, Fail> {
    let sc = scope(input, steps, item.map(|v| (v, 0)), engine.render_limit());
    // Unrendered references count as empty: an estimate before their steps have run.
    let prompt = template::render(&g.prompt, &sc).unwrap_or_else(|_| g.prompt.clone());
    let system = g
        .system
        .as_ref()
        .map(|s| template::render(s, &sc).unwrap_or_else(|_| s.clone()));
    let req = route_request(
        (engine, state.run_id, state.user_id, state.key_id),
        String::new(),
        g,
        prompt,
        system,
    );
    engine
        .inner
        .router
        .worst_case(&req)
        .map_err(|r| Fail::new(r.code, r.message))
}

impl StepCtx {
    /// `wf_<run>:<step>[:i<item>]:<attempt>:<n>`: step ids cannot hold `:`, so no two calls
    /// of a run share an id (a step `x_i0` and item 0 of a map `x` once did).
    fn generation_id(&self, n: u32) -> String {
        let item = self.item.map(|i| format!(":i{i}")).unwrap_or_default();
        format!(
            "wf_{}:{}{item}:{}:{n}",
            self.run.simple(),
            self.step,
            self.attempt
        )
    }

    /// One model call through the router, streaming its text as progress.
    async fn generate(
        &self,
        g: &Gen,
        prompt: String,
        system: Option<String>,
        n: u32,
    ) -> Result<(String, Usd, String), Fail> {
        let id = self.generation_id(n);
        let req = route_request(
            (&self.engine, self.run, self.user, self.key),
            id.clone(),
            g,
            prompt,
            system,
        );
        let router = &self.engine.inner.router;
        let mut rx = router.route(req).await.map_err(|r| Fail {
            code: r.code.into(),
            message: r.message,
            cost: Usd::ZERO,
            retryable: r.status >= 500 || r.status == 429,
        })?;
        let mut pending = String::new();
        let mut flushed = Instant::now();
        loop {
            match rx.recv().await {
                Some(Update::Text(t)) => {
                    pending.push_str(&t);
                    if flushed.elapsed() >= COALESCE {
                        self.flush(&mut pending).await;
                        flushed = Instant::now();
                    }
                }
                Some(Update::Done(r)) => {
                    self.flush(&mut pending).await;
                    return match *r {
                        Ok(a) => Ok((a.text, a.cost, id)),
                        Err(r) => Err(Fail {
                            code: r.code.into(),
                            message: r.message,
                            cost: r.attempts.iter().fold(Usd::ZERO, |s, a| add(s, a.cost_usd)),
                            retryable: r.status >= 500 || r.status == 429,
                        }),
                    };
                }
                Some(_) => {}
                None => {
                    return Err(Fail::new(
                        "router_failed",
                        "the router stopped without an answer",
                    ))
                }
            }
        }
    }

    async fn flush(&self, pending: &mut String) {
        if pending.is_empty() {
            return;
        }
        let text = std::mem::take(pending);
        self.engine
            .progress(self.user, self.run, &self.step, self.item, &text)
            .await;
    }
}

/// JSON found in a model's text: the whole text, or the first object or list in it.
fn find_json(text: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
        return Some(v);
    }
    for (i, c) in text.char_indices() {
        if c == '{' || c == '[' {
            let mut it = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = it.next() {
                return Some(v);
            }
        }
    }
    None
}

fn schema_problems(schema: &Value, v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    schema::validate(schema, v, "$", &mut out);
    out.into_iter().map(|(p, m)| format!("{p}: {m}")).collect()
}

/// Runs one attempt of a step (a whole step, or one item of a map).
pub(super) async fn execute(
    ctx: &StepCtx,
    step: &Step,
    input: &Value,
    outputs: &HashMap<String, Value>,
    item: Option<Value>,
) -> Result<Done, Fail> {
    let fut = run_kind(ctx, step, input, outputs, item);
    match ctx.timeout {
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => Err(Fail {
                code: "step_timeout".into(),
                message: format!("the step took longer than {} s", t.as_secs()),
                cost: Usd::ZERO,
                retryable: true,
            }),
        },
        None => fut.await,
    }
}

async fn run_kind(
    ctx: &StepCtx,
    step: &Step,
    input: &Value,
    outputs: &HashMap<String, Value>,
    item: Option<Value>,
) -> Result<Done, Fail> {
    match &step.kind {
        Kind::Map { steps, .. } => {
            // The item's inner steps in order; each sees the earlier ones' outputs.
            let value = item.unwrap_or(Value::Null);
            let index = ctx.item.unwrap_or(0) as usize;
            let mut local = outputs.clone();
            let mut cost = Usd::ZERO;
            let mut last = Value::Null;
            for (n, inner) in steps.iter().enumerate() {
                let r = one(
                    ctx,
                    &inner.kind,
                    input,
                    &local,
                    Some((&value, index)),
                    n as u32,
                )
                .await;
                match r {
                    Ok(d) => {
                        cost = add(cost, d.cost);
                        last = d.output.clone();
                        local.insert(inner.id.clone(), d.output);
                    }
                    Err(mut f) => {
                        f.cost = add(f.cost, cost);
                        f.message = format!("item {index}, `{}`: {}", inner.id, f.message);
                        return Err(f);
                    }
                }
            }
            Ok(Done {
                output: last,
                cost,
                generation: None,
            })
        }
        k => one(ctx, k, input, outputs, None, 0).await,
    }
}

async fn one(
    ctx: &StepCtx,
    kind: &Kind,
    input: &Value,
    outputs: &HashMap<String, Value>,
    item: Option<(&Value, usize)>,
    n: u32,
) -> Result<Done, Fail> {
    let lookup = |id: &str| outputs.get(id).cloned();
    let limit = ctx.engine.render_limit();
    let sc = scope(input, &lookup, item, limit);
    match kind {
        Kind::Template { .. } | Kind::Condition { .. } => Ok(Done {
            output: inline(kind, input, &lookup, limit)?,
            cost: Usd::ZERO,
            generation: None,
        }),
        Kind::Generate(g) => {
            let prompt = render(&g.prompt, &sc)?;
            let system = g.system.as_ref().map(|s| render(s, &sc)).transpose()?;
            let (text, cost, id) = ctx.generate(g, prompt, system, n * 2).await?;
            Ok(Done {
                output: Value::String(text),
                cost,
                generation: Some(id),
            })
        }
        Kind::Extract {
            from,
            gen,
            schema,
            repair,
        } => {
            let mut cost = Usd::ZERO;
            let mut generation = None;
            let text = match from {
                Some(f) => render(f, &sc)?,
                None => {
                    let prompt = render(&gen.prompt, &sc)?;
                    let system = gen.system.as_ref().map(|s| render(s, &sc)).transpose()?;
                    let (t, c, id) = ctx.generate(gen, prompt, system, n * 2).await?;
                    cost = add(cost, c);
                    generation = Some(id);
                    t
                }
            };
            let problems = match find_json(&text) {
                Some(v) => {
                    let p = schema_problems(schema, &v);
                    if p.is_empty() {
                        return Ok(Done {
                            output: v,
                            cost,
                            generation,
                        });
                    }
                    p
                }
                None => vec!["no JSON found".to_owned()],
            };
            if !repair {
                return Err(Fail {
                    code: "extract_failed".into(),
                    message: problems.join("; "),
                    cost,
                    retryable: false,
                });
            }
            // One repair attempt: the model sees the schema, the problems and the text.
            let prompt = format!(
                "Rewrite the text below as JSON that matches this JSON Schema. Reply with the JSON only.\n\nSchema: {schema}\n\nProblems: {}\n\nText:\n{text}",
                problems.join("; ")
            );
            let (fixed, c, id) =
                ctx.generate(gen, prompt, None, n * 2 + 1)
                    .await
                    .map_err(|mut f| {
                        f.cost = add(f.cost, cost);
                        f
                    })?;
            cost = add(cost, c);
            match find_json(&fixed) {
                Some(v) if schema_problems(schema, &v).is_empty() => Ok(Done {
                    output: v,
                    cost,
                    generation: Some(id),
                }),
                Some(v) => Err(Fail {
                    code: "extract_failed".into(),
                    message: format!(
                        "after a repair attempt: {}",
                        schema_problems(schema, &v).join("; ")
                    ),
                    cost,
                    retryable: false,
                }),
                None => Err(Fail {
                    code: "extract_failed".into(),
                    message: "after a repair attempt: no JSON found".into(),
                    cost,
                    retryable: false,
                }),
            }
        }
        Kind::Http {
            method,
            url,
            headers,
            body,
            max_bytes,
        } => {
            // Secrets are resolved here, as the request goes out, and nowhere else.
            let s = &ctx.engine.inner.settings;
            let secret = |name: &str| s.http.secret(name);
            let sc = Scope {
                secrets: Some(&secret),
                ..sc
            };
            let url = render(url, &sc)?;
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), render(v, &sc)?)))
                .collect::<Result<_, Fail>>()?;
            let body = body
                .as_ref()
                .map(|b| template::render_value(b, &sc).map_err(|e| Fail::new("template_error", e)))
                .transpose()?;
            let timeout = ctx.timeout.unwrap_or(s.http_timeout);
            let v = s
                .http
                .send(method, &url, &headers, body.as_ref(), *max_bytes, timeout)
                .await
                .map_err(|(code, message, retryable)| Fail {
                    code: code.into(),
                    message,
                    cost: Usd::ZERO,
                    retryable,
                })?;
            Ok(Done {
                output: v,
                cost: Usd::ZERO,
                generation: None,
            })
        }
        other => Err(Fail::new(
            "internal",
            format!("a `{}` step does not run as a task", other.name()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_found_in_chatty_text() {
        assert_eq!(find_json(" {\"a\": 1} "), Some(json!({"a": 1})));
        assert_eq!(
            find_json("Sure! Here it is: {\"a\": [1, 2]} Hope it helps {"),
            Some(json!({"a": [1, 2]}))
        );
        assert_eq!(find_json("no json"), None);
    }

    #[test]
    fn conditions_compare_text_and_numbers() {
        let input = json!({"n": "5", "s": "spam"});
        let none = |_: &str| None;
        let cond = |value: &str, op: Op, operand: Value| Kind::Condition {
            value: value.into(),
            op,
            operand,
            then: vec![],
            otherwise: vec![],
        };
        let r = |k: Kind| inline(&k, &input, &none, 1 << 20).unwrap();
        assert_eq!(r(cond("{{ input.n }}", Op::Gt, json!(3))), json!(true));
        assert_eq!(
            r(cond("{{ input.s }}", Op::Equals, json!("spam"))),
            json!(true)
        );
        assert_eq!(
            r(cond("{{ input.s }}", Op::Contains, json!("pa"))),
            json!(true)
        );
        assert_eq!(
            r(cond("{{ input.missing }}", Op::Truthy, Value::Null)),
            json!(false)
        );
        assert!(inline(
            &cond("{{ input.s }}", Op::Lt, json!(1)),
            &input,
            &none,
            1 << 20
        )
        .is_err());
    }
}
