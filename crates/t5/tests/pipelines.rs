//! Summarization and translation against what transformers 4.x's pipelines printed on the
//! fixtures (recorded as `task_specific_params` + `generate` + decode), and bad input.

use serde_json::{json, Value};
use trident_core::chunk::split_to_fit;
use trident_core::generation::GenerationConfig;
use trident_core::{LoadOptions, ModelFiles, TextEncoder};
use trident_t5::{SummarizeOptions, Summarizer, TranslateOptions, Translator};
use trident_testing::{fixture_dir, reference};

const FIXTURES: [&str; 2] = ["t5-tiny", "t5-v1_1-tiny"];

fn files(name: &str) -> ModelFiles {
    ModelFiles::local(fixture_dir(name)).unwrap()
}

fn summarizer(name: &str) -> Summarizer {
    trident_t5::summarizer(&files(name), &LoadOptions::default()).unwrap()
}

fn translator(name: &str) -> Translator {
    trident_t5::translator(&files(name), &LoadOptions::default()).unwrap()
}

/// One call's summarization options with `generation` over the task defaults.
fn summarize(generation: GenerationConfig) -> SummarizeOptions {
    SummarizeOptions {
        generation,
        ..Default::default()
    }
}

/// Check every recorded case of `task`: each text alone, then all texts as one list.
fn check_task(name: &str, task: &str, run: impl Fn(&[&str]) -> Vec<Value>) {
    let r = reference(name).unwrap();
    let cases = r[task].as_array().unwrap();
    assert!(cases.len() >= 2, "{name} {task}: cases recorded");
    for case in cases {
        let (input, expected) = (&case["input"], &case["output"]);
        match input {
            Value::String(text) => {
                let got = run(&[text.as_str()]);
                assert_eq!(&Value::Array(got), expected, "{name} {task} {text:?}");
            }
            Value::Array(texts) => {
                let texts: Vec<&str> = texts.iter().filter_map(Value::as_str).collect();
                let got = run(&texts);
                // transformers returns one list per text for a list input.
                let got: Vec<Value> = got.into_iter().map(|v| json!([v])).collect();
                assert_eq!(&Value::Array(got), expected, "{name} {task} list input");
            }
            other => panic!("unexpected input {other}"),
        }
    }
}

#[test]
fn summaries_equal_the_transformers_pipeline() {
    for name in FIXTURES {
        let s = summarizer(name);
        let options = SummarizeOptions::default();
        let settings = s.settings(&options).unwrap();
        assert_eq!(settings.prefix.as_deref(), Some("summarize: "));
        assert_eq!(s.max_input_tokens(&options), 512);
        assert_eq!(settings.num_beams(), 4, "task params apply");
        check_task(name, "summarization", |texts| {
            s.run(texts, &options)
                .unwrap()
                .into_iter()
                .map(|mut v| {
                    assert_eq!(v.len(), 1);
                    assert_eq!(v[0].chunks, 1);
                    serde_json::to_value(v.remove(0)).unwrap()
                })
                .collect()
        });
    }
}

#[test]
fn translations_equal_the_transformers_pipeline() {
    for name in FIXTURES {
        let t = translator(name);
        let options = TranslateOptions::new("en", "de");
        assert_eq!(
            t.settings(&options).unwrap().prefix.as_deref(),
            Some("translate English to German: ")
        );
        check_task(name, "translation_en_to_de", |texts| {
            t.run(texts, &options)
                .unwrap()
                .into_iter()
                .map(|mut v| serde_json::to_value(v.remove(0)).unwrap())
                .collect()
        });
        // The language pair is per call: the same translator serves another pair.
        let fr = t.settings(&TranslateOptions::new("en", "fr")).unwrap();
        assert_eq!(fr.prefix.as_deref(), Some("translate English to French: "));
    }
}

