//! GPT-2 against transformers on the tiny fixtures in weights/ (recorded by
//! scripts/make_fixtures.py): tokenization, logits and hidden states to 1e-4 with and without
//! the `transformer.` prefix, generated ids exactly equal to `model.generate` (greedy, beam,
//! a left-padded batch, no_repeat_ngram_size, repetition_penalty), cached decoding equal to
//! uncached, and the text-generation pipeline's output.

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use trident_core::config::TokenIds;
use trident_core::generation::{
    generate, CausalLm, CausalLmDecoder, CausalLmState, Decoder, EarlyStopping, GenerationConfig,
};
use trident_core::text::{tensor_to_rows, Batch};
use trident_core::{DeviceChoice, Dtype, LoadOptions, ModelFiles, TextEncoder};
use trident_gpt::model::position_ids;
use trident_gpt::{GPT2LMHeadModel, GenerateOptions, TextGenerator};
use trident_testing::{assert_close, fixture_dir, int_tensor, max_abs_diff, reference, tensor};

const TINY: &str = "gpt2-tiny";

fn files(name: &str) -> ModelFiles {
    ModelFiles::local(fixture_dir(name)).unwrap()
}

fn model(name: &str) -> GPT2LMHeadModel {
    GPT2LMHeadModel::from_pretrained(&files(name), Device::Cpu, Dtype::F32).unwrap()
}

/// The reference's left-padded `input_ids` and `attention_mask` as a batch.
fn reference_batch(v: &Value) -> Batch {
    trident_testing::left_padded_batch(v).unwrap()
}

#[test]
fn tokenization_matches_the_fast_tokenizer() {
    let r = reference(TINY).unwrap();
    let tok = TextEncoder::from_files(&files(TINY)).unwrap();
    for e in r["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let ours = tok.encode(text).unwrap();
        let ids: Vec<i64> = serde_json::from_value(e["input_ids"].clone()).unwrap();
        let offsets: Vec<(usize, usize)> = serde_json::from_value(e["offsets"].clone()).unwrap();
        let tokens: Vec<String> = serde_json::from_value(e["tokens"].clone()).unwrap();
        assert_eq!(ours.ids, ids, "ids of {text:?}");
        assert_eq!(ours.offsets, offsets, "offsets of {text:?}");
        assert_eq!(ours.tokens, tokens, "tokens of {text:?}");
    }
    assert_eq!(tok.pad_id, r["batch"]["pad_token_id"].as_i64().unwrap());
}

#[test]
fn logits_and_hidden_states_match_transformers_with_and_without_prefix() {
    for name in [TINY, "gpt2-tiny-noprefix"] {
        let r = reference(name).unwrap();
        let b = &r["batch"];
        let m = model(name);
        let batch = reference_batch(b);
        // Left padding: positions count real tokens only, as transformers computes them.
        let positions = position_ids(&batch.attention_mask).unwrap();
        assert_eq!(
            tensor_to_rows(&positions).unwrap(),
            serde_json::from_value::<Vec<Vec<i64>>>(b["position_ids"].clone()).unwrap(),
            "{name}: position ids"
        );
        let logits = m.forward(&batch.input_ids, &batch.attention_mask).unwrap(); // [6, 19, vocab]
        let hidden = m
            .transformer
            .forward(&batch.input_ids, &positions, &batch.attention_mask, None)
            .unwrap();
        let seq = logits.size()[1];
        // Every position of every row is compared except left padding: a padding query sees
        // no key at all, which torch's SDPA answers with zeros and core's finite mask with a
        // uniform average. Nothing reads those outputs (real tokens never attend to padding,
        // generation reads the last position), so only real positions are compared.
        let real = |t: &Tensor| {
            let keep = batch
                .attention_mask
                .eq(1)
                .unsqueeze(-1)
                .expand(t.size(), false);
            t.masked_select(&keep)
        };
        let checks = [
            (
                logits.narrow(2, 0, 32),
                &b["logits_first32"],
                "logits (first 32 of the vocabulary)",
            ),
            (
                hidden.narrow(2, 0, 8),
                &b["last_hidden_state_first8"],
                "last hidden state (first 8)",
            ),
        ];
        for (ours, expected, what) in checks {
            let expected = tensor(expected).unwrap();
            assert_eq!(ours.size(), expected.size(), "{name}: {what}");
            assert_close(
                &real(&ours),
                &real(&expected),
                1e-4,
                &format!("{name}: {what}"),
            );
        }
        assert_close(
            &logits.select(1, seq - 1),
            &tensor(&b["logits_last_position"]).unwrap(),
            1e-4,
            &format!("{name}: logits of the last position, whole vocabulary"),
        );
    }
}

#[test]
fn lm_head_shares_the_token_embedding_tensor() {
    let m = model(TINY);
    assert_eq!(
        m.lm_head.weight.data_ptr(),
        m.transformer.wte.weight.data_ptr()
    );
    let m = model("gpt2-tiny-noprefix");
    assert_eq!(
        m.lm_head.weight.data_ptr(),
        m.transformer.wte.weight.data_ptr()
    );
}

