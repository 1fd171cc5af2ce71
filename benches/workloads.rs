//! Trident's side of the benchmark (scripts/bench/run.py drives it, alternating with
//! transformers and CTranslate2): load a model, run one workload on fixed inputs, and print
//! one JSON line with the load time, the run time, the work done, the peak RSS and
//! `kernels`: which CPU kernel each projection shape ran, and the timings that chose it.
//!
//! ```sh
//! cargo bench --bench workloads -- WORKLOAD MODEL_DIR INPUTS.json [DTYPE]
//! ```
//! WORKLOAD: ner | classify | embed | t5-greedy | t5-beam4 | gpt2-greedy-b1 | gpt2-greedy-b8 |
//! gpt2-topp-b1 | marian-greedy | marian-beam4 | bart-beam4 | M-prefill512 | M-greedy-b1 |
//! M-greedy-b8 | M-topp-b1 with M = smollm2-360m | tinyllama-1.1b (the Llama-architecture
//! decoders of issue 12; `trident::generator` picks the family from config.json); DTYPE: f32
//! (default) | bf16 | int8. With `TRIDENT_BENCH_OUTPUT=FILE` the pipeline's results are also
//! written to FILE as JSON, for run.py to measure what bf16 and int8 change against f32.
//! `BENCH_SCALE=N` divides the number of new tokens by N (run.py --smoke: a check that a
//! workload runs, not a measurement).
//!
//! Without arguments (as `cargo test --all-targets` runs it), every workload but Marian and BART
//! (no tiny fixtures of them yet) runs once on the tiny fixtures in weights/ with a few new
//! tokens: a smoke check that the benchmark still works, not a measurement.

use std::time::Instant;
use trident::bert::{
    ClassifyOptions, EmbedOptions, Embedder, NerOptions, TextClassifier, TokenClassifier,
};
use trident::core::generation::GenerationConfig;
use trident::core::seq2seq::TranslateOptions;
use trident::core::{DeviceChoice, Dtype, LoadOptions, ModelFiles};
use trident::gpt::GenerateOptions;
use trident::t5::SummarizeOptions;

/// Peak resident memory of this process, from /proc (kB).
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn exact(new_tokens: usize, beams: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: Some(new_tokens),
        min_new_tokens: Some(new_tokens),
        num_beams: Some(beams),
        early_stopping: None,
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    // As the CLI does.
    trident::core::device::tune_allocator();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.as_slice() {
        [workload, model, inputs, dtype @ ..] if dtype.len() <= 1 => {
            let texts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(inputs)?)?;
            let dtype = match dtype.first() {
                Some(d) => d.parse()?,
                None => Dtype::F32,
            };
            // BENCH_SCALE=N divides the new tokens (a smoke check: run.py --smoke; never for
            // measurements).
            let scale = match std::env::var("BENCH_SCALE") {
                Ok(s) => s.parse()?,
                Err(_) => 1,
            };
            let (line, outputs) = run(workload, &ModelFiles::local(model)?, &texts, scale, dtype)?;
            if let Ok(path) = std::env::var("TRIDENT_BENCH_OUTPUT") {
                std::fs::write(path, outputs.to_string())?;
            }
            println!("{line}");
        }
        [] => smoke()?,
        _ => anyhow::bail!("usage: workloads WORKLOAD MODEL_DIR INPUTS.json [f32|bf16|int8]"),
    }
    Ok(())
}

/// The `{"token_ids", "texts"}` results of a seq2seq workload (one sequence per input), after
/// checking that every input fit the encoder whole, as it does for the peers.
fn seq2seq_outputs<'a>(
    workload: &str,
    results: impl Iterator<Item = (&'a [i64], &'a str, usize)>,
) -> anyhow::Result<serde_json::Value> {
    let (mut ids, mut texts) = (Vec::new(), Vec::new());
    for (i, (token_ids, text, chunks)) in results.enumerate() {
        anyhow::ensure!(
            chunks == 1,
            "{workload}: input {i} was split into {chunks} pieces"
        );
        ids.push(token_ids);
        texts.push(text);
    }
    Ok(serde_json::json!({ "token_ids": ids, "texts": texts }))
}

