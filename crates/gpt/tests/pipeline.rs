//! The text-generation pipeline's own behaviour on the tiny GPT-2 fixture: reproducible
//! sampling, stop strings, `--show-probs`, and bad input (empty and huge prompts,
//! `max_new_tokens` 0 or beyond the context, temperature 0 when sampling, a model that is not
//! GPT-2) giving a clear error or a sensible result.

use serde_json::Value;
use tch::{Kind, Tensor};
use trident_core::generation::{generate, CausalLmDecoder, GenerationConfig};
use trident_core::text::{Batch, PaddingSide};
use trident_core::{DeviceChoice, LoadOptions, ModelFiles};
use trident_gpt::{GenerateOptions, TextGenerator};
use trident_testing::{fixture_dir, reference};

const PROMPT: &str = "The United Nations said";

fn cpu() -> LoadOptions {
    LoadOptions {
        device: DeviceChoice::Cpu,
        ..Default::default()
    }
}

/// The tiny GPT-2, loaded once per test; every call brings its own options.
fn load() -> TextGenerator {
    trident_gpt::generator(
        &ModelFiles::local(fixture_dir("gpt2-tiny")).unwrap(),
        &cpu(),
    )
    .unwrap()
}

/// One call's options: `generation` over the defaults, 4 prompts per batch, the full text.
fn options(generation: GenerationConfig, show_probs: Option<usize>) -> GenerateOptions {
    GenerateOptions {
        batch_size: 4,
        generation,
        return_full_text: true,
        show_probs,
    }
}

fn new_tokens(n: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: Some(n),
        ..Default::default()
    }
}

fn sampling(seed: u64) -> GenerationConfig {
    GenerationConfig {
        do_sample: Some(true),
        seed: Some(seed),
        num_return_sequences: Some(3),
        ..new_tokens(20)
    }
}

/// transformers' greedy continuation of PROMPT (20 new ids) from the fixture.
fn greedy_reference() -> (Vec<i64>, Vec<i64>) {
    let r = reference("gpt2-tiny").unwrap();
    let case = r["generate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "greedy")
        .unwrap();
    assert_eq!(case["texts"][0], PROMPT);
    let prompt: Vec<Vec<i64>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
    let out: Vec<Vec<i64>> = serde_json::from_value(case["output_ids"].clone()).unwrap();
    let p = prompt[0].len();
    (prompt[0].clone(), out[0][p..].to_vec())
}

#[test]
fn the_same_seed_gives_the_same_samples() {
    let g = load();
    let seven = options(sampling(7), None);
    assert_eq!(
        g.settings(&seven).unwrap().temperature,
        Some(0.7),
        "transformers' pipeline temperature"
    );
    let a = g.run(&[PROMPT, "Hello"], &seven).unwrap();
    let b = g.run(&[PROMPT, "Hello"], &seven).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].len(), 3, "num_return_sequences");
    assert!(a[0].iter().all(|t| t.generated_text.starts_with(PROMPT)));
    assert!(
        a[0][0] != a[0][1] || a[0][1] != a[0][2],
        "three samples, all the same: {:?}",
        a[0]
    );
    let other = g
        .run(&[PROMPT, "Hello"], &options(sampling(8), None))
        .unwrap();
    assert_ne!(a, other, "another seed gives other samples");
}

#[test]
fn generation_stops_at_a_stop_string() {
    let (_, greedy) = greedy_reference();
    let g = load();
    let full = g.tokenizer().decode(&greedy, true).unwrap();
    // A stop string inside the greedy continuation, not at its start.
    let stop = "BC";
    let at = full
        .find(stop)
        .expect("the greedy continuation contains the stop string");
    assert!(at > 0);
    // Generation ends with the token that completes the stop string.
    let n = (1..=greedy.len())
        .find(|&n| {
            g.tokenizer()
                .decode(&greedy[..n], true)
                .unwrap()
                .contains(stop)
        })
        .unwrap();
    let expected = g.tokenizer().decode(&greedy[..n], true).unwrap();
    let stopped = g
        .run(
            &[PROMPT],
            &options(
                GenerationConfig {
                    stop_strings: Some(vec![stop.into()]),
                    ..new_tokens(20)
                },
                None,
            ),
        )
        .unwrap();
    assert_eq!(stopped[0][0].generated_text, format!("{PROMPT}{expected}"));
    assert_eq!(stopped[0][0].generated_tokens, n);
    assert!(n < greedy.len());
}

