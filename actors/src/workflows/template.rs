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

/// A secret's value by name.
pub type SecretLookup<'a> = dyn Fn(&str) -> Option<String> + Sync + 'a;

/// What templates read.
pub struct Scope<'a> {
    pub input: &'a Value,
    /// Step id → its output (`None`: the step was skipped or has not run).
    pub step: &'a (dyn Fn(&str) -> Option<Value> + Sync),
    pub item: Option<(&'a Value, usize)>,
    /// Most bytes a rendering may produce (a string's text, or a value's JSON): each level
    /// of templates could otherwise multiply its input by `MAX_REFS`.
    pub limit: usize,
    /// `secrets.NAME`, where secrets may be read (an `http` step's request, as it is sent).
    pub secrets: Option<&'a SecretLookup<'a>>,
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
            "secrets" => match (self.secrets, p.get(1)) {
                (Some(f), Some(name)) if p.len() == 2 => (
                    Value::String(f(name).ok_or_else(|| format!("no secret `{name}`"))?),
                    &p[2..],
                ),
                _ => return Err("secrets are read only in an `http` step's request".into()),
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

fn too_large(limit: usize) -> String {
    format!("the rendered text is over the limit of {limit} bytes")
}

/// Bytes of a value's JSON text, counted without building it.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Takes `n` bytes from what is left of the limit.
fn spend(left: &mut usize, n: usize, limit: usize) -> Result<(), String> {
    *left = left.checked_sub(n).ok_or_else(|| too_large(limit))?;
    Ok(())
}

fn render_within(s: &str, scope: &Scope, left: &mut usize) -> Result<String, String> {
    let mut out = String::with_capacity(s.len().min(*left));
    for p in parse(s)? {
        match p {
            Part::Text(t) => {
                spend(left, t.len(), scope.limit)?;
                out.push_str(&t);
            }
            Part::Ref(r) => {
                let t = text_of(&scope.lookup(&r)?, r.json);
                spend(left, t.len(), scope.limit)?;
                out.push_str(&t);
            }
        }
    }
    Ok(out)
}

/// Renders a string: references become their values' text (at most `scope.limit` bytes).
pub fn render(s: &str, scope: &Scope) -> Result<String, String> {
    render_within(s, scope, &mut scope.limit.clone())
}

/// Renders every string in a value; a string that is exactly one reference becomes the
/// referenced value. The result's JSON is at most `scope.limit` bytes.
pub fn render_value(v: &Value, scope: &Scope) -> Result<Value, String> {
    render_value_within(v, scope, &mut scope.limit.clone())
}

fn render_value_within(v: &Value, scope: &Scope, left: &mut usize) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let parts = parse(s)?;
            match parts.as_slice() {
                [Part::Ref(r)] if !r.json => {
                    let v = scope.lookup(r)?;
                    spend(left, json_len(&v), scope.limit)?;
                    v
                }
                _ => Value::String(render_within(s, scope, left)?),
            }
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_value_within(x, scope, left))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    spend(left, k.len(), scope.limit)?;
                    Ok((k.clone(), render_value_within(x, scope, left)?))
                })
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
            limit: 1 << 20,
            secrets: None,
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

    #[test]
    fn rendering_stops_at_the_limit_whatever_the_fan_out() {
        let input = json!({"s": "x".repeat(2048)});
        let step = |_: &str| None;
        let scope = Scope {
            input: &input,
            step: &step,
            item: None,
            limit: 64 * 1024,
            secrets: None,
        };
        let fan = "{{ input.s }}".repeat(256);
        let e = render(&fan, &scope).unwrap_err();
        assert!(e.contains("over the limit of 65536 bytes"), "{e}");
        // Within the limit it renders whole.
        assert_eq!(
            render(&"{{ input.s }}".repeat(31), &scope).unwrap().len(),
            31 * 2048
        );
        // Whole values count by their JSON, in lists and objects too.
        let many: Vec<Value> = (0..64).map(|_| json!("{{ input }}")).collect();
        assert!(render_value(&Value::Array(many), &scope).is_err());
        let few: Vec<Value> = (0..3).map(|_| json!("{{ input }}")).collect();
        assert_eq!(
            render_value(&Value::Array(few), &scope).unwrap()[2]["s"],
            input["s"]
        );
    }
}
