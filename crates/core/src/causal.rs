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
    self, bad_words_ids, Admission, CausalLm, CausalLmDecoder, CausalLmState, ContinuousBatch,
    Decoder, Event, GenerationConfig, Hooks, Sequence, Token,
};
use crate::text::{Batch, PaddingSide};
use crate::{Encoded, Error, ModelFiles, Result, TextEncoder};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
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
    /// Tokens generated for this sequence so far, this piece's among them (a piece may hold
    /// several tokens' text, or none).
    pub tokens: usize,
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
        Self::load(files, || Ok((model, context, bos)))
    }

    /// [`new`](Self::new) with the model loaded by `load` (the model, its context and its
    /// BOS id) after the tokenizer and the generation settings. The order is for memory:
    /// parsing a large `tokenizer.json` holds its JSON tree for a moment (GPT-2's: 30 MB kept,
    /// 42 MB at the peak), which then falls on the bare process rather than on the loaded
    /// weights.
    pub fn load(
        files: &ModelFiles,
        load: impl FnOnce() -> Result<(AnyCausalLm, usize, Option<i64>)>,
    ) -> Result<Self> {
        let checkpoint = GenerationConfig::from_checkpoint(files, None)?;
        let tokenizer = TextEncoder::from_files(files)?;
        let (model, context, bos) = load()?;
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
            if let Some(k) = options.show_probs {
                let step = self.step_probs(&probed, t, k)?;
                stream.steps.push(step);
            }
            let piece = self.stream_token(stream, t.id)?;
            if piece.is_empty() && stream.steps.is_empty() {
                return Ok(());
            }
            on_piece(Piece {
                input: first + t.sequence / copies,
                sequence: t.sequence % copies,
                text: &piece,
                step: stream.steps.last().filter(|_| options.show_probs.is_some()),
                tokens: stream.ids.len(),
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
            let stream = streams.get_mut(i).ok_or_else(|| {
                Error::Input(format!("the engine returned an unexpected sequence {i}"))
            })?;
            let (result, rest) = self.finish(
                seq,
                generation,
                options,
                prompts[seq.input],
                truncated[seq.input],
                stream,
            )?;
            if !rest.is_empty() {
                on_piece(Piece {
                    input: first + seq.input,
                    sequence: i % copies,
                    text: &rest,
                    step: None,
                    tokens: seq.generated().len(),
                })?;
            }
            let row = results.get_mut(seq.input).ok_or_else(|| {
                Error::Input(format!(
                    "the engine returned an unexpected input {}",
                    seq.input
                ))
            })?;
            row.push(result);
        }
        Ok(results)
    }

    /// Generated ids as text, special tokens skipped (transformers' pipeline decodes so).
    fn decode_generated(&self, ids: &[i64]) -> Result<String> {
        self.tokenizer.decode(ids, true)
    }

    /// Add token `id` to `stream` and return the text to stream now: the new characters, or
    /// nothing while the text ends inside a UTF-8 character (it comes with a later token).
    fn stream_token(&self, stream: &mut Stream, id: i64) -> Result<String> {
        stream.push(id, |ids| self.decode_generated(ids))
    }

    /// The result of a finished sequence, and the text streaming still held back of it (an
    /// unfinished character, a replacement character).
    fn finish(
        &self,
        seq: &Sequence,
        generation: &GenerationConfig,
        options: &GenerateOptions,
        prompt: &str,
        truncated: bool,
        stream: &mut Stream,
    ) -> Result<(GeneratedText, String)> {
        let text = self.decode_generated(without_eos(seq, generation))?;
        self.tokens
            .fetch_add(seq.generated().len(), Ordering::Relaxed);
        let rest = text
            .strip_prefix(stream.emitted.as_str())
            .unwrap_or_default()
            .to_string();
        let generated_text = if options.return_full_text {
            format!("{prompt}{text}")
        } else {
            text
        };
        let result = GeneratedText {
            generated_text,
            steps: options
                .show_probs
                .map(|_| std::mem::take(&mut stream.steps)),
            generated_tokens: seq.generated().len(),
            prompt_truncated: truncated,
        };
        Ok((result, rest))
    }

    /// The probabilities of the step that just produced `t`.
    fn step_probs(&self, probed: &Probed, t: Token, k: usize) -> Result<StepProbs> {
        let probs = probed.probs.borrow();
        let probs = probs
            .as_ref()
            .ok_or_else(|| Error::Input("a token came before any step".into()))?;
        self.top_probs(&probs.f_get(t.sequence as i64)?, t.id, k)
    }

    /// A step's record: the chosen token `id` and the `k` most probable of `row` `[vocab]`.
    fn top_probs(&self, row: &Tensor, id: i64, k: usize) -> Result<StepProbs> {
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
            token: self.tokenizer.decode(&[id], false)?,
            id,
            probability: row.f_double_value(&[id])? as f32,
            top,
        })
    }
}

