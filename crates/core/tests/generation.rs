//! The generation engine on a toy decoder whose next-token distribution is a fixed function of
//! the sequence so far, so that every expected result can be computed independently here
//! (argmax paths, exhaustive search) rather than taken from the engine.

use std::cell::Cell;
use tch::{Device, Tensor};
use trident_core::config::TokenIds;
use trident_core::generation::{
    generate, generate_with, EarlyStopping, GenerationConfig, Hooks, Token,
};
use trident_core::text::tensor_to_rows;
use trident_core::{Batch, Encoded, PaddingSide, Result};

const VOCAB: usize = 6;
const EOS: i64 = 1;
const PAD: i64 = 0;

/// Log-probabilities of the next token after `row`: a fixed pseudo-random function of the
/// row's length, last token and sum.
fn next_log_probs(row: &[i64]) -> Vec<f64> {
    let last = *row.last().unwrap_or(&0) as u64;
    let sum: i64 = row.iter().sum();
    let raw: Vec<f64> = (0..VOCAB as u64)
        .map(|j| {
            let h =
                (last * 31 + row.len() as u64 * 17 + sum as u64 * 7 + j * 13 + j * j * 5) as f64;
            // A hash with continuous values, so that scores practically never tie.
            ((h * 12.9898).sin() * 43_758.545).fract() * 4.0
        })
        .collect();
    let max = raw.iter().cloned().fold(f64::MIN, f64::max);
    let log_z = raw.iter().map(|x| (x - max).exp()).sum::<f64>().ln() + max;
    raw.iter().map(|x| x - log_z).collect()
}

/// A decoder-only toy: the state is the rows so far.
struct Toy {
    starts: Cell<usize>,
}

impl Toy {
    fn new() -> Self {
        Toy {
            starts: Cell::new(0),
        }
    }
}

impl trident_core::generation::Decoder for Toy {
    type State = Vec<Vec<i64>>;

    fn initial_ids(&self, batch: &Batch) -> Result<Tensor> {
        Ok(batch.input_ids.shallow_clone())
    }

    fn start(&self, batch: &Batch) -> Result<Self::State> {
        self.starts.set(self.starts.get() + 1);
        Ok(vec![Vec::new(); batch.len()])
    }

    fn step(&self, ids: &Tensor, state: &mut Self::State) -> Result<Tensor> {
        let new = tensor_to_rows(ids)?;
        assert_eq!(new.len(), state.len(), "one row of ids per state row");
        let mut out = Vec::new();
        for (row, ids) in state.iter_mut().zip(new) {
            row.extend(ids);
            out.extend(next_log_probs(row).into_iter().map(|x| x as f32));
        }
        Ok(Tensor::from_slice(&out).view([state.len() as i64, VOCAB as i64]))
    }

    fn reorder(&self, state: &mut Self::State, beam_idx: &Tensor) -> Result<()> {
        let idx = Vec::<i64>::try_from(beam_idx)?;
        *state = idx.iter().map(|&i| state[i as usize].clone()).collect();
        Ok(())
    }
}

fn batch(prompts: &[&[i64]]) -> Batch {
    let encodings = prompts
        .iter()
        .map(|p| Encoded {
            ids: p.to_vec(),
            type_ids: vec![0; p.len()],
            ..Default::default()
        })
        .collect();
    Batch::new(encodings, PAD, PaddingSide::Left, Device::Cpu).unwrap()
}

/// The toy's checkpoint settings (EOS and PAD) with the caller's options `o` on top.
fn config(o: GenerationConfig) -> GenerationConfig {
    GenerationConfig {
        eos_token_id: Some(TokenIds::One(EOS)),
        pad_token_id: Some(TokenIds::One(PAD)),
        ..Default::default()
    }
    .merge(&o)
}

