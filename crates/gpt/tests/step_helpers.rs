//! Decoding steps run with helpers (`trident_core::nn::parallel::decoding_step`: one parallel
//! region per step, the other threads serving its passes) give exactly what steps run with
//! one region per product give: the same ids and the same probabilities, to the bit, in f32
//! and in bf16.
//!
//! The model is the tiny GPT-2 fixture read with 2 heads of 16 values instead of 4 of 8 (the
//! same weights), so that its attention runs the fused kernel; products are forced onto the
//! streamed kernel. Steps are then helped on CPUs with AVX-512 and two threads or more
//! (checked by the count of helped steps); elsewhere the test compares two unhelped runs.
//! This file is its own test binary because the kernel policy is read once per process.

use std::path::PathBuf;
use trident_core::generation::GenerationConfig;
use trident_core::nn::{parallel, streamed};
use trident_core::{DeviceChoice, Dtype, LoadOptions, ModelFiles};
use trident_gpt::GenerateOptions;

/// The fixture's files with `n_head` 2 in its config, in a directory of this process.
fn two_head_gpt2() -> PathBuf {
    let from = trident_testing::fixture_dir("gpt2-tiny");
    let to = std::env::temp_dir().join(format!("trident-gpt2-2heads-{}", std::process::id()));
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
    let config = to.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(c["n_head"], 4);
    c["n_head"] = 2.into();
    std::fs::write(&config, c.to_string()).unwrap();
    to
}

#[test]
fn helped_steps_give_the_same_ids_and_probabilities() {
    // SAFETY: this binary's only test sets it before anything reads the environment.
    unsafe { std::env::set_var("TRIDENT_KERNELS", "streamed") };
    let dir = two_head_gpt2();
    // f32, and bf16 (whose norms and element-wise steps are libtorch's, on one thread inside
    // a helped step).
    for dtype in [Dtype::F32, Dtype::Bf16] {
        helped_equals_alone(&dir, dtype);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn helped_equals_alone(dir: &std::path::Path, dtype: Dtype) {
    let g = trident_gpt::generator(
        &ModelFiles::local(dir).unwrap(),
        &LoadOptions {
            device: DeviceChoice::Cpu,
            dtype,
        },
    )
    .unwrap();
    let prompts = ["The United Nations said", "Hello"];
    let greedy = GenerateOptions {
        batch_size: 1,
        generation: GenerationConfig {
            max_new_tokens: Some(12),
            ..Default::default()
        },
        return_full_text: true,
        show_probs: Some(5),
    };
    let beam = GenerateOptions {
        generation: GenerationConfig {
            num_beams: Some(3),
            ..greedy.generation.clone()
        },
        show_probs: None,
        ..greedy.clone()
    };
    let run = |options: &GenerateOptions| {
        serde_json::to_value(g.run(&prompts, options).unwrap()).unwrap()
    };
    for options in [&greedy, &beam] {
        parallel::set_step_helpers(false);
        let before = parallel::helped_steps();
        let alone = run(options);
        assert_eq!(parallel::helped_steps(), before);
        parallel::set_step_helpers(true);
        let helped = run(options);
        if streamed::available() && tch::get_num_threads() >= 2 {
            // Each prompt's steps from the third on (the first is the prompt's, the second
            // shows that the step's products are all streamed).
            assert!(
                parallel::helped_steps() >= before + 2 * 9,
                "no {dtype:?} step was helped"
            );
        }
        assert_eq!(helped, alone, "{dtype:?}");
    }
}
