//! Continuous batching for decoder-only models: sequences join a running batch between two
//! steps and leave it the step they finish, each with its own settings.
//!
//! [`generate`](super::generate) decodes one batch from its first step to its last: a prompt
//! that arrives meanwhile waits for the whole batch. Here the batch is a set of rows that
//! changes from step to step:
//!
//! ```text
//! join(prompt)  ─► prefill the prompt alone (its own caches, no padding)
//!               ─► choose its first token with its own processors
//!               ─► stack its caches below the running rows', right-aligned:
//!                      row A  [a a a a a a a]        mask 1 1 1 1 1 1 1
//!                      row B  [0 0 0 0 b b b]        mask 0 0 0 0 1 1 1
//! step()        ─► one token for every row, in one forward pass ([rows, 1] ids)
//!               ─► a row that ends (EOS, length, stop string) leaves; padding columns
//!                  that no remaining row needs are dropped from the front
//! ```
//!
//! A row's result does not depend on its companions: its prompt is prefilled alone, exactly
//! as [`generate`](super::generate) would for a batch of one, and later steps differ only by
//! the masked padding in front of it. Its processors see its own ids (no padding), and a
//! seeded sampler draws from the row's own stream (`Rng::stream`), so a seed gives the
//! same text alone or batched. Beam search keeps several rows per input that must be
//! reordered together; it is not batched here (callers run it with `generate`).

use super::logits::{apply, LogitsProcessor};
use super::search::{argmax_rows, no_candidates, probabilities, Rng};
use super::state::position_ids;
use super::stream::{Detokenize, StopStrings};
use super::{CausalLm, GenerationConfig, Sequence};
use crate::nn::LayerCache;
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Something that happened to a row during [`ContinuousBatch::join`] or
/// [`ContinuousBatch::step`].
#[derive(Debug)]
pub enum Event {
    /// The row `key` produced the token `id`.
    Token {
        /// The caller's key of the row.
        key: u64,
        /// The new token.
        id: i64,
        /// `[vocab]` softmax of the model's logits for this token (before any processor),
        /// on the CPU, when the row asked for it.
        probs: Option<Tensor>,
    },
    /// The row `key` is done and has left the batch.
    Finished {
        /// The caller's key of the row.
        key: u64,
        /// Its ids: the prompt, then the new tokens (EOS included when one ended it).
        sequence: Sequence,
    },
}

/// What a row needs to join: its prompt and settings.
pub struct Admission<'a> {
    /// The caller's key, reported with the row's events.
    pub key: u64,
    /// The prompt's ids (no padding).
    pub prompt: &'a [i64],
    /// The row's settings (`num_beams` must be 1).
    pub config: &'a GenerationConfig,
    /// Which returned sequence of its input this row is (0 for the first): picks the
    /// sampler's stream, as [`generate`](super::generate) does for `num_return_sequences`.
    pub copy: usize,
    /// Report the model's next-token probabilities with each token.
    pub record_probs: bool,
}

/// One running sequence.
struct Row {
    key: u64,
    /// Prompt and new tokens so far.
    ids: Vec<i64>,
    prompt_len: usize,
    max_len: usize,
    processors: Vec<Box<dyn LogitsProcessor>>,
    eos: Vec<i64>,
    stop_strings: Vec<String>,
    do_sample: bool,
    rng: Rng,
    record_probs: bool,
}

impl Row {
    /// Choose the next token from this row's `logits` `[1, vocab]`, append it, and tell
    /// whether the row is done.
    fn choose(
        &mut self,
        logits: Tensor,
        detokenize: Option<Detokenize>,
    ) -> Result<(i64, Option<Tensor>, bool)> {
        let probs = if self.record_probs {
            Some(
                logits
                    .f_softmax(-1, Kind::Float)?
                    .f_to(Device::Cpu)?
                    .f_view([-1])?,
            )
        } else {
            None
        };
        let scores = apply(&self.processors, std::slice::from_ref(&self.ids), logits)?;
        let id = if self.do_sample {
            let p = probabilities(&scores)?;
            let row = p.first().ok_or_else(no_candidates)?;
            self.rng.categorical(row).ok_or_else(no_candidates)? as i64
        } else {
            argmax_rows(&scores)?
                .first()
                .copied()
                .ok_or_else(no_candidates)?
        };
        self.ids.push(id);
        let stops = StopStrings::new(&self.stop_strings, detokenize)?;
        let done = self.eos.contains(&id)
            || self.ids.len() >= self.max_len
            || stops.hit(&self.ids[self.prompt_len..])?;
        Ok((id, probs, done))
    }

