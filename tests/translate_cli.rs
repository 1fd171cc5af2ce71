//! `trident translate` and `trident summarize` with the families of issue 11, end to end on the
//! tiny fixtures: French → English with an OPUS-MT checkpoint that ships only SentencePiece
//! files, M2M100 language codes, BART summaries; the JSON equals what transformers' 4.x
//! pipelines produced; missing models and unknown codes are clear errors.

use serde_json::Value;
use std::process::{Command, Output};
use trident_testing::{fixture_dir, json_close, reference};

fn trident(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        // An empty cache: nothing is found there, and nothing is fetched.
        .env(
            "HF_HOME",
            std::env::temp_dir().join("trident-empty-hf-home"),
        )
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn model(name: &str) -> String {
    fixture_dir(name).display().to_string()
}

/// The first single-text case of a pipeline reference without extra call options.
fn first_case<'a>(r: &'a Value, key: &str) -> &'a Value {
    r[key]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["input"].is_string()
                && c["call_kwargs"]
                    .as_object()
                    .is_none_or(|o| o.keys().all(|k| k == "src_lang" || k == "tgt_lang"))
        })
        .unwrap()
}

fn run_json(args: &[&str]) -> Value {
    let o = trident(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn french_to_english_with_opus_mt_files_only() {
    let r = reference("marian-tiny").unwrap();
    let case = first_case(&r, "translation_fr_to_en");
    let m = model("marian-tiny");
    let text = case["input"].as_str().unwrap();
    // The model's own pair: no --from/--to needed; with them, the same.
    for extra in [vec![], vec!["--from", "fr", "--to", "en"]] {
        let mut args = vec!["translate", "--model", &m, "--format", "json"];
        args.extend(extra);
        args.push(text);
        json_close(&run_json(&args), &case["output"], 0.0).unwrap();
    }
    // Another pair is refused before any work, saying what the model does.
    let o = trident(&[
        "translate",
        "--model",
        &m,
        "--from",
        "de",
        "--to",
        "en",
        "Hallo",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("translates fr → en only"), "{err}");
}

#[test]
fn m2m100_takes_its_language_codes() {
    let r = reference("m2m100-tiny").unwrap();
    let case = first_case(&r, "translation");
    let m = model("m2m100-tiny");
    let (src, tgt) = (
        case["src_lang"].as_str().unwrap(),
        case["tgt_lang"].as_str().unwrap(),
    );
    let args = [
        "translate",
        "--model",
        &m,
        "--from",
        src,
        "--to",
        tgt,
        "--format",
        "json",
        case["input"].as_str().unwrap(),
    ];
    json_close(&run_json(&args), &case["output"], 0.0).unwrap();
    let o = trident(&[
        "translate",
        "--model",
        &m,
        "--from",
        "fra",
        "--to",
        "en",
        "Bonjour",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("'fra' is not a language code") && err.contains("close ones: fr"),
        "{err}"
    );
}

#[test]
fn bart_summarizes_like_the_4x_pipeline() {
    let r = reference("bart-tiny").unwrap();
    let case = first_case(&r, "summarization");
    let m = model("bart-tiny");
    let args = [
        "summarize",
        "--model",
        &m,
        "--format",
        "json",
        case["input"].as_str().unwrap(),
    ];
    json_close(&run_json(&args), &case["output"], 0.0).unwrap();
}

#[test]
fn a_pair_without_a_model_says_what_to_pass() {
    let o = trident(&["translate", "--from", "fr", "--to", "en", "Le chat dort."]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Helsinki-NLP/opus-mt-fr-en") && err.contains("--model"),
        "{err}"
    );
    let o = trident(&["translate", "Le chat dort."]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("needs --to"), "{err}");
}