fn greedy_reference(prompt: &[i64], max_new: usize) -> Vec<i64> {
    let mut row = prompt.to_vec();
    for _ in 0..max_new {
        let lp = next_log_probs(&row);
        let best = (0..VOCAB).fold(0, |b, j| if lp[j] > lp[b] { j } else { b });
        row.push(best as i64);
        if best as i64 == EOS {
            break;
        }
    }
    row
}

#[test]
fn greedy_follows_the_argmax_and_pads_finished_rows() {
    let prompts: [&[i64]; 3] = [&[2, 3], &[4, 4], &[5, 2]];
    let cfg = config(GenerationConfig {
        max_new_tokens: Some(6),
        ..Default::default()
    });
    let out = generate(&Toy::new(), &batch(&prompts), &cfg).unwrap();
    let width = out.iter().map(|s| s.ids.len()).max().unwrap();
    assert!(
        width >= 5,
        "a row runs for 3 tokens or more, so padding shows"
    );
    assert!(out.iter().any(|s| s.len < width), "a row ends early");
    for (p, s) in prompts.iter().zip(&out) {
        let expected = greedy_reference(p, 6);
        assert_eq!(&s.ids[..s.len], &expected[..]);
        assert_eq!(s.ids.len(), width, "rows share one width");
        assert!(s.ids[s.len..].iter().all(|&t| t == PAD));
        assert_eq!(s.generated(), &expected[2..]);
    }
}

#[test]
fn a_row_alone_equals_the_row_in_a_batch() {
    let prompts: [&[i64]; 2] = [&[2, 3], &[5, 2]];
    let cfg = config(GenerationConfig {
        max_new_tokens: Some(5),
        num_beams: Some(3),
        ..Default::default()
    });
    let together = generate(&Toy::new(), &batch(&prompts), &cfg).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let alone = generate(&Toy::new(), &batch(&[p]), &cfg).unwrap();
        assert_eq!(alone[0].generated(), together[i].generated());
        assert_eq!(alone[0].score, together[i].score);
    }
}

/// Every continuation of `prompt` up to `max_new` tokens (stopping at EOS) with its total
/// log-probability.
fn all_continuations(prompt: &[i64], max_new: usize) -> Vec<(Vec<i64>, f64)> {
    let mut done = Vec::new();
    let mut open = vec![(prompt.to_vec(), 0.0)];
    for step in 0..max_new {
        let mut next = Vec::new();
        for (row, score) in open {
            let lp = next_log_probs(&row);
            for (j, l) in lp.iter().enumerate() {
                let mut r = row.clone();
                r.push(j as i64);
                if j as i64 == EOS || step + 1 == max_new {
                    done.push((r, score + l));
                } else {
                    next.push((r, score + l));
                }
            }
        }
        open = next;
    }
    done
}

#[test]
fn wide_beam_search_finds_the_exhaustive_optimum() {
    // With as many beams as partial sequences, no length penalty and early_stopping "never",
    // beam search is exhaustive: its best hypothesis is the most probable continuation.
    let prompt: &[i64] = &[2, 3];
    let max_new = 3;
    let mut all = all_continuations(prompt, max_new);
    all.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let cfg = config(GenerationConfig {
        max_new_tokens: Some(max_new),
        num_beams: Some(VOCAB * VOCAB * VOCAB),
        num_return_sequences: Some(3),
        length_penalty: Some(0.0),
        early_stopping: Some(EarlyStopping::Never),
        ..Default::default()
    });
    let out = generate(&Toy::new(), &batch(&[prompt]), &cfg).unwrap();
    assert_eq!(out.len(), 3);
    assert!(all[0].1 - all[1].1 > 1e-3 && all[1].1 - all[2].1 > 1e-3 && all[2].1 - all[3].1 > 1e-3);
    for (s, (expected, score)) in out.iter().zip(&all) {
        assert_eq!(&s.ids[..s.len], &expected[..]);
        assert!(
            (s.score.unwrap() - score).abs() < 1e-4,
            "{:?} vs {score}",
            s.score
        );
    }
}

