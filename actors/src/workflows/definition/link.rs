//! From references to dependencies: every template's references checked (steps, variables,
//! the input schema), branches linked to their condition, and cycles found.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::fields::Checker;
use super::{Definition, Kind, Step};
use crate::workflows::template::{self, Ref};

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
        // Only where an `http` step sends them: its url, headers and body.
        "secrets" => {
            let sendable =
                [".url", ".body"].iter().any(|f| path.contains(f)) || path.contains(".headers.");
            match r.path.get(1) {
                _ if !sendable || r.path.len() != 2 => c.bad(
                    path,
                    "unknown_variable",
                    "`{{ secrets.NAME }}` is read only in an `http` step's url, headers and body",
                ),
                Some(name) if !c.http.has_secret(name) => c.bad(
                    path,
                    "unknown_secret",
                    format!("no secret `{name}` is configured ([workflows.secrets])"),
                ),
                _ => {}
            }
            None
        }
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
pub(super) fn link(c: &mut Checker, def: &mut Definition) {
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
