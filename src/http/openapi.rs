//! The OpenAPI 3.1 document, generated from the handlers (utoipa), served at `/openapi.json`,
//! and a self-contained HTML rendering of it at `/docs` (no script, no CDN: it works offline).

use actix_web::{get, web, HttpResponse};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use super::error::ErrorBody;
use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Revo",
        description = "Local-first AI platform. Errors are `{\"error\": {\"code\", \"message\"}}`; \
            every response carries `X-Request-Id`; authenticated responses carry \
            `X-RateLimit-Limit/Remaining/Reset`. Each operation's `security` scope is the \
            permission it needs (matrix in docs/api.md).",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "auth", description = "Log in and out"),
        (name = "users", description = "Accounts (argon2id passwords, roles)"),
        (name = "keys", description = "API keys for programs"),
        (name = "models", description = "Text generation with local models (OpenAI-compatible)"),
        (name = "ai", description = "The router's catalogue of local and cloud models"),
        (name = "rooms", description = "Real-time rooms: members, history by offset, documents, presence"),
        (name = "realtime", description = "The WebSocket (frames in docs/websocket.md)"),
        (name = "audit", description = "The audit log: who did what, hash-chained"),
        (name = "health", description = "Probes and metrics"),
        (name = "docs", description = "This documentation"),
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A JWT from POST /auth/login, or an API key (`revo_sk_...`) from POST /keys",
                    ))
                    .build(),
            ),
        );
    }
}

/// Errors every authenticated operation can answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum CallerErrors {
    /// Missing, malformed, expired, revoked or unknown credentials.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// The caller's roles lack the operation's permission.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// Over the caller's requests per minute (`Retry-After` says when to come back).
    #[response(status = 429)]
    RateLimited(#[to_schema] ErrorBody),
}

/// Errors of an operation that takes a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// Malformed JSON, invalid UTF-8 or nesting too deep.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// Body over the size limit.
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// Not `application/json`.
    #[response(status = 415)]
    MediaType(#[to_schema] ErrorBody),
    /// Well-formed JSON that breaks the schema or a rule (unknown field, weak password...).
    #[response(status = 422)]
    Invalid(#[to_schema] ErrorBody),
}

/// The OpenAPI 3.1 document of this build.
#[utoipa::path(tag = "docs", responses((status = 200, description = "OpenAPI 3.1 document", body = serde_json::Value)))]
#[get("/openapi.json")]
pub async fn spec(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.docs.json.clone())
}

/// Human-readable API documentation.
#[utoipa::path(tag = "docs", responses((status = 200, description = "HTML", body = String, content_type = "text/html")))]
#[get("/docs")]
pub async fn docs(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(state.docs.html.clone())
}

/// The rendered documents, built once at start.
pub struct Docs {
    pub json: String,
    pub html: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn schema_name(v: &Value) -> String {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_owned();
    }
    if let Some(items) = v.get("items") {
        return format!("[{}]", schema_name(items));
    }
    match v.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => v
            .get("oneOf")
            .and_then(Value::as_array)
            .map(|alts| alts.iter().map(schema_name).collect::<Vec<_>>().join(" | "))
            .unwrap_or_else(|| "any".into()),
    }
}

fn content_schema(v: &Value) -> Option<String> {
    v.get("content")?
        .as_object()?
        .values()
        .next()
        .and_then(|c| c.get("schema"))
        .map(schema_name)
}

/// Renders the document as one HTML page: every operation with its permission, body and
/// responses, then every schema with its fields.
pub fn render_html(doc: &Value) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Revo API</title><style>\
         body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}\
         code{background:#f3f3f3;padding:0 .2rem}.op{border-top:1px solid #ddd;padding:.5rem 0}\
         .m{font-weight:bold;display:inline-block;width:4.5rem}td,th{text-align:left;padding:0 .6rem 0 0}\
         </style></head><body><h1>Revo API</h1>",
    );
    if let Some(d) = doc.pointer("/info/description").and_then(Value::as_str) {
        h += &format!("<p>{}</p>", esc(d));
    }
    h += "<p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI 3.1).</p><h2>Endpoints</h2>";
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            let Some(ops) = item.as_object() else {
                continue;
            };
            for (method, op) in ops {
                let summary = op.get("summary").and_then(Value::as_str).unwrap_or("");
                let perm = op
                    .pointer("/security/0/bearer/0")
                    .and_then(Value::as_str)
                    .map_or("public".to_owned(), |p| {
                        format!("needs <code>{}</code>", esc(p))
                    });
                h += &format!(
                    "<div class=\"op\" id=\"{m}-{p}\"><span class=\"m\">{M}</span><code>{p}</code> — {s} <em>({perm})</em>",
                    m = esc(method),
                    M = esc(&method.to_ascii_uppercase()),
                    p = esc(path),
                    s = esc(summary),
                );
                if let Some(body) = op.get("requestBody").and_then(content_schema) {
                    h += &format!("<br>Body: <code>{}</code>", esc(&body));
                }
                if let Some(resps) = op.get("responses").and_then(Value::as_object) {
                    h += "<br>Responses: ";
                    let list: Vec<String> = resps
                        .iter()
                        .map(|(code, r)| match content_schema(r) {
                            Some(s) => format!("<code>{}</code> {}", esc(code), esc(&s)),
                            None => format!("<code>{}</code>", esc(code)),
                        })
                        .collect();
                    h += &list.join(", ");
                }
                h += "</div>";
            }
        }
    }
    h += "<h2>Schemas</h2>";
    if let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    {
        for (name, s) in schemas {
            h += &format!("<h3 id=\"{n}\">{n}</h3>", n = esc(name));
            if let Some(e) = s.get("enum").and_then(Value::as_array) {
                let vals: Vec<String> = e
                    .iter()
                    .map(|v| format!("<code>{}</code>", esc(&v.to_string())))
                    .collect();
                h += &format!("<p>One of {}</p>", vals.join(", "));
            }
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                let required: Vec<&str> = s
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                h += "<table><tr><th>field</th><th>type</th><th></th><th>about</th></tr>";
                for (f, p) in props {
                    h += &format!(
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(f),
                        esc(&schema_name(p)),
                        if required.contains(&f.as_str()) {
                            "required"
                        } else {
                            ""
                        },
                        esc(p.get("description").and_then(Value::as_str).unwrap_or("")),
                    );
                }
                h += "</table>";
            }
        }
    }
    h + "</body></html>"
}
