//! The logits processors against transformers' on fixed scores
//! (`weights/core/reference.json`, section `logits_processors`).

use serde_json::Value;
use trident_core::generation::logits::{
    apply, LogitsProcessor, MinLength, MinNewTokens, NoRepeatNGram, RepetitionPenalty, Temperature,
    TopK, TopP,
};
use trident_core::generation::GenerationConfig;
use trident_testing::{assert_close, reference, tensor};

fn param(case: &Value, key: &str) -> f64 {
    case["params"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: no param {key}", case["name"]))
}

/// The processor a reference case names, built from its parameters.
fn processor(case: &Value) -> Vec<Box<dyn LogitsProcessor>> {
    let name = case["processor"].as_str().unwrap();
    let eos = || vec![param(case, "eos_token_id") as i64];
    match name {
        "TemperatureLogitsWarper" => vec![Box::new(Temperature::new(param(case, "temperature")))],
        "TopKLogitsWarper" => vec![Box::new(TopK::new(param(case, "top_k") as usize, 1))],
        "TopPLogitsWarper" => vec![Box::new(TopP::new(param(case, "top_p"), 1))],
        "RepetitionPenaltyLogitsProcessor" => {
            vec![Box::new(RepetitionPenalty::new(param(case, "penalty")))]
        }
        "NoRepeatNGramLogitsProcessor" => {
            vec![Box::new(NoRepeatNGram::new(
                param(case, "ngram_size") as usize
            ))]
        }
        "MinLengthLogitsProcessor" => {
            vec![Box::new(MinLength::new(
                param(case, "min_length") as usize,
                eos(),
            ))]
        }
        "MinNewTokensLengthLogitsProcessor" => vec![Box::new(MinNewTokens::new(
            param(case, "prompt_length_to_skip") as usize,
            param(case, "min_new_tokens") as usize,
            eos(),
        ))],
        // The chain goes through GenerationConfig, so that its order is checked too.
        "chain" => GenerationConfig::default()
            .merge(&GenerationConfig {
                do_sample: Some(true),
                temperature: Some(param(case, "temperature")),
                top_k: Some(param(case, "top_k") as usize),
                top_p: Some(param(case, "top_p")),
                ..Default::default()
            })
            .processors(0),
        other => panic!("no processor for {other}"),
    }
}

#[test]
fn processors_equal_transformers_on_fixed_scores() {
    let r = reference("core").unwrap();
    let section = &r["logits_processors"];
    let ids: Vec<Vec<i64>> = serde_json::from_value(section["input_ids"].clone()).unwrap();
    let scores = tensor(&section["scores"]).unwrap();
    let cases = section["cases"].as_array().unwrap();
    assert!(cases.len() >= 11, "the reference lists every processor");
    for case in cases {
        let expected = tensor(&case["output"]).unwrap();
        let actual = apply(&processor(case), &ids, scores.copy()).unwrap();
        assert_close(&actual, &expected, 1e-5, case["name"].as_str().unwrap());
    }
}
