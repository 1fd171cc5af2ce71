//! Continuous batching (core's `ContinuousGenerator`): requests that join a running batch at
//! different steps, with different options, get exactly what each gets alone — on every
//! decoder-only family: GPT-2 (learned positions), Llama (rotary, grouped-query attention),
//! Mistral (sliding window), Qwen2 (q/k/v biases) and BLOOM (ALiBi).

use std::collections::HashMap;
use trident::core::causal::{ContinuousGenerator, GenerateOptions, GeneratedText, TextGenerator};
use trident::core::generation::GenerationConfig;
use trident::core::{DeviceChoice, LoadOptions, ModelFiles};
use trident_testing::fixture_dir;

fn load(name: &str) -> TextGenerator {
    let options = LoadOptions {
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    trident::generator(&ModelFiles::local(fixture_dir(name)).unwrap(), &options).unwrap()
}

fn opts(generation: GenerationConfig, show_probs: Option<usize>) -> GenerateOptions {
    GenerateOptions {
        batch_size: 1,
        generation,
        return_full_text: false,
        show_probs,
    }
}

fn new_tokens(n: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: Some(n),
        ..Default::default()
    }
}

/// The requests of the test: prompts and options, each different.
fn requests() -> Vec<(Vec<String>, GenerateOptions)> {
    let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    vec![
        (s(&["The United Nations said"]), opts(new_tokens(24), None)),
        (
            s(&["Angela Merkel met Emmanuel Macron in Berlin on Tuesday to discuss the budget."]),
            opts(
                GenerationConfig {
                    do_sample: Some(true),
                    seed: Some(7),
                    num_return_sequences: Some(2),
                    top_k: Some(20),
                    ..new_tokens(12)
                },
                None,
            ),
        ),
        (
            s(&["Hello"]),
            opts(
                GenerationConfig {
                    repetition_penalty: Some(1.3),
                    no_repeat_ngram_size: Some(2),
                    ..new_tokens(9)
                },
                None,
            ),
        ),
        (
            s(&["A short one", "and a second prompt of the same request"]),
            opts(new_tokens(5), Some(3)),
        ),
        (s(&["Nothing new"]), opts(new_tokens(0), None)),
        (s(&[""]), opts(new_tokens(3), None)),
        (s(&["One token only"]), opts(new_tokens(1), None)),
    ]
}

/// Each request's results, by key.
type Results = HashMap<u64, Vec<Vec<GeneratedText>>>;
/// The text streamed per (request, prompt, returned sequence).
type Streamed = HashMap<(u64, usize, usize), String>;

/// Run `requests` through one continuous batch: the first joins alone, the next two after
/// three steps, the rest after two more; returns each request's results and streamed text.
fn run_continuous(
    generator: &TextGenerator,
    requests: &[(Vec<String>, GenerateOptions)],
    cancel: Option<u64>,
) -> (Results, Streamed) {
    let mut batch: ContinuousGenerator = generator.continuous();
    let mut streamed: Streamed = HashMap::new();
    let mut results = HashMap::new();
    let mut on_piece = |key: u64, piece: trident::core::causal::Piece| {
        streamed
            .entry((key, piece.input, piece.sequence))
            .or_default()
            .push_str(piece.text);
        Ok(())
    };
    let joins = [0usize, 3, 3, 5, 5, 5, 5];
    let mut step = 0;
    let mut next = 0;
    loop {
        while next < requests.len() && joins[next] <= step {
            let (prompts, options) = &requests[next];
            assert!(batch.accepts(options));
            batch
                .add(next as u64, prompts.clone(), options.clone(), &mut on_piece)
                .unwrap();
            next += 1;
        }
        if step == 6 {
            if let Some(key) = cancel {
                batch.cancel(key);
            }
        }
        batch.step(&mut on_piece);
        for (key, result) in batch.finished() {
            results.insert(key, result.unwrap());
        }
        step += 1;
        if next == requests.len() && batch.is_idle() {
            break;
        }
        assert!(step < 200, "the batch never emptied");
    }
    (results, streamed)
}

