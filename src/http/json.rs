//! A strict JSON body extractor: `application/json` only, a size limit, a nesting-depth limit,
//! valid UTF-8, and the target type's own rules (`deny_unknown_fields` on every request type).
//! Each violation is a `4xx` with its own code; none reaches a handler.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::config::{HttpLimits, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_JSON_DEPTH};

pub struct Json<T>(pub T);

const DEFAULT_LIMITS: HttpLimits = HttpLimits {
    max_body_bytes: DEFAULT_MAX_BODY_BYTES,
    max_json_depth: DEFAULT_MAX_JSON_DEPTH,
    trust_forwarded: false,
};

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is over {limit} bytes"),
    )
}

/// Whether `bytes` nests arrays and objects deeper than `max` (strings are skipped).
pub fn too_deep(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses a complete body under `limits`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], limits: &HttpLimits) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::bad_request(
            "invalid_utf8",
            "the request body is not valid UTF-8",
        ));
    }
    if too_deep(bytes, limits.max_json_depth) {
        return Err(ApiError::bad_request(
            "json_too_deep",
            format!("JSON nests deeper than {} levels", limits.max_json_depth),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::unprocessable("invalid_body", e.to_string()),
            _ => ApiError::bad_request("invalid_json", format!("malformed JSON: {e}")),
        }
    })
}

fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = ct.split(';').map(str::trim);
    let essence = parts.next().unwrap_or("").to_ascii_lowercase();
    let charset_ok = parts.all(|p| {
        let p = p.to_ascii_lowercase();
        !p.starts_with("charset=") || p == "charset=utf-8" || p == "charset=\"utf-8\""
    });
    if essence == "application/json" && charset_ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as `Content-Type: application/json` (UTF-8)",
        ))
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limits = req
            .app_data::<web::Data<HttpLimits>>()
            .map_or(DEFAULT_LIMITS, |l| *l.get_ref());
        let checked = check_content_type(req).and_then(|()| {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            match declared {
                Some(n) if n > limits.max_body_bytes => Err(too_large(limits.max_body_bytes)),
                _ => Ok(()),
            }
        });
        let mut payload = payload.take();
        Box::pin(async move {
            checked?;
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::bad_request("bad_body", format!("reading the body failed: {e}"))
                })?;
                if body.len() + chunk.len() > limits.max_body_bytes {
                    return Err(too_large(limits.max_body_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            parse(&body, &limits).map(Json)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Login {
        username: String,
    }

    fn code(r: Result<Login, ApiError>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|e| e.code)
    }

    #[test]
    fn each_kind_of_bad_body_has_its_code() {
        let l = HttpLimits {
            max_body_bytes: 1024,
            max_json_depth: 4,
            trust_forwarded: false,
        };
        assert_eq!(code(parse(br#"{"username":"a"}"#, &l)), "ok");
        assert_eq!(
            code(parse(br#"{"username":"a","x":1}"#, &l)),
            "invalid_body"
        );
        assert_eq!(code(parse(br#"{"username":1}"#, &l)), "invalid_body");
        assert_eq!(code(parse(br#"{}"#, &l)), "invalid_body");
        assert_eq!(code(parse(br#"{"username":"#, &l)), "invalid_json");
        assert_eq!(code(parse(b"{\"username\":\"\xff\"}", &l)), "invalid_utf8");
        assert_eq!(code(parse(br#"[[[[[1]]]]]"#, &l)), "json_too_deep");
        // Brackets inside strings do not count.
        assert_eq!(code(parse(br#"{"username":"[[[[[[[[\"{{{{{"}"#, &l)), "ok");
    }
}
