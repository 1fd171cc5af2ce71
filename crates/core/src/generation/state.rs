//! Decode state, once for every model: what a causal language model carries from step to
//! step ([`CausalLmState`]), and what an encoder-decoder model carries ([`Seq2SeqState`]).
//!
//! A model family implements the small [`CausalLm`] or [`Seq2SeqLm`] trait — "given these
//! ids, positions and caches, what are the next-token logits" — and the adapters
//! [`CausalLmDecoder`] and [`Seq2SeqDecoder`] turn it into the engine's [`Decoder`]: the
//! bookkeeping (positions under left padding, the growing mask, the caches, beam reorders,
//! one encoder output shared by an input's beams) lives here and nowhere else.

use super::Decoder;
use crate::nn::{LayerCache, RowOrder};
use crate::text::Batch;
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// A decoder-only language model, as the generation engine needs it.
pub trait CausalLm {
    /// Where the weights live.
    fn device(&self) -> Device;

    /// Blocks with a KV cache each.
    fn num_layers(&self) -> usize;

    /// Next-token logits `[rows, vocab]` (f32, at the last of the new positions) of `ids`
    /// `[rows, n]` at `positions` `[rows, n]`, where `attention_mask` `[rows, past + n]` (1/0)
    /// says which of the cached and new tokens are real; the new keys/values are appended to
    /// `caches` (one per block).
    fn next_logits(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        attention_mask: &Tensor,
        caches: &mut [LayerCache],
    ) -> Result<Tensor>;
}

/// Position ids as transformers' `generate` computes them from a 1/0 attention mask
/// `[batch, seq]`: each real token's index among the real tokens of its row
/// (`cumsum(mask) − 1`), and 0 for padding. With left padding the prompt's first real token
/// is at position 0, as it would be without padding.
pub fn position_ids(attention_mask: &Tensor) -> Result<Tensor> {
    let mask = attention_mask.f_to_kind(Kind::Int64)?;
    let positions = mask.f_cumsum(1, Kind::Int64)? - 1;
    Ok(positions.f_masked_fill(&mask.f_eq(0)?, 0)?)
}

/// What a causal language model carries from one generation step to the next.
#[derive(Debug)]
pub struct CausalLmState {
    /// One self-attention KV cache per block.
    pub caches: Vec<LayerCache>,
    /// `[rows, seen]` 1/0: which of the tokens seen so far are real (the prompt's left padding
    /// is 0, every generated token 1).
    pub attention_mask: Tensor,
    /// `[rows, 1]`, the position of each row's last token; `None` before the first step.
    pub last_position: Option<Tensor>,
}

impl CausalLmState {
    /// A fresh state for `layers` blocks and prompts with the 1/0 mask `[rows, prompt]`.
    pub fn new(layers: usize, attention_mask: &Tensor, device: Device) -> Result<Self> {
        Ok(CausalLmState {
            caches: (0..layers).map(|_| LayerCache::default()).collect(),
            attention_mask: attention_mask.f_to(device)?.f_to_kind(Kind::Int64)?,
            last_position: None,
        })
    }

    /// The positions of `ids` `[rows, n]`, growing the mask by the new tokens: the whole
    /// (left-padded) prompt on the first step, then tokens after the last position.
    pub fn advance(&mut self, ids: &Tensor) -> Result<Tensor> {
        let (rows, n) = (ids.size()[0], ids.size()[1]);
        let device = ids.device();
        let positions = match &self.last_position {
            None => {
                if self.attention_mask.size() != ids.size() {
                    return Err(Error::Input(format!(
                        "the first step takes the whole prompt {:?}, as its mask {:?}",
                        ids.size(),
                        self.attention_mask.size()
                    )));
                }
                position_ids(&self.attention_mask)?
            }
            Some(last) => {
                let ones = Tensor::f_ones([rows, n], (Kind::Int64, device))?;
                self.attention_mask = Tensor::f_cat(&[&self.attention_mask, &ones], 1)?;
                last + Tensor::f_arange_start(1, n + 1, (Kind::Int64, device))?.f_view([1, n])?
            }
        };
        self.last_position = Some(positions.f_narrow(1, n - 1, 1)?);
        Ok(positions)
    }

    /// Row `i` becomes the old row `beam_idx[i]`.
    pub fn reorder(&mut self, beam_idx: &Tensor) -> Result<()> {
        let idx = beam_idx
            .f_to(self.attention_mask.device())?
            .f_to_kind(Kind::Int64)?;
        let order = RowOrder::new(&idx)?; // read to the host once for every layer
        for cache in &mut self.caches {
            cache.reorder_by(&order)?;
        }
        self.attention_mask = self.attention_mask.f_index_select(0, &idx)?;
        if let Some(last) = &self.last_position {
            self.last_position = Some(last.f_index_select(0, &idx)?);
        }
        Ok(())
    }
}

