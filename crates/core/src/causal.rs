//! Text generation with any decoder-only model (GPT-2, the Llama family): a prompt in, its
//! continuation out, as transformers' `TextGenerationPipeline` returns it: `{"generated_text": prompt + continuation}` per
//! returned sequence, or only the continuation with `return_full_text = false`.
//!
//! Choices, where transformers leaves room:
//! - Defaults: the checkpoint's generation_config.json (or config.json), then the pipeline's
//!   `max_new_tokens = 256` when neither the checkpoint nor the caller sets a length (at most
//!   half the context, so that a small model keeps room for its prompt), then the caller's
//!   options. Search is greedy unless sampling is asked for (transformers' pipeline
//!   samples by default; a command-line tool should give the same answer twice). When
//!   sampling, the temperature is 0.7 unless set, as in transformers' pipeline.
//! - A prompt longer than the context leaves no room to generate: it is **left-truncated**,
//!   keeping its last `context − max_new_tokens` tokens (the ones the continuation depends
//!   on most), with a warning. The returned full text still starts with the whole prompt.
//!   Asking for `max_new_tokens ≥ context` is an error: no prompt would fit.
//! - An empty prompt starts from the BOS token, as transformers' pipeline does.
//! - With [`GenerateOptions::show_probs`], each generated token comes with the model's
//!   probabilities (softmax of its logits, before temperature, top-k/top-p or penalties) for
//!   the K most probable next tokens.

use crate::generation::{
    self, bad_words_ids, CausalLm, CausalLmDecoder, CausalLmState, Decoder, GenerationConfig,
    Hooks, Sequence, Token,
};
use crate::text::{Batch, PaddingSide};
use crate::{Encoded, Error, ModelFiles, Result, TextEncoder};
use serde::Serialize;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::{Device, Kind, Tensor};

/// Any decoder-only model, chosen at run time from the checkpoint's `model_type` (the
/// `trident` crate's `generator()` picks the family).
pub type AnyCausalLm = Box<dyn CausalLm + Send + Sync>;

/// New tokens when neither the checkpoint nor the caller gives a length (transformers'
/// text-generation pipeline default).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// Sampling temperature when sampling is asked for without one (transformers' pipeline default).
pub const DEFAULT_SAMPLING_TEMPERATURE: f64 = 0.7;

/// One call's options of a [`TextGenerator`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Prompts generated together (left-padded into one batch).
    pub batch_size: usize,
    /// Generation settings over the checkpoint's and the pipeline's defaults.
    pub generation: GenerationConfig,
    /// Return the prompt followed by the continuation (true, transformers' default) or only
    /// the continuation.
    pub return_full_text: bool,
    /// Record, for every generated token, the K most probable next tokens with their
    /// probabilities (greedy search and sampling only).
    pub show_probs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            batch_size: 8,
            generation: GenerationConfig::default(),
            return_full_text: true,
            show_probs: None,
        }
    }
}

/// One candidate next token with its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenProb {
    /// The token as text.
    pub token: String,
    /// Its id.
    pub id: i64,
    /// Its probability under the model (softmax over the vocabulary).
    pub probability: f32,
}

/// One generation step as [`GenerateOptions::show_probs`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepProbs {
    /// The token that was chosen, as text.
    pub token: String,
    /// Its id.
    pub id: i64,
    /// Its probability under the model.
    pub probability: f32,
    /// The K most probable tokens, most probable first.
    pub top: Vec<TokenProb>,
}

/// One generated text, serialized as transformers prints it: `{"generated_text": …}` (plus
/// `steps` when probabilities were asked for).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedText {
    /// The prompt and its continuation, or only the continuation.
    pub generated_text: String,
    /// Per generated token, the most probable candidates ([`GenerateOptions::show_probs`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepProbs>>,
    /// Tokens generated (EOS included).
    #[serde(skip)]
    pub generated_tokens: usize,
    /// Whether the prompt was left-truncated to fit the context.
    #[serde(skip)]
    pub prompt_truncated: bool,
}