/// transformers' `generate` kwargs as the caller's generation settings.
fn options_of(kwargs: &Value) -> GenerationConfig {
    let usize_of = |k: &str| kwargs[k].as_u64().map(|v| v as usize);
    GenerationConfig {
        max_new_tokens: usize_of("max_new_tokens"),
        num_beams: usize_of("num_beams"),
        no_repeat_ngram_size: usize_of("no_repeat_ngram_size"),
        num_return_sequences: usize_of("num_return_sequences"),
        repetition_penalty: kwargs["repetition_penalty"].as_f64(),
        length_penalty: kwargs["length_penalty"].as_f64(),
        do_sample: kwargs["do_sample"].as_bool(),
        early_stopping: kwargs
            .get("early_stopping")
            .map(|v| EarlyStopping::from_json(v).unwrap()),
        ..Default::default()
    }
}

/// The checkpoint's defaults (generation_config.json) under `kwargs`, as `generate` reads them.
fn generation_config(kwargs: &Value) -> GenerationConfig {
    let defaults =
        GenerationConfig::from_file(&fixture_dir(TINY).join("generation_config.json")).unwrap();
    let mut c = defaults.merge(&options_of(kwargs));
    c.pad_token_id = kwargs["pad_token_id"].as_i64().map(TokenIds::One);
    c
}

#[test]
fn generated_ids_equal_transformers_generate() {
    let r = reference(TINY).unwrap();
    let m = model(TINY);
    let cases = r["generate"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for needed in [
        "greedy",
        "beam3",
        "batch3_left_padded_greedy",
        "batch3_left_padded_beam3",
    ] {
        assert!(
            names.contains(&needed),
            "the fixture lacks the {needed} case: {names:?}"
        );
    }
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let batch = reference_batch(case);
        let config = generation_config(&case["kwargs"]);
        let ours: Vec<Vec<i64>> = generate(&CausalLmDecoder(&m), &batch, &config)
            .unwrap()
            .into_iter()
            .map(|s| s.ids)
            .collect();
        let expected: Vec<Vec<i64>> = serde_json::from_value(case["output_ids"].clone()).unwrap();
        assert_eq!(ours, expected, "{name}: generated ids");
    }
}