/// A [`CausalLm`] as the engine's [`Decoder`]: the prompt is the initial ids.
pub struct CausalLmDecoder<'m, M: ?Sized>(pub &'m M);

impl<M: CausalLm + ?Sized> Decoder for CausalLmDecoder<'_, M> {
    type State = CausalLmState;

    /// The left-padded prompts: a decoder-only model continues its input.
    fn initial_ids(&self, batch: &Batch) -> Result<Tensor> {
        if batch.input_ids.size().get(1).copied().unwrap_or(0) == 0 {
            return Err(Error::Input(
                "every prompt is empty: give the model at least one token to continue".into(),
            ));
        }
        Ok(batch.input_ids.f_to(self.0.device())?)
    }

    fn start(&self, batch: &Batch) -> Result<CausalLmState> {
        CausalLmState::new(self.0.num_layers(), &batch.attention_mask, self.0.device())
    }

    /// `ids` `[rows, n]`: the whole prompt on the first step, then the token chosen last step.
    fn step(&self, ids: &Tensor, state: &mut CausalLmState) -> Result<Tensor> {
        let ids = ids.f_to(self.0.device())?;
        let positions = state.advance(&ids)?;
        let mut logits = || {
            self.0
                .next_logits(&ids, &positions, &state.attention_mask, &mut state.caches)
        };
        match ids.size()[..] {
            // One new token per row on the CPU: a decoding step (not a prompt's prefill).
            [rows, 1] if ids.device() == Device::Cpu => {
                let site = self.0 as *const M as *const () as usize;
                crate::nn::parallel::decoding_step(site, rows, logits)
            }
            _ => logits(),
        }
    }

    fn reorder(&self, state: &mut CausalLmState, beam_idx: &Tensor) -> Result<()> {
        state.reorder(beam_idx)
    }

    fn plan(&self, state: &mut CausalLmState, positions: usize) {
        state
            .caches
            .iter_mut()
            .for_each(|c| c.plan(positions as i64));
    }
}

/// An encoder-decoder model, as the generation engine needs it.
pub trait Seq2SeqLm {
    /// Where the weights live.
    fn device(&self) -> Device;

    /// Decoder blocks with a self- and a cross-attention cache each.
    fn num_decoder_layers(&self) -> usize;

    /// The id every output starts with (`decoder_start_token_id`).
    fn decoder_start_token_id(&self) -> i64;

    /// The encoder: `[batch, src]` ids and 1/0 mask → `[batch, src, hidden]`. Only the real
    /// tokens' rows are read (through the masked cross-attention): an implementation may
    /// skip the padding and leave zeros there ([`crate::nn::Packing`]).
    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor>;

    /// The most input tokens the encoder has positions for (BART's learned table: 1,024;
    /// Marian's fixed sinusoids: 512), or `None` when positions have no hard limit (T5's
    /// relative buckets, M2M100's sinusoids computed on demand). Pipelines split longer
    /// documents rather than go past it.
    fn max_input_positions(&self) -> Option<usize> {
        None
    }

    /// Next-token logits `[rows, vocab]` (f32, at the last new position) of decoder `ids`
    /// `[rows, n]` continuing the cached positions, given the encoder output
    /// `[rows / groups, src, hidden]`, its additive mask `[rows / groups, 1, 1, src]` and
    /// `groups`, the decoder rows per encoder row.
    fn next_logits(
        &self,
        ids: &Tensor,
        encoder_hidden: &Tensor,
        encoder_mask: &Tensor,
        groups: i64,
        caches: &mut [LayerCache],
    ) -> Result<Tensor>;
}

impl<T: CausalLm + ?Sized> CausalLm for Box<T> {
    fn device(&self) -> Device {
        (**self).device()
    }

    fn num_layers(&self) -> usize {
        (**self).num_layers()
    }

    fn next_logits(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        attention_mask: &Tensor,
        caches: &mut [LayerCache],
    ) -> Result<Tensor> {
        (**self).next_logits(ids, positions, attention_mask, caches)
    }
}