#[test]
fn explicit_options_override_the_task_defaults() {
    let s = summarizer("t5-tiny");
    let options = summarize(GenerationConfig {
        num_beams: Some(3),
        num_return_sequences: Some(2),
        max_new_tokens: Some(4),
        ..Default::default()
    });
    let c = s.settings(&options).unwrap();
    assert_eq!((c.num_beams(), c.max_total_length(1)), (3, 5));
    assert_eq!(
        c.no_repeat_ngram_size,
        Some(3),
        "untouched task defaults stay"
    );
    let out = s
        .run(&["Angela Merkel met Emmanuel Macron."], &options)
        .unwrap();
    assert_eq!(out[0].len(), 2, "two returned sequences");
    assert!(out[0].iter().all(|o| o.generated_tokens <= 2 * 4));
    // One call's options do not stay with the loaded model.
    let c = s.settings(&SummarizeOptions::default()).unwrap();
    assert_eq!((c.num_beams(), c.num_return_sequences()), (4, 1));
    let out = s
        .run(
            &["Angela Merkel met Emmanuel Macron."],
            &SummarizeOptions::default(),
        )
        .unwrap();
    assert_eq!(out[0].len(), 1);
}

#[test]
fn unknown_language_pairs_are_named() {
    let t = translator("t5-tiny");
    let options = TranslateOptions::new("en", "es");
    let err = t.settings(&options).unwrap_err().to_string();
    assert!(
        err.contains("en → es") && err.contains("en → de") && err.contains("en → fr"),
        "{err}"
    );
    let err = t.run(&["The house is wonderful."], &options).unwrap_err();
    assert_eq!(
        err.to_string(),
        t.settings(&options).unwrap_err().to_string()
    );
}

#[test]
fn bad_options_and_inputs_are_clear_errors_or_sensible_results() {
    let s = summarizer("t5-tiny");
    // Invalid settings are errors of the call (settings and run alike), naming the field.
    let call_err = |o: GenerationConfig| {
        let options = summarize(o);
        let settings = s.settings(&options).unwrap_err().to_string();
        let run = s
            .run(&["Angela Merkel met Emmanuel Macron."], &options)
            .unwrap_err()
            .to_string();
        assert_eq!(settings, run);
        run
    };
    let e = call_err(GenerationConfig {
        num_beams: Some(0),
        ..Default::default()
    });
    assert!(e.contains("num_beams must be at least 1"), "{e}");
    let e = call_err(GenerationConfig {
        top_p: Some(1.5),
        ..Default::default()
    });
    assert!(e.contains("top_p must be in (0, 1]"), "{e}");

    let options = SummarizeOptions::default();
    for empty in ["", "  \t\n"] {
        let e = s.run(&[empty], &options).unwrap_err().to_string();
        assert!(
            e.contains("empty") && e.contains("nothing to summarize"),
            "{e}"
        );
    }
    // Zero new tokens: an empty summary, not an error.
    let options = summarize(GenerationConfig {
        max_new_tokens: Some(0),
        ..Default::default()
    });
    let out = s
        .run(&["Angela Merkel met Emmanuel Macron."], &options)
        .unwrap();
    assert_eq!(out[0][0].summary_text, "");
    assert_eq!(out[0][0].generated_tokens, 0);
}

/// A long document from the fixture sentences.
fn document(bytes: usize) -> String {
    let r = reference("t5-tiny").unwrap();
    let sentences: Vec<&str> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .collect();
    let mut doc = String::new();
    let mut i = 0;
    while doc.len() < bytes {
        doc.push_str(sentences[i % sentences.len()]);
        doc.push(if i % 7 == 6 { '\n' } else { ' ' });
        i += 1;
    }
    doc
}

