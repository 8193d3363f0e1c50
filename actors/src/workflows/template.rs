//! Templates: `{{ path }}` inside strings, where a path is `input.a.b`, `steps.<id>.output.x.0`,
//! `item` or `index` (inside a `map`), and an optional `| json` filter writes the value as JSON
//! even when it is a string. A string that is exactly one `{{ ... }}` stands for the value
//! itself (a list, an object) where a value is expected.

use serde_json::Value;

/// One `{{ ... }}`: the path's segments and whether `| json` was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Ref {
    pub path: Vec<String>,
    pub json: bool,
}

impl Ref {
    /// `steps.<id>` references name the step.
    pub fn step(&self) -> Option<&str> {
        (self.path.first().map(String::as_str) == Some("steps"))
            .then(|| self.path.get(1).map(String::as_str))
            .flatten()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Ref(Ref),
}

/// Most `{{ }}` in one string.
const MAX_REFS: usize = 256;

fn parse(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| "`{{` without a closing `}}`".to_owned())?;
        let inner = after[..close].trim();
        let (expr, json) = match inner.split_once('|') {
            Some((e, f)) if f.trim() == "json" => (e.trim(), true),
            Some((_, f)) => return Err(format!("unknown filter `{}` (only `json`)", f.trim())),
            None => (inner, false),
        };
        if expr.is_empty() {
            return Err("an empty `{{ }}`".into());
        }
        let path: Vec<String> = expr.split('.').map(|p| p.trim().to_owned()).collect();
        if path.iter().any(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            return Err(format!(
                "`{expr}` is not a path (names and indexes joined by dots)"
            ));
        }
        parts.push(Part::Ref(Ref { path, json }));
        if parts.len() > MAX_REFS * 2 {
            return Err(format!("more than {MAX_REFS} references in one string"));
        }
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// The references in a string.
pub fn refs(s: &str) -> Result<Vec<Ref>, String> {
    Ok(parse(s)?
        .into_iter()
        .filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Text(_) => None,
        })
        .collect())
}

/// The references anywhere in a JSON value's strings.
pub fn value_refs(v: &Value, out: &mut Vec<Ref>) -> Result<(), String> {
    match v {
        Value::String(s) => out.extend(refs(s)?),
        Value::Array(a) => {
            for x in a {
                value_refs(x, out)?;
            }
        }
        Value::Object(o) => {
            for x in o.values() {
                value_refs(x, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What templates read.
pub struct Scope<'a> {
    pub input: &'a Value,
    /// Step id → its output (`None`: the step was skipped or has not run).
    pub step: &'a (dyn Fn(&str) -> Option<Value> + Sync),
    pub item: Option<(&'a Value, usize)>,
}

impl Scope<'_> {
    fn lookup(&self, r: &Ref) -> Result<Value, String> {
        let p = &r.path;
        let (mut v, rest): (Value, &[String]) = match p[0].as_str() {
            "input" => (self.input.clone(), &p[1..]),
            "steps" => {
                let id = p.get(1).ok_or("`steps` needs a step id")?;
                match p.get(2).map(String::as_str) {
                    Some("output") => {}
                    _ => return Err(format!("`steps.{id}` is read as `steps.{id}.output`")),
                }
                // A skipped step reads as null.
                ((self.step)(id).unwrap_or(Value::Null), &p[3..])
            }
            "item" => match self.item {
                Some((v, _)) => (v.clone(), &p[1..]),
                None => return Err("`item` exists only inside a map".into()),
            },
            "index" if p.len() == 1 => match self.item {
                Some((_, i)) => (Value::from(i), &p[1..]),
                None => return Err("`index` exists only inside a map".into()),
            },
            other => return Err(format!("unknown variable `{other}`")),
        };
        for seg in rest {
            v = match v {
                Value::Object(mut o) => o.remove(seg).unwrap_or(Value::Null),
                Value::Array(mut a) => match seg.parse::<usize>() {
                    Ok(i) if i < a.len() => a.swap_remove(i),
                    _ => Value::Null,
                },
                _ => Value::Null,
            };
        }
        Ok(v)
    }
}

fn text_of(v: &Value, json: bool) -> String {
    match v {
        Value::String(s) if !json => s.clone(),
        Value::Null if !json => String::new(),
        other => other.to_string(),
    }
}

/// Renders a string: references become their values' text.
pub fn render(s: &str, scope: &Scope) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    for p in parse(s)? {
        match p {
            Part::Text(t) => out.push_str(&t),
            Part::Ref(r) => out.push_str(&text_of(&scope.lookup(&r)?, r.json)),
        }
    }
    Ok(out)
}

/// Renders every string in a value; a string that is exactly one reference becomes the
/// referenced value.
pub fn render_value(v: &Value, scope: &Scope) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let parts = parse(s)?;
            match parts.as_slice() {
                [Part::Ref(r)] if !r.json => scope.lookup(r)?,
                _ => Value::String(render(s, scope)?),
            }
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_value(x, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_value(x, scope)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_inputs_outputs_items_and_json() {
        let input = json!({"text": "hello", "n": [1, 2]});
        let step = |id: &str| (id == "a").then(|| json!({"k": "v", "list": ["x", "y"]}));
        let scope = Scope {
            input: &input,
            step: &step,
            item: Some((&json!("it"), 3)),
        };
        assert_eq!(
            render(
                "{{ input.text }}/{{steps.a.output.list.1}}/{{ item }}{{ index }}/{{ input.n }}",
                &scope
            )
            .unwrap(),
            "hello/y/it3/[1,2]"
        );
        assert_eq!(
            render("{{ input.text | json }}", &scope).unwrap(),
            "\"hello\""
        );
        assert_eq!(render("{{ steps.b.output }}", &scope).unwrap(), "");
        assert_eq!(
            render_value(&json!({"l": "{{ input.n }}"}), &scope).unwrap(),
            json!({"l": [1, 2]})
        );
        assert!(render("{{ nope.x }}", &scope).is_err());
        assert!(render("{{ input.text ", &scope).is_err());
        assert!(render("{{ input.text | upper }}", &scope).is_err());
        assert_eq!(
            refs("a {{ steps.x.output }} b {{ input.y }}").unwrap()[0].step(),
            Some("x")
        );
    }
}
