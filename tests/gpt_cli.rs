//! End-to-end tests of `trident generate` on the tiny GPT-2 fixture: json output equal to
//! transformers' text-generation pipeline (greedy and beam, with and without the prompt),
//! streamed text, `--show-probs`, and bad input (empty and 100k-character prompts,
//! `--max-new-tokens 0`, `--temperature 0` (greedy), invalid UTF-8): a result or a clear
//! error, never a panic.

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn fixture(name: &str) -> String {
    trident_testing::fixture_dir(name).display().to_string()
}

fn generate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let model = fixture("gpt2-tiny");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(["generate", "--model", &model, "--device", "cpu"])
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout_json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn pipeline_cases() -> Vec<Value> {
    let r = trident_testing::reference("gpt2-tiny").unwrap();
    r["pipelines"]["text-generation"]
        .as_array()
        .unwrap()
        .clone()
}

/// The command-line flags for a pipeline case's kwargs.
fn flags(kwargs: &Value) -> Vec<String> {
    let mut f = vec!["--format".to_string(), "json".to_string()];
    for (k, v) in kwargs.as_object().unwrap() {
        match (k.as_str(), v) {
            ("do_sample", Value::Bool(false)) => {}
            ("return_full_text", Value::Bool(false)) => f.push("--no-prompt".into()),
            ("max_new_tokens", n) => f.extend(["--max-new-tokens".into(), n.to_string()]),
            ("num_beams", n) => f.extend(["--num-beams".into(), n.to_string()]),
            (k, v) => panic!("no flag for the pipeline argument {k}={v}"),
        }
    }
    f
}

#[test]
fn json_equals_the_transformers_pipeline_greedy_and_beam() {
    let cases = pipeline_cases();
    assert!(cases.iter().any(|c| c["kwargs"]["num_beams"] == 3));
    assert!(cases.iter().any(|c| c["kwargs"].get("num_beams").is_none()));
    for case in &cases {
        let mut args = flags(&case["kwargs"]);
        args.push(case["input"].as_str().unwrap().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = generate(&args, None);
        assert_eq!(
            stdout_json(&out),
            case["output"],
            "trident generate {args:?}"
        );
    }
}

#[test]
fn several_prompts_give_a_list_per_prompt_in_input_order() {
    let cases = pipeline_cases();
    let greedy: Vec<&Value> = cases
        .iter()
        .filter(|c| c["kwargs"] == json!({"do_sample": false, "max_new_tokens": 20}))
        .collect();
    assert!(greedy.len() >= 2);
    let prompts: Vec<&str> = greedy
        .iter()
        .map(|c| c["input"].as_str().unwrap())
        .collect();
    let expected: Vec<&Value> = greedy.iter().map(|c| &c["output"]).collect();
    let mut args = vec![
        "--format",
        "json",
        "--max-new-tokens",
        "20",
        "--batch-size",
        "2",
    ];
    args.extend(&prompts);
    assert_eq!(stdout_json(&generate(&args, None)), json!(expected));
    // jsonl: one line per prompt with its id.
    let stdin = prompts.join("\n");
    let out = generate(
        &["--format", "jsonl", "--max-new-tokens", "20"],
        Some(stdin.as_bytes()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), prompts.len());
    for (i, (line, want)) in lines.iter().zip(&expected).enumerate() {
        assert_eq!(line["id"], i + 1);
        assert_eq!(&&line["result"], want);
    }
}

#[test]
fn text_format_streams_the_full_text() {
    let case = &pipeline_cases()[0];
    let prompt = case["input"].as_str().unwrap();
    let out = generate(&["--max-new-tokens", "20", prompt], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = case["output"][0]["generated_text"].as_str().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{expected}\n")
    );
    let out = generate(&["--max-new-tokens", "20", "--no-prompt", prompt], None);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, format!("{}\n", &expected[prompt.len()..]));
}

#[test]
fn show_probs_prints_the_top_candidates_per_step() {
    let out = generate(
        &[
            "--max-new-tokens",
            "3",
            "--show-probs",
            "4",
            "The United Nations said",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "The United Nations said");
    let steps: Vec<&&str> = lines.iter().filter(|l| l.contains("top:")).collect();
    assert_eq!(steps.len(), 3, "{text}");
    for s in steps {
        let candidates = s.split("top:").nth(1).unwrap();
        assert_eq!(candidates.matches("0.").count(), 4, "{s}");
    }
    let json = stdout_json(&generate(
        &[
            "--max-new-tokens",
            "3",
            "--show-probs",
            "4",
            "--format",
            "json",
            "The United Nations said",
        ],
        None,
    ));
    let steps = json[0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0]["top"].as_array().unwrap().len(), 4);
    assert!(steps[0]["probability"].as_f64().unwrap() > 0.0);
}

#[test]
fn sampling_with_a_seed_repeats() {
    let args = [
        "--format",
        "json",
        "--do-sample",
        "--seed",
        "11",
        "--max-new-tokens",
        "15",
        "--num-return-sequences",
        "2",
        "Hello",
    ];
    let a = stdout_json(&generate(&args, None));
    assert_eq!(a, stdout_json(&generate(&args, None)));
    assert_eq!(a.as_array().unwrap().len(), 2);
}

