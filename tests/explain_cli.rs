//! `trident explain` end to end on the tiny fixtures: every task writes JSON with the expected
//! sections and shapes and an HTML page that embeds the same data; its outputs are the task
//! pipelines' own (the same entities, labels and texts as `trident ner|classify|summarize|
//! generate`); bad input is a clear error.

use serde_json::Value;
use std::process::{Command, Output};
use trident_testing::{fixture_dir, json_close};

fn trident(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        // The library's product everywhere: two runs give the same bits.
        .env("TRIDENT_KERNELS", "fixed")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn model(name: &str) -> String {
    fixture_dir(name).display().to_string()
}

/// `trident explain TASK -m MODEL … -f json TEXT`, parsed.
fn explain_json(task: &str, name: &str, extra: &[&str], text: &str) -> Value {
    let m = model(name);
    let mut args = vec!["explain", task, "-m", &m, "--device", "cpu", "-f", "json"];
    args.extend(extra);
    args.push(text);
    let o = trident(&args);
    assert!(
        o.status.success(),
        "explain {task} on {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn len(v: &Value) -> usize {
    v.as_array().map_or(usize::MAX, Vec::len)
}

/// `[layer][head][rows][cols]`, each row a distribution (sums to 1 within the rounding).
fn check_maps(maps: &Value, layers: usize, heads: usize, rows: usize, cols: usize, what: &str) {
    assert_eq!(len(maps), layers, "{what}: layers");
    for layer in maps.as_array().unwrap() {
        assert_eq!(len(layer), heads, "{what}: heads");
        for head in layer.as_array().unwrap() {
            assert_eq!(len(head), rows, "{what}: rows");
            for row in head.as_array().unwrap() {
                assert_eq!(len(row), cols, "{what}: columns");
                let sum: f64 = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_f64)
                    .sum();
                assert!(
                    (sum - 1.0).abs() <= cols as f64 * 5e-5 + 1e-6,
                    "{what}: a row sums to {sum}"
                );
            }
        }
    }
}

/// One stack's sections and shapes; returns its token count.
fn check_stack(s: &Value, name: &str, source: Option<usize>) -> usize {
    assert_eq!(s["name"], name);
    let n = len(&s["tokens"]);
    let (layers, heads) = (
        s["layers"].as_u64().unwrap() as usize,
        s["heads"].as_u64().unwrap() as usize,
    );
    assert!(n > 0 && layers > 0 && heads > 0);
    check_maps(&s["attention"], layers, heads, n, n, name);
    match source {
        Some(src) => {
            check_maps(&s["cross_attention"], layers, heads, n, src, "cross");
            assert_eq!(len(&s["source_tokens"]), src);
        }
        None => assert!(s.get("cross_attention").is_none()),
    }
    assert_eq!(len(&s["residual_norms"]), layers + 1);
    assert!(s["residual_norms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| len(r) == n));
    assert_eq!(len(&s["layer_changes"]), layers);
    let e = &s["embeddings"];
    assert_eq!(len(&e["token_norms"]), n, "{name}: token norms");
    assert!(!e["position_note"].as_str().unwrap().is_empty());
    n
}

/// Sections common to every task; returns the input token count.
fn check_common(v: &Value, task: &str) -> usize {
    assert_eq!(v["trident_explain"], 1);
    assert_eq!(v["task"], task);
    let tokens = v["input"]["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty());
    let chars = v["input"]["text"].as_str().unwrap().chars().count();
    for t in tokens {
        assert!(t["id"].is_i64() && t["token"].is_string() && t["special"].is_boolean());
        assert!(t["end"].as_u64().unwrap() as usize <= chars);
    }
    tokens.len()
}

fn check_encoder_task(task: &str, name: &str, kind: &str) -> Value {
    let v = explain_json(task, name, &[], "Angela Merkel visited Paris on Monday.");
    let n = check_common(&v, task);
    assert_eq!(len(&v["stacks"]), 1);
    assert_eq!(check_stack(&v["stacks"][0], "encoder", None), n);
    let e = &v["stacks"][0]["embeddings"];
    assert_eq!(e["position_kind"], "learned");
    assert_eq!(len(&e["position_norms"]), n);
    assert_eq!(v["output"]["kind"], kind);
    v
}

#[test]
fn ner_shows_the_token_distribution_and_the_pipelines_entities() {
    let v = check_encoder_task("ner", "bert-tiny-ner", "ner");
    let n = len(&v["input"]["tokens"]);
    let o = &v["output"];
    let labels = len(&o["labels"]);
    assert_eq!(len(&o["token_scores"]), n);
    assert!(o["token_scores"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| len(r) == labels));
    assert_eq!(len(&o["predicted"]), n);
    // The entities are `trident ner`'s.
    let m = model("bert-tiny-ner");
    let ner = trident(&[
        "ner",
        "-m",
        &m,
        "--device",
        "cpu",
        "--format",
        "json",
        "Angela Merkel visited Paris on Monday.",
    ]);
    assert!(ner.status.success());
    let expected: Value = serde_json::from_slice(&ner.stdout).unwrap();
    let expected = expected.as_array().unwrap();
    let entities = o["entities"].as_array().unwrap();
    assert_eq!(entities.len(), expected.len());
    for (e, x) in entities.iter().zip(expected) {
        assert_eq!(e["label"], x["entity_group"]);
        assert_eq!(e["word"], x["word"]);
        assert_eq!((&e["start"], &e["end"]), (&x["start"], &x["end"]));
        assert!(!e["tokens"].as_array().unwrap().is_empty());
    }
}

#[test]
fn classify_shows_every_label_as_the_pipeline_scores_it() {
    let v = check_encoder_task("classify", "bert-tiny-sentiment", "classification");
    let m = model("bert-tiny-sentiment");
    let c = trident(&[
        "classify",
        "-m",
        &m,
        "--device",
        "cpu",
        "--format",
        "json",
        "--top-k",
        "all",
        "Angela Merkel visited Paris on Monday.",
    ]);
    assert!(c.status.success());
    let expected: Value = serde_json::from_slice(&c.stdout).unwrap();
    let labels = v["output"]["labels"].as_array().unwrap();
    let expected = expected.as_array().unwrap();
    assert_eq!(labels.len(), expected.len());
    for (l, x) in labels.iter().zip(expected) {
        assert_eq!(l["label"], x["label"]);
        assert!((l["score"].as_f64().unwrap() - x["score"].as_f64().unwrap()).abs() < 1e-4);
    }
    assert_eq!(v["output"]["function"], "softmax");
}

#[test]
fn embed_shows_the_pooled_vector() {
    let v = check_encoder_task("embed", "bert-tiny-ner", "embedding");
    let o = &v["output"];
    assert_eq!(len(&o["vector"]), 32);
    assert_eq!(o["pooling"], "mean");
    let norm: f64 = o["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum();
    assert!((norm.sqrt() - 1.0).abs() < 1e-4, "normalized: {norm}");
}

/// An encoder-decoder task: encoder over the input, decoder with cross-attention, one step
/// per generated token, and the text the task command prints.
fn check_seq2seq(task: &str, name: &str, extra: &[&str], text: &str, field: &str) {
    let v = explain_json(task, name, extra, text);
    let n = check_common(&v, task);
    assert_eq!(len(&v["stacks"]), 2);
    assert_eq!(check_stack(&v["stacks"][0], "encoder", None), n);
    let decoder = check_stack(&v["stacks"][1], "decoder", Some(n));
    let o = &v["output"];
    assert_eq!(o["kind"], "generation");
    let steps = o["steps"].as_array().unwrap();
    // The decoder read its start token and every chosen token but the last.
    assert_eq!(decoder, steps.len(), "{task} on {name}");
    for s in steps {
        assert_eq!(len(&s["top"]), 5);
        assert!(s["rank"].as_u64().unwrap() >= 1);
    }
    let m = model(name);
    let mut args = vec![
        task,
        "-m",
        m.as_str(),
        "--device",
        "cpu",
        "--format",
        "json",
        "--max-new-tokens",
        "20",
    ];
    args.extend(extra);
    args.push(text);
    let c = trident(&args);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let expected: Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(
        o["text"], expected[0][field],
        "{task} on {name}: the pipeline's text"
    );
}

#[test]
fn summarize_and_translate_show_encoder_decoder_and_cross_attention() {
    check_seq2seq(
        "summarize",
        "t5-tiny",
        &[],
        "The cat sat on the mat. It was a sunny day.",
        "summary_text",
    );
    check_seq2seq(
        "summarize",
        "bart-tiny",
        &[],
        "The quick brown fox jumps over the lazy dog.",
        "summary_text",
    );
    check_seq2seq(
        "translate",
        "t5-tiny",
        &["--to", "de"],
        "The house is wonderful.",
        "translation_text",
    );
    check_seq2seq(
        "translate",
        "marian-tiny",
        &[],
        "Le chat dort sur le canapé.",
        "translation_text",
    );
}

#[test]
fn generate_shows_each_step_and_the_prompt_attention() {
    for (name, kind) in [
        ("gpt2-tiny", "learned"),
        ("llama-tiny", "rotary"),
        ("bloom-tiny", "alibi"),
    ] {
        let v = explain_json(
            "generate",
            name,
            &["--max-new-tokens", "4", "--top-k", "3"],
            "The United Nations said",
        );
        let prompt = check_common(&v, "generate");
        let decoder = check_stack(&v["stacks"][0], "decoder", None);
        assert_eq!(
            v["stacks"][0]["embeddings"]["position_kind"], kind,
            "{name}"
        );
        let steps = v["output"]["steps"].as_array().unwrap();
        assert!(!steps.is_empty() && steps.len() <= 4);
        assert_eq!(
            decoder,
            prompt + steps.len() - 1,
            "{name}: the prompt, then the chosen tokens read back"
        );
        assert!(steps.iter().all(|s| len(&s["top"]) == 3));
        assert_eq!(v["output"]["search"], "greedy");
    }
    // The text is `trident generate`'s (greedy).
    let m = model("gpt2-tiny");
    let v = explain_json(
        "generate",
        "gpt2-tiny",
        &["--max-new-tokens", "4"],
        "The United Nations said",
    );
    let g = trident(&[
        "generate",
        "-m",
        &m,
        "--device",
        "cpu",
        "--format",
        "json",
        "--max-new-tokens",
        "4",
        "The United Nations said",
    ]);
    assert!(g.status.success());
    let expected: Value = serde_json::from_slice(&g.stdout).unwrap();
    let full = expected[0]["generated_text"].as_str().unwrap();
    assert_eq!(
        full.strip_prefix("The United Nations said").unwrap(),
        v["output"]["text"].as_str().unwrap()
    );
}

/// Standard base64 (with padding) to bytes.
fn unbase64(s: &str) -> Vec<u8> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digits: Vec<u32> = s
        .bytes()
        .filter(|&c| c != b'=')
        .map(|c| ABC.iter().position(|&a| a == c).expect("a base64 digit") as u32)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .chain(std::iter::repeat(&0))
            .take(4)
            .fold(0u32, |a, &d| a << 6 | d);
        out.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The page's packed maps (`{"encoding": "u8-base64", "max": [layer][head], "maps":
/// [layer][head]}`, each map's bytes row by row, weight = byte / 255 × max) against the JSON
/// format's `[layer][head][query][key]`: every weight within max / 510.
fn check_packed(packed: &Value, maps: &Value, what: &str) {
    assert_eq!(packed["encoding"], "u8-base64", "{what}");
    assert_eq!(len(&packed["maps"]), len(maps), "{what}: layers");
    for (l, layer) in maps.as_array().unwrap().iter().enumerate() {
        assert_eq!(len(&packed["maps"][l]), len(layer), "{what}: heads");
        for (h, head) in layer.as_array().unwrap().iter().enumerate() {
            let max = packed["max"][l][h].as_f64().unwrap();
            let bytes = unbase64(packed["maps"][l][h].as_str().unwrap());
            let want: Vec<f64> = head
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect();
            assert_eq!(bytes.len(), want.len(), "{what} {l}/{h}: cells");
            let top = want.iter().cloned().fold(0.0, f64::max);
            assert!(
                (max - top).abs() <= 1e-6,
                "{what} {l}/{h}: max {max} vs {top}"
            );
            for (b, w) in bytes.iter().zip(&want) {
                let got = *b as f64 / 255.0 * max;
                assert!(
                    (got - w).abs() <= max / 510.0 + 1e-6,
                    "{what} {l}/{h}: {got} for {w}"
                );
            }
        }
    }
}

#[test]
fn html_is_one_page_with_the_json_data_and_nothing_fetched() {
    let dir = std::env::temp_dir().join(format!("trident-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (task, name, extra) in [
        ("ner", "bert-tiny-ner", vec![]),
        ("translate", "marian-tiny", vec![]),
        ("generate", "gpt2-tiny", vec!["--max-new-tokens", "3"]),
    ] {
        let page = dir.join(format!("{task}.html"));
        let (m, p) = (model(name), page.display().to_string());
        let text = "Le chat dort. Angela Merkel visited Paris.";
        let mut args = vec!["explain", task, "-m", &m, "--device", "cpu", "-o", &p];
        args.extend(&extra);
        args.push(text);
        let o = trident(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.starts_with("<!doctype html>"));
        let open = r#"<script id="explain-data" type="application/json">"#;
        let start = html.find(open).expect("the data is embedded") + open.len();
        let end = start + html[start..].find("</script>").unwrap();
        let mut embedded: Value =
            serde_json::from_str(&html[start..end].replace("<\\/", "</")).unwrap();
        let json = explain_json(task, name, &extra, text);
        // The attention maps are packed: 8 bits each, within half a step of the JSON's; the
        // rest is the JSON format's data as it is.
        for (i, s) in json["stacks"].as_array().unwrap().iter().enumerate() {
            for key in ["attention", "cross_attention"] {
                if let Some(maps) = s.get(key) {
                    let page = &mut embedded["stacks"][i][key];
                    check_packed(page, maps, &format!("{task} {key}"));
                    *page = maps.clone();
                }
            }
        }
        json_close(&embedded, &json, 1e-5)
            .unwrap_or_else(|e| panic!("{task}: the page holds the JSON format's data: {e}"));
        for fetch in ["src=", "href=", "http://", "https://", "@import", "fetch("] {
            assert!(
                !html.contains(fetch),
                "{task}: the page must not load `{fetch}`"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn text_format_prints_tokens_and_steps() {
    let m = model("gpt2-tiny");
    let o = trident(&[
        "explain",
        "generate",
        "-m",
        &m,
        "--device",
        "cpu",
        "-f",
        "text",
        "--max-new-tokens",
        "2",
        "Hello world",
    ]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("tokens (") && out.contains("Hello"), "{out}");
    assert!(
        out.contains("step   1:") && out.contains("step   2:"),
        "{out}"
    );
}

#[test]
fn a_long_text_is_cut_to_max_tokens() {
    let text = "Angela Merkel visited Paris on Monday. ".repeat(10);
    let v = explain_json("ner", "bert-tiny-ner", &["--max-tokens", "12"], &text);
    assert_eq!(v["truncated"], true);
    let n = check_common(&v, "ner");
    assert!(n <= 12, "{n} tokens");
    assert_eq!(check_stack(&v["stacks"][0], "encoder", None), n);
}

#[test]
fn unknown_tasks_and_empty_texts_are_clear_errors() {
    let m = model("bert-tiny-ner");
    let o = trident(&["explain", "parse", "-m", &m, "some text"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown task 'parse'")
            && err.contains("ner, classify, embed, summarize, translate, generate"),
        "{err}"
    );
    for empty in ["", "   "] {
        let o = trident(&["explain", "ner", "-m", &m, empty]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("the text is empty"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = trident(&["explain", "ner", "-m", &m, "--top-k", "0", "text"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--top-k must be at least 1"));
    // A checkpoint of another kind: the pipeline's own error, not a panic.
    let g = model("gpt2-tiny");
    let o = trident(&["explain", "ner", "-m", &g, "text"]);
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
}