impl TextGenerator {
    /// A continuous batch over this generator: requests join and leave between decoding
    /// steps (see [`ContinuousGenerator`]).
    pub fn continuous(&self) -> ContinuousGenerator<'_> {
        ContinuousGenerator {
            generator: self,
            batch: ContinuousBatch::new(&*self.model),
            requests: HashMap::new(),
            rows: HashMap::new(),
            next_row: 0,
            done: Vec::new(),
        }
    }
}

/// Receives the streamed text of continuous generation: the request's key and the piece.
/// An error fails that request only (its client went away, say).
pub type OnPiece<'a> = &'a mut dyn FnMut(u64, Piece) -> Result<()>;

/// Text generation by continuous batching, for a server: [`add`](Self::add) a request (its
/// prompts, its own [`GenerateOptions`]) whenever it arrives; [`step`](Self::step) decodes
/// one token for every sequence of every request; [`finished`](Self::finished) hands over
/// the requests that are done. A request's results equal what [`TextGenerator::run`] gives
/// for it alone (its prompts are prefilled alone; see [`generation::continuous`]).
///
/// Beam search is not batched this way ([`accepts`](Self::accepts) says so): run such a
/// request with [`TextGenerator::run_streaming`].
pub struct ContinuousGenerator<'g> {
    generator: &'g TextGenerator,
    batch: ContinuousBatch<'g, dyn CausalLm + Send + Sync>,
    /// The requests in progress, by the caller's key.
    requests: HashMap<u64, Request>,
    /// Row key → (request key, output index = prompt × copies + copy).
    rows: HashMap<u64, (u64, usize)>,
    next_row: u64,
    done: Vec<(u64, Result<Vec<Vec<GeneratedText>>>)>,
}

/// A request of a [`ContinuousGenerator`] in progress.
struct Request {
    prompts: Vec<String>,
    options: GenerateOptions,
    generation: GenerationConfig,
    truncated: Vec<bool>,
    copies: usize,
    /// Per output sequence (prompt-major): what was streamed, and the result once it ends.
    streams: Vec<Stream>,
    results: Vec<Option<GeneratedText>>,
    left: usize,
}