#[test]
fn show_probs_reports_the_models_top_tokens_per_step() {
    let (prompt_ids, greedy) = greedy_reference();
    let g = load();
    let mut streamed_steps = 0;
    let out = g
        .run_streaming(&[PROMPT], &options(new_tokens(6), Some(5)), &mut |p| {
            streamed_steps += usize::from(p.step.is_some());
            Ok(())
        })
        .unwrap();
    let steps = out[0][0].steps.as_ref().unwrap();
    assert_eq!(steps.len(), 6);
    assert_eq!(
        streamed_steps, 6,
        "every step is streamed with its probabilities"
    );
    let ids: Vec<i64> = steps.iter().map(|s| s.id).collect();
    assert_eq!(ids, greedy[..6], "the steps are the greedy tokens");
    for s in steps {
        assert_eq!(s.top.len(), 5);
        assert_eq!(s.top[0].id, s.id, "greedy takes the most probable token");
        assert_eq!(s.top[0].probability, s.probability);
        assert_eq!(s.token, g.tokenizer().decode(&[s.id], false).unwrap());
        assert!(s
            .top
            .windows(2)
            .all(|w| w[0].probability >= w[1].probability));
        let sum: f32 = s.top.iter().map(|t| t.probability).sum();
        assert!(sum > 0.0 && sum <= 1.0 + 1e-5, "{sum}");
    }
    // The first step's numbers are the softmax of the model's last-position logits.
    let ids = Tensor::from_slice(&prompt_ids).view([1, -1]);
    let model = trident_gpt::GPT2LMHeadModel::from_pretrained(
        &ModelFiles::local(fixture_dir("gpt2-tiny")).unwrap(),
        tch::Device::Cpu,
        trident_core::Dtype::F32,
    )
    .unwrap();
    let logits = model
        .forward(&ids, &ids.ones_like())
        .unwrap()
        .select(1, -1)
        .squeeze();
    let probs = logits.softmax(-1, Kind::Float);
    for t in &steps[0].top {
        let p = probs.double_value(&[t.id]) as f32;
        assert!((p - t.probability).abs() < 1e-6, "{} vs {p}", t.probability);
    }
    // In JSON, the steps come after generated_text.
    let v: Value = serde_json::to_value(&out[0][0]).unwrap();
    assert_eq!(v["steps"][0]["top"].as_array().unwrap().len(), 5);

    let err = g
        .run(&[PROMPT], &options(new_tokens(6), Some(0)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("show_probs"), "{err}");
    let beams = GenerationConfig {
        num_beams: Some(3),
        ..new_tokens(6)
    };
    let err = g
        .run(&[PROMPT], &options(beams, Some(3)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("beam"), "{err}");
}

#[test]
fn an_empty_prompt_starts_from_bos() {
    let g = load();
    let eight = options(new_tokens(8), None);
    let out = g.run(&[""], &eight).unwrap();
    let text = &out[0][0].generated_text;
    assert_eq!(out[0][0].generated_tokens, 8);
    // The same as generating from the BOS id itself.
    let bos = g.bos_id().unwrap();
    let input_ids = Tensor::from_slice(&[bos]).view([1, 1]);
    let batch = Batch {
        attention_mask: input_ids.ones_like(),
        token_type_ids: input_ids.zeros_like(),
        input_ids,
        encodings: Vec::new(),
        padding_side: PaddingSide::Left,
    };
    let config = g.settings(&eight).unwrap();
    let seq = generate(&CausalLmDecoder(g.model()), &batch, &config).unwrap();
    let expected = g.tokenizer().decode(seq[0].generated(), true).unwrap();
    assert_eq!(text, &expected);
    assert!(!text.is_empty());
}

#[test]
fn a_prompt_longer_than_the_context_keeps_its_end() {
    // min_new_tokens keeps EOS away, so that all 10 new tokens need the room left for them.
    let g = load();
    let ten = options(
        GenerationConfig {
            min_new_tokens: Some(10),
            ..new_tokens(10)
        },
        None,
    );
    let config = g.settings(&ten).unwrap();
    let room = g.max_prompt_tokens(&config).unwrap();
    assert_eq!(room, 128 - 10);
    let long = "The United Nations said that ".repeat(4000); // > 100,000 characters
    assert!(long.len() > 100_000);
    let full = g.tokenizer().encode(&long).unwrap();
    let (kept, truncated) = g.encode_prompt(&long, room).unwrap();
    assert!(truncated);
    assert_eq!(kept.ids, full.ids[full.ids.len() - 118..]);
    let out = g.run(&[long.as_str()], &ten).unwrap();
    assert!(out[0][0].prompt_truncated);
    assert_eq!(out[0][0].generated_tokens, 10);
    // The whole prompt, then the continuation of its last 118 tokens.
    let input_ids = Tensor::from_slice(&kept.ids).view([1, -1]);
    let batch = Batch {
        attention_mask: input_ids.ones_like(),
        token_type_ids: input_ids.zeros_like(),
        input_ids,
        encodings: Vec::new(),
        padding_side: PaddingSide::Left,
    };
    let seq = generate(&CausalLmDecoder(g.model()), &batch, &config).unwrap();
    let continuation = g.tokenizer().decode(seq[0].generated(), true).unwrap();
    assert_eq!(out[0][0].generated_text, format!("{long}{continuation}"));
    let (short, cut) = g.encode_prompt(PROMPT, room).unwrap();
    assert!(!cut && short.len() == 6);
}

#[test]
fn zero_new_tokens_returns_the_prompt() {
    let g = load();
    let out = g.run(&[PROMPT], &options(new_tokens(0), None)).unwrap();
    assert_eq!(out[0][0].generated_text, PROMPT);
    assert_eq!(out[0][0].generated_tokens, 0);
    let continuation_only = GenerateOptions {
        return_full_text: false,
        generation: new_tokens(0),
        ..Default::default()
    };
    assert_eq!(
        g.run(&[PROMPT], &continuation_only).unwrap()[0][0].generated_text,
        ""
    );
}

#[test]
fn bad_options_and_models_are_clear_errors() {
    let g = load();
    // Bad settings are errors of the call, naming the field.
    let err = |o: GenerationConfig| g.run(&[PROMPT], &options(o, None)).unwrap_err().to_string();
    let e = err(GenerationConfig {
        do_sample: Some(true),
        temperature: Some(0.0),
        ..new_tokens(5)
    });
    assert!(e.contains("temperature") && e.contains("greedy"), "{e}");
    let e = err(new_tokens(128));
    assert!(
        e.contains("max_new_tokens 128") && e.contains("context"),
        "{e}"
    );
    let e = err(GenerationConfig {
        max_length: Some(500),
        ..Default::default()
    });
    assert!(e.contains("max_length 500"), "{e}");
    let e = err(GenerationConfig {
        top_p: Some(1.5),
        ..new_tokens(5)
    });
    assert!(e.contains("top_p"), "{e}");
    // Temperature 0 without sampling is unused, as in transformers.
    g.run(
        &[PROMPT],
        &options(
            GenerationConfig {
                temperature: Some(0.0),
                ..new_tokens(2)
            },
            None,
        ),
    )
    .unwrap();

    let bert = trident_gpt::generator(
        &ModelFiles::local(fixture_dir("bert-tiny-ner")).unwrap(),
        &cpu(),
    );
    let e = bert.err().unwrap().to_string();
    assert!(e.contains("not GPT-2"), "{e}");
    let zero = GenerateOptions {
        batch_size: 0,
        ..Default::default()
    };
    let e = g.run(&[PROMPT], &zero).unwrap_err().to_string();
    assert!(e.contains("batch_size must be at least 1"), "{e}");
}

#[test]
fn defaults_follow_the_checkpoint_then_the_pipeline() {
    let g = load();
    let c: GenerationConfig = g.settings(&GenerateOptions::default()).unwrap();
    // transformers' pipeline default is 256 new tokens; the fixture's context is 128, so half
    // of it is left for the prompt.
    assert_eq!(c.max_new_tokens, Some(64));
    assert_eq!(g.max_prompt_tokens(&c).unwrap(), 64);
    assert!(!c.do_sample(), "greedy unless asked");
    assert_eq!(c.eos_token_ids(), vec![999], "generation_config.json");
    // A call's own options do not stay with the loaded model.
    g.run(&[PROMPT], &options(sampling(7), None)).unwrap();
    assert_eq!(g.settings(&GenerateOptions::default()).unwrap(), c);
}

/// A seed gives the same samples whatever the batch (issue 18, item 6: the CLI's text format
/// generates one prompt at a time, json a batch): each prompt alone equals the same prompt
/// among others, with its returned sequences still different from each other.
#[test]
fn seeded_sampling_does_not_depend_on_the_batch() {
    let g = load();
    let prompts = [
        "The United Nations said",
        "Paris is",
        "A long time ago in a galaxy",
    ];
    let sampling = |batch_size, num_beams| GenerateOptions {
        batch_size,
        ..options(
            GenerationConfig {
                max_new_tokens: Some(12),
                do_sample: Some(true),
                seed: Some(42),
                num_beams: Some(num_beams),
                num_return_sequences: Some(2),
                ..Default::default()
            },
            None,
        )
    };
    for beams in [1, 2] {
        let batched = g.run(&prompts, &sampling(3, beams)).unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let alone = g.run(&[prompt], &sampling(1, beams)).unwrap();
            assert_eq!(
                alone[0], batched[i],
                "beams {beams}: prompt {i} alone vs batched"
            );
        }
        assert_ne!(
            batched[0][0].generated_text, batched[0][1].generated_text,
            "beams {beams}: the two returned sequences differ"
        );
    }
}
