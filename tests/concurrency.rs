//! One loaded model, many requests: each pipeline is loaded once, shared by four threads
//! through an `Arc`, and every call brings its own options (aggregation strategies, lengths,
//! beams, sampling seeds, language pairs). Every concurrent result must equal the result of
//! the same call made alone, serially.

use serde_json::Value;
use std::sync::Arc;
use trident::bert::{Aggregation, ClassifyOptions, NerOptions, TextClassifier, TokenClassifier};
use trident::core::generation::GenerationConfig;
use trident::core::{LoadOptions, ModelFiles};
use trident::gpt::{GenerateOptions, TextGenerator};
use trident::t5::{SummarizeOptions, Summarizer, TranslateOptions, Translator};
use trident_testing::{fixture_dir, json_close};

/// The pipelines, loaded once.
struct Loaded {
    ner: TokenClassifier,
    classifier: TextClassifier,
    generator: TextGenerator,
    summarizer: Summarizer,
    translator: Translator,
    /// BART, Marian and M2M100: the other encoder-decoder families, through the same
    /// pipelines.
    bart: Summarizer,
    marian: Translator,
    m2m100: Translator,
}

/// One request: which pipeline, with which options.
#[derive(Clone)]
enum Job {
    Ner(Aggregation, usize),
    Classify(Option<usize>),
    Generate(GenerationConfig),
    Summarize(GenerationConfig),
    Translate(&'static str, GenerationConfig),
    SummarizeBart(GenerationConfig),
    TranslateMarian(GenerationConfig),
    TranslateM2M100(&'static str, GenerationConfig),
}

const TEXTS: [&str; 3] = [
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "The United Nations said the talks in Geneva would resume.",
    "Apple opened a new store in Paris.",
];

fn load() -> Loaded {
    let files = |name: &str| ModelFiles::local(fixture_dir(name)).unwrap();
    let cpu = LoadOptions {
        device: trident::DeviceChoice::Cpu,
        ..Default::default()
    };
    Loaded {
        ner: TokenClassifier::from_pretrained(&files("bert-tiny-ner"), &cpu).unwrap(),
        classifier: TextClassifier::from_pretrained(&files("distilbert-tiny-sst2"), &cpu).unwrap(),
        generator: trident::generator(&files("gpt2-tiny"), &cpu).unwrap(),
        summarizer: trident::summarizer(&files("t5-tiny"), &cpu).unwrap(),
        translator: trident::translator(&files("t5-tiny"), &cpu).unwrap(),
        bart: trident::summarizer(&files("bart-tiny"), &cpu).unwrap(),
        marian: trident::translator(&files("marian-tiny"), &cpu).unwrap(),
        m2m100: trident::translator(&files("m2m100-tiny"), &cpu).unwrap(),
    }
}

fn jobs() -> Vec<Job> {
    let gen = |max_new_tokens, num_beams, seed: Option<u64>| GenerationConfig {
        max_new_tokens: Some(max_new_tokens),
        num_beams: Some(num_beams),
        do_sample: Some(seed.is_some()),
        seed,
        num_return_sequences: Some(if seed.is_some() { 2 } else { 1 }),
        ..Default::default()
    };
    vec![
        Job::Ner(Aggregation::None, 8),
        Job::Ner(Aggregation::Simple, 2),
        Job::Ner(Aggregation::First, 8),
        Job::Ner(Aggregation::Max, 1),
        Job::Classify(None),
        Job::Classify(Some(1)),
        Job::Generate(gen(6, 1, None)),
        Job::Generate(gen(9, 3, None)),
        Job::Generate(gen(7, 1, Some(3))),
        Job::Generate(gen(7, 1, Some(11))),
        Job::Summarize(gen(5, 2, None)),
        Job::Summarize(gen(8, 1, Some(5))),
        Job::Translate("de", gen(6, 1, None)),
        Job::Translate("fr", gen(6, 3, None)),
        Job::SummarizeBart(gen(6, 2, None)),
        Job::SummarizeBart(gen(5, 1, None)),
        Job::TranslateMarian(gen(6, 2, None)),
        Job::TranslateMarian(gen(7, 1, Some(2))),
        Job::TranslateM2M100("en", gen(6, 1, None)),
        Job::TranslateM2M100("de", gen(5, 3, None)),
    ]
}

/// A call's result, as JSON (every output type serializes; internal fields compared too
/// through Debug).
/// A job's output as JSON: compared with the serial one to a float tolerance, because the
/// projection kernels are chosen by measurement while the first calls run (see
/// `trident_core::nn::kernels`), and two kernels may differ in the last bits.
fn run(loaded: &Loaded, job: &Job) -> Value {
    match job {
        Job::Ner(aggregation, batch_size) => {
            let options = NerOptions {
                aggregation: *aggregation,
                batch_size: *batch_size,
                ..Default::default()
            };
            serde_json::to_value(loaded.ner.run(&TEXTS, &options).unwrap()).unwrap()
        }
        Job::Classify(top_k) => {
            let options = ClassifyOptions {
                top_k: *top_k,
                ..Default::default()
            };
            serde_json::to_value(loaded.classifier.run(&TEXTS, &options).unwrap()).unwrap()
        }
        Job::Generate(generation) => {
            let options = GenerateOptions {
                generation: generation.clone(),
                ..Default::default()
            };
            serde_json::to_value(loaded.generator.run(&TEXTS, &options).unwrap()).unwrap()
        }
        Job::Summarize(generation) => {
            let options = SummarizeOptions {
                generation: generation.clone(),
                ..Default::default()
            };
            serde_json::to_value(loaded.summarizer.run(&TEXTS, &options).unwrap()).unwrap()
        }
        Job::Translate(target, generation) => {
            let mut options = TranslateOptions::new("en", target);
            options.generation = generation.clone();
            serde_json::to_value(loaded.translator.run(&TEXTS, &options).unwrap()).unwrap()
        }
        Job::SummarizeBart(generation) => {
            let options = SummarizeOptions {
                generation: generation.clone(),
                ..Default::default()
            };
            serde_json::to_value(loaded.bart.run(&TEXTS, &options).unwrap()).unwrap()
        }
        Job::TranslateMarian(generation) => {
            let mut options = TranslateOptions::model_pair();
            options.generation = generation.clone();
            serde_json::to_value(loaded.marian.run(&TEXTS, &options).unwrap()).unwrap()
        }
        Job::TranslateM2M100(target, generation) => {
            let mut options = TranslateOptions::new("fr", target);
            options.generation = generation.clone();
            serde_json::to_value(loaded.m2m100.run(&TEXTS, &options).unwrap()).unwrap()
        }
    }
}

#[test]
fn pipelines_are_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<TokenClassifier>();
    shareable::<TextClassifier>();
    shareable::<trident::bert::Embedder>();
    shareable::<TextGenerator>();
    shareable::<Summarizer>();
    shareable::<Translator>();
}

#[test]
fn four_threads_with_mixed_options_get_the_serial_results() {
    let loaded = Arc::new(load());
    let jobs = jobs();
    let serial: Vec<Value> = jobs.iter().map(|j| run(&loaded, j)).collect();
    // The options really differ: no two requests give the same output.
    for (i, a) in serial.iter().enumerate() {
        for b in &serial[i + 1..] {
            assert_ne!(
                a, b,
                "two jobs gave the same output; the test would prove less"
            );
        }
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (loaded, jobs) = (Arc::clone(&loaded), jobs.clone());
            std::thread::spawn(move || {
                // Each thread runs every job twice, in its own order (steps coprime with the
                // number of jobs), so that different requests overlap in time.
                let step = [1, 3, 5, 9][t];
                (0..2 * jobs.len())
                    .map(|k| {
                        let j = (k * step + 3 * t) % jobs.len();
                        (j, run(&loaded, &jobs[j]))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut checked = 0;
    for handle in threads {
        for (j, result) in handle.join().expect("a thread panicked") {
            if let Err(e) = json_close(&result, &serial[j], 1e-5) {
                panic!("job {j} differs when run concurrently: {e}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * 2 * jobs.len());
}
