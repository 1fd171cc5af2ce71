//! `trident summarize` and `trident translate` end to end on the tiny T5 fixture: the JSON
//! output equals what transformers' 4.x summarization / translation pipelines produced
//! (recorded in weights/t5-tiny/reference.json), and bad generation options are errors.

use serde_json::Value;
use std::process::{Command, Output};
use trident_testing::{fixture_dir, json_close, reference};

fn trident(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn model() -> String {
    fixture_dir("t5-tiny").display().to_string()
}

#[test]
fn summarize_and_translate_print_the_pipeline_output() {
    let r = reference("t5-tiny").unwrap();
    for (task, command, extra) in [
        ("summarization", "summarize", vec![]),
        ("translation_en_to_de", "translate", vec!["--to", "de"]),
    ] {
        let case = r[task]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["input"].is_string())
            .unwrap();
        let m = model();
        let mut args = vec![
            command,
            "--model",
            m.as_str(),
            "--device",
            "cpu",
            "--format",
            "json",
        ];
        args.extend(extra.iter().copied());
        args.push(case["input"].as_str().unwrap());
        let o = trident(&args);
        assert!(
            o.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let actual: Value = serde_json::from_slice(&o.stdout).unwrap();
        json_close(&actual, &case["output"], 0.0).unwrap_or_else(|e| panic!("{command}: {e}"));
    }
}

#[test]
fn bad_generation_options_are_clear_errors() {
    let m = model();
    for (flags, needle) in [
        // The error names the flag (the library's `num_beams`, `top_p` as set on the CLI).
        (vec!["--num-beams", "0"], "--num-beams"),
        (vec!["--do-sample", "--top-p", "1.5"], "--top-p"),
    ] {
        let mut args = vec!["summarize", "--model", m.as_str(), "--device", "cpu"];
        args.extend(flags.iter().copied());
        args.push("Angela Merkel met Emmanuel Macron in Berlin.");
        let o = trident(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{flags:?}: {err}"
        );
    }
    // --max-new-tokens 0 is a sensible empty result, not an error.
    let o = trident(&[
        "summarize",
        "--model",
        &m,
        "--device",
        "cpu",
        "--format",
        "json",
        "--max-new-tokens",
        "0",
        "Angela Merkel met Emmanuel Macron.",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["summary_text"], "");
}

/// Document tasks read a plain-text file as one document (issue 18, item 1): the README's
/// `summarize --input article.txt` gives one summary; `--per-line` keeps one per line; JSON
/// Lines stay one document per line.
#[test]
fn a_plain_text_file_is_one_document() {
    let article = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/news_article.txt");
    let lines = std::fs::read_to_string(article).unwrap().lines().count();
    assert!(lines > 1);
    let model = trident_testing::fixture_dir("t5-tiny")
        .display()
        .to_string();
    let run = |command: &str, extra: &[&str], input: &str| {
        let mut args = vec![command, "--model", model.as_str(), "--device", "cpu"];
        args.extend_from_slice(&[
            "--format",
            "jsonl",
            "--max-new-tokens",
            "4",
            "--input",
            input,
        ]);
        args.extend_from_slice(extra);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_trident"))
            .args(&args)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    assert_eq!(run("summarize", &[], article), 1);
    assert_eq!(run("translate", &["--to", "de"], article), 1);
    assert_eq!(run("summarize", &["--per-line"], article), lines);
    let dir = std::env::temp_dir().join(format!("trident-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("two.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"One document.\"}\n{\"text\": \"Another one.\"}\n",
    )
    .unwrap();
    assert_eq!(run("summarize", &[], jsonl.to_str().unwrap()), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A long document shows progress over its pieces (issue 18, item 12): on a terminal (a
/// pseudo-terminal from util-linux's `script`), the bar counts the pieces it was split into.
#[test]
fn a_long_document_shows_its_pieces() {
    let article = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/news_article.txt"
    ))
    .unwrap()
    .replace('\n', " ");
    let dir = std::env::temp_dir().join(format!("trident-pieces-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let doc = dir.join("long.txt");
    std::fs::write(&doc, article.repeat(6)).unwrap();
    let command = format!(
        "{} summarize --model {} --device cpu --max-new-tokens 2 --input {}",
        env!("CARGO_BIN_EXE_trident"),
        trident_testing::fixture_dir("t5-tiny").display(),
        doc.display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` runs the command in a pseudo-terminal");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains(" pieces ["), "{shown}");
    std::fs::remove_dir_all(&dir).unwrap();
}