#[test]
fn narrow_beams_rank_by_length_penalised_score() {
    let prompt: &[i64] = &[4, 4];
    for (lp, early) in [
        (1.0, EarlyStopping::WhenBeamsFull),
        (2.0, EarlyStopping::Heuristic),
        (-0.5, EarlyStopping::Never),
    ] {
        let cfg = config(GenerationConfig {
            max_new_tokens: Some(6),
            num_beams: Some(3),
            num_return_sequences: Some(3),
            length_penalty: Some(lp),
            early_stopping: Some(early),
            ..Default::default()
        });
        let out = generate(&Toy::new(), &batch(&[prompt]), &cfg).unwrap();
        let mut last = f64::INFINITY;
        for s in &out {
            // The reported score is the sequence's own log-probability over its length^lp.
            let mut logp = 0.0;
            for i in prompt.len()..s.len {
                logp += next_log_probs(&s.ids[..i])[s.ids[i] as usize];
            }
            let expected = logp / ((s.len - prompt.len()) as f64).powf(lp);
            let score = s.score.unwrap();
            assert!((score - expected).abs() < 1e-4, "{score} vs {expected}");
            assert!(score <= last, "sequences come best first");
            last = score;
            let ended = s.ids[s.len - 1] == EOS || s.len == prompt.len() + 6;
            assert!(ended, "{:?}", s.ids);
        }
    }
}

#[test]
fn max_new_tokens_zero_returns_the_inputs_without_running_the_model() {
    let toy = Toy::new();
    let cfg = config(GenerationConfig {
        max_new_tokens: Some(0),
        ..Default::default()
    });
    let out = generate(&toy, &batch(&[&[2, 3]]), &cfg).unwrap();
    assert_eq!(out[0].ids, vec![2, 3]);
    assert!(out[0].generated().is_empty());
    assert_eq!(toy.starts.get(), 0);
}

#[test]
fn bad_options_are_clear_errors() {
    let b = batch(&[&[2, 3]]);
    let err = |o: GenerationConfig| {
        generate(&Toy::new(), &b, &config(o))
            .unwrap_err()
            .to_string()
    };
    let e = err(GenerationConfig {
        num_beams: Some(0),
        ..Default::default()
    });
    assert!(e.contains("num_beams must be at least 1"), "{e}");
    let e = err(GenerationConfig {
        do_sample: Some(true),
        top_p: Some(1.5),
        ..Default::default()
    });
    assert!(e.contains("top_p must be in (0, 1]"), "{e}");
    let e = err(GenerationConfig {
        do_sample: Some(true),
        temperature: Some(0.0),
        ..Default::default()
    });
    assert!(e.contains("temperature") && e.contains("greedy"), "{e}");
    let e = err(GenerationConfig {
        stop_strings: Some(vec!["x".into()]),
        ..Default::default()
    });
    assert!(e.contains("detokenize"), "{e}");
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let b = batch(&[&[2, 3], &[5, 2]]);
    let run = |seed| {
        let cfg = config(GenerationConfig {
            max_new_tokens: Some(12),
            do_sample: Some(true),
            temperature: Some(1.5),
            top_k: Some(0),
            num_return_sequences: Some(4),
            seed: Some(seed),
            ..Default::default()
        });
        generate(&Toy::new(), &b, &cfg)
            .unwrap()
            .into_iter()
            .map(|s| s.ids)
            .collect::<Vec<_>>()
    };
    let first = run(42);
    assert_eq!(first.len(), 8, "4 samples for each of 2 inputs");
    assert_eq!(first, run(42));
    assert_ne!(first, run(43));
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert!(distinct.len() > 2, "samples should differ: {first:?}");
}