/// What an encoder-decoder model carries between generation steps.
#[derive(Debug)]
pub struct Seq2SeqState {
    /// `[inputs, src, hidden]`: one per input, shared by its `copies` decoder rows.
    pub encoder_hidden: Tensor,
    /// Additive `[inputs, 1, 1, src]`.
    pub encoder_mask: Tensor,
    /// Decoder rows per input (its beams or returned sequences), on consecutive rows.
    pub copies: i64,
    /// One per decoder block: self-attention keys/values so far, and the cross-attention
    /// keys/values of the encoder output, computed on the first step only.
    pub caches: Vec<LayerCache>,
}

impl Seq2SeqState {
    /// Row `i` becomes the old row `beam_idx[i]`.
    ///
    /// The encoder output and the cross-attention keys/values stay one per input: the first
    /// reorder repeats each input on consecutive rows (the [`Decoder`] contract), and
    /// cross-attention then serves an input's rows from its one copy (grouped attention),
    /// which saves the copies and reads each input's keys/values once a step. Later reorders
    /// move rows among an input's copies, so only the self-attention caches follow them.
    pub fn reorder(&mut self, beam_idx: &Tensor) -> Result<()> {
        let idx = beam_idx
            .f_to(self.encoder_hidden.device())?
            .f_to_kind(Kind::Int64)?;
        let (rows, inputs) = (idx.size()[0], self.encoder_hidden.size()[0]);
        if rows != inputs * self.copies {
            let copies = rows / inputs.max(1);
            let repeat: Vec<i64> = (0..rows).map(|r| r / copies.max(1)).collect();
            let consecutive = self.copies == 1
                && copies * inputs == rows
                && Vec::<i64>::try_from(&idx.f_to(Device::Cpu)?)? == repeat;
            if consecutive {
                self.copies = copies;
            } else {
                // Not the documented pattern: give every row its own copy of everything.
                let input_of = idx.f_floor_divide_scalar(self.copies)?;
                self.encoder_hidden = self.encoder_hidden.f_index_select(0, &input_of)?;
                self.encoder_mask = self.encoder_mask.f_index_select(0, &input_of)?;
                let inputs = RowOrder::new(&input_of)?;
                for cache in &mut self.caches {
                    cache.cross_attn.reorder_by(&inputs)?;
                }
                self.copies = 1;
            }
        }
        let order = RowOrder::new(&idx)?; // read to the host once for every layer
        for cache in &mut self.caches {
            cache.self_attn.reorder_by(&order)?;
        }
        Ok(())
    }
}

/// A [`Seq2SeqLm`] as the engine's [`Decoder`]: the encoder runs once in `start`.
pub struct Seq2SeqDecoder<'m, M: ?Sized>(pub &'m M);

impl<M: Seq2SeqLm + ?Sized> Decoder for Seq2SeqDecoder<'_, M> {
    type State = Seq2SeqState;

    fn initial_ids(&self, batch: &Batch) -> Result<Tensor> {
        let rows = batch.input_ids.size()[0];
        Ok(Tensor::f_full(
            [rows, 1],
            self.0.decoder_start_token_id(),
            (Kind::Int64, self.0.device()),
        )?)
    }

    fn start(&self, batch: &Batch) -> Result<Seq2SeqState> {
        let device = self.0.device();
        let input_ids = batch.input_ids.f_to(device)?;
        let attention_mask = batch.attention_mask.f_to(device)?;
        Ok(Seq2SeqState {
            encoder_hidden: self.0.encode(&input_ids, &attention_mask)?,
            encoder_mask: crate::nn::mask::padding_mask(&attention_mask, Kind::Float)?,
            copies: 1,
            caches: (0..self.0.num_decoder_layers())
                .map(|_| LayerCache::default())
                .collect(),
        })
    }

    fn step(&self, ids: &Tensor, state: &mut Seq2SeqState) -> Result<Tensor> {
        let ids = ids.f_to(self.0.device())?;
        // The first step projects the encoder's output for the cross-attention (many rows).
        let first = state.caches.first().is_none_or(|c| c.cross_attn.is_empty());
        let rows = ids.size()[0];
        let site = self.0 as *const M as *const () as usize;
        let mut logits = || {
            self.0.next_logits(
                &ids,
                &state.encoder_hidden,
                &state.encoder_mask,
                state.copies,
                &mut state.caches,
            )
        };
        if first || ids.device() != Device::Cpu {
            return logits();
        }
        crate::nn::parallel::decoding_step(site, rows, logits)
    }

    fn reorder(&self, state: &mut Seq2SeqState, beam_idx: &Tensor) -> Result<()> {
        state.reorder(beam_idx)
    }

    fn plan(&self, state: &mut Seq2SeqState, positions: usize) {
        state
            .caches
            .iter_mut()
            .for_each(|c| c.plan(positions as i64));
    }
}