/// Every workload once on the tiny fixtures, with 8 new tokens instead of 64/128 (Marian and
/// BART: none yet, there is no tiny fixture of either in weights/).
fn smoke() -> anyhow::Result<()> {
    let texts = vec!["Angela Merkel met Emmanuel Macron in Berlin on Tuesday.".to_string(); 8];
    for (workload, fixture) in [
        ("ner", "bert-tiny-ner"),
        ("classify", "bert-tiny-sentiment"),
        ("embed", "bert-tiny-sentiment"),
        ("t5-greedy", "t5-tiny"),
        ("t5-beam4", "t5-tiny"),
        ("gpt2-greedy-b1", "gpt2-tiny"),
        ("gpt2-greedy-b8", "gpt2-tiny"),
        ("gpt2-topp-b1", "gpt2-tiny"),
        ("smollm2-360m-prefill512", "llama-tiny"),
        ("smollm2-360m-greedy-b1", "llama-tiny"),
        ("tinyllama-1.1b-greedy-b8", "llama-tiny"),
        ("tinyllama-1.1b-topp-b1", "llama-tiny"),
    ] {
        let files = ModelFiles::local(trident_testing::fixture_dir(fixture))?;
        for dtype in [Dtype::F32, Dtype::Int8] {
            let (line, _) = run(workload, &files, &texts, 16, dtype)?;
            anyhow::ensure!(
                line["units"].as_u64().unwrap_or(0) > 0,
                "{workload} ({dtype}): no work done"
            );
        }
    }
    println!("benchmark smoke check: every workload ran");
    Ok(())
}

/// The Llama-architecture models of issue 12's decoding benchmark (random weights of these
/// checkpoints' shapes, made by scripts/bench/make_models.py).
const LLAMA_MODELS: [&str; 2] = ["smollm2-360m", "tinyllama-1.1b"];

/// The kind of a Llama workload (`prefill512`, `greedy-b1`, `greedy-b8`, `topp-b1`), from its
/// name `<model>-<kind>`; None for any other workload.
fn llama_workload(workload: &str) -> Option<&str> {
    LLAMA_MODELS
        .iter()
        .find_map(|m| workload.strip_prefix(m)?.strip_prefix('-'))
        .filter(|kind| ["prefill512", "greedy-b1", "greedy-b8", "topp-b1"].contains(kind))
}

/// `f`'s result and how long it took, in seconds.
fn timed<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<(T, f64), E> {
    let t = Instant::now();
    let out = f()?;
    Ok((out, t.elapsed().as_secs_f64()))
}

/// The decoding part of a generation run: the steps after the first streamed piece, whose
/// time run.py sets against the memory-bandwidth bound of a step (the prefill before it is
/// bound by compute, and the first calls measure the kernels).
#[derive(Default)]
struct Decoding {
    /// Seconds from the first piece of the first sequence to the end of the run.
    seconds: f64,
    /// Steps in that time (new tokens of the first sequence after its first piece).
    steps: usize,
}

/// `p.run(prompts, options)`, timed, with its [`Decoding`].
fn timed_generation(
    p: &trident::core::causal::TextGenerator,
    prompts: &[&str],
    options: &GenerateOptions,
) -> anyhow::Result<(
    Vec<Vec<trident::core::causal::GeneratedText>>,
    f64,
    Decoding,
)> {
    let t = Instant::now();
    let mut first: Option<(Instant, usize)> = None;
    let out = p.run_streaming(prompts, options, &mut |piece| {
        if piece.input == 0 && piece.sequence == 0 && first.is_none() {
            first = Some((Instant::now(), piece.tokens));
        }
        Ok(())
    })?;
    let run = t.elapsed().as_secs_f64();
    let decoding = match (first, out.first().and_then(|o| o.first())) {
        (Some((at, tokens)), Some(s)) => Decoding {
            seconds: at.elapsed().as_secs_f64(),
            steps: s.generated_tokens.saturating_sub(tokens),
        },
        _ => Decoding::default(),
    };
    Ok((out, run, decoding))
}