impl ContinuousGenerator<'_> {
    /// Whether a request with `options` can join the batch: valid settings, greedy search
    /// or sampling (beam search runs alone).
    pub fn accepts(&self, options: &GenerateOptions) -> bool {
        self.generator
            .settings(options)
            .is_ok_and(|g| g.num_beams() == 1)
    }

    /// Sequences decoding now.
    pub fn running(&self) -> usize {
        self.batch.len()
    }

    /// Whether nothing is in progress (and nothing waits in [`finished`](Self::finished)).
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty() && self.done.is_empty()
    }

    /// Start request `key`: encode its prompts and prefill each (one sequence per prompt and
    /// returned sequence), streaming their first tokens. Invalid options or prompts are an
    /// error here, and nothing of the request stays.
    pub fn add(
        &mut self,
        key: u64,
        prompts: Vec<String>,
        options: GenerateOptions,
        on_piece: OnPiece,
    ) -> Result<()> {
        if self.requests.contains_key(&key) {
            return Err(Error::Input(format!("request {key} is already running")));
        }
        let generation = self.generator.settings(&options)?;
        if generation.num_beams() > 1 {
            return Err(Error::Input(
                "beam search is not batched continuously: run it with TextGenerator::run".into(),
            ));
        }
        let room = self.generator.max_prompt_tokens(&generation)?;
        let mut encoded = Vec::with_capacity(prompts.len());
        let mut truncated = Vec::with_capacity(prompts.len());
        for p in &prompts {
            let (e, cut) = self.generator.encode_prompt(p, room)?;
            encoded.push(e.ids);
            truncated.push(cut);
        }
        self.generator
            .tokens
            .fetch_add(encoded.iter().map(Vec::len).sum(), Ordering::Relaxed);
        let copies = generation.num_return_sequences();
        let outputs = prompts.len() * copies;
        self.requests.insert(
            key,
            Request {
                prompts,
                options,
                generation,
                truncated,
                copies,
                streams: (0..outputs).map(|_| Stream::default()).collect(),
                results: vec![None; outputs],
                left: outputs,
            },
        );
        if outputs == 0 {
            self.complete(key);
            return Ok(());
        }
        let generator = self.generator;
        let detokenize = |ids: &[i64]| generator.tokenizer.decode(ids, true);
        for (p, ids) in encoded.iter().enumerate() {
            for copy in 0..copies {
                let row = self.next_row;
                self.next_row += 1;
                self.rows.insert(row, (key, p * copies + copy));
                let joined = {
                    let request = &self.requests[&key];
                    let admission = Admission {
                        key: row,
                        prompt: ids,
                        config: &request.generation,
                        copy,
                        record_probs: request.options.show_probs.is_some(),
                    };
                    tch::no_grad(|| self.batch.join(admission, Some(&detokenize)))
                };
                match joined {
                    Ok(events) => self.handle(events, on_piece),
                    Err(e) => {
                        self.drop_request(key);
                        return Err(e);
                    }
                }
                if !self.requests.contains_key(&key) {
                    // Its client went away while it was being prefilled.
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Decode one token for every running sequence. A failure of the model fails every
    /// request in progress (each gets the error in [`finished`](Self::finished)).
    pub fn step(&mut self, on_piece: OnPiece) {
        if self.batch.is_empty() {
            return;
        }
        let generator = self.generator;
        let detokenize = |ids: &[i64]| generator.tokenizer.decode(ids, true);
        let stepped = tch::no_grad(|| self.batch.step(Some(&detokenize)));
        match stepped {
            Ok(events) => self.handle(events, on_piece),
            Err(e) => {
                self.batch.clear();
                self.rows.clear();
                let message = e.to_string();
                for key in self.requests.keys().copied().collect::<Vec<_>>() {
                    self.requests.remove(&key);
                    self.done.push((key, Err(Error::Input(message.clone()))));
                }
            }
        }
    }

    /// Stop request `key` (its client went away); nothing is reported for it.
    pub fn cancel(&mut self, key: u64) {
        self.drop_request(key);
    }

    /// The requests that ended since the last call: their results (per prompt, its returned
    /// sequences) or what failed them.
    pub fn finished(&mut self) -> Vec<(u64, Result<Vec<Vec<GeneratedText>>>)> {
        std::mem::take(&mut self.done)
    }

    /// Take a request and its rows out of the batch.
    fn drop_request(&mut self, key: u64) {
        self.requests.remove(&key);
        let rows: Vec<u64> = self
            .rows
            .iter()
            .filter(|(_, (k, _))| *k == key)
            .map(|(r, _)| *r)
            .collect();
        for row in rows {
            self.rows.remove(&row);
            if self.batch.cancel(row).is_err() {
                // The batch could not be re-indexed: nothing in it can be trusted.
                self.fail_all("the batch could not drop a cancelled request");
            }
        }
    }

    fn fail_all(&mut self, message: &str) {
        self.batch.clear();
        self.rows.clear();
        for key in self.requests.keys().copied().collect::<Vec<_>>() {
            self.requests.remove(&key);
            self.done
                .push((key, Err(Error::Input(message.to_string()))));
        }
    }

    /// Turn the batch's events into streamed pieces and finished results.
    fn handle(&mut self, events: Vec<Event>, on_piece: OnPiece) {
        for event in events {
            let key = match &event {
                Event::Token { key, .. } | Event::Finished { key, .. } => *key,
            };
            let Some(&(request_key, out)) = self.rows.get(&key) else {
                continue; // its request failed or was cancelled
            };
            if let Err(e) = self.apply(event, request_key, out, on_piece) {
                self.drop_request(request_key);
                self.done.push((request_key, Err(e)));
            }
        }
    }

    fn apply(&mut self, event: Event, key: u64, out: usize, on_piece: OnPiece) -> Result<()> {
        let generator = self.generator;
        let request = self
            .requests
            .get_mut(&key)
            .ok_or_else(|| Error::Input(format!("no request {key}")))?;
        let (input, sequence) = (out / request.copies, out % request.copies);
        let stream = &mut request.streams[out];
        match event {
            Event::Token { id, probs, .. } => {
                let step = match (request.options.show_probs, probs) {
                    (Some(k), Some(probs)) => Some(generator.top_probs(&probs, id, k)?),
                    _ => None,
                };
                let recorded = step.is_some();
                if let Some(step) = step {
                    stream.steps.push(step);
                }
                let piece = generator.stream_token(stream, id)?;
                if !piece.is_empty() || recorded {
                    on_piece(
                        key,
                        Piece {
                            input,
                            sequence,
                            text: &piece,
                            step: stream.steps.last().filter(|_| recorded),
                            tokens: stream.ids.len(),
                        },
                    )?;
                }
            }
            Event::Finished {
                key: row,
                sequence: seq,
            } => {
                self.rows.remove(&row);
                let (result, rest) = generator.finish(
                    &seq,
                    &request.generation,
                    &request.options,
                    &request.prompts[input],
                    request.truncated[input],
                    stream,
                )?;
                if !rest.is_empty() {
                    on_piece(
                        key,
                        Piece {
                            input,
                            sequence,
                            text: &rest,
                            step: None,
                            tokens: seq.generated().len(),
                        },
                    )?;
                }
                request.results[out] = Some(result);
                request.left -= 1;
                if request.left == 0 {
                    self.complete(key);
                }
            }
        }
        Ok(())
    }

    /// Move a request whose sequences have all ended to [`finished`](Self::finished).
    fn complete(&mut self, key: u64) {
        let Some(request) = self.requests.remove(&key) else {
            return;
        };
        let copies = request.copies.max(1);
        let mut grouped: Vec<Vec<GeneratedText>> = Vec::with_capacity(request.prompts.len());
        for (i, r) in request.results.into_iter().enumerate() {
            if i % copies == 0 {
                grouped.push(Vec::with_capacity(copies));
            }
            if let (Some(r), Some(g)) = (r, grouped.last_mut()) {
                g.push(r);
            }
        }
        self.done.push((key, Ok(grouped)));
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
    /// The text streamed so far: the decoding of `ids[..read_offset]`.
    emitted: String,
    /// `ids[prefix_offset..read_offset]`: the tokens streamed last, decoded again before the
    /// new ones so that the new text is read in context (a SentencePiece decoder drops the
    /// leading space of whatever comes first; a byte-level one needs whole characters).
    prefix_offset: usize,
    read_offset: usize,
    steps: Vec<StepProbs>,
}

impl Stream {
    /// Add token `id` and return the text it completes, decoding only the tokens streamed
    /// last and the new ones (`decode`: ids → text). Decoding every id at every token, as
    /// this did before, made a long generation's streaming quadratic: 25 µs a token at 128
    /// tokens, growing with the length.
    fn push(&mut self, id: i64, decode: impl Fn(&[i64]) -> Result<String>) -> Result<String> {
        self.ids.push(id);
        let window = &self.ids[self.prefix_offset..];
        let before = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = decode(window)?;
        let piece = match text.strip_prefix(before.as_str()) {
            // A text ending in U+FFFD may end inside a character: wait for the next token.
            Some(new) if !new.is_empty() && !text.ends_with('\u{FFFD}') => new.to_string(),
            _ => return Ok(String::new()),
        };
        self.emitted.push_str(&piece);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(piece)
    }
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

    fn plan(&self, state: &mut CausalLmState, positions: usize) {
        self.model.plan(state, positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Llama-style SentencePiece tokenizer.json: `▁` for spaces, byte fallback, and a
    /// decoder that strips the text's first space (so a window of tokens decoded alone loses
    /// the space its first token starts with).
    fn sentencepiece_style(dir: &std::path::Path) -> TextEncoder {
        let mut vocab = serde_json::Map::new();
        let pieces = ["<unk>", "<s>", "</s>", "▁", "▁a", "b", "▁é", "c", "▁Les"];
        let bytes = (0..=255u8).map(|b| format!("<0x{b:02X}>"));
        for (i, piece) in pieces
            .iter()
            .map(|p| p.to_string())
            .chain(bytes)
            .enumerate()
        {
            vocab.insert(piece, serde_json::json!(i));
        }
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "</s>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
            ]},
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "vocab": vocab, "merges": []}
        });
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        TextEncoder::from_tokenizer_file(&path).unwrap()
    }

    /// The same with a SentencePiece-style decoder: each piece is read after the tokens
    /// streamed last, so the spaces that a window decoded alone would lose are kept.
    #[test]
    fn streamed_pieces_keep_sentencepiece_spaces() {
        let dir = std::env::temp_dir().join(format!("trident-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokenizer = sentencepiece_style(&dir);
        let decode = |ids: &[i64]| tokenizer.decode(ids, true);
        // ▁Les ▁a b ▁é </s> ▁ c, then 😀 as its four byte tokens, ▁a, <0xE9> alone (broken).
        let byte = |b: i64| 9 + b;
        let ids = [
            8,
            4,
            5,
            6,
            2,
            3,
            7,
            byte(0xF0),
            byte(0x9F),
            byte(0x98),
            byte(0x80),
            4,
            byte(0xE9),
        ];
        let mut stream = Stream::default();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id, decode).unwrap());
            assert_eq!(
                stream.emitted,
                decode(&stream.ids[..stream.read_offset]).unwrap()
            );
        }
        assert_eq!(streamed, "Les ab é c😀 a");
        assert_eq!(decode(&ids).unwrap(), "Les ab é c😀 a\u{FFFD}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Streaming a token at a time gives the text of the whole sequence, piece by piece, with
    /// each family's tokenizer (byte-level BPE: GPT-2, Qwen2, BLOOM; SentencePiece-style:
    /// Llama, Mistral), on text with multi-byte characters split across tokens, and on random
    /// ids (special tokens, broken characters).
    #[test]
    fn streamed_pieces_add_up_to_the_decoded_text() {
        let text =
            "Les élèves — naïfs? — ont payé 12 € 😀😀 pour « ça »,\n\tet 日本語 aussi.  Done!";
        for model in [
            "gpt2-tiny",
            "qwen2-tiny",
            "bloom-tiny",
            "llama-tiny",
            "mistral-tiny",
        ] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights");
            let tokenizer =
                TextEncoder::from_files(&ModelFiles::local(dir.join(model)).unwrap()).unwrap();
            let decode = |ids: &[i64]| tokenizer.decode(ids, true);
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            let vocab = tokenizer.tokenizer().get_vocab_size(true) as u64;
            let random: Vec<i64> = (0..300)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % vocab) as i64
                })
                .collect();
            for ids in [tokenizer.encode(text).unwrap().ids, random] {
                let mut stream = Stream::default();
                let mut streamed = String::new();
                for &id in &ids {
                    streamed.push_str(&stream.push(id, decode).unwrap());
                    assert_eq!(streamed, stream.emitted);
                    let so_far = decode(&stream.ids[..stream.read_offset]).unwrap();
                    assert_eq!(stream.emitted, so_far, "{model}: streamed so far");
                }
                let whole = decode(&ids).unwrap();
                let rest = whole.strip_prefix(streamed.as_str());
                assert!(
                    rest.is_some(),
                    "{model}: {streamed:?} is not a prefix of {whole:?}"
                );
            }
        }
    }

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
