//! The router's catalogue as a user meets it: `[[models.catalog]]` checked at start, and
//! `GET /ai/models` showing the hierarchy with exact prices and why each model can or cannot
//! serve now.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use common::*;
use serde_json::Value;

const CATALOG: &str = r#"
[[models.catalog]]
name = "claude"
provider = "anthropic"
model = "claude-3-5-sonnet-20241022"
api_key_env = "CATALOG_TEST_KEY_UNSET"
priority = 50
input_usd_per_mtok = "3.00"
cached_input_usd_per_mtok = "0.30"
cache_write_usd_per_mtok = "3.75"
output_usd_per_mtok = "15.00"
context_window = 200000
max_output_tokens = 8192

[[models.catalog]]
name = "small"
provider = "local"
model = "smollm2"
priority = 1

[[models.catalog]]
name = "missing"
provider = "local"
model = "not-imported"
priority = 2

[[models.catalog]]
name = "ollama"
provider = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"
model = "llama3.1:70b"
priority = 3

[[models.catalog]]
name = "gpt"
provider = "openai"
model = "gpt-4o-mini"
api_key_env = "CATALOG_TEST_KEY_SET"
priority = 4
input_usd_per_mtok = "0.15"
cached_input_usd_per_mtok = "0.075"
output_usd_per_mtok = "0.60"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_shows_the_hierarchy_exact_prices_and_why_a_model_cannot_serve() {
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let config = dir.path().join("revo.toml");
    std::fs::write(&config, CATALOG).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let env = [
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
        ("REVO_CONFIG", config.as_str()),
        ("CATALOG_TEST_KEY_SET", "sk-test-secret"),
    ];
    import_smollm2(&env);
    let served = Served::start(&env).await;
    let api = Api::new(&served);
    let admin = api.login("admin", ADMIN_PW).await;
    let r = api.call("GET", "/ai/models", Some(&admin), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let models = r.body["models"].as_array().unwrap();
    let by_name = |n: &str| -> &Value { models.iter().find(|m| m["name"] == n).unwrap() };
    let order: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(order, ["small", "missing", "ollama", "gpt", "claude"]);

    let small = by_name("small");
    assert_eq!(small["status"], "available", "{small}");
    assert_eq!(small["workers"], 1);
    assert_eq!(small["served_locally"], true);
    assert_eq!(small["input_usd_per_mtok"], "0");
    let missing = by_name("missing");
    assert_eq!(missing["status"], "unavailable");
    assert!(missing["reason"]
        .as_str()
        .unwrap()
        .contains("not in the model registry"));
    // Nothing listens on the local server's port: its probe says so.
    assert!(by_name("ollama")["reason"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    let gpt = by_name("gpt");
    assert_eq!(gpt["served_locally"], false);
    assert_eq!(
        (
            &gpt["input_usd_per_mtok"],
            &gpt["cached_input_usd_per_mtok"],
            &gpt["output_usd_per_mtok"]
        ),
        (
            &Value::from("0.15"),
            &Value::from("0.075"),
            &Value::from("0.6")
        )
    );
    // The key is set: the cloud model is available, its breaker closed.
    assert_eq!(gpt["status"], "available", "{gpt}");
    assert_eq!(gpt["breaker"], "closed");
    let claude = by_name("claude");
    assert_eq!(claude["reason"], "no API key: set CATALOG_TEST_KEY_UNSET");
    assert_eq!(claude["cache_write_usd_per_mtok"], "3.75");
    // Neither keys nor internal addresses are shown.
    let text = r.body.to_string();
    assert!(!text.contains("sk-test-secret") && !text.contains("127.0.0.1:9"));

    // The router serves a chat with the local model, through its chat template, for free.
    let r = api
        .call(
            "POST",
            "/ai/generate",
            Some(&admin),
            Some(serde_json::json!({
                "messages": [{"role": "system", "content": "Answer briefly."},
                             {"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 8, "temperature": 0, "force_local": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (&r.body["model"], &r.body["provider"], &r.body["cost_usd"]),
        (
            &Value::from("small"),
            &Value::from("local"),
            &Value::from("0")
        )
    );
    assert_eq!(r.body["served_locally"], true);
    let out = r.body["usage"]["output_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&out), "{}", r.body);
    // The template wrapped the chat: more prompt tokens than the words alone.
    assert!(
        r.body["usage"]["input_tokens"].as_u64().unwrap() > 15,
        "{}",
        r.body
    );
    assert!(!r.body["text"].as_str().unwrap().is_empty());

    // Programs see it with a developer's key; a viewer may not generate, so may not list.
    let pw = "a-password-for-the-catalogue-test";
    api.create_user(&admin, "dev", pw, &["developer"]).await;
    let dev_token = api.login("dev", pw).await;
    let (_, key) = api
        .create_key(&dev_token, serde_json::json!({"name": "prog"}))
        .await;
    assert_eq!(
        api.call("GET", "/ai/models", Some(&key), None).await.status,
        200
    );
    api.create_user(&admin, "viewer", pw, &["viewer"]).await;
    let viewer = api.login("viewer", pw).await;
    let r = api.call("GET", "/ai/models", Some(&viewer), None).await;
    assert_eq!(r.status, 403);
    assert!(served.stop().await.success());
}

#[test]
fn a_bad_catalogue_is_refused_at_start_with_what_is_wrong() {
    let cases = [
        (
            "[[models.catalog]]\nname = \"a\"\nprovider = \"local\"\n\
             [[models.catalog]]\nname = \"a\"\nprovider = \"local\"\n",
            "used twice",
        ),
        (
            "[[models.catalog]]\nname = \"a\"\nprovider = \"openai\"\ninput_usd_per_mtok = \"-0.15\"\n",
            "input_usd_per_mtok",
        ),
        (
            "[[models.catalog]]\nname = \"a\"\nprovider = \"gemini\"\n",
            "unknown provider `gemini`",
        ),
        (
            "[[models.catalog]]\nname = \"a\"\nprovider = \"openai\"\ninput_usd_per_mtok = 0.15\n",
            "invalid type",
        ),
        (
            "[[models.catalog]]\nname = \"a\"\nprovider = \"local\"\nprice = \"1\"\n",
            "unknown field `price`",
        ),
    ];
    for (toml, want) in cases {
        let dir = TempDir::new();
        let file = dir.path().join("revo.toml");
        std::fs::write(&file, toml).unwrap();
        let data = dir.path().to_str().unwrap();
        let (code, _, err) = output(&mut revo_cmd(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
                file.to_str().unwrap(),
            ],
            &[("REVO_DATA_DIR", data)],
        ));
        assert_eq!(code, 2, "{toml}: {err}");
        assert!(err.contains(want), "{toml}: `{err}` does not say {want}");
    }
}