    fn finished(self) -> Event {
        Event::Finished {
            key: self.key,
            sequence: Sequence {
                input: 0,
                len: self.ids.len(),
                ids: self.ids,
                prompt_len: self.prompt_len,
                score: None,
            },
        }
    }
}

/// A batch of decoder-only sequences that rows join and leave between steps.
pub struct ContinuousBatch<'m, M: CausalLm + ?Sized> {
    model: &'m M,
    rows: Vec<Row>,
    /// One cache per block, `[rows, heads, len, head_dim]` each, rows right-aligned.
    caches: Vec<LayerCache>,
    /// `[rows, len]` 1/0: which cached positions are real (left padding is 0).
    mask: Option<Tensor>,
    /// Per row, the position of its last token.
    last_position: Vec<i64>,
}

impl<'m, M: CausalLm + ?Sized> ContinuousBatch<'m, M> {
    /// An empty batch on `model`.
    pub fn new(model: &'m M) -> Self {
        ContinuousBatch {
            model,
            rows: Vec::new(),
            caches: Vec::new(),
            mask: None,
            last_position: Vec::new(),
        }
    }

    /// Rows decoding now.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is decoding.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Cached positions per row (the longest row's length, padding included).
    pub fn width(&self) -> i64 {
        LayerCache::cached_len(Some(&self.caches))
    }

    /// Prefill a new row's prompt alone, choose its first token and add it to the batch.
    /// Returns its first token, and its end when that token already finishes it (then it
    /// never joins). An error concerns this row only: the running rows are untouched.
    pub fn join(
        &mut self,
        admission: Admission,
        detokenize: Option<Detokenize>,
    ) -> Result<Vec<Event>> {
        let Admission {
            key,
            prompt,
            config,
            copy,
            record_probs,
        } = admission;
        config.validate()?;
        if config.num_beams() > 1 {
            return Err(Error::Input(
                "continuous batching runs greedy search and sampling; beam search runs on its \
                 own (generation::generate)"
                    .into(),
            ));
        }
        if prompt.is_empty() {
            return Err(Error::Input(
                "the prompt is empty: give the model at least one token to continue".into(),
            ));
        }
        let stop_strings = config.stop_strings.clone().unwrap_or_default();
        StopStrings::new(&stop_strings, detokenize)?;
        let mut row = Row {
            key,
            ids: prompt.to_vec(),
            prompt_len: prompt.len(),
            max_len: config.max_total_length(prompt.len()),
            processors: config.processors(prompt.len()),
            eos: config.eos_token_ids(),
            stop_strings,
            do_sample: config.do_sample(),
            rng: Rng::stream(config.seed, copy as u64),
            record_probs,
        };
        if row.max_len <= row.prompt_len {
            return Ok(vec![row.finished()]);
        }
        // The prompt alone, as a batch of one: [1, n].
        let device = self.model.device();
        let n = prompt.len() as i64;
        let ids = Tensor::f_from_slice(prompt)?.f_view([1, n])?.f_to(device)?;
        let mask = Tensor::f_ones([1, n], (Kind::Int64, device))?;
        let positions = position_ids(&mask)?;
        let mut caches: Vec<LayerCache> = (0..self.model.num_layers())
            .map(|_| LayerCache::default())
            .collect();
        let logits = self
            .model
            .next_logits(&ids, &positions, &mask, &mut caches)?
            .f_to_kind(Kind::Float)?; // [1, vocab]
        let (id, probs, done) = row.choose(logits, detokenize)?;
        let mut events = vec![Event::Token { key, id, probs }];
        if done {
            events.push(row.finished());
            return Ok(events);
        }
        self.admit(row, caches, mask, n - 1)?;
        Ok(events)
    }

