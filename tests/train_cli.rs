//! `trident train classify` and `trident train ner` end to end on the tiny fixtures and the
//! small data files in weights/train/: the output directory is a checkpoint `trident
//! classify` / `trident ner` load, `--resume` after an interrupted run ends with the same
//! weights as an uninterrupted run, and bad data files get clear errors.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> String {
    trident_testing::fixture_dir(name).display().to_string()
}

fn data(name: &str) -> String {
    trident_testing::fixture_dir("train")
        .join(name)
        .display()
        .to_string()
}

fn trident(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("TRIDENT_KERNELS")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trident-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `trident train TASK` with `args` into `out` (string paths), asserting success.
fn train_ok(task: &str, out: &Path, args: &[&str]) -> String {
    let out = out.display().to_string();
    let mut all = vec!["train", task, "--device", "cpu", "--output", &out];
    all.extend_from_slice(args);
    let o = trident(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

/// `trident train TASK` expected to fail; returns its message.
fn train_err(task: &str, args: &[&str]) -> String {
    let mut all = vec!["train", task, "--device", "cpu"];
    all.extend_from_slice(args);
    let o = trident(&all);
    assert!(!o.status.success(), "succeeded: {}", stderr(&o));
    let message = stderr(&o);
    assert!(!message.contains("panicked"), "{message}");
    message
}

#[test]
fn classify_trains_and_the_checkpoint_loads() {
    let dir = scratch("classify");
    let out = dir.join("model");
    let sentiment = fixture("bert-tiny-sentiment");
    let (train, eval) = (data("sentiment.csv"), data("sentiment-eval.jsonl"));
    let log = train_ok(
        "classify",
        &out,
        &[
            "--model",
            &sentiment,
            "--train",
            &train,
            "--eval",
            &eval,
            "--epochs",
            "2",
            "--learning-rate",
            "1e-3",
            "--warmup-ratio",
            "0.1",
            "--weight-decay",
            "0.01",
        ],
    );
    assert!(
        log.contains("epoch 2:") && log.contains("macro-F1"),
        "{log}"
    );
    assert!(log.contains("examples/s"), "{log}");

    // A Hugging Face checkpoint: config with the task's architecture and labels, weights,
    // tokenizer files.
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["0"], "NEGATIVE");
    assert_eq!(config["label2id"]["POSITIVE"], 1);
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(
        !out.join("checkpoint").exists(),
        "a finished run keeps no checkpoint"
    );
    let results = read_json(&out.join("train_results.json"));
    assert_eq!(results["steps"], 10);
    let epochs = results["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for e in epochs {
        let accuracy = e["eval"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{e}");
        assert!(e["eval"]["macro_f1"].is_number(), "{e}");
    }
    assert!(results["best_epoch"].as_u64().is_some());

    // `trident classify` uses it as it is.
    let o = trident(&[
        "classify",
        "--model",
        &out.display().to_string(),
        "--device",
        "cpu",
        "--format",
        "json",
        "The film was wonderful.",
        "The food was cold.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    for r in v.as_array().unwrap() {
        let label = r["label"].as_str().unwrap();
        assert!(label == "NEGATIVE" || label == "POSITIVE", "{v}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ner_trains_from_conll_and_the_checkpoint_loads() {
    let dir = scratch("ner");
    let out = dir.join("model");
    // A DistilBERT classifier as the base: its head is replaced by a token classifier.
    let base = fixture("distilbert-tiny-sst2");
    let (train, eval) = (data("ner.conll"), data("ner-eval.jsonl"));
    let log = train_ok(
        "ner",
        &out,
        &[
            "--model",
            &base,
            "--train",
            &train,
            "--eval",
            &eval,
            "--epochs",
            "2",
            "--learning-rate",
            "2e-3",
            "--batch-size",
            "4",
        ],
    );
    assert!(log.contains("entities: precision"), "{log}");
    for t in ["PER", "ORG", "LOC", "MISC"] {
        assert!(log.contains(t), "no {t} line: {log}");
    }
    let config = read_json(&out.join("config.json"));
    assert_eq!(
        config["architectures"][0],
        "DistilBertForTokenClassification"
    );
    let labels: Vec<&str> = (0..9)
        .map(|i| config["id2label"][i.to_string()].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    );
    let results = read_json(&out.join("train_results.json"));
    let overall = &results["epochs"][1]["eval"]["overall"];
    assert_eq!(overall["support"], 24, "{results}");
    assert!(results["epochs"][1]["eval"]["per_type"]["PER"]["f1"].is_number());

    let o = trident(&[
        "ner",
        "--model",
        &out.display().to_string(),
        "--device",
        "cpu",
        "--format",
        "json",
        "Angela Merkel visited Paris on Monday.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _: Value = serde_json::from_slice(&o.stdout).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// Train uninterrupted, and again stopped after `stop` steps then resumed: the same weights
/// and the same epoch scores, bit for bit.
fn resume_matches(task: &str, args: &[&str], stop: &str) {
    let dir = scratch(&format!("resume-{task}-{stop}"));
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    train_ok(task, &whole, args);
    let mut stopped = args.to_vec();
    stopped.extend_from_slice(&["--stop-after-steps", stop]);
    let log = train_ok(task, &parts, &stopped);
    assert!(log.contains("--resume"), "{log}");
    assert!(parts
        .join("checkpoint")
        .join("trainer_state.json")
        .is_file());
    assert!(!parts.join("train_results.json").exists());
    let mut resumed = args.to_vec();
    resumed.push("--resume");
    let log = train_ok(task, &parts, &resumed);
    assert!(
        log.contains(&format!("resuming after step {stop}")),
        "{log}"
    );
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(parts.join("model.safetensors")).unwrap();
    assert!(
        a == b,
        "{task}: resumed weights differ from the uninterrupted run's"
    );
    assert_eq!(
        read_json(&whole.join("train_results.json"))["epochs"],
        read_json(&parts.join("train_results.json"))["epochs"]
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_mid_epoch_ends_where_an_uninterrupted_run_ends() {
    let (model, train) = (fixture("bert-tiny-sentiment"), data("sentiment.csv"));
    // 5 steps an epoch: stopped in the middle of epoch 2, with dropout on.
    resume_matches(
        "classify",
        &[
            "--model",
            &model,
            "--train",
            &train,
            "--eval-split",
            "0.2",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--learning-rate",
            "1e-3",
            "--warmup-ratio",
            "0.2",
            "--weight-decay",
            "0.01",
            "--save-steps",
            "2",
        ],
        "7",
    );
}

#[test]
fn resume_at_an_epoch_boundary_ends_where_an_uninterrupted_run_ends() {
    let (model, train) = (fixture("bert-tiny-ner"), data("ner.conll"));
    // 40 sentences, 8 held out: 4 steps an epoch; stopped after epoch 1.
    resume_matches(
        "ner",
        &[
            "--model",
            &model,
            "--train",
            &train,
            "--eval-split",
            "0.2",
            "--epochs",
            "2",
            "--learning-rate",
            "2e-3",
        ],
        "4",
    );
}

#[test]
fn bad_data_and_options_get_clear_errors() {
    let dir = scratch("errors");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let out = dir.join("out").display().to_string();
    let (sentiment, ner) = (fixture("bert-tiny-sentiment"), fixture("bert-tiny-ner"));
    let classify = |train: &str, extra: &[&str]| {
        let mut args = vec!["--model", &sentiment, "--output", &out, "--train", train];
        args.extend_from_slice(extra);
        train_err("classify", &args)
    };
    let tag = |train: &str, extra: &[&str]| {
        let mut args = vec!["--model", &ner, "--output", &out, "--train", train];
        args.extend_from_slice(extra);
        train_err("ner", &args)
    };

    // A missing column names the columns there are and the flag that names it.
    let no_label = write("no-label.csv", "text,sentiment\nfine,POSITIVE\n");
    let e = classify(&no_label, &[]);
    assert!(
        e.contains("no column `label`")
            && e.contains("text, sentiment")
            && e.contains("--label-column"),
        "{e}"
    );
    let ok_with_flag = write("renamed.csv", "review,stars\ngood,5\nbad,1\n");
    let e = classify(&ok_with_flag, &["--text-column", "review"]);
    assert!(e.contains("no column `label`"), "{e}");
    let jsonl = write(
        "missing.jsonl",
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\"}\n",
    );
    let e = classify(&jsonl, &[]);
    assert!(
        e.contains("missing.jsonl:2") && e.contains("no field `label`"),
        "{e}"
    );
    let broken = write(
        "broken.jsonl",
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \n",
    );
    let e = classify(&broken, &[]);
    assert!(
        e.contains("broken.jsonl:2") && e.contains("not valid JSON"),
        "{e}"
    );
    let ragged = write("ragged.csv", "text,label\na,x\nb,y,z\n");
    let e = classify(&ragged, &[]);
    assert!(e.contains("ragged.csv:3") && e.contains("3 fields"), "{e}");

    // Empty files.
    let empty = write("empty.csv", "");
    assert!(classify(&empty, &[]).contains("holds no examples"));
    let header_only = write("header.csv", "text,label\n");
    assert!(classify(&header_only, &[]).contains("holds no examples"));
    let blank = write("blank.conll", "\n\n-DOCSTART- O\n\n");
    assert!(tag(&blank, &[]).contains("holds no examples"));

    // Tag schemes: an unknown one, tags of another scheme, tags of no scheme.
    let conll = write("ok.conll", "Angela B-PER\nMerkel I-PER\nspoke O\n");
    let e = tag(&conll, &["--tag-scheme", "bilou"]);
    assert!(
        e.contains("bilou") && e.contains("iob2") && e.contains("bioes"),
        "{e}"
    );
    let bioes = write("bioes.conll", "Angela B-PER\nMerkel E-PER\n\nParis S-LOC\n");
    let e = tag(&bioes, &[]);
    assert!(
        e.contains("bioes.conll:2") && e.contains("E-PER") && e.contains("--tag-scheme bioes"),
        "{e}"
    );
    let bilou = write("bilou.conll", "Angela B-PER\nMerkel L-PER\n");
    let e = tag(&bilou, &["--tag-scheme", "bioes"]);
    assert!(
        e.contains("bilou.conll:2") && e.contains("L-PER") && e.contains("no tag scheme"),
        "{e}"
    );
    let one_column = write("one.conll", "Angela B-PER\nMerkel\n");
    let e = tag(&one_column, &[]);
    assert!(
        e.contains("one.conll:2") && e.contains("a word and its tag"),
        "{e}"
    );
    let numeric = write(
        "numeric.jsonl",
        "{\"tokens\": [\"Paris\"], \"tags\": [5]}\n",
    );
    let e = tag(&numeric, &[]);
    assert!(
        e.contains("numeric.jsonl:1") && e.contains("not a string"),
        "{e}"
    );

    // An evaluation label the training data never shows, and an empty held-out split.
    let train = data("sentiment.csv");
    let eval = write(
        "eval.jsonl",
        "{\"text\": \"meh\", \"label\": \"NEUTRAL\"}\n",
    );
    let e = classify(&train, &["--eval", &eval]);
    assert!(
        e.contains("eval.jsonl:1") && e.contains("`NEUTRAL` does not occur in the training data"),
        "{e}"
    );
    let e = classify(&train, &["--eval-split", "1.5"]);
    assert!(e.contains("--eval-split"), "{e}");
    let two = write("two.csv", "text,label\na,x\nb,y\n");
    let e = classify(&two, &["--eval-split", "0.9"]);
    assert!(e.contains("leaves nothing to train on"), "{e}");

    // Output directories: resume needs a checkpoint; a used directory is not overwritten.
    let e = classify(&train, &["--resume"]);
    assert!(e.contains("no checkpoint"), "{e}");
    std::fs::write(dir.join("out").join("keep.txt"), "x").unwrap();
    let e = classify(&train, &[]);
    assert!(e.contains("not empty"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_refuses_a_run_with_other_options() {
    let dir = scratch("refuse");
    let out = dir.join("out");
    let (model, train) = (fixture("bert-tiny-sentiment"), data("sentiment.csv"));
    let args = ["--model", &model, "--train", &train, "--epochs", "2"];
    let mut stopped = args.to_vec();
    stopped.extend_from_slice(&["--stop-after-steps", "2"]);
    train_ok("classify", &out, &stopped);
    let o = out.display().to_string();
    let e = train_err(
        "classify",
        &[
            "--model",
            &model,
            "--train",
            &train,
            "--epochs",
            "2",
            "--learning-rate",
            "1e-3",
            "--output",
            &o,
            "--resume",
        ],
    );
    assert!(
        e.contains("another run") && e.contains("--learning-rate was 0.00005 and is now 0.001"),
        "{e}"
    );
    // Without --resume, the unfinished run is not silently replaced.
    let e = train_err(
        "classify",
        &["--model", &model, "--train", &train, "--output", &o],
    );
    assert!(
        e.contains("unfinished run") && e.contains("--resume"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
