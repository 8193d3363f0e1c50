//! schemathesis (property-based, from PyPI) against `/openapi.json`: no `5xx`, and every
//! response matches the documented status codes, content types and schemas.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use common::*;

fn schemathesis() -> String {
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let bin = std::path::Path::new(&python).with_file_name("schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test.sh, which installs it",
        bin.display()
    );
    bin.to_string_lossy().into_owned()
}

fn run(bin: &str, api: &Api, token: &str, filter: &[&str]) {
    let spec = format!("{}/openapi.json", api.base);
    let auth = format!("Authorization: Bearer {token}");
    let report = TempDir::new();
    let mut args = vec![
        "run",
        &spec,
        "--header",
        &auth,
        "--checks",
        "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        "--max-examples",
        "25",
        "--seed",
        "20261129",
        "--generation-database",
        "none",
        "--no-color",
        // One worker: with two, hypothesis's lambda-source cache calls `ast.parse` from two
        // threads at once, which CPython 3.11 can fail with "AST constructor recursion depth
        // mismatch" (a tool error, not a finding).
        "--workers",
        "1",
    ];
    args.extend_from_slice(filter);
    let (code, out, err) = output(
        std::process::Command::new(bin)
            .args(&args)
            .current_dir(report.path()),
    );
    assert_eq!(code, 0, "schemathesis found problems:\n{out}\n{err}");
    // A run where authentication failed would test only 401s: make sure it did not.
    assert!(!out.contains("Authentication failed"), "{out}");
    // Warnings may remain (no local model is loaded here, so /v1/completions answers 404 to
    // every model name the fuzzer invents); failures may not.
    assert!(out.contains("passed") && !out.contains(" failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_honours_its_openapi_document() {
    let bin = schemathesis();
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    // The router's endpoints get a model that answers: a stub OpenAI-compatible server.
    let stub = common::stub::Stub::start(common::stub::Wire::OpenAi, vec![]).await;
    let config = dir.path().join("revo.toml");
    std::fs::write(
        &config,
        format!(
            "[[models.catalog]]\nname = \"stub\"\nprovider = \"openai-compatible\"\n\
             base_url = \"{}\"\ncapabilities = [\"chat\", \"tools\"]\n",
            stub.base_url()
        ),
    )
    .unwrap();
    let served = Served::start(&[
        ("REVO_DATA_DIR", &data),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
        ("REVO_RATE_LIMIT_ADMIN", "0"),
        ("REVO_CONFIG", config.to_str().unwrap()),
    ])
    .await;
    let api = Api::new(&served);
    // What ends sessions runs on credentials of its own, so the rest keeps a live one: logout
    // on its own token; everything else; PATCH (a password change ends the admin's tokens)
    // with an API key, which it does not end; "log out everywhere" last. Admins cannot
    // disable or demote themselves, so none of it locks the admin out.
    let for_logout = api.login("admin", ADMIN_PW).await;
    let admin = api.login("admin", ADMIN_PW).await;
    run(&bin, &api, &for_logout, &["--include-path", "/auth/logout"]);
    run(
        &bin,
        &api,
        &admin,
        &[
            "--exclude-path",
            "/auth/logout",
            "--exclude-path",
            "/auth/logout-all",
            "--exclude-method",
            "PATCH",
        ],
    );
    let key_holder = api.login("admin", ADMIN_PW).await;
    let (_, key) = api
        .create_key(&key_holder, serde_json::json!({"name": "fuzz"}))
        .await;
    run(&bin, &api, &key, &["--include-method", "PATCH"]);
    let for_logout_all = api.login("admin", ADMIN_PW).await;
    run(
        &bin,
        &api,
        &for_logout_all,
        &["--include-path", "/auth/logout-all"],
    );
    assert!(served.stop().await.success());
}
