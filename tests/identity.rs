//! Identity at the edge, as clients see it: login, tokens, keys, users, bad input, throttling,
//! rate limits, request ids and the events all of it leaves behind (embedded mode).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::io::BufRead;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::json;
use uuid::Uuid;

async fn embedded(extra: &[(&str, &str)]) -> (TempDir, Served, Api) {
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut env = vec![
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
    ];
    env.extend_from_slice(extra);
    let served = Served::start(&env).await;
    let api = Api::new(&served);
    (dir, served, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_tokens_and_keys_through_their_whole_life() {
    let (dir, served, api) = embedded(&[]).await;

    // Login: a token, and failures that never say whether the user exists.
    let admin = api.login("admin", ADMIN_PW).await;
    let wrong = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "admin", "password": "wrong-password"})),
        )
        .await;
    let ghost = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "ghost", "password": "wrong-password"})),
        )
        .await;
    assert_eq!((wrong.status, ghost.status), (401, 401));
    assert_eq!(
        wrong.body, ghost.body,
        "login failures must not reveal which users exist"
    );
    assert_eq!(wrong.code(), "invalid_credentials");
    let r = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "admin", "password": ADMIN_PW})),
        )
        .await;
    assert_eq!(r.body["token_type"], "bearer");
    assert_eq!(r.body["expires_in"], 3600);

    // Users.
    let me = api.me(&admin).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["user"]["username"], "admin");
    assert_eq!(me.body["auth"], "token");
    assert!(me.header("x-request-id").is_some());
    assert_eq!(me.header("x-ratelimit-limit"), Some("1200"));
    assert!(
        me.header("x-ratelimit-remaining").is_some() && me.header("x-ratelimit-reset").is_some()
    );

    let dev_id = api
        .create_user(&admin, "dev", "dev-password-1", &["developer"])
        .await;
    let dup = api
        .call(
            "POST",
            "/users",
            Some(&admin),
            Some(json!({"username": "dev", "password": "another-pass", "roles": ["viewer"]})),
        )
        .await;
    assert_eq!((dup.status, dup.code()), (409, "username_taken"));
    let other_id = api
        .create_user(&admin, "other", "other-password", &["developer"])
        .await;
    let listed = api.call("GET", "/users", Some(&admin), None).await;
    let names: Vec<&str> = listed.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "dev", "other"]);
    assert!(
        !listed.body.to_string().contains("argon2"),
        "no hash may leave the server"
    );
    let one = api
        .call("GET", &format!("/users/{dev_id}"), Some(&admin), None)
        .await;
    assert_eq!(one.body["roles"], json!(["developer"]));
    let missing = api
        .call(
            "GET",
            &format!("/users/{}", Uuid::now_v7()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));

    let dev = api.login("dev", "dev-password-1").await;
    let denied = api.call("GET", "/users", Some(&dev), None).await;
    assert_eq!((denied.status, denied.code()), (403, "forbidden"));

    // Keys: shown once, hashed at rest, never wider than their owner.
    let too_wide = api
        .call(
            "POST",
            "/keys",
            Some(&dev),
            Some(json!({"name": "x", "roles": ["admin"]})),
        )
        .await;
    assert_eq!(too_wide.status, 403);
    let (key_id, key) = api.create_key(&dev, json!({"name": "ci"})).await;
    assert!(key.starts_with("revo_sk_"));
    let via_key = api.me(&key).await;
    assert_eq!(via_key.body["auth"], "key");
    assert_eq!(via_key.body["key_id"], key_id.as_str());
    assert_eq!(via_key.body["roles"], json!(["developer"]));
    let (_, viewer_key) = api
        .create_key(&dev, json!({"name": "read-only", "roles": ["viewer"]}))
        .await;
    let narrowed = api.me(&viewer_key).await;
    assert_eq!(narrowed.body["roles"], json!(["viewer"]));
    let cannot = api
        .call(
            "POST",
            "/keys",
            Some(&viewer_key),
            Some(json!({"name": "y"})),
        )
        .await;
    assert_eq!(cannot.status, 403);
    let keys = api.call("GET", "/keys", Some(&dev), None).await;
    assert_eq!(keys.body["keys"].as_array().unwrap().len(), 2);
    let text = keys.body.to_string();
    assert!(!text.contains(&key) && !text.contains("secret"), "{text}");
    let all = api.call("GET", "/keys", Some(&admin), None).await;
    assert_eq!(
        all.body["keys"].as_array().unwrap().len(),
        2,
        "admins see every key"
    );
    let other = api.login("other", "other-password").await;
    assert_eq!(
        api.call("GET", "/keys", Some(&other), None).await.body["keys"],
        json!([])
    );
    let not_theirs = api
        .call("DELETE", &format!("/keys/{key_id}"), Some(&other), None)
        .await;
    assert_eq!((not_theirs.status, not_theirs.code()), (404, "not_found"));
    assert_eq!(
        api.call("DELETE", &format!("/keys/{key_id}"), Some(&dev), None)
            .await
            .status,
        204
    );
    assert_eq!(
        api.call("DELETE", &format!("/keys/{key_id}"), Some(&dev), None)
            .await
            .status,
        204
    );
    let revoked = api.me(&key).await;
    assert_eq!((revoked.status, revoked.code()), (401, "key_revoked"));
    let forged = format!("revo_sk_{}_{}", Uuid::now_v7().simple(), "A".repeat(43));
    assert_eq!(api.me(&forged).await.code(), "key_unknown");
    let (_, short_lived) = api
        .create_key(&dev, json!({"name": "soon", "expires_in_secs": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(api.me(&short_lived).await.code(), "key_expired");

    // Logout revokes the token, not the key.
    let keyout = api
        .call("POST", "/auth/logout", Some(&viewer_key), None)
        .await;
    assert_eq!((keyout.status, keyout.code()), (422, "not_a_token"));
    assert_eq!(
        api.call("POST", "/auth/logout", Some(&dev), None)
            .await
            .status,
        204
    );
    let after = api.me(&dev).await;
    assert_eq!((after.status, after.code()), (401, "token_revoked"));

    // Role changes apply to live tokens at once; disabling locks out tokens and keys.
    let other_before = api.call("GET", "/users", Some(&other), None).await;
    assert_eq!(other_before.status, 403);
    let patched = api
        .call(
            "PATCH",
            &format!("/users/{other_id}"),
            Some(&admin),
            Some(json!({"roles": ["admin"]})),
        )
        .await;
    assert_eq!(patched.body["roles"], json!(["admin"]));
    assert_eq!(
        api.call("GET", "/users", Some(&other), None).await.status,
        200
    );
    let dev2 = api.login("dev", "dev-password-1").await;
    api.call(
        "PATCH",
        &format!("/users/{dev_id}"),
        Some(&admin),
        Some(json!({"disabled": true})),
    )
    .await;
    for cred in [&dev2, &viewer_key] {
        let r = api.me(cred).await;
        assert_eq!((r.status, r.code()), (401, "user_disabled"));
    }
    let login_disabled = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "dev", "password": "dev-password-1"})),
        )
        .await;
    assert_eq!(
        (login_disabled.status, login_disabled.code()),
        (401, "user_disabled")
    );
    let r = api
        .call(
            "PATCH",
            &format!("/users/{dev_id}"),
            Some(&admin),
            Some(json!({"disabled": false, "password": "new-dev-password"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    api.login("dev", "new-dev-password").await;

    // Admins cannot lock themselves out; they can demote other admins.
    let me_id = me.body["user"]["id"].as_str().unwrap();
    for patch in [json!({"disabled": true}), json!({"roles": ["viewer"]})] {
        let r = api
            .call(
                "PATCH",
                &format!("/users/{me_id}"),
                Some(&admin),
                Some(patch),
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "self_lockout"));
    }
    let r = api
        .call(
            "PATCH",
            &format!("/users/{other_id}"),
            Some(&admin),
            Some(json!({"roles": ["viewer"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Every change is an event carrying the request id; no secret is in any event.
    let rid = Uuid::now_v7();
    let req = api
        .http
        .post(format!("{}/users", api.base))
        .bearer_auth(&admin)
        .header("x-request-id", rid.to_string())
        .json(&json!({"username": "traced", "password": "traced-password", "roles": ["viewer"]}));
    let traced = api.send(req).await;
    assert_eq!(
        traced.header("x-request-id"),
        Some(rid.to_string().as_str())
    );
    let bad_rid = api
        .send(
            api.http
                .get(format!("{}/health/live", api.base))
                .header("x-request-id", "not a uuid"),
        )
        .await;
    assert!(Uuid::try_parse(bad_rid.header("x-request-id").unwrap()).is_ok());

    served.stop().await;
    let data = dir.path().to_str().unwrap();
    let (code, out, err) = output(&mut revo_cmd(
        &["events", "tail"],
        &[("REVO_DATA_DIR", data)],
    ));
    assert_eq!(code, 0, "{err}");
    for secret in [
        ADMIN_PW,
        "dev-password-1",
        "new-dev-password",
        "traced-password",
        key.as_str(),
    ] {
        assert!(!out.contains(secret), "a secret reached the event log");
    }
    let types: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|e| e["event_type"].as_str().unwrap().to_owned())
        .collect();
    for t in [
        "user.created",
        "login.succeeded",
        "login.failed",
        "key.issued",
        "key.revoked",
        "token.revoked",
        "user.roles_changed",
        "user.disabled_changed",
        "user.password_changed",
    ] {
        assert!(types.iter().any(|x| x == t), "no {t} event in {types:?}");
    }
    let created = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["stream_id"] == "traced")
        .unwrap();
    assert_eq!(created["correlation_id"], rid.to_string());
    assert_eq!(created["actor"], format!("user:{me_id}"));
    let (code, out, err) = output(&mut revo_cmd(
        &["replay", "verify", "users"],
        &[("REVO_DATA_DIR", data)],
    ));
    assert_eq!(code, 0, "replay verify users: {out}{err}");
}

fn forge(secret: &[u8], header: serde_json::Value, claims: serde_json::Value) -> String {
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64.encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_a_401_with_its_own_code() {
    let (dir, _served, api) = embedded(&[]).await;
    let admin = api.login("admin", ADMIN_PW).await;
    let sub = api.me(&admin).await.body["user"]["id"].clone();
    // Embedded mode keeps its signing key in the data directory.
    let secret = std::fs::read(dir.path().join("jwt.key")).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, nbf: i64, sub: serde_json::Value| json!({"sub": sub, "roles": ["admin"], "exp": now + exp, "iat": now, "nbf": now + nbf, "jti": Uuid::now_v7()});
    let hs = json!({"alg": "HS256", "typ": "JWT", "kid": "local"});
    let good = forge(&secret, hs.clone(), claims(60, 0, sub.clone()));
    assert_eq!(api.me(&good).await.status, 200);
    let cases = [
        (
            forge(
                b"",
                json!({"alg": "none", "kid": "local"}),
                claims(60, 0, sub.clone()),
            ),
            "token_algorithm",
        ),
        (
            forge(
                &secret,
                json!({"alg": "RS256", "kid": "local"}),
                claims(60, 0, sub.clone()),
            ),
            "token_algorithm",
        ),
        (
            forge(
                &secret,
                json!({"alg": "HS256", "kid": "other"}),
                claims(60, 0, sub.clone()),
            ),
            "token_unknown_kid",
        ),
        (
            forge(
                b"0123456789abcdef0123456789abcdef",
                hs.clone(),
                claims(60, 0, sub.clone()),
            ),
            "token_bad_signature",
        ),
        (
            forge(&secret, hs.clone(), claims(-30, -90, sub.clone())),
            "token_expired",
        ),
        (
            forge(&secret, hs.clone(), claims(600, 300, sub.clone())),
            "token_not_yet_valid",
        ),
        (
            forge(&secret, hs.clone(), claims(60, 0, json!(Uuid::now_v7()))),
            "user_unknown",
        ),
        (
            format!("{}.", good.rsplit_once('.').unwrap().0),
            "token_bad_signature",
        ),
        ("a.b.c".to_owned(), "token_malformed"),
    ];
    for (token, code) in cases {
        let r = api.me(&token).await;
        assert_eq!((r.status, r.code()), (401, code), "{token}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let none = api.call("GET", "/users/me", None, None).await;
    assert_eq!((none.status, none.code()), (401, "missing_credentials"));
    let basic = api
        .send(
            api.http
                .get(format!("{}/users/me", api.base))
                .header("authorization", "Basic YTpi"),
        )
        .await;
    assert_eq!(basic.code(), "missing_credentials");

    let text = api.text("/metrics").await;
    for line in [
        r#"revo_auth_failures_total{reason="token_expired"} 1"#,
        r#"revo_auth_failures_total{reason="token_algorithm"} 2"#,
        r#"revo_http_requests_total{method="GET",route="/users/me",status="401"}"#,
        r#"revo_http_request_duration_seconds_bucket{method="GET",route="/users/me""#,
        "revo_http_requests_in_flight",
    ] {
        assert!(text.contains(line), "{line} missing from /metrics");
    }
}

async fn raw(api: &Api, token: &str, content_type: &str, body: Vec<u8>) -> Reply {
    api.send(
        api.http
            .post(format!("{}/users", api.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let (_dir, _served, api) = embedded(&[]).await;
    let admin = api.login("admin", ADMIN_PW).await;
    let json_ct = "application/json";
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (json_ct, vec![b' '; 70 * 1024], 413, "body_too_large"),
        (json_ct, deep.into_bytes(), 400, "json_too_deep"),
        (
            "text/plain",
            br#"{"username":"a","password":"password1","roles":["viewer"]}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "application/json; charset=latin1",
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            json_ct,
            b"{\"username\":\"\xff\xfe\"}".to_vec(),
            400,
            "invalid_utf8",
        ),
        (json_ct, br#"{"username": "#.to_vec(), 400, "invalid_json"),
        (
            json_ct,
            br#"{"username":"a","password":"password1","roles":["viewer"],"admin":true}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            json_ct,
            br#"{"username":"a","password":12345678,"roles":["viewer"]}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            json_ct,
            br#"{"username":"a","password":"password1","roles":["root"]}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            json_ct,
            br#"{"username":"a","password":"password1","roles":[]}"#.to_vec(),
            422,
            "invalid_roles",
        ),
        (
            json_ct,
            br#"{"username":"Bad Name","password":"password1","roles":["viewer"]}"#.to_vec(),
            422,
            "invalid_username",
        ),
        (
            json_ct,
            br#"{"username":"a","password":"short","roles":["viewer"]}"#.to_vec(),
            422,
            "weak_password",
        ),
        (json_ct, b"".to_vec(), 400, "invalid_json"),
    ];
    for (ct, body, status, code) in cases {
        let r = raw(&api, &admin, ct, body).await;
        assert_eq!((r.status, r.code()), (status, code), "{ct}: {}", r.body);
    }
    let users = api.call("GET", "/users", Some(&admin), None).await;
    assert_eq!(
        users.body["users"].as_array().unwrap().len(),
        1,
        "nothing half-created"
    );

    let empty = api
        .call(
            "PATCH",
            &format!("/users/{}", Uuid::now_v7()),
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(empty.status, 404);
    let me = api.me(&admin).await;
    let id = me.body["user"]["id"].as_str().unwrap();
    let empty = api
        .call(
            "PATCH",
            &format!("/users/{id}"),
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!((empty.status, empty.code()), (422, "empty_patch"));
    let bad_id = api
        .call("GET", "/users/not-a-uuid", Some(&admin), None)
        .await;
    assert_eq!((bad_id.status, bad_id.code()), (404, "not_found"));
    for body in [
        json!({"name": ""}),
        json!({"name": "k", "rate_limit_per_minute": 0}),
        json!({"name": "k", "expires_in_secs": 0}),
    ] {
        let r = api
            .call("POST", "/keys", Some(&admin), Some(body.clone()))
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
    }
    assert_eq!(
        api.call("GET", "/keys", Some(&admin), None).await.body["keys"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_for_real_and_unknown_names_alike() {
    let (_dir, _served, api) = embedded(&[]).await;
    let attempt = |user: &'static str, pw: &'static str| {
        let api = api.clone();
        async move {
            api.call(
                "POST",
                "/auth/login",
                None,
                Some(json!({"username": user, "password": pw})),
            )
            .await
        }
    };
    for user in ["admin", "ghost"] {
        for _ in 0..5 {
            assert_eq!(attempt(user, "wrong-password").await.status, 401);
        }
        let locked = attempt(
            user,
            if user == "admin" {
                ADMIN_PW
            } else {
                "x-password"
            },
        )
        .await;
        assert_eq!(
            (locked.status, locked.code()),
            (429, "login_throttled"),
            "{user}"
        );
        let retry: u64 = locked.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry));
    }
    // Other names are unaffected.
    let r = attempt("someone", "wrong-password").await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_user_and_per_key() {
    let (_dir, _served, api) = embedded(&[("REVO_RATE_LIMIT_VIEWER", "5")]).await;
    let admin = api.login("admin", ADMIN_PW).await;
    api.create_user(&admin, "vic", "viewer-password", &["viewer"])
        .await;
    let vic = api.login("vic", "viewer-password").await;
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = api.me(&vic).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        remaining.push(
            r.header("x-ratelimit-remaining")
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let over = api.me(&vic).await;
    assert_eq!((over.status, over.code()), (429, "rate_limited"));
    assert!(over.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(over.header("x-ratelimit-remaining"), Some("0"));
    // The admin has its own bucket; a key has its own bucket and may have its own limit.
    assert_eq!(api.me(&admin).await.status, 200);
    let (_, key) = api
        .create_key(&admin, json!({"name": "slow", "rate_limit_per_minute": 2}))
        .await;
    let statuses: Vec<u16> = statuses(&api, &key, 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    let text = api.text("/metrics").await;
    assert!(
        text.contains(r#"revo_rate_limit_rejections_total{kind="user"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"revo_rate_limit_rejections_total{kind="key"} 1"#));
}

async fn statuses(api: &Api, cred: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(api.me(cred).await.status);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_leaves_the_admin_password_in_a_private_file_and_the_cli_adds_users() {
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = revo_cmd(&["serve", "--listen", &listen], &[("REVO_DATA_DIR", &data)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Keep the pipe open (the reader is returned) so the server never writes to a closed stdout.
    let (line, _reader) = tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let line = (&mut reader)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("password"));
        (line, reader)
    })
    .await
    .unwrap();
    // Not a terminal: the password is in a private file, and only its path is printed.
    let line = line.expect("nothing said about the password");
    let file = dir.path().join("admin-password");
    assert!(line.contains(file.to_str().unwrap()), "{line}");
    let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(!line.contains(&password), "{line}");
    let mut served = Served { child, port };
    served.wait_ready().await;
    let api = Api::new(&served);
    api.login("admin", &password).await;
    // While a server holds the data directory, the CLI says so.
    let (code, _, err) = output(&mut revo_cmd(
        &["users", "add", "cli", "--role", "viewer"],
        &[("REVO_DATA_DIR", &data)],
    ));
    assert_ne!(code, 0);
    assert!(err.contains("another `revo serve`"), "{err}");
    served.stop().await;

    let (code, out, err) = output(&mut revo_cmd(
        &[
            "users",
            "add",
            "cli",
            "--role",
            "developer",
            "--role",
            "viewer",
        ],
        &[("REVO_DATA_DIR", &data)],
    ));
    assert_eq!(code, 0, "{err}");
    let cli_pw = out.split_whitespace().last().unwrap().to_owned();
    let (code, _, err) = output(&mut revo_cmd(
        &["users", "add", "cli", "--role", "viewer"],
        &[("REVO_DATA_DIR", &data)],
    ));
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = output(&mut revo_cmd(
        &["users", "add", "x", "--role", "root"],
        &[("REVO_DATA_DIR", &data)],
    ));
    assert_ne!(code, 0);
    assert!(err.contains("unknown role"), "{err}");

    // A restart prints nothing and keeps everyone.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = revo_cmd(&["serve", "--listen", &listen], &[("REVO_DATA_DIR", &data)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut served = Served { child, port };
    served.wait_ready().await;
    let api = Api::new(&served);
    api.login("admin", &password).await;
    let cli = api.login("cli", &cli_pw).await;
    let me = api.me(&cli).await;
    assert_eq!(me.body["roles"], json!(["developer", "viewer"]));
    served.stop().await;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(!rest.contains("password"), "printed again: {rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_and_openapi_list_every_endpoint() {
    let (_dir, _served, api) = embedded(&[]).await;
    let spec = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(spec.status, 200);
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let html = api.text("/docs").await;
    let mut n = 0;
    for (path, item) in spec.body["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            n += 1;
            let anchor = format!("id=\"{method}-{path}\"");
            assert!(html.contains(&anchor), "/docs lacks {method} {path}");
        }
    }
    assert!(n >= 16, "only {n} operations");
    for schema in ["CreateUser", "UserView", "ErrorBody", "NewKey"] {
        assert!(html.contains(&format!("<h3 id=\"{schema}\">")), "{schema}");
    }
}