#[test]
fn bad_input_gives_a_result_or_a_clear_error() {
    // An empty prompt is an input error, as a blank text is for every command (the library
    // starts one from BOS, as transformers' pipeline does; see crates/gpt/tests).
    let out = generate(&["--format", "json", "--max-new-tokens", "5", ""], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the text is empty"),
        "{}",
        stderr(&out)
    );
    // --max-new-tokens 0: the prompt back.
    let out = stdout_json(&generate(
        &["--format", "json", "--max-new-tokens", "0", "Hello there"],
        None,
    ));
    assert_eq!(out, json!([{"generated_text": "Hello there"}]));
    // Temperature 0, even with --do-sample: greedy search, as llama.cpp reads it.
    let greedy = stdout_json(&generate(
        &["--format", "json", "--max-new-tokens", "5", "Hello"],
        None,
    ));
    let zero = stdout_json(&generate(
        &[
            "--format",
            "json",
            "--max-new-tokens",
            "5",
            "--do-sample",
            "--temperature",
            "0",
            "Hello",
        ],
        None,
    ));
    assert_eq!(zero, greedy);
    // More new tokens than the context holds: clamped to it, with a warning.
    let out = generate(
        &["--format", "json", "--max-new-tokens", "500", "Hello"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--max-new-tokens 500 is more than the model's context of 128"),
        "{}",
        stderr(&out)
    );
    // A 100k-character prompt keeps its end, with a warning.
    let long = "The United Nations said that ".repeat(3500);
    assert!(long.len() >= 100_000);
    let out = generate(
        &["--format", "json", "--max-new-tokens", "5", "--input", "-"],
        Some(long.as_bytes()),
    );
    // Stdin gives one element per input: the list of that prompt's generated texts.
    let v = stdout_json(&out);
    assert!(v[0][0]["generated_text"]
        .as_str()
        .unwrap()
        .starts_with(&long));
    assert!(
        stderr(&out).contains("does not fit") && stderr(&out).contains("last 123 tokens"),
        "{}",
        stderr(&out)
    );
    // An invalid UTF-8 line fails alone.
    let out = generate(
        &["--format", "jsonl", "--max-new-tokens", "2"],
        Some(b"fine\n\xff\xfe\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("line 2") && stderr(&out).contains("UTF-8"),
        "{}",
        stderr(&out)
    );
    // Its row stays, with the error (one row per input line).
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(
        rows[1]["error"].as_str().unwrap().contains("UTF-8"),
        "{rows:?}"
    );
    // --show-probs with beams is refused.
    let out = generate(&["--num-beams", "2", "--show-probs", "3", "Hello"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("beam"), "{}", stderr(&out));
}

#[test]
fn help_lists_generate_with_its_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(["generate", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--max-new-tokens",
        "--do-sample",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
        "--num-beams",
        "--repetition-penalty",
        "--no-repeat-ngram-size",
        "--stop",
        "--no-prompt",
        "--show-probs",
    ] {
        assert!(text.contains(flag), "generate --help lacks {flag}");
    }
}

/// Short flags as neighbouring tools spell them (issue 18, item 14): `-n`, `-s`, `-t`,
/// `--temp` mean `--max-new-tokens`, `--seed`, `--threads`, `--temperature`.
#[test]
fn short_flags_mean_the_long_ones() {
    let long = generate(
        &[
            "--format",
            "json",
            "--do-sample",
            "--max-new-tokens",
            "6",
            "--seed",
            "5",
            "--temperature",
            "0.8",
            "--threads",
            "1",
            "Paris is",
        ],
        None,
    );
    let short = generate(
        &[
            "--format",
            "json",
            "--do-sample",
            "-n",
            "6",
            "-s",
            "5",
            "--temp",
            "0.8",
            "-t",
            "1",
            "Paris is",
        ],
        None,
    );
    assert_eq!(stdout_json(&short), stdout_json(&long));
}

/// Sampling flags are not silently ignored (issue 18, item 2): `--temperature`, `--top-p` or
/// `--top-k` turn sampling on; a seed with nothing sampled gets a warning.
#[test]
fn sampling_flags_turn_sampling_on() {
    let json = |args: &[&str]| {
        let mut all = vec!["--format", "json", "--max-new-tokens", "8"];
        all.extend_from_slice(args);
        all.push("Paris is");
        stdout_json(&generate(&all, None))
    };
    let flags = json(&["--temperature", "1.5", "--top-p", "0.9", "--seed", "3"]);
    let explicit = json(&[
        "--do-sample",
        "--temperature",
        "1.5",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ]);
    assert_eq!(flags, explicit, "the flags sample as --do-sample does");
    assert_ne!(flags, json(&[]), "and differ from greedy search");
    let off = json(&["--do-sample=false", "--temperature", "1.5", "--seed", "3"]);
    assert_eq!(off, json(&[]), "--do-sample=false keeps greedy search");
    let seed_alone = generate(
        &[
            "--format",
            "json",
            "--max-new-tokens",
            "3",
            "--seed",
            "3",
            "Paris is",
        ],
        None,
    );
    assert!(
        stderr(&seed_alone).contains("--seed has no effect"),
        "{}",
        stderr(&seed_alone)
    );
}

/// The same seed gives the same text in every output format (issue 18, item 6): text streams
/// one prompt at a time, json runs the prompts as a batch.
#[test]
fn a_seed_gives_the_same_text_in_text_and_json() {
    let args = ["--do-sample", "--seed", "7", "--max-new-tokens", "10"];
    let prompts = ["Paris is", "The United Nations said"];
    let mut json_args = vec!["--format", "json"];
    json_args.extend_from_slice(&args);
    json_args.extend_from_slice(&prompts);
    let json = stdout_json(&generate(&json_args, None));
    let mut text_args = args.to_vec();
    text_args.extend_from_slice(&prompts);
    let text = generate(&text_args, None);
    assert!(text.status.success(), "{}", stderr(&text));
    let streamed = String::from_utf8_lossy(&text.stdout);
    for (i, _) in prompts.iter().enumerate() {
        let expected = json[i][0]["generated_text"].as_str().unwrap();
        assert!(
            streamed.contains(expected),
            "{expected:?} not in {streamed:?}"
        );
    }
}