#[test]
fn cached_decoding_equals_uncached() {
    let r = reference(TINY).unwrap();
    let m = model(TINY);
    let case = r["generate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "batch3_left_padded_greedy")
        .unwrap();
    let prompt_mask = int_tensor(&case["attention_mask"]).unwrap();
    let ids = int_tensor(&case["output_ids"]).unwrap(); // [3, prompt + 20], left-padded
    let (rows, total) = (ids.size()[0], ids.size()[1]);
    let prompt = prompt_mask.size()[1];
    let full_mask = Tensor::cat(
        &[
            &prompt_mask,
            &Tensor::ones([rows, total - prompt], (Kind::Int64, Device::Cpu)),
        ],
        1,
    );
    let uncached = m.forward(&ids, &full_mask).unwrap(); // [3, total, vocab]

    let decoder = CausalLmDecoder(&m);
    let mut state = CausalLmState::new(m.num_layers(), &prompt_mask, m.device()).unwrap();
    let mut worst = 0.0f64;
    let first = decoder.step(&ids.narrow(1, 0, prompt), &mut state).unwrap();
    worst = worst.max(max_abs_diff(&first, &uncached.select(1, prompt - 1)));
    for pos in prompt..total {
        let logits = decoder.step(&ids.narrow(1, pos, 1), &mut state).unwrap(); // [3, vocab]
        worst = worst.max(max_abs_diff(&logits, &uncached.select(1, pos)));
    }
    assert!(
        worst <= 1e-4,
        "cached and uncached logits differ by {worst:e}"
    );
    assert_eq!(
        state.caches[0].self_attn.len(),
        total,
        "the cache holds every position"
    );
}

#[test]
fn positions_beyond_the_context_are_an_error_not_a_panic() {
    let m = model(TINY);
    let n = m.config().n_positions + 1;
    let ids = Tensor::full([1, n], 5, (Kind::Int64, Device::Cpu));
    let err = m.forward(&ids, &ids.ones_like()).unwrap_err().to_string();
    assert!(
        err.contains("position 128") && err.contains("n_positions"),
        "{err}"
    );
    let bad = Tensor::from_slice(&[1i64, 1000]).view([1, 2]);
    let err = m.forward(&bad, &bad.ones_like()).unwrap_err().to_string();
    assert!(err.contains("token id 1000"), "{err}");
}

fn generator() -> TextGenerator {
    let load = LoadOptions {
        device: DeviceChoice::Cpu,
        dtype: Dtype::F32,
    };
    trident_gpt::generator(&files(TINY), &load).unwrap()
}

/// One pipeline call's options from transformers' pipeline kwargs.
fn call(kwargs: &Value, batch_size: usize) -> GenerateOptions {
    GenerateOptions {
        batch_size,
        generation: options_of(kwargs),
        return_full_text: kwargs["return_full_text"].as_bool().unwrap_or(true),
        show_probs: None,
    }
}

#[test]
fn pipeline_output_equals_transformers_text_generation() {
    let r = reference(TINY).unwrap();
    let cases = r["pipelines"]["text-generation"].as_array().unwrap();
    assert!(
        cases.iter().any(|c| c["kwargs"]["num_beams"] == 3),
        "the fixture lacks a beam case"
    );
    let g = generator();
    for case in cases {
        let prompt = case["input"].as_str().unwrap();
        let mut streamed = String::new();
        let mut counts = Vec::new();
        let out = g
            .run_streaming(&[prompt], &call(&case["kwargs"], 1), &mut |p| {
                streamed.push_str(p.text);
                counts.push(p.tokens);
                Ok(())
            })
            .unwrap();
        // Each piece counts the tokens so far; the last one, all of them.
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        if let Some(&last) = counts.last() {
            assert_eq!(last, out[0][0].generated_tokens, "{prompt:?}");
        }
        assert_eq!(
            json!(out[0]),
            case["output"],
            "{prompt:?} with {}",
            case["kwargs"]
        );
        // The streamed pieces add up to the continuation.
        let text = &out[0][0].generated_text;
        let continuation = if case["kwargs"]["return_full_text"] == false {
            text.as_str()
        } else {
            &text[prompt.len()..]
        };
        assert_eq!(
            streamed, continuation,
            "{prompt:?} streamed with {}",
            case["kwargs"]
        );
    }
}

#[test]
fn a_prompt_alone_equals_the_same_prompt_in_a_left_padded_batch() {
    let r = reference(TINY).unwrap();
    let case = r["generate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "batch3_left_padded_greedy")
        .unwrap();
    let prompts: Vec<&str> = case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let kwargs = json!({"do_sample": false, "max_new_tokens": 20});
    let g = generator();
    let together = g.run(&prompts, &call(&kwargs, 3)).unwrap();
    let alone = g.run(&prompts, &call(&kwargs, 1)).unwrap();
    assert_eq!(together, alone);
    // And the batch's texts are transformers' batched ids, decoded.
    let expected: Vec<String> = case["decoded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let ours: Vec<String> = together
        .iter()
        .map(|o| o[0].generated_text.clone())
        .collect();
    assert_eq!(ours, expected);
}

#[test]
fn beam_search_returns_its_best_sequences() {
    let r = reference(TINY).unwrap();
    let beam = r["pipelines"]["text-generation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kwargs"] == json!({"do_sample": false, "max_new_tokens": 20, "num_beams": 3}))
        .unwrap();
    let prompt = beam["input"].as_str().unwrap();
    let kwargs = json!({"do_sample": false, "max_new_tokens": 20, "num_beams": 3, "num_return_sequences": 2});
    let out = generator().run(&[prompt], &call(&kwargs, 1)).unwrap();
    assert_eq!(out[0].len(), 2);
    assert_eq!(
        json!(out[0][0]),
        beam["output"][0],
        "the best beam comes first"
    );
    assert_ne!(out[0][0], out[0][1], "two different beams");
}

/// bf16 and int8 stay close to f32: logits within a few percent of their range, and the
/// same most likely next token almost everywhere (random tiny weights make near-ties
/// common, so a few flips are expected; a wrong layout or scale flips most of them).
#[test]
fn bf16_and_int8_stay_close_to_f32() {
    let r = reference(TINY).unwrap();
    let batch = reference_batch(&r["batch"]);
    let logits_in = |dtype| {
        let m = GPT2LMHeadModel::from_pretrained(&files(TINY), Device::Cpu, dtype).unwrap();
        let logits = m.forward(&batch.input_ids, &batch.attention_mask).unwrap();
        assert_eq!(
            logits.kind(),
            Kind::Float,
            "{dtype}: logits come back as f32"
        );
        let keep = batch.attention_mask.eq(1);
        let rows = logits.size()[2];
        logits
            .masked_select(&keep.unsqueeze(-1).expand(logits.size(), false))
            .view([-1, rows])
    };
    let exact = logits_in(Dtype::F32);
    let range = exact.abs().max().double_value(&[]);
    for dtype in [Dtype::Bf16, Dtype::Int8] {
        let ours = logits_in(dtype);
        let err = (&ours - &exact).abs().max().double_value(&[]) / range;
        let same = ours
            .argmax(-1, false)
            .eq_tensor(&exact.argmax(-1, false))
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        eprintln!("{dtype}: max logit error {err:.4} of the range, same argmax {same:.3}");
        assert!(err < 0.05, "{dtype}: logits off by {err} of their range");
        assert!(
            same >= 0.8,
            "{dtype}: same argmax at only {same} of positions"
        );
    }
}