fn assert_same(alone: &[Vec<GeneratedText>], batched: &[Vec<GeneratedText>], what: &str) {
    assert_eq!(alone.len(), batched.len(), "{what}");
    for (a, b) in alone.iter().flatten().zip(batched.iter().flatten()) {
        assert_eq!(a.generated_text, b.generated_text, "{what}");
        assert_eq!(a.generated_tokens, b.generated_tokens, "{what}");
        let (sa, sb) = (
            a.steps.clone().unwrap_or_default(),
            b.steps.clone().unwrap_or_default(),
        );
        assert_eq!(sa.len(), sb.len(), "{what}");
        for (x, y) in sa.iter().zip(&sb) {
            assert_eq!(x.id, y.id, "{what}");
            assert!((x.probability - y.probability).abs() < 1e-4, "{what}");
            let ids = |s: &trident::core::causal::StepProbs| {
                s.top.iter().map(|t| t.id).collect::<Vec<_>>()
            };
            assert_eq!(ids(x), ids(y), "{what}");
        }
    }
}

fn check(model: &str) {
    let generator = load(model);
    let requests = requests();
    let (results, streamed) = run_continuous(&generator, &requests, None);
    assert_eq!(results.len(), requests.len());
    for (key, (prompts, options)) in requests.iter().enumerate() {
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let alone = generator.run(&prompts, options).unwrap();
        let batched = &results[&(key as u64)];
        assert_same(&alone, batched, &format!("{model}, request {key}"));
        // What was streamed is the continuation (return_full_text is false).
        for (p, outputs) in batched.iter().enumerate() {
            for (s, out) in outputs.iter().enumerate() {
                let text = streamed
                    .get(&(key as u64, p, s))
                    .cloned()
                    .unwrap_or_default();
                assert_eq!(text, out.generated_text, "{model}, request {key} streamed");
            }
        }
    }
}

#[test]
fn gpt2_requests_joining_a_running_batch_get_what_they_get_alone() {
    check("gpt2-tiny");
}

#[test]
fn llama_requests_joining_a_running_batch_get_what_they_get_alone() {
    check("llama-tiny");
}

#[test]
fn a_cancelled_request_leaves_the_others_unchanged() {
    let generator = load("gpt2-tiny");
    let requests = requests();
    let (results, _) = run_continuous(&generator, &requests, Some(1));
    assert!(
        !results.contains_key(&1),
        "the cancelled request reported a result"
    );
    for key in [0usize, 2, 3] {
        let (prompts, options) = &requests[key];
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let alone = generator.run(&prompts, options).unwrap();
        assert_same(&alone, &results[&(key as u64)], &format!("request {key}"));
    }
}

#[test]
fn beam_search_and_bad_options_are_refused_at_the_door() {
    let generator = load("gpt2-tiny");
    let mut batch = generator.continuous();
    let beams = opts(
        GenerationConfig {
            num_beams: Some(3),
            ..new_tokens(4)
        },
        None,
    );
    assert!(!batch.accepts(&beams));
    let mut ignore = |_: u64, _: trident::core::causal::Piece| Ok(());
    let err = batch
        .add(1, vec!["Hi".into()], beams, &mut ignore)
        .unwrap_err()
        .to_string();
    assert!(err.contains("beam"), "{err}");
    let bad = opts(
        GenerationConfig {
            do_sample: Some(true),
            temperature: Some(0.0),
            ..new_tokens(4)
        },
        None,
    );
    assert!(batch.add(2, vec!["Hi".into()], bad, &mut ignore).is_err());
    assert!(batch.is_idle(), "a refused request left something behind");
}

#[test]
fn mistral_and_qwen2_requests_joining_a_running_batch_get_what_they_get_alone() {
    // Mistral's sliding window (4 positions in the fixture) over right-aligned, left-padded
    // caches; Qwen2's q/k/v biases.
    check("mistral-tiny");
    check("qwen2-tiny");
}

#[test]
fn bloom_requests_joining_a_running_batch_get_what_they_get_alone() {
    // ALiBi: the bias depends on the key's position among the row's real tokens.
    check("bloom-tiny");
}
