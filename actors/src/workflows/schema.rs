//! The subset of JSON Schema that workflow inputs and `extract` steps use: `type` (one or a
//! list), `properties`, `required`, `additionalProperties: false`, `items`, `enum`, `const`,
//! `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`. Anything else is
//! refused when the definition is checked, so a schema never silently means less than it
//! says. (The `jsonschema` crate would add 22 crates and duplicate versions for this.)

use serde_json::Value;

const KEYWORDS: [&str; 16] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "description",
    "title",
    "default",
];

const TYPES: [&str; 7] = [
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Problems with the schema itself, each with its JSON path.
pub fn check(schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    let Some(o) = schema.as_object() else {
        out.push((path.into(), "a schema is an object".into()));
        return;
    };
    for (k, v) in o {
        let p = format!("{path}.{k}");
        if !KEYWORDS.contains(&k.as_str()) && k != "$schema" {
            out.push((p, format!("schema keyword `{k}` is not supported")));
            continue;
        }
        match k.as_str() {
            "type" => {
                let ok = |t: &Value| t.as_str().is_some_and(|t| TYPES.contains(&t));
                let good = match v {
                    Value::Array(a) => !a.is_empty() && a.iter().all(ok),
                    t => ok(t),
                };
                if !good {
                    out.push((p, format!("`type` is one of {}", TYPES.join(", "))));
                }
            }
            "properties" => match v.as_object() {
                Some(props) => {
                    for (name, s) in props {
                        check(s, &format!("{p}.{name}"), out);
                    }
                }
                None => out.push((p, "`properties` is an object".into())),
            },
            "items" => check(v, &p, out),
            "required" if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) => {
                out.push((p, "`required` is a list of names".into()))
            }
            "additionalProperties" if !v.is_boolean() => {
                out.push((p, "`additionalProperties` is true or false".into()))
            }
            "enum" if !v.is_array() => out.push((p, "`enum` is a list".into())),
            "minimum" | "maximum" if !v.is_number() => out.push((p, format!("`{k}` is a number"))),
            "minLength" | "maxLength" | "minItems" | "maxItems" if !v.is_u64() => {
                out.push((p, format!("`{k}` is a whole number")))
            }
            _ => {}
        }
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Where `v` does not match `schema` (a checked one), each with its path.
pub fn validate(schema: &Value, v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    let Some(s) = schema.as_object() else { return };
    if let Some(t) = s.get("type") {
        let actual = type_of(v);
        let fits = |t: &Value| {
            t.as_str()
                .is_some_and(|t| t == actual || (t == "number" && actual == "integer"))
        };
        let ok = match t {
            Value::Array(a) => a.iter().any(fits),
            t => fits(t),
        };
        if !ok {
            out.push((path.into(), format!("expected {t}, got {actual}")));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = s.get("enum") {
        if !allowed.contains(v) {
            out.push((
                path.into(),
                format!("not one of {}", Value::from(allowed.clone())),
            ));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            out.push((path.into(), format!("must be {c}")));
        }
    }
    match v {
        Value::Object(o) => {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(Value::Array(req)) = s.get("required") {
                for r in req.iter().filter_map(Value::as_str) {
                    if !o.contains_key(r) {
                        out.push((format!("{path}.{r}"), "is required".into()));
                    }
                }
            }
            for (k, x) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => validate(ps, x, &format!("{path}.{k}"), out),
                    None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        out.push((format!("{path}.{k}"), "is not allowed".into()))
                    }
                    None => {}
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    validate(items, x, &format!("{path}[{i}]"), out);
                }
            }
            let n = a.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                out.push((path.into(), format!("fewer than {} items", s["minItems"])));
            }
            if s.get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                out.push((path.into(), format!("more than {} items", s["maxItems"])));
            }
        }
        Value::String(x) => {
            let n = x.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                out.push((path.into(), format!("shorter than {}", s["minLength"])));
            }
            if s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                out.push((path.into(), format!("longer than {}", s["maxLength"])));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if s.get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| x < m)
            {
                out.push((path.into(), format!("below {}", s["minimum"])));
            }
            if s.get("maximum")
                .and_then(Value::as_f64)
                .is_some_and(|m| x > m)
            {
                out.push((path.into(), format!("above {}", s["maximum"])));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn checks_schemas_and_values_with_paths() {
        let s = json!({"type": "object", "required": ["text"], "additionalProperties": false,
            "properties": {"text": {"type": "string", "minLength": 1},
                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                           "n": {"type": "integer", "minimum": 0}}});
        let mut bad = Vec::new();
        check(&s, "input", &mut bad);
        assert!(bad.is_empty(), "{bad:?}");
        let mut out = Vec::new();
        validate(
            &s,
            &json!({"text": "hi", "tags": ["a"], "n": 3}),
            "input",
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        validate(
            &s,
            &json!({"tags": ["c", "a", "b"], "n": -1.5, "x": 1}),
            "input",
            &mut out,
        );
        let paths: Vec<&str> = out.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "input.text",
                "input.n",
                "input.tags[0]",
                "input.tags",
                "input.x"
            ]
        );
        let mut bad = Vec::new();
        check(&json!({"type": "strin", "pattern": "x"}), "s", &mut bad);
        assert_eq!(bad.len(), 2);
    }
}
