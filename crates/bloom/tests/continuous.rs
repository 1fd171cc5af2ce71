//! BLOOM in core's continuous batching: a request that joins a running batch sits right-aligned
//! behind padding columns, and ALiBi (key positions counted over each row's real tokens) must
//! give it exactly what it gets alone.

use std::collections::HashMap;
use trident_core::causal::{GenerateOptions, GeneratedText};
use trident_core::generation::GenerationConfig;
use trident_core::{DeviceChoice, LoadOptions, ModelFiles};
use trident_testing::fixture_dir;

fn options(generation: GenerationConfig) -> GenerateOptions {
    GenerateOptions {
        batch_size: 1,
        generation,
        return_full_text: false,
        show_probs: None,
    }
}

#[test]
fn requests_joining_a_running_batch_get_what_they_get_alone() {
    let load = LoadOptions {
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    let files = ModelFiles::local(fixture_dir("bloom-tiny")).unwrap();
    let generator = trident_bloom::generator(&files, &load).unwrap();
    let new_tokens = |n| GenerationConfig {
        max_new_tokens: Some(n),
        ..Default::default()
    };
    let requests: Vec<(Vec<String>, GenerateOptions)> = vec![
        (
            vec!["The United Nations said".into()],
            options(new_tokens(16)),
        ),
        (
            vec!["Angela Merkel met Emmanuel Macron in Berlin on Tuesday to discuss".into()],
            options(GenerationConfig {
                do_sample: Some(true),
                seed: Some(7),
                top_k: Some(20),
                ..new_tokens(10)
            }),
        ),
        (
            vec!["Hello".into(), "A second prompt of the same request".into()],
            options(new_tokens(6)),
        ),
    ];
    let joins = [0usize, 3, 5];
    let mut batch = generator.continuous();
    let mut ignore = |_: u64, _: trident_core::causal::Piece| Ok(());
    let mut results: HashMap<u64, Vec<Vec<GeneratedText>>> = HashMap::new();
    let (mut step, mut next) = (0, 0);
    loop {
        while next < requests.len() && joins[next] <= step {
            let (prompts, options) = &requests[next];
            batch
                .add(next as u64, prompts.clone(), options.clone(), &mut ignore)
                .unwrap();
            next += 1;
        }
        batch.step(&mut ignore);
        for (key, result) in batch.finished() {
            results.insert(key, result.unwrap());
        }
        step += 1;
        if next == requests.len() && batch.is_idle() {
            break;
        }
        assert!(step < 100, "the batch never emptied");
    }
    for (key, (prompts, options)) in requests.iter().enumerate() {
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let alone = generator.run(&prompts, options).unwrap();
        let batched = &results[&(key as u64)];
        let texts = |r: &[Vec<GeneratedText>]| -> Vec<String> {
            r.iter()
                .flatten()
                .map(|g| g.generated_text.clone())
                .collect()
        };
        assert_eq!(texts(&alone), texts(batched), "request {key}");
    }
}