/// A piece of text just produced, for streaming.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// Which prompt (index into the prompts given to [`TextGenerator::run_streaming`]).
    pub input: usize,
    /// Which of that prompt's returned sequences.
    pub sequence: usize,
    /// New text; empty while a token holds only part of a UTF-8 character (then it comes with
    /// a later piece).
    pub text: &'a str,
    /// The step's probabilities, when asked for.
    pub step: Option<&'a StepProbs>,
}

/// Generates text with a decoder-only checkpoint. Loaded once, it serves any number of calls, from
/// any number of threads, each with its own [`GenerateOptions`].
pub struct TextGenerator {
    model: AnyCausalLm,
    tokenizer: TextEncoder,
    /// The checkpoint's generation settings with the pipeline's defaults over them.
    defaults: GenerationConfig,
    /// Positions the model has (GPT-2's `n_positions`, Llama's `max_position_embeddings`).
    context: usize,
    /// The token an empty prompt starts from.
    bos: Option<i64>,
    tokens: AtomicUsize,
}

impl TextGenerator {
    /// Wrap a loaded `model` of `context` positions with the tokenizer and generation settings
    /// of `files`; an empty prompt starts from `bos`. (The family crates' `generator()` and
    /// the `trident` crate's load the model.)
    pub fn new(
        model: AnyCausalLm,
        files: &ModelFiles,
        context: usize,
        bos: Option<i64>,
    ) -> Result<Self> {
        let checkpoint = GenerationConfig::from_checkpoint(files, None)?;
        let tokenizer = TextEncoder::from_files(files)?;
        // The pipeline's defaults, under the checkpoint's own values.
        let pipeline = GenerationConfig {
            max_new_tokens: (checkpoint.max_length.is_none()
                && checkpoint.max_new_tokens.is_none())
            .then_some(DEFAULT_MAX_NEW_TOKENS.min(context / 2)),
            temperature: Some(DEFAULT_SAMPLING_TEMPERATURE),
            ..Default::default()
        };
        let defaults = pipeline.merge(&checkpoint);
        Ok(TextGenerator {
            model,
            tokenizer,
            defaults,
            context,
            bos,
            tokens: AtomicUsize::new(0),
        })
    }

    /// The model.
    pub fn model(&self) -> &(dyn CausalLm + Send + Sync) {
        &*self.model
    }