#[test]
fn a_long_document_is_split_at_sentences_not_cut() {
    let tok = TextEncoder::from_files(&files("t5-tiny")).unwrap();
    let doc = document(6_000);
    let prefix = "summarize: ";
    let pieces = split_to_fit(&tok, prefix, &doc, 512).unwrap();
    assert!(
        pieces.len() > 1,
        "a document of 6 kB does not fit 512 tokens"
    );
    for piece in &pieces {
        let p = &piece.text;
        let encoded = tok.encode(&format!("{prefix}{p}")).unwrap();
        assert!(encoded.len() <= 512);
        assert_eq!(
            encoded.ids, piece.encoded.ids,
            "the piece's own encoding is returned"
        );
        // Pieces end at sentence ends (every fixture sentence ends with . ! or ?).
        assert!(p.ends_with(['.', '!', '?']), "{p:?}");
    }
    let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let joined: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(words(&joined.join(" ")), words(&doc), "nothing is lost");

    let s = summarizer("t5-tiny");
    let options = summarize(GenerationConfig {
        max_new_tokens: Some(2),
        num_beams: Some(1),
        ..Default::default()
    });
    let out = s.run(&[&doc], &options).unwrap();
    assert_eq!(out[0][0].chunks, pieces.len());

    // --resummarize: the joined piece summaries are summarized once more.
    let again = SummarizeOptions {
        resummarize: true,
        ..options.clone()
    };
    let twice = s.run(&[&doc], &again).unwrap();
    let direct = s.run(&[&out[0][0].summary_text], &options).unwrap();
    assert_eq!(twice[0][0].summary_text, direct[0][0].summary_text);
    assert_eq!(twice[0][0].chunks, pieces.len());
}

#[test]
fn a_checkpoint_without_task_params_gets_t5_prompts_and_its_own_defaults() {
    // flan-t5 style: no task_specific_params in config.json.
    let dir = std::env::temp_dir().join(format!("trident-t5-notask-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture_dir("t5-tiny")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config
        .as_object_mut()
        .unwrap()
        .remove("task_specific_params");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let local = ModelFiles::local(&dir).unwrap();

    let t = trident_t5::translator(&local, &LoadOptions::default()).unwrap();
    let c = t.settings(&TranslateOptions::new("en", "es")).unwrap();
    assert_eq!(c.prefix.as_deref(), Some("translate English to Spanish: "));
    assert_eq!(c.num_beams(), 1);
    let xx = TranslateOptions::new("en", "xx");
    let err = t.settings(&xx).unwrap_err().to_string();
    assert!(err.contains("unknown language code 'xx'"), "{err}");
    let err = t.run(&["The house is wonderful."], &xx).unwrap_err();
    assert!(
        err.to_string().contains("unknown language code 'xx'"),
        "{err}"
    );
    let s = trident_t5::summarizer(&local, &LoadOptions::default()).unwrap();
    let c = s.settings(&SummarizeOptions::default()).unwrap();
    assert_eq!(c.prefix.as_deref(), Some(""));
    // transformers' default length: 20 in all, no max_new_tokens.
    assert_eq!((c.max_length, c.max_new_tokens), (None, None));
    assert_eq!(c.max_total_length(1), 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_one_megabyte_document_is_chunked_and_processed() {
    let tok = TextEncoder::from_files(&files("t5-tiny")).unwrap();
    let doc = document(1 << 20);
    let pieces = split_to_fit(&tok, "summarize: ", &doc, 512).unwrap();
    assert!(pieces.len() > 100, "{} pieces", pieces.len());
    assert!(pieces.iter().all(|p| p.encoded.len() <= 512));
    let words: usize = pieces
        .iter()
        .map(|p| p.text.split_whitespace().count())
        .sum();
    assert_eq!(words, doc.split_whitespace().count(), "nothing is lost");
    // A single sentence longer than the limit falls back to word, then token, boundaries.
    let run_on = "x".repeat(5_000);
    let pieces = split_to_fit(&tok, "summarize: ", &run_on, 64).unwrap();
    assert!(pieces.len() > 1);
    assert!(pieces.iter().all(|p| p.encoded.len() <= 64));
    let joined: String = pieces.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(joined, run_on);
}
