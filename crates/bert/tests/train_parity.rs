//! Fine-tuning against PyTorch (weights/train/reference.json, by scripts/fixtures_train.py):
//! the same data read and aligned as transformers' examples do it, then five optimizer steps
//! with dropout off (AdamW, linear warm-up, gradient clipping) give the same losses and the
//! same weights to 1e-4.

use serde_json::Value;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};
use trident_bert::train::{label_order, TrainableModel};
use trident_core::train::data::{self, Example};
use trident_core::train::optim::decays;
use trident_core::train::{Optimization, TaskKind, TrainConfig, Trainable};
use trident_core::{ModelFiles, TextEncoder};
use trident_testing::fixture_dir;

const TOL: f64 = 1e-4;

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Read and encode the task's data as the trainer does; the labels in the checkpoint's order.
fn examples(task: &Value, kind: TaskKind, tokenizer: &TextEncoder) -> (Vec<Example>, Vec<String>) {
    let files = ModelFiles::local(fixture_dir(task["model"].as_str().unwrap())).unwrap();
    let path = fixture_dir("train").join(task["data"].as_str().unwrap());
    let max_length = reference_max_length();
    match kind {
        TaskKind::Classification => {
            let texts = data::read_labelled_texts(&path, "text", "label").unwrap();
            let labels = label_order(&files, kind, data::class_labels(&texts)).unwrap();
            let encoded =
                data::encode_labelled_texts(tokenizer, &texts, &labels, max_length).unwrap();
            (encoded, labels)
        }
        TaskKind::TokenClassification => {
            let sentences =
                data::read_tagged_sentences(&path, "tokens", "tags", Default::default()).unwrap();
            let labels = label_order(&files, kind, data::tag_labels(&sentences)).unwrap();
            let encoded =
                data::encode_tagged_sentences(tokenizer, &sentences, &labels, max_length).unwrap();
            (encoded, labels)
        }
    }
}

fn parity(name: &str, kind: TaskKind) {
    let reference = trident_testing::reference("train").unwrap();
    let settings = &reference["settings"];
    let task = &reference[name];
    let files = ModelFiles::local(fixture_dir(task["model"].as_str().unwrap())).unwrap();
    let tokenizer = TextEncoder::from_files(&files).unwrap();

    // The data: tokens and aligned labels exactly as transformers' examples make them.
    let (examples, labels) = examples(task, kind, &tokenizer);
    let expected_labels: Vec<String> = task["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels, expected_labels, "{name}: label order");
    for (i, e) in task["examples"].as_array().unwrap().iter().enumerate() {
        let ours = &examples[i];
        assert_eq!(
            ours.encoded.ids,
            ints(&e["input_ids"]),
            "{name} example {i}: ids"
        );
        assert_eq!(
            ours.encoded.type_ids,
            ints(&e["token_type_ids"]),
            "{name} example {i}: token types"
        );
        assert_eq!(
            ours.labels,
            ints(&e["labels"]),
            "{name} example {i}: labels"
        );
    }

    // The steps.
    let model = TrainableModel::load(&files, kind, &labels, Device::Cpu, 0)
        .unwrap()
        .without_dropout();
    let initial: HashMap<String, Tensor> = model
        .parameters()
        .iter()
        .map(|(n, p)| (n.clone(), p.detach().copy()))
        .collect();
    let steps = settings["steps"].as_u64().unwrap();
    let config = TrainConfig {
        learning_rate: settings["learning_rate"].as_f64().unwrap(),
        warmup_ratio: settings["warmup_ratio"].as_f64().unwrap(),
        weight_decay: settings["weight_decay"].as_f64().unwrap(),
        max_grad_norm: settings["max_grad_norm"].as_f64().unwrap(),
        ..Default::default()
    };
    let mut optimization = Optimization::new(&model, &config, steps).unwrap();
    let mut lr_sum = 0.0;
    for (i, (rows, expected)) in task["batches"]
        .as_array()
        .unwrap()
        .iter()
        .zip(task["steps"].as_array().unwrap())
        .enumerate()
    {
        let batch: Vec<&Example> = ints(rows).iter().map(|&r| &examples[r as usize]).collect();
        let step = optimization
            .step(&model, &batch, kind, tokenizer.pad_id)
            .unwrap();
        let (loss, lr, norm) = (
            expected["loss"].as_f64().unwrap(),
            expected["lr"].as_f64().unwrap(),
            expected["grad_norm"].as_f64().unwrap(),
        );
        assert!(
            (step.loss - loss).abs() < TOL,
            "{name} step {i}: loss {} vs {loss}",
            step.loss
        );
        assert!(
            (step.lr - lr).abs() < 1e-9,
            "{name} step {i}: lr {}",
            step.lr
        );
        assert!(
            (step.grad_norm - norm).abs() < TOL * norm.max(1.0),
            "{name} step {i}: grad norm {} vs {norm}",
            step.grad_norm
        );
        lr_sum += lr;
    }

    // Every parameter, named as transformers names it, ends where PyTorch's does.
    let expected = task["parameters"].as_object().unwrap();
    let ours: Vec<&String> = model.parameters().iter().map(|(n, _)| n).collect();
    let mut theirs: Vec<&String> = expected.keys().collect();
    let mut sorted = ours.clone();
    sorted.sort();
    theirs.sort();
    assert_eq!(sorted, theirs, "{name}: parameter names");
    let mut worst = 0.0f64;
    for (pname, p) in model.parameters() {
        let e = &expected[pname];
        assert_eq!(
            decays(pname),
            e["decay"].as_bool().unwrap(),
            "{pname}: decay"
        );
        let p = p.detach();
        let flat = p.flatten(0, -1);
        if e["rounding_noise"].as_bool().unwrap() {
            // Zero true gradient: AdamW moves it by rounding noise, at most lr per step.
            let moved = (&p - &initial[pname]).abs().max().double_value(&[]);
            assert!(moved <= lr_sum * 1.01, "{pname} moved {moved}");
            continue;
        }
        let first = Vec::<f64>::try_from(&flat.narrow(0, 0, flat.size()[0].min(8))).unwrap();
        for (a, b) in first.iter().zip(floats(&e["first"])) {
            worst = worst.max((a - b).abs());
        }
        let at = e["largest_change_at"].as_i64().unwrap();
        let there = flat.double_value(&[at]);
        worst = worst.max((there - e["value_there"].as_f64().unwrap()).abs());
        // A sum of up to 32 000 values, each within 1e-5 or so.
        let sum = p.sum(Kind::Double).double_value(&[]);
        let expected_sum = e["sum"].as_f64().unwrap();
        assert!(
            (sum - expected_sum).abs() < TOL * (p.numel() as f64 / 1000.0).max(1.0),
            "{name} {pname}: sum {sum} vs {expected_sum}"
        );
    }
    assert!(worst < TOL, "{name}: weights differ by {worst:e}");
    eprintln!("{name}: weights within {worst:e} of PyTorch's");
}

#[test]
fn classification_steps_match_pytorch() {
    parity("classify", TaskKind::Classification);
}

#[test]
fn token_classification_steps_match_pytorch() {
    parity("ner", TaskKind::TokenClassification);
}

fn reference_max_length() -> usize {
    let reference = trident_testing::reference("train").unwrap();
    reference["settings"]["max_length"].as_u64().unwrap() as usize
}