    /// Positions the model has: prompt and continuation together.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The token an empty prompt starts from, when the model has one.
    pub fn bos_id(&self) -> Option<i64> {
        self.bos
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextEncoder {
        &self.tokenizer
    }

    /// The settings a call with `options` runs with: the checkpoint's, the pipeline's
    /// defaults (see the module documentation), then the caller's. Invalid settings are
    /// errors here, naming the field.
    pub fn settings(&self, options: &GenerateOptions) -> Result<GenerationConfig> {
        if options.batch_size == 0 {
            return Err(Error::Input("batch_size must be at least 1".into()));
        }
        let mut generation = self.defaults.merge(&options.generation);
        if let Some(words) = &options.generation.bad_words {
            let mut ids = generation.bad_words_ids.take().unwrap_or_default();
            ids.extend(bad_words_ids(words, &self.tokenizer)?);
            generation.bad_words_ids = Some(ids);
        }
        generation.validate()?;
        match options.show_probs {
            Some(0) => {
                return Err(Error::Input(
                    "show_probs must be at least 1 (the number of candidates to show)".into(),
                ))
            }
            Some(_) if generation.num_beams() > 1 => {
                return Err(Error::Input(
                    "show_probs needs greedy search or sampling: beam search decides which \
                     tokens survive only at the end (drop num_beams)"
                        .into(),
                ))
            }
            _ => {}
        }
        Ok(generation)
    }

    /// The longest prompt in tokens for `generation`: the context minus the tokens to
    /// generate; an error when nothing would fit.
    pub fn max_prompt_tokens(&self, generation: &GenerationConfig) -> Result<usize> {
        prompt_room(generation, self.context)
    }

    /// Tokens read and generated so far, over every call (for throughput summaries).
    pub fn tokens_processed(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Tokenize a prompt: an empty one becomes the BOS token, one longer than
    /// `prompt_room` ([`max_prompt_tokens`](Self::max_prompt_tokens)) keeps its last tokens
    /// (with a warning).
    /// Returns the encoding and whether it was truncated.
    pub fn encode_prompt(&self, prompt: &str, prompt_room: usize) -> Result<(Encoded, bool)> {
        let mut e = self.tokenizer.encode(prompt)?;
        if e.is_empty() {
            let bos = self.bos.ok_or_else(|| {
                Error::Input(
                    "the prompt is empty and the model has no BOS token to start from".into(),
                )
            })?;
            e = Encoded {
                ids: vec![bos],
                type_ids: vec![0],
                tokens: vec![String::new()],
                offsets: vec![(0, 0)],
                special: vec![true],
                word_ids: vec![None],
            };
        }
        let excess = e.len().saturating_sub(prompt_room);
        if excess == 0 {
            return Ok((e, false));
        }
        tracing::warn!(
            "a prompt of {} tokens does not fit the model's context of {} tokens with {} new \
             tokens: generating from its last {} tokens",
            e.len(),
            self.context,
            self.context - prompt_room,
            prompt_room
        );
        fn drop_first<T>(v: &mut Vec<T>, n: usize) {
            v.drain(..n.min(v.len()));
        }
        drop_first(&mut e.ids, excess);
        drop_first(&mut e.type_ids, excess);
        drop_first(&mut e.tokens, excess);
        drop_first(&mut e.offsets, excess);
        drop_first(&mut e.special, excess);
        drop_first(&mut e.word_ids, excess);
        Ok((e, true))
    }

    /// Generate for each prompt: `num_return_sequences` texts per prompt, in input order.
    pub fn run(
        &self,
        prompts: &[&str],
        options: &GenerateOptions,
    ) -> Result<Vec<Vec<GeneratedText>>> {
        self.run_streaming(prompts, options, &mut |_| Ok(()))
    }

    /// [`run`](Self::run), passing text to `on_piece` as it is produced (greedy search and
    /// sampling: token by token; beam search: each returned sequence once it is chosen).
    /// An error from `on_piece` stops generation with that error.
    pub fn run_streaming(
        &self,
        prompts: &[&str],
        options: &GenerateOptions,
        on_piece: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<Vec<Vec<GeneratedText>>> {
        let call = Call {
            generation: self.settings(options)?,
            options,
        };
        let room = self.max_prompt_tokens(&call.generation)?;
        let mut out = Vec::with_capacity(prompts.len());
        for (n, chunk) in prompts.chunks(options.batch_size).enumerate() {
            let first = n * options.batch_size;
            out.extend(self.run_batch(chunk, first, &call, room, on_piece)?);
        }
        Ok(out)
    }

    fn run_batch(
        &self,
        prompts: &[&str],
        first: usize,
        call: &Call,
        prompt_room: usize,
        on_piece: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<Vec<Vec<GeneratedText>>> {
        let (generation, options) = (&call.generation, call.options);
        let mut truncated = Vec::with_capacity(prompts.len());
        let mut encodings = Vec::with_capacity(prompts.len());
        for p in prompts {
            let (e, cut) = self.encode_prompt(p, prompt_room)?;
            truncated.push(cut);
            encodings.push(e);
        }
        self.tokens
            .fetch_add(encodings.iter().map(Encoded::len).sum(), Ordering::Relaxed);
        let batch = Batch::new(
            encodings,
            self.tokenizer.pad_id,
            PaddingSide::Left,
            self.model.device(),
        )?;
        let copies = generation.num_return_sequences();
        let probed = Probed {
            model: CausalLmDecoder(&*self.model),
            probs: RefCell::new(None),
            record: options.show_probs.is_some(),
        };
        let streams: RefCell<Vec<Stream>> = RefCell::new(
            (0..prompts.len() * copies)
                .map(|_| Stream::default())
                .collect(),
        );
        let mut on_token = |t: Token| -> Result<()> {
            let mut streams = streams.borrow_mut();
            let stream = streams
                .get_mut(t.sequence)
                .ok_or_else(|| Error::Input(format!("no output sequence {}", t.sequence)))?;
            stream.ids.push(t.id);
            if let Some(k) = options.show_probs {
                let step = self.step_probs(&probed, t, k)?;
                stream.steps.push(step);
            }
            let text = self.decode_generated(&stream.ids)?;
            // Hold text back while it ends inside a UTF-8 character.
            let piece = match text.strip_prefix(stream.emitted.as_str()) {
                Some(new) if !text.ends_with('\u{FFFD}') => new.to_string(),
                _ => String::new(),
            };
            if !piece.is_empty() {
                stream.emitted = text;
            }
            if piece.is_empty() && stream.steps.is_empty() {
                return Ok(());
            }
            on_piece(Piece {
                input: first + t.sequence / copies,
                sequence: t.sequence % copies,
                text: &piece,
                step: stream.steps.last().filter(|_| options.show_probs.is_some()),
            })
        };
        let detokenize = |ids: &[i64]| self.tokenizer.decode(ids, true);
        let hooks = Hooks {
            on_token: Some(&mut on_token),
            detokenize: Some(&detokenize),
        };
        let sequences =
            tch::no_grad(|| generation::generate_with(&probed, &batch, generation, hooks))?;
        let mut streams = streams.into_inner();
        let mut results: Vec<Vec<GeneratedText>> = (0..prompts.len()).map(|_| Vec::new()).collect();
        for (i, seq) in sequences.iter().enumerate() {
            let generated = without_eos(seq, generation);
            let text = self.decode_generated(generated)?;
            self.tokens
                .fetch_add(seq.generated().len(), Ordering::Relaxed);
            let stream = streams.get_mut(i).ok_or_else(|| {
                Error::Input(format!("the engine returned an unexpected sequence {i}"))
            })?;
            // What streaming held back (an unfinished character, a replacement character).
            if let Some(rest) = text.strip_prefix(stream.emitted.as_str()) {
                if !rest.is_empty() {
                    on_piece(Piece {
                        input: first + seq.input,
                        sequence: i % copies,
                        text: rest,
                        step: None,
                    })?;
                }
            }
            let generated_text = if options.return_full_text {
                format!("{}{text}", prompts[seq.input])
            } else {
                text
            };
            let row = results.get_mut(seq.input).ok_or_else(|| {
                Error::Input(format!(
                    "the engine returned an unexpected input {}",
                    seq.input
                ))
            })?;
            row.push(GeneratedText {
                generated_text,
                steps: options
                    .show_probs
                    .map(|_| std::mem::take(&mut stream.steps)),
                generated_tokens: seq.generated().len(),
                prompt_truncated: truncated[seq.input],
            });
        }
        Ok(results)
    }

    /// Generated ids as text, special tokens skipped (transformers' pipeline decodes so).
    fn decode_generated(&self, ids: &[i64]) -> Result<String> {
        self.tokenizer.decode(ids, true)
    }

    /// The probabilities of the step that just produced `t`.
    fn step_probs(&self, probed: &Probed, t: Token, k: usize) -> Result<StepProbs> {
        let probs = probed.probs.borrow();
        let probs = probs
            .as_ref()
            .ok_or_else(|| Error::Input("a token came before any step".into()))?;
        let row = probs.f_get(t.sequence as i64)?; // [vocab]
        let k = (k as i64).min(row.size()[0]);
        let (values, ids) = row.f_topk(k, -1, true, true)?;
        let values = Vec::<f32>::try_from(&values)?;
        let ids = Vec::<i64>::try_from(&ids)?;
        let top = ids
            .into_iter()
            .zip(values)
            .map(|(id, probability)| {
                Ok(TokenProb {
                    token: self.tokenizer.decode(&[id], false)?,
                    id,
                    probability,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StepProbs {
            token: self.tokenizer.decode(&[t.id], false)?,
            id: t.id,
            probability: row.f_double_value(&[t.id])? as f32,
            top,
        })
    }
}

/// One call's settled settings and options.
struct Call<'o> {
    generation: GenerationConfig,
    options: &'o GenerateOptions,
}

/// The new tokens of `seq` without the EOS that ended them.
fn without_eos<'s>(seq: &'s Sequence, generation: &GenerationConfig) -> &'s [i64] {
    let ids = seq.generated();
    match ids.split_last() {
        Some((last, rest)) if generation.eos_token_ids().contains(last) => rest,
        _ => ids,
    }
}

/// The longest prompt that leaves room for the tokens to generate in a context of `context`
/// positions; an error when nothing would fit.
fn prompt_room(generation: &GenerationConfig, context: usize) -> Result<usize> {
    match generation.max_new_tokens {
        Some(n) if n >= context => Err(Error::Input(format!(
            "max_new_tokens {n} leaves no room for a prompt: the model's context is {context} \
             tokens, prompt included"
        ))),
        Some(n) => Ok(context - n),
        None if generation.max_total_length(0) > context => Err(Error::Input(format!(
            "max_length {} exceeds the model's context of {context} tokens",
            generation.max_total_length(0)
        ))),
        // The total length is capped at max_length ≤ context: any prompt that fits it fits.
        None => Ok(generation.max_total_length(0)),
    }
}

/// What streaming has produced for one output sequence.
#[derive(Default)]
struct Stream {
    ids: Vec<i64>,
    emitted: String,
    steps: Vec<StepProbs>,
}

/// The model as the engine sees it, keeping the model's next-token distribution of the latest
/// step when probabilities are asked for (the engine's callback gets only the chosen token).
struct Probed<'a> {
    model: CausalLmDecoder<'a, dyn CausalLm + Send + Sync>,
    /// `[rows, vocab]` softmax of the last step's logits, on the CPU.
    probs: RefCell<Option<Tensor>>,
    record: bool,
}

impl Decoder for Probed<'_> {
    type State = CausalLmState;

    fn initial_ids(&self, batch: &Batch) -> Result<Tensor> {
        self.model.initial_ids(batch)
    }

    fn start(&self, batch: &Batch) -> Result<CausalLmState> {
        self.model.start(batch)
    }

    fn step(&self, ids: &Tensor, state: &mut CausalLmState) -> Result<Tensor> {
        let logits = self.model.step(ids, state)?;
        if self.record {
            let probs = logits.f_softmax(-1, Kind::Float)?.f_to(Device::Cpu)?;
            *self.probs.borrow_mut() = Some(probs);
        }
        Ok(logits)
    }

    fn reorder(&self, state: &mut CausalLmState, beam_idx: &Tensor) -> Result<()> {
        self.model.reorder(state, beam_idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_gets_what_the_new_tokens_leave() {
        let with = |max_new_tokens, max_length| GenerationConfig {
            max_new_tokens,
            max_length: Some(max_length),
            ..Default::default()
        };
        assert_eq!(prompt_room(&with(Some(20), 20), 128).unwrap(), 108);
        assert_eq!(prompt_room(&with(Some(0), 20), 128).unwrap(), 128);
        assert_eq!(prompt_room(&with(None, 50), 128).unwrap(), 50);
        let err = prompt_room(&with(Some(128), 20), 128)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_new_tokens 128") && err.contains("128"),
            "{err}"
        );
        let err = prompt_room(&with(None, 200), 128).unwrap_err().to_string();
        assert!(err.contains("max_length 200"), "{err}");
    }
}
