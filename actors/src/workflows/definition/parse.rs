//! Each step's fields by type.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::fields::{valid_id, Checker, Fields};
use super::{Gen, Kind, Op, Retry, Step, FORBIDDEN_HEADERS, MAX_STEPS};
use crate::workflows::schema;

pub(super) fn parse_steps(c: &mut Checker, a: &[Value], path: &str, inner: bool) -> Vec<Step> {
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
                // A credential in the query string, written out, would be copied into events.
                if let Some((_, query)) = url.split_once('?') {
                    for pair in query.split('&') {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        if crate::workflows::http::is_credential_name(k)
                            && !v.is_empty()
                            && !v.contains("{{")
                        {
                            c.bad(
                                f.at("url"),
                                "literal_secret",
                                format!("the query parameter `{k}` looks like a credential: name a secret (`{{{{ secrets.NAME }}}}`) instead"),
                            );
                        }
                    }
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
                        Some(s) if crate::workflows::http::is_credential_name(k)
                            && !s.trim().is_empty()
                            && !s.contains("{{") =>
                        {
                            c.bad(
                                format!("{path}.headers.{k}"),
                                "literal_secret",
                                format!("`{k}` looks like a credential: name a secret (`{{{{ secrets.NAME }}}}`, configured in [workflows.secrets]) instead of writing it into the definition, which every run copies into its events"),
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