    /// Stack a prefilled row's caches and mask below the running rows'.
    fn admit(
        &mut self,
        row: Row,
        caches: Vec<LayerCache>,
        mask: Tensor,
        last_position: i64,
    ) -> Result<()> {
        match self.mask.take() {
            None => {
                self.caches = caches;
                self.mask = Some(mask);
            }
            Some(running) => {
                for (mine, theirs) in self.caches.iter_mut().zip(&caches) {
                    mine.stack_rows(theirs)?;
                }
                let width = self.width();
                let pad = |m: &Tensor| -> Result<Tensor> {
                    let missing = width - m.size()[1];
                    Ok(m.f_constant_pad_nd([missing, 0])?)
                };
                self.mask = Some(Tensor::f_cat(&[pad(&running)?, pad(&mask)?], 0)?);
            }
        }
        self.rows.push(row);
        self.last_position.push(last_position);
        Ok(())
    }

    /// One token for every row, in one forward pass. Rows that finish leave the batch.
    ///
    /// An error from the model fails the step for every row (they stay in the batch in
    /// their state before the step, which callers usually [`clear`](Self::clear)).
    pub fn step(&mut self, detokenize: Option<Detokenize>) -> Result<Vec<Event>> {
        let Some(mask) = &self.mask else {
            return Ok(Vec::new());
        };
        let device = self.model.device();
        let rows = self.rows.len() as i64;
        let next: Vec<i64> = self
            .rows
            .iter()
            .map(|r| r.ids.last().copied().unwrap_or(0))
            .collect();
        let ids = Tensor::f_from_slice(&next)?
            .f_view([rows, 1])?
            .f_to(device)?;
        let positions: Vec<i64> = self.last_position.iter().map(|p| p + 1).collect();
        let positions = Tensor::f_from_slice(&positions)?
            .f_view([rows, 1])?
            .f_to(device)?;
        let mask = Tensor::f_cat(
            &[mask, &Tensor::f_ones([rows, 1], (Kind::Int64, device))?],
            1,
        )?;
        let logits = self
            .model
            .next_logits(&ids, &positions, &mask, &mut self.caches)?
            .f_to_kind(Kind::Float)?; // [rows, vocab]
        self.mask = Some(mask);
        let mut events = Vec::with_capacity(self.rows.len());
        let mut finished = Vec::new();
        for (i, row) in self.rows.iter_mut().enumerate() {
            self.last_position[i] += 1;
            let (id, probs, done) = row.choose(logits.f_narrow(0, i as i64, 1)?, detokenize)?;
            events.push(Event::Token {
                key: row.key,
                id,
                probs,
            });
            if done {
                finished.push(i);
            }
        }
        events.extend(self.remove(&finished)?);
        Ok(events)
    }

    /// Drop the rows of `key` (a request that was cancelled); nothing is reported for them.
    pub fn cancel(&mut self, key: u64) -> Result<()> {
        let gone: Vec<usize> = (0..self.rows.len())
            .filter(|&i| self.rows[i].key == key)
            .collect();
        self.remove(&gone).map(drop)
    }

    /// Drop every row (after a failed step).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.caches.clear();
        self.mask = None;
        self.last_position.clear();
    }

    /// Take the rows at `indices` (ascending) out of the batch, reporting their end.
    fn remove(&mut self, indices: &[usize]) -> Result<Vec<Event>> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let keep: Vec<i64> = (0..self.rows.len() as i64)
            .filter(|i| !indices.contains(&(*i as usize)))
            .collect();
        let mut events = Vec::with_capacity(indices.len());
        for &i in indices.iter().rev() {
            self.last_position.remove(i);
            events.push(self.rows.remove(i).finished());
        }
        events.reverse();
        if keep.is_empty() {
            self.clear();
            return Ok(events);
        }
        let Some(mask) = &self.mask else {
            return Ok(events);
        };
        let idx = Tensor::f_from_slice(&keep)?.f_to(mask.device())?;
        let mut mask = mask.f_index_select(0, &idx)?;
        for cache in &mut self.caches {
            cache.reorder(&idx)?;
        }
        // Leading columns that are padding in every remaining row are dead weight.
        let real = mask.f_sum_dim_intlist(0, false, Kind::Int64)?.f_gt(0)?; // [width]
        let first_real = real
            .f_to_kind(Kind::Int64)?
            .f_argmax(0, false)?
            .f_int64_value(&[])?;
        if first_real > 0 {
            for cache in &mut self.caches {
                cache.drop_front(first_real)?;
            }
            let width = mask.size()[1];
            mask = mask.f_narrow(1, first_real, width - first_real)?;
        }
        self.mask = Some(mask);
        Ok(events)
    }
}
