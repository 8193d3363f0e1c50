//! The full RBAC matrix, generated: every operation of the running server's OpenAPI document ×
//! every role × tokens and API keys, checked against the permission table in docs/api.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

const ROLES: [&str; 4] = ["admin", "developer", "viewer", "auditor"];

/// permission → role → allowed, from the `rbac-matrix` table of docs/api.md.
fn documented_matrix() -> BTreeMap<String, BTreeMap<String, bool>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let table = doc
        .split("<!-- rbac-matrix -->")
        .nth(1)
        .and_then(|t| t.split("<!-- /rbac-matrix -->").next())
        .expect("docs/api.md has no rbac-matrix table");
    let mut lines = table.lines().filter(|l| l.starts_with('|'));
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect();
    let mut matrix = BTreeMap::new();
    for line in lines.skip(1) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let perm = cells[1].trim_matches('`').to_owned();
        let mut row = BTreeMap::new();
        for role in ROLES {
            let col = header.iter().position(|h| h == role).unwrap();
            let allowed = match cells[col] {
                "yes" => true,
                "no" => false,
                other => panic!("{perm}/{role}: `{other}` is not yes or no"),
            };
            row.insert(role.to_owned(), allowed);
        }
        matrix.insert(perm, row);
    }
    assert!(!matrix.is_empty());
    matrix
}

struct Op {
    method: String,
    path: String,
    permission: Option<String>,
}

fn operations(spec: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let permission = op["security"][0]["bearer"][0].as_str().map(str::to_owned);
            ops.push(Op {
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                permission,
            });
        }
    }
    ops
}

/// A request that passes validation, so only access decides the outcome.
fn body_for(op: &Op, n: usize) -> Option<Value> {
    match (op.method.as_str(), op.path.as_str()) {
        ("POST", "/users") => Some(
            json!({"username": format!("made-{n}"), "password": "made-password", "roles": ["viewer"]}),
        ),
        ("PATCH", _) => Some(json!({"disabled": false})),
        ("POST", "/keys") => Some(json!({"name": format!("made-{n}")})),
        ("POST", "/auth/login") => Some(json!({"username": "admin", "password": ADMIN_PW})),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_operation_with_tokens_and_keys() {
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let served = Served::start(&[
        ("REVO_DATA_DIR", &data),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
        ("REVO_RATE_LIMIT_ADMIN", "0"),
        ("REVO_RATE_LIMIT_DEVELOPER", "0"),
        ("REVO_RATE_LIMIT_VIEWER", "0"),
    ])
    .await;
    let api = Api::new(&served);
    let matrix = documented_matrix();
    let spec = api.call("GET", "/openapi.json", None, None).await.body;
    let ops = operations(&spec);

    // One user per role, each with a token; and from admin, one key limited to each role.
    let admin = api.login("admin", ADMIN_PW).await;
    let mut passwords = BTreeMap::from([("admin".to_owned(), ADMIN_PW.to_owned())]);
    for role in ["developer", "viewer", "auditor"] {
        let pw = format!("{role}-password");
        api.create_user(&admin, &format!("{role}-user"), &pw, &[role])
            .await;
        passwords.insert(role.to_owned(), pw);
    }
    let username = |role: &str| {
        if role == "admin" {
            "admin".to_owned()
        } else {
            format!("{role}-user")
        }
    };
    let mut keys = BTreeMap::new();
    for role in ROLES {
        let (_, key) = api
            .create_key(
                &admin,
                json!({"name": format!("{role}-key"), "roles": [role]}),
            )
            .await;
        keys.insert(role, key);
    }

    let mut checked = 0;
    let mut n = 0;
    for op in &ops {
        let path = op.path.replace("{id}", &Uuid::now_v7().to_string());
        n += 1;
        let anonymous = api.call(&op.method, &path, None, body_for(op, n)).await;
        match &op.permission {
            None => assert!(
                ![401, 403].contains(&anonymous.status),
                "{} {} is public but answered {}",
                op.method,
                op.path,
                anonymous.status
            ),
            Some(p) => {
                assert!(
                    matrix.contains_key(p),
                    "{} {} needs `{p}`, which docs/api.md does not list",
                    op.method,
                    op.path
                );
                assert_eq!(
                    (anonymous.status, anonymous.code()),
                    (401, "missing_credentials"),
                    "{} {} without credentials",
                    op.method,
                    op.path
                );
            }
        }
        checked += 1;
        let Some(perm) = &op.permission else { continue };
        for role in ROLES {
            let allowed = matrix[perm][role];
            for kind in ["token", "key"] {
                // A fresh token each time: logging out revokes it.
                let cred = match kind {
                    "token" => api.login(&username(role), &passwords[role]).await,
                    _ => keys[role].clone(),
                };
                n += 1;
                let r = api
                    .call(&op.method, &path, Some(&cred), body_for(op, n))
                    .await;
                if allowed {
                    assert!(
                        ![401, 403].contains(&r.status),
                        "{role} {kind} should be allowed {} {}: {} {}",
                        op.method,
                        op.path,
                        r.status,
                        r.body
                    );
                } else {
                    assert_eq!(
                        (r.status, r.code()),
                        (403, "forbidden"),
                        "{role} {kind} should be refused {} {}",
                        op.method,
                        op.path
                    );
                }
                checked += 1;
            }
        }
    }
    let protected = ops.iter().filter(|o| o.permission.is_some()).count();
    assert!(
        protected >= 9,
        "only {protected} protected operations in the spec"
    );
    assert_eq!(checked, ops.len() + protected * ROLES.len() * 2);
}