#[test]
fn greedy_sampling_with_top_k_1_is_greedy() {
    let cfg = config(GenerationConfig {
        max_new_tokens: Some(6),
        do_sample: Some(true),
        top_k: Some(1),
        ..Default::default()
    });
    let out = generate(&Toy::new(), &batch(&[&[2, 3]]), &cfg).unwrap();
    assert_eq!(&out[0].ids[..out[0].len], &greedy_reference(&[2, 3], 6)[..]);
}

#[test]
fn streaming_reports_every_generated_token_in_order() {
    for beams in [1, 3] {
        let cfg = config(GenerationConfig {
            max_new_tokens: Some(6),
            num_beams: Some(beams),
            ..Default::default()
        });
        let mut seen: Vec<Token> = Vec::new();
        let mut collect = |t: Token| {
            seen.push(t);
            Ok(())
        };
        let out = generate_with(
            &Toy::new(),
            &batch(&[&[2, 3], &[4, 4]]),
            &cfg,
            Hooks {
                on_token: Some(&mut collect),
                detokenize: None,
            },
        )
        .unwrap();
        for (i, s) in out.iter().enumerate() {
            let streamed: Vec<i64> = seen
                .iter()
                .filter(|t| t.sequence == i)
                .map(|t| t.id)
                .collect();
            assert_eq!(streamed, s.generated(), "beams {beams}, sequence {i}");
        }
    }
}

#[test]
fn stop_strings_end_a_sequence_once_its_text_contains_them() {
    let letters = |ids: &[i64]| -> Result<String> {
        Ok(ids.iter().map(|&i| (b'a' + i as u8) as char).collect())
    };
    // A prompt whose greedy continuation runs for at least 3 tokens.
    let prompt: Vec<i64> = (2..VOCAB as i64)
        .flat_map(|a| (2..VOCAB as i64).map(move |b| vec![a, b]))
        .find(|p| greedy_reference(p, 8).len() >= p.len() + 3)
        .expect("some prompt runs for 3 tokens");
    let prompt = &prompt[..];
    let free = greedy_reference(prompt, 8);
    let stop = letters(&free[prompt.len() + 1..prompt.len() + 3]).unwrap();
    for beams in [1, 2] {
        let cfg = config(GenerationConfig {
            max_new_tokens: Some(8),
            num_beams: Some(beams),
            stop_strings: Some(vec![stop.clone()]),
            ..Default::default()
        });
        let out = generate_with(
            &Toy::new(),
            &batch(&[prompt]),
            &cfg,
            Hooks {
                on_token: None,
                detokenize: Some(&letters),
            },
        )
        .unwrap();
        let text = letters(out[0].generated()).unwrap();
        if beams == 1 {
            assert_eq!(out[0].generated(), &free[prompt.len()..prompt.len() + 3]);
        }
        assert!(
            text.ends_with(&stop) || out[0].generated().ends_with(&[EOS]) || text.len() == 8,
            "{text} (stop {stop})"
        );
    }
}

#[test]
fn processors_apply_in_generation() {
    // no_repeat_ngram_size 1 forbids any token twice among prompt and output.
    let cfg = config(GenerationConfig {
        max_new_tokens: Some(3),
        no_repeat_ngram_size: Some(1),
        ..Default::default()
    });
    let out = generate(&Toy::new(), &batch(&[&[2, 3]]), &cfg).unwrap();
    let row = &out[0].ids[..out[0].len];
    let distinct: std::collections::HashSet<_> = row.iter().collect();
    assert_eq!(distinct.len(), row.len(), "{row:?}");
    // min_new_tokens keeps EOS away; bad words keep a token away.
    let cfg = config(GenerationConfig {
        max_new_tokens: Some(5),
        min_new_tokens: Some(5),
        bad_words_ids: Some(vec![vec![3]]),
        ..Default::default()
    });
    let out = generate(&Toy::new(), &batch(&[&[2, 3]]), &cfg).unwrap();
    let generated = out[0].generated();
    assert_eq!(generated.len(), 5);
    assert!(
        !generated.contains(&EOS) && !generated.contains(&3),
        "{generated:?}"
    );
}
