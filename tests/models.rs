//! `revo models` and `revo generate` as a user runs them: import the default model, list, show,
//! generate (raw and chat) matching the reference, refuse duplicates and bad files without
//! leaving anything half-imported, remove, and replay the registry.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::path::PathBuf;

use common::*;

fn smollm2() -> PathBuf {
    let path = std::env::var_os("TEST_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/revo/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    path
}

fn case(prompt: &str) -> serde_json::Value {
    include_str!("../models/tests/fixtures/smollm2/greedy-cases.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|c| c["prompt"] == prompt)
        .unwrap()
}

#[test]
fn import_list_generate_and_remove() {
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let env = [("REVO_DATA_DIR", data.as_str())];
    let gguf = smollm2();
    let gguf = gguf.to_str().unwrap();

    // Bad input first: nothing is registered or left on disk.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00not really").unwrap();
    let (code, _, err) = output(&mut revo_cmd(
        &["models", "import", junk.to_str().unwrap(), "--name", "junk"],
        &env,
    ));
    assert_ne!(code, 0);
    assert!(err.contains("truncated or corrupt"), "{err}");
    let (code, _, err) = output(&mut revo_cmd(
        &["models", "import", gguf, "--weights", "keep"],
        &env,
    ));
    assert_ne!(code, 0);
    assert!(err.contains("not supported yet"), "{err}");
    let (code, _, err) = output(&mut revo_cmd(
        &["models", "import", gguf, "--name", "Bad Name"],
        &env,
    ));
    assert_ne!(code, 0);
    assert!(err.contains("model name"), "{err}");
    let (_, out, _) = output(&mut revo_cmd(&["models", "list"], &env));
    assert_eq!(out.trim(), "");
    let models = dir.path().join("models");
    assert!(
        !models.exists() || std::fs::read_dir(&models).unwrap().next().is_none(),
        "leftovers"
    );

    // Import under the default name.
    let (code, out, err) = output(&mut revo_cmd(&["models", "import", gguf], &env));
    assert_eq!(code, 0, "{err}");
    let name = "smollm2-135m-instruct-q4_1";
    assert!(out.contains(name) && out.contains("llama"), "{out}");
    for file in ["model.onnx", "tokenizer.json", "config.json"] {
        assert!(models.join(name).join(file).is_file(), "{file}");
    }
    let (_, out, _) = output(&mut revo_cmd(&["models", "list"], &env));
    assert!(out.contains(name), "{out}");
    let (code, out, _) = output(&mut revo_cmd(&["models", "show", name], &env));
    assert_eq!(code, 0);
    assert!(
        out.contains("\"stop_token_ids\"") && out.contains("b179c9523d0e"),
        "{out}"
    );
    let (code, _, err) = output(&mut revo_cmd(&["models", "import", gguf], &env));
    assert_ne!(code, 0);
    assert!(err.contains("already imported"), "{err}");

    // Generation matches the reference, raw and with the chat template.
    for (prompt, chat) in [
        ("Once upon a time", false),
        ("What is the capital of Japan?", true),
    ] {
        let c = case(prompt);
        let max = c["max_tokens"].as_u64().unwrap().to_string();
        let mut args = vec![
            "generate",
            "--model",
            name,
            "--max-tokens",
            &max,
            "--threads",
            "1",
            prompt,
        ];
        if chat {
            args.push("--chat");
        }
        let (code, out, err) = output(&mut revo_cmd(&args, &env));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            out.trim_end_matches('\n'),
            c["completion"].as_str().unwrap(),
            "{prompt}"
        );
    }

    let (code, out, err) = output(&mut revo_cmd(&["replay", "verify", "models"], &env));
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = output(&mut revo_cmd(&["models", "remove", name], &env));
    assert_eq!(code, 0, "{err}");
    assert!(!models.join(name).exists());
    let (_, out, _) = output(&mut revo_cmd(&["models", "list"], &env));
    assert_eq!(out.trim(), "");
    let (code, _, err) = output(&mut revo_cmd(&["generate", "--model", name, "hi"], &env));
    assert_ne!(code, 0);
    assert!(err.contains("no model named"), "{err}");
}
