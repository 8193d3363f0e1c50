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

use common::*;

async fn completions_over_http(data: &str, name: &str) {
    let served = Served::start(&[("REVO_DATA_DIR", data), ("REVO_ADMIN_PASSWORD", ADMIN_PW)]).await;
    let api = Api::new(&served);
    let admin = api.login("admin", ADMIN_PW).await;
    let c = case("Once upon a time");
    let call =
        |body: serde_json::Value| api.call("POST", "/v1/completions", Some(&admin), Some(body));
    // Greedy: the reference, with usage.
    let r = call(serde_json::json!({"model": name, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["object"], "text_completion");
    assert_eq!(r.body["choices"][0]["text"], c["completion"]);
    assert_eq!(r.body["choices"][0]["finish_reason"], "length");
    assert_eq!(r.body["usage"]["prompt_tokens"], 4);
    assert_eq!(r.body["usage"]["completion_tokens"], 48);
    // Streamed: the same text in pieces, a final chunk with the finish, then [DONE].
    let res = api
        .http
        .post(format!("{}/v1/completions", api.base))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"model": name, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let sse = res.text().await.unwrap();
    let events: Vec<&str> = sse.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(chunks.len() > 10, "streamed in pieces");
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, c["completion"].as_str().unwrap());
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    // A stop sequence ends the text before it.
    let r = call(serde_json::json!({"model": name, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "stop": " city"})).await;
    assert_eq!(r.body["choices"][0]["text"], ", the");
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    // Sampling with a seed is reproducible.
    let sampled = serde_json::json!({"model": name, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0.9, "top_p": 0.9, "top_k": 40, "seed": 7});
    let a = call(sampled.clone()).await;
    let b = call(sampled).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["choices"][0]["text"], b.body["choices"][0]["text"]);
    // Bad input.
    for (body, status, code) in [
        (
            serde_json::json!({"model": "nope", "prompt": "x"}),
            404,
            "model_not_found",
        ),
        (
            serde_json::json!({"model": name, "prompt": "x", "temperature": 3}),
            422,
            "invalid_parameter",
        ),
        (
            serde_json::json!({"model": name, "prompt": "x", "max_tokens": 0}),
            422,
            "invalid_parameter",
        ),
        (
            serde_json::json!({"model": name, "prompt": "x", "top_p": 0}),
            422,
            "invalid_parameter",
        ),
        (
            serde_json::json!({"model": name, "prompt": ""}),
            422,
            "invalid_parameter",
        ),
        (
            serde_json::json!({"model": name, "prompt": "hello ".repeat(9000)}),
            400,
            "context_length_exceeded",
        ),
        (
            serde_json::json!({"model": name, "prompt": "x", "n": 2}),
            422,
            "invalid_body",
        ),
    ] {
        let r = call(body.clone()).await;
        assert_eq!((r.status, r.code()), (status, code), "{body}");
    }
    // Counted per model: the five generations above and the refusals that reached the model.
    let metrics = api.text("/metrics").await;
    let line = format!("revo_generations_total{{model=\"{name}\",outcome=\"length\"}}");
    assert!(metrics.contains(&line), "{metrics}");
    let completion =
        format!("revo_generation_tokens_total{{kind=\"completion\",model=\"{name}\"}}");
    assert!(metrics.contains(&completion), "{metrics}");
    assert!(served.stop().await.success());
    // Every generation is an attempt in the log (the refusal that reached the model too),
    // served locally for free by the model named, which the catalogue does not list.
    let (_, out, _) = output(&mut revo_cmd(
        &["events", "tail", "--stream-type", "generation"],
        &[("REVO_DATA_DIR", data)],
    ));
    let attempts: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let completed: Vec<&serde_json::Value> = attempts
        .iter()
        .filter(|g| g["payload"]["outcome"] == "completed")
        .collect();
    assert_eq!(completed.len(), 5, "{out}");
    let first = &completed[0]["payload"];
    assert_eq!(
        (&first["model"], &first["provider"], &first["cost_usd"]),
        (
            &serde_json::json!(name),
            &serde_json::json!("local"),
            &serde_json::json!("0")
        ),
        "{first}"
    );
    assert_eq!(first["usage"]["output"], 48);
    assert_eq!(first["device"], "cpu");
    let refused = attempts
        .iter()
        .find(|g| g["payload"]["outcome"] == "failed")
        .unwrap();
    assert_eq!(refused["payload"]["error_code"], "upstream_rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_list_generate_and_remove() {
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
        &["models", "import", gguf, "--weights", "int3"],
        &env,
    ));
    assert_ne!(code, 0);
    assert!(err.contains("--weights is keep, f32 or f16"), "{err}");
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
    for file in [
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
        "config.json",
    ] {
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

    completions_over_http(&data, name).await;
    onnx_exports_import_and_generate(dir.path(), name);

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

/// An export directory as optimum writes it (Hugging Face config, tokenizer_config.json with the
/// chat template, generation_config.json), made from the imported model's graph; it imports,
/// loads and generates the reference. Broken exports are refused, leaving nothing behind.
fn onnx_exports_import_and_generate(data: &std::path::Path, imported: &str) {
    let env = [("REVO_DATA_DIR", data.to_str().unwrap())];
    let ours: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("models").join(imported).join("config.json")).unwrap(),
    )
    .unwrap();
    let export = data.join("smollm2-export");
    std::fs::create_dir_all(&export).unwrap();
    for f in ["model.onnx", "model.onnx.data", "tokenizer.json"] {
        std::fs::copy(data.join("models").join(imported).join(f), export.join(f)).unwrap();
    }
    let hf = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"
    });
    let write = |f: &str, v: &serde_json::Value| {
        std::fs::write(export.join(f), serde_json::to_vec_pretty(v).unwrap()).unwrap()
    };
    write("config.json", &hf);
    write(
        "tokenizer_config.json",
        &serde_json::json!({"chat_template": ours["chat_template"], "eos_token": "<|im_end|>"}),
    );
    write(
        "generation_config.json",
        &serde_json::json!({"eos_token_id": 2}),
    );
    let dir = export.to_str().unwrap();

    // Broken: no tokenizer; a graph that is not ONNX. Nothing is registered or left.
    let broken = data.join("broken-export");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(export.join("config.json"), broken.join("config.json")).unwrap();
    std::fs::write(broken.join("model.onnx"), b"not a graph").unwrap();
    let (code, _, err) = output(&mut revo_cmd(
        &["models", "import", broken.to_str().unwrap()],
        &env,
    ));
    assert_ne!(code, 0);
    assert!(err.contains("no tokenizer.json"), "{err}");
    std::fs::copy(export.join("tokenizer.json"), broken.join("tokenizer.json")).unwrap();
    let (code, _, err) = output(&mut revo_cmd(
        &["models", "import", broken.to_str().unwrap()],
        &env,
    ));
    assert_ne!(code, 0);
    assert!(err.contains("does not load"), "{err}");
    assert!(!data.join("models/broken-export").exists());
    // A config that disagrees with its graph: refused by the layout check, not a crash later.
    for f in ["model.onnx", "model.onnx.data"] {
        std::fs::hard_link(export.join(f), broken.join(f))
            .or_else(|_| std::fs::copy(export.join(f), broken.join(f)).map(|_| ()))
            .unwrap_or(());
    }
    let mut wrong = hf.clone();
    wrong["num_key_value_heads"] = serde_json::json!(1);
    std::fs::write(
        broken.join("config.json"),
        serde_json::to_vec(&wrong).unwrap(),
    )
    .unwrap();
    let (code, _, err) = output(&mut revo_cmd(
        &["models", "import", broken.to_str().unwrap()],
        &env,
    ));
    assert_ne!(code, 0);
    assert!(
        err.contains("does not load") && err.contains("kv heads"),
        "{err}"
    );
    assert!(!data.join("models/broken-export").exists());

    let (code, out, err) = output(&mut revo_cmd(
        &["models", "import", dir, "--name", "exported"],
        &env,
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("exported"), "{out}");
    let (code, out, _) = output(&mut revo_cmd(&["models", "show", "exported"], &env));
    assert_eq!(code, 0);
    let cfg: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(cfg["layers"], 30);
    assert_eq!(cfg["kv_heads"], 3);
    assert_eq!(cfg["head_dim"], 64);
    assert_eq!(cfg["weights"], "onnx");
    assert_eq!(
        cfg["stop_token_ids"],
        serde_json::json!([2]),
        "eos and <|im_end|> (id 2)"
    );
    let c = case("What is the capital of Japan?");
    let max = c["max_tokens"].as_u64().unwrap().to_string();
    let (code, out, err) = output(&mut revo_cmd(
        &[
            "generate",
            "--model",
            "exported",
            "--chat",
            "--max-tokens",
            &max,
            "What is the capital of Japan?",
        ],
        &env,
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim_end_matches('\n'),
        c["completion"].as_str().unwrap()
    );
    let (code, _, err) = output(&mut revo_cmd(&["models", "remove", "exported"], &env));
    assert_eq!(code, 0, "{err}");
}
