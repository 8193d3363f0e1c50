//! The tokenizer built from the default model's GGUF metadata, against reference ids from
//! Hugging Face's tokenizer as transformers wrote it from the same file (fixtures/smollm2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use common::{ids, lines, smollm2};
use revo_engine::tokenizer;

#[test]
fn encodes_like_the_reference_and_round_trips() {
    let tok = tokenizer::from_gguf(&smollm2()).unwrap();
    let cases = [
        include_str!("fixtures/smollm2/tokenize-cases.jsonl"),
        include_str!("fixtures/smollm2/tokenize-more.jsonl"),
    ];
    let mut n = 0;
    for case in cases.iter().flat_map(|c| lines(c)) {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got.get_ids(), ids(&case["ids"]).as_slice(), "{text:?}");
        let back = tok.decode(got.get_ids(), false).unwrap();
        assert_eq!(back, text, "round trip");
        n += 1;
    }
    assert!(n >= 40, "{n} cases");
}

#[test]
fn chat_prompts_and_completions_match_the_reference() {
    let tok = tokenizer::from_gguf(&smollm2()).unwrap();
    for case in lines(include_str!("fixtures/smollm2/greedy-cases.jsonl")) {
        let prompt = case["rendered_prompt"].as_str().unwrap();
        let got = tok.encode(prompt, false).unwrap();
        assert_eq!(
            got.get_ids(),
            ids(&case["prompt_ids"]).as_slice(),
            "{prompt:?}"
        );
        let completion = tok.decode(&ids(&case["completion_ids"]), false).unwrap();
        assert_eq!(completion, case["completion"].as_str().unwrap());
    }
}

#[test]
fn special_tokens_and_settings_come_from_the_gguf() {
    let g = smollm2();
    let json = tokenizer::tokenizer_json(&g).unwrap();
    let added = json["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 17, "control tokens 0..=16");
    assert_eq!(added[2]["content"], "<|im_end|>");
    assert_eq!(added[2]["special"], true);
    assert_eq!(json["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
    assert_eq!(json["model"]["vocab"].as_object().unwrap().len(), 49152);
}

#[test]
fn the_chat_template_renders_like_the_reference() {
    let g = smollm2();
    let template = g.str("tokenizer.chat_template").unwrap();
    assert_eq!(
        template,
        include_str!("fixtures/smollm2/chat_template.reference.jinja").trim_end_matches('\n')
    );
    let mut n = 0;
    for case in lines(include_str!("fixtures/smollm2/greedy-cases.jsonl")) {
        if case["chat"] != true {
            continue;
        }
        let user = revo_engine::local::Message {
            role: "user".into(),
            content: case["prompt"].as_str().unwrap().into(),
        };
        let rendered = revo_engine::local::render_chat(template, &[user]).unwrap();
        assert_eq!(rendered, case["rendered_prompt"].as_str().unwrap());
        n += 1;
    }
    assert!(n >= 2, "{n} chat cases");
}

/// A SentencePiece BPE vocabulary (as Llama 2 and Mistral GGUFs carry) against Google's
/// `sentencepiece` on the same model (fixtures/spm).
#[test]
fn sentencepiece_vocabularies_encode_like_sentencepiece() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/spm/spm-tokenizer.gguf");
    let g = revo_engine::Gguf::open(&path).unwrap();
    let tok = tokenizer::from_gguf(&g).unwrap();
    let cases = lines(include_str!("fixtures/spm/spm-cases.jsonl"));
    let reference = |text: &str| {
        let c = cases.iter().find(|c| c["text"] == text).unwrap();
        ids(&c["ids"])
    };
    let mut n = 0;
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        let want = match text.strip_prefix("<|im_start|>") {
            // Special tokens split the text and each piece after one gets the space prefix:
            // llama.cpp's rule, which GGUF models are made for (sentencepiece prefixes only
            // the whole text).
            Some(rest) => {
                let inner = rest.strip_suffix("<|im_end|>").unwrap();
                [vec![3], reference(inner), vec![4]].concat()
            }
            None => ids(&case["ids"]),
        };
        assert_eq!(got.get_ids(), want.as_slice(), "{text:?}");
        // Decoding keeps the space SentencePiece puts first (a completion continues its
        // prompt); past it, the text comes back as sentencepiece decodes it.
        let back = tok.decode(got.get_ids(), false).unwrap();
        let decoded = case["decoded"].as_str().unwrap();
        if !text.starts_with("<|") {
            assert_eq!(back.strip_prefix(' ').unwrap_or(&back), decoded, "{text:?}");
        }
        n += 1;
    }
    assert_eq!(n, 21);
}
