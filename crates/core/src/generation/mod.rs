//! The one generation engine: every decoder (T5, GPT-2) implements [`Decoder`], and
//! [`generate`] turns it into text ids with greedy search, sampling or beam search, the
//! logits processors of [`logits`], stop conditions and streaming ([`stream`]).
//! [`continuous`] runs the same search step by step over a batch that decoder-only
//! sequences join and leave (a server's continuous batching).
//!
//! The engine reproduces transformers' `generate`: the same defaults, the same processors in
//! the same order, the same beam bookkeeping, so that a checkpoint gives the same ids here as
//! there. The model only answers "what are the next-token logits"; it keeps its caches in a
//! state the engine owns and reorders.

pub mod config;
pub mod continuous;
pub mod logits;
pub mod search;
pub mod state;
pub mod stream;

pub use config::{bad_words_ids, EarlyStopping, GenerationConfig};
pub use continuous::{Admission, ContinuousBatch, Event};
pub use logits::LogitsProcessor;
pub use state::{
    CausalLm, CausalLmDecoder, CausalLmState, Seq2SeqDecoder, Seq2SeqLm, Seq2SeqState,
};
pub use stream::{Hooks, Token};

use crate::text::{tensor_to_rows, Batch};
use crate::Result;
use stream::StopStrings;
use tch::Tensor;

/// A model that predicts the next token, step by step.
pub trait Decoder {
    /// What the model carries from step to step: KV caches, masks, and for an
    /// encoder-decoder model the encoder output.
    type State;

    /// The ids every output sequence starts with, `[batch, n]`: the decoder start token of
    /// an encoder-decoder model, the (left-padded) prompt of a decoder-only one. Generation
    /// continues them, and `max_new_tokens` counts from their end.
    fn initial_ids(&self, batch: &Batch) -> Result<Tensor>;

    /// Prepare the state for `batch` (T5 runs its encoder here, once).
    fn start(&self, batch: &Batch) -> Result<Self::State>;

    /// Logits of the next token, `[rows, vocab]`, given `ids` `[rows, n]`: the initial ids
    /// on the first step, then the one token chosen last step.
    fn step(&self, ids: &Tensor, state: &mut Self::State) -> Result<Tensor>;

    /// Reorder the state's rows: row `i` becomes the old row `beam_idx[i]` (`[rows]` int64).
    ///
    /// The engine calls it once, before the first step, to repeat each input for its beams or
    /// returned sequences on consecutive rows (`beam_idx` = `[0, 0, 0, 1, 1, 1, …]`, longer
    /// than the current rows); after that, reorders keep the number of rows and only move rows
    /// among the copies of one input. State that is the same for every copy of an input (an
    /// encoder output, cross-attention keys and values) may therefore be kept once per input
    /// and left alone by those (T5 does).
    fn reorder(&self, state: &mut Self::State, beam_idx: &Tensor) -> Result<()>;

    /// A hint, given once after [`Decoder::start`]: no row will hold more than `positions`
    /// positions (initial ids and new tokens fed back) in this run, so caches may stop growing
    /// there. The default ignores it.
    fn plan(&self, _state: &mut Self::State, _positions: usize) {}
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// The index, in the batch, of the input this sequence answers.
    pub input: usize,
    /// The row as transformers' `generate` returns it: the initial ids, the new tokens, then
    /// filler up to the longest sequence of the run.
    pub ids: Vec<i64>,
    /// How many leading ids were given (decoder start token or prompt).
    pub prompt_len: usize,
    /// `ids[..len]` are real: the initial ids and the new tokens, EOS included.
    pub len: usize,
    /// Beam search's score (`sum log p / generated_len^length_penalty`); None otherwise.
    pub score: Option<f64>,
}

impl Sequence {
    /// The new tokens (EOS included when one was generated).
    pub fn generated(&self) -> &[i64] {
        &self.ids[self.prompt_len.min(self.len)..self.len]
    }
}

/// Generate for every input of `batch`; `num_return_sequences` sequences per input, in
/// input order.
pub fn generate<D: Decoder + ?Sized>(
    decoder: &D,
    batch: &Batch,
    config: &GenerationConfig,
) -> Result<Vec<Sequence>> {
    generate_with(decoder, batch, config, Hooks::default())
}

/// [`generate`] with a streaming callback and/or a detokenizer for stop strings.
///
/// `max_new_tokens` 0 returns the initial ids unchanged, without running the model.
pub fn generate_with<D: Decoder + ?Sized>(
    decoder: &D,
    batch: &Batch,
    config: &GenerationConfig,
    mut hooks: Hooks,
) -> Result<Vec<Sequence>> {
    config.validate()?;
    let stops = StopStrings::new(
        config.stop_strings.as_deref().unwrap_or(&[]),
        hooks.detokenize,
    )?;
    let initial = decoder.initial_ids(batch)?;
    let device = initial.device();
    let rows = tensor_to_rows(&initial)?;
    let prompt_len = rows.first().map_or(0, Vec::len);
    let max_len = config.max_total_length(prompt_len);
    let copies = config.num_return_sequences();
    if max_len <= prompt_len {
        return Ok((0..rows.len() * copies)
            .map(|i| Sequence {
                input: i / copies,
                ids: rows[i / copies].clone(),
                prompt_len,
                len: prompt_len,
                score: None,
            })
            .collect());
    }
    let mut state = decoder.start(batch)?;
    // The last token is never fed back: a row caches at most `max_len - 1` positions.
    decoder.plan(&mut state, max_len - 1);
    // Each input is repeated, one row per beam (beam search) or per returned sequence.
    let repeat = if config.num_beams() > 1 {
        config.num_beams()
    } else {
        copies
    };
    if repeat > 1 {
        let idx: Vec<i64> = (0..rows.len() as i64)
            .flat_map(|i| std::iter::repeat_n(i, repeat))
            .collect();
        decoder.reorder(&mut state, &Tensor::f_from_slice(&idx)?.f_to(device)?)?;
    }
    if config.num_beams() > 1 {
        search::beam_search(
            decoder, &mut state, rows, config, max_len, device, &mut hooks, &stops,
        )
    } else {
        let inputs: Vec<usize> = (0..rows.len() * copies).map(|i| i / copies).collect();
        let rows = inputs.iter().map(|&i| rows[i].clone()).collect();
        search::greedy_or_sample(
            decoder, &mut state, rows, inputs, config, max_len, device, &mut hooks, &stops,
        )
    }
}