/// Run one workload in `dtype`; `scale` divides the number of new tokens (1 for real
/// measurements). Returns the measurement line and the pipeline's results.
fn run(
    workload: &str,
    files: &ModelFiles,
    texts: &[String],
    scale: usize,
    dtype: Dtype,
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let load_options = LoadOptions {
        device: DeviceChoice::Cpu,
        dtype,
    };
    let (t5_new, gpt_new, marian_new) = (64 / scale, 128 / scale, 32 / scale);
    let start = Instant::now();
    // Each arm: load (timed as load), then run (timed as run); returns units of work done.
    // The generation arms also time their decoding steps apart.
    let mut decode = Decoding::default();
    let (load_s, run_s, units, unit, outputs) = match workload {
        "ner" => {
            let p = TokenClassifier::from_pretrained(files, &load_options)?;
            let load = start.elapsed().as_secs_f64();
            let options = NerOptions {
                batch_size: 8,
                ..Default::default()
            };
            let (out, run) = timed(|| p.run(&refs, &options))?;
            (
                load,
                run,
                p.tokens_processed(),
                "tokens",
                serde_json::to_value(out)?,
            )
        }
        "classify" => {
            let p = TextClassifier::from_pretrained(files, &load_options)?;
            let load = start.elapsed().as_secs_f64();
            let options = ClassifyOptions {
                batch_size: 32,
                ..Default::default()
            };
            let (out, run) = timed(|| p.run(&refs, &options))?;
            (
                load,
                run,
                refs.len(),
                "sentences",
                serde_json::to_value(out)?,
            )
        }
        "embed" => {
            let p = Embedder::from_pretrained(files, &load_options)?;
            let load = start.elapsed().as_secs_f64();
            let options = EmbedOptions { batch_size: 32 };
            let (out, run) = timed(|| p.run(&refs, &options))?;
            (
                load,
                run,
                refs.len(),
                "sentences",
                serde_json::to_value(out)?,
            )
        }
        "t5-greedy" | "t5-beam4" => {
            let beams = if workload == "t5-beam4" { 4 } else { 1 };
            let p = trident::summarizer(files, &load_options)?;
            let load = start.elapsed().as_secs_f64();
            let options = SummarizeOptions {
                generation: exact(t5_new, beams),
                batch_size: refs.len(),
                ..Default::default()
            };
            let (out, run) = timed(|| p.run(&refs, &options))?;
            // Random weights mostly generate T5's sentinel tokens, which decode to nothing:
            // the ids are what to compare.
            let ids: Vec<&Vec<i64>> = out.iter().map(|s| &s[0].token_ids).collect();
            (
                load,
                run,
                refs.len() * t5_new,
                "new tokens",
                serde_json::json!({ "token_ids": ids }),
            )
        }
        "gpt2-greedy-b1" | "gpt2-greedy-b8" | "gpt2-topp-b1" => {
            let batch = if workload == "gpt2-greedy-b8" { 8 } else { 1 };
            let mut generation = exact(gpt_new, 1);
            if workload == "gpt2-topp-b1" {
                generation.do_sample = Some(true);
                generation.top_p = Some(0.9);
                generation.top_k = Some(0);
                generation.seed = Some(0);
            }
            let p = trident::generator(files, &load_options)?;
            let load = start.elapsed().as_secs_f64();
            let options = GenerateOptions {
                batch_size: batch,
                generation,
                ..Default::default()
            };
            let (out, run, decoding) = timed_generation(&p, &refs[..batch], &options)?;
            decode = decoding;
            (
                load,
                run,
                batch * gpt_new,
                "new tokens",
                serde_json::to_value(out)?,
            )
        }
        w if llama_workload(w).is_some() => {
            // As GPT-2's workloads: a 32-token prompt (BOS included), exactly 128 new tokens
            // (min = max), greedy at batch 1 and 8 or top-p 0.9 (top-k off, temperature 1) at
            // batch 1. Prefill: one 512-token prompt and 1 new token, measured in prompt tokens.
            let kind = llama_workload(w).unwrap_or_default();
            let prefill = kind == "prefill512";
            let batch = if kind == "greedy-b8" { 8 } else { 1 };
            let new_tokens = if prefill { 1 } else { gpt_new };
            let mut generation = exact(new_tokens, 1);
            if kind == "topp-b1" {
                generation.do_sample = Some(true);
                generation.top_p = Some(0.9);
                generation.top_k = Some(0);
                generation.temperature = Some(1.0);
                generation.seed = Some(0);
            }
            let p = trident::generator(files, &load_options)?;
            let load = start.elapsed().as_secs_f64();
            let options = GenerateOptions {
                batch_size: batch,
                generation,
                ..Default::default()
            };
            let (out, run, decoding) = timed_generation(&p, &refs[..batch], &options)?;
            decode = decoding;
            for (i, s) in out.iter().enumerate() {
                anyhow::ensure!(
                    s[0].generated_tokens == new_tokens,
                    "{workload}: prompt {i} got {} new tokens, not {new_tokens}",
                    s[0].generated_tokens
                );
            }
            let (units, unit) = if prefill {
                // The prompt as the model reads it (BOS included), counted outside the timing.
                (p.tokenizer().encode(refs[0])?.len(), "prompt tokens")
            } else {
                (batch * new_tokens, "new tokens")
            };
            (load, run, units, unit, serde_json::to_value(out)?)
        }
        "marian-greedy" | "marian-beam4" => {
            let beams = if workload == "marian-beam4" { 4 } else { 1 };
            let p = trident::translator(files, &load_options)?;
            let load = start.elapsed().as_secs_f64();
            // All 64 sentences in one batch, as OPUS-MT's model card (one padded `generate`)
            // and CTranslate2's `translate_batch` run them.
            let options = TranslateOptions {
                generation: exact(marian_new, beams),
                batch_size: refs.len(),
                ..TranslateOptions::model_pair()
            };
            let (out, run) = timed(|| p.run(&refs, &options))?;
            let outputs = seq2seq_outputs(
                workload,
                out.iter().map(|t| {
                    let t = &t[0];
                    (&t.token_ids[..], t.translation_text.as_str(), t.chunks)
                }),
            )?;
            (load, run, refs.len() * marian_new, "new tokens", outputs)
        }
        "bart-beam4" => {
            let p = trident::summarizer(files, &load_options)?;
            let load = start.elapsed().as_secs_f64();
            let options = SummarizeOptions {
                generation: exact(t5_new, 4),
                batch_size: refs.len(),
                ..Default::default()
            };
            let (out, run) = timed(|| p.run(&refs, &options))?;
            let outputs = seq2seq_outputs(
                workload,
                out.iter().map(|s| {
                    let s = &s[0];
                    (&s.token_ids[..], s.summary_text.as_str(), s.chunks)
                }),
            )?;
            (load, run, refs.len() * t5_new, "new tokens", outputs)
        }
        other => anyhow::bail!("unknown workload {other}"),
    };
    let line = serde_json::json!({
        "system": "trident", "dtype": dtype.to_string(), "workload": workload, "load_s": load_s,
        "run_s": run_s, "units": units, "unit": unit, "peak_rss_kb": peak_rss_kb(),
        // Decoding apart (generation only): seconds and steps after the first new token.
        "decode_s": decode.seconds, "decode_steps": decode.steps,
        "threads": tch::get_num_threads(),
        // Which kernel each projection shape took, and why (measured timings or the policy).
        "kernels": trident::core::nn::kernels::report()
            .iter()
            .map(ToString::to_string)
            .chain(trident::core::nn::panels::report())
            .collect::<Vec<_>>(),
        // Decoding steps run in one parallel region with helpers (`parallel::decoding_step`).
        "helped_steps": trident::core::nn::parallel::helped_steps(),
    });
    Ok((line, outputs))
}
