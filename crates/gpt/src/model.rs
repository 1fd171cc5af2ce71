//! GPT-2: token and learned position embeddings, a stack of pre-LN blocks, a final LayerNorm
//! and a language-model head tied to the token embeddings.
//!
//! ```text
//! ids ─► wte(ids) + wpe(positions)
//!     ─► N × h.{i}: [ x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) ]   (causal self-attention)
//!     ─► ln_f ─► lm_head (= wteᵀ) ─► next-token logits
//! ```
//!
//! Names are Hugging Face's (`transformer.wte`, `h.{i}.attn.c_attn`, …), so the weight
//! loader finds them with or without the `transformer.` prefix. GPT-2's projections are
//! `Conv1D`s, stored `[in, out]`; core's [`Linear::conv1d`] loads them so and
//! [`prepare`] re-stores them `[out, in]` like every other projection.
//!
//! For generation the model implements core's [`Decoder`]: its [`GPT2State`] holds one KV
//! cache per block, the attention mask of everything seen so far (the prompt's left padding
//! included) and the position of the last token of each row.

use crate::config::GPT2Config;
use tch::nn::{Path, VarStore};
use tch::{Device, Kind, Tensor};
use trident_core::generation::Decoder;
use trident_core::nn::mask::causal_padding_mask;
use trident_core::nn::{
    prepare, Embedding, FeedForward, LayerCache, LayerContext, Linear, MultiHeadAttention, Norm,
    NormPosition, Projections, TransformerLayer,
};
use trident_core::text::Batch;
use trident_core::weights::build_and_load;
use trident_core::{Dtype, Error, ModelFiles, Result};

/// One block `h.{i}`: `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`, built from core's
/// pre-LN [`TransformerLayer`] with GPT-2's weight names.
fn block(p: &Path, c: &GPT2Config, layer: i64) -> Result<TransformerLayer> {
    let (h, inner) = (c.n_embd, c.inner_size());
    let (attn, mlp) = (p / "attn", p / "mlp");
    // c_attn projects to [q | k | v] in one matrix, `[h, 3h]`.
    let c_attn = Linear::conv1d(&(&attn / "c_attn"), h, 3 * h)?;
    let attention = MultiHeadAttention::new(
        Projections::Fused(c_attn),
        Linear::conv1d(&(&attn / "c_proj"), h, h)?,
        c.n_head,
        c.head_dim(),
    )
    .with_scale(c.attention_scale(layer));
    Ok(TransformerLayer {
        self_attention_norm: Norm::layer_norm(&(p / "ln_1"), h, c.layer_norm_epsilon)?,
        self_attention: attention,
        cross_attention: None,
        feed_forward_norm: Norm::layer_norm(&(p / "ln_2"), h, c.layer_norm_epsilon)?,
        feed_forward: FeedForward::new(
            Linear::conv1d(&(&mlp / "c_fc"), h, inner)?,
            Linear::conv1d(&(&mlp / "c_proj"), inner, h)?,
            c.activation()?,
        ),
        norm_position: NormPosition::Pre,
    })
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

/// The base model `transformer` (transformers' `GPT2Model`): embeddings, blocks, `ln_f`.
#[derive(Debug)]
pub struct GPT2Model {
    /// Its configuration.
    pub config: GPT2Config,
    /// `wte`, token embeddings `[vocab, n_embd]` (also the LM head's weight).
    pub wte: Embedding,
    /// `wpe`, learned position embeddings `[n_positions, n_embd]`.
    pub wpe: Embedding,
    /// `h.{i}`, the blocks.
    pub h: Vec<TransformerLayer>,
    /// `ln_f`, the final LayerNorm.
    pub ln_f: Norm,
}

impl GPT2Model {
    /// Declare the base model's weights under `p` (`transformer`).
    pub fn new(p: &Path, config: &GPT2Config) -> Result<Self> {
        let h = (0..config.n_layer)
            .map(|i| block(&(p / "h" / i), config, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(GPT2Model {
            config: config.clone(),
            wte: Embedding::new(&(p / "wte"), config.vocab_size, config.n_embd)?,
            wpe: Embedding::new(&(p / "wpe"), config.n_positions, config.n_embd)?,
            h,
            ln_f: Norm::layer_norm(&(p / "ln_f"), config.n_embd, config.layer_norm_epsilon)?,
        })
    }

    /// The last hidden state `[batch, seq, n_embd]` (after `ln_f`).
    ///
    /// - `input_ids`, `position_ids`: `[batch, seq]`, the new tokens and their positions;
    /// - `attention_mask`: `[batch, past + seq]` 1/0, every key the new tokens may see
    ///   (the cached ones first);
    /// - `caches`: one per block, holding the `past` keys/values and receiving the new ones;
    ///   `None` to run without a cache (then `past` is 0).
    ///
    /// Ids outside the vocabulary and positions beyond the context are errors, not panics.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        caches: Option<&mut [LayerCache]>,
    ) -> Result<Tensor> {
        self.check_range(
            input_ids,
            self.config.vocab_size,
            "token id",
            "vocabulary size",
        )?;
        self.check_range(
            position_ids,
            self.config.n_positions,
            "position",
            "context (n_positions)",
        )?;
        let q_len = input_ids.size().get(1).copied().unwrap_or(0);
        // [batch, seq, n_embd]
        let mut x = self.wte.forward(input_ids) + self.wpe.forward(position_ids);
        // Causal and padding masks together, [batch, 1, seq, past + seq], built once for all
        // blocks.
        let mask = causal_padding_mask(attention_mask, q_len, x.kind());
        let ctx = LayerContext {
            mask: Some(&mask),
            ..Default::default()
        };
        match caches {
            Some(caches) => {
                if caches.len() != self.h.len() {
                    return Err(Error::Input(format!(
                        "{} KV caches for {} blocks",
                        caches.len(),
                        self.h.len()
                    )));
                }
                for (block, cache) in self.h.iter().zip(caches.iter_mut()) {
                    x = block.forward(&x, &ctx, Some(cache))?;
                }
            }
            None => {
                for block in &self.h {
                    x = block.forward(&x, &ctx, None)?;
                }
            }
        }
        Ok(self.ln_f.forward(&x))
    }

    /// An error unless every value of `t` lies in `0..limit`; embedding lookups out of range
    /// would abort inside libtorch.
    fn check_range(&self, t: &Tensor, limit: i64, what: &str, name: &str) -> Result<()> {
        if t.numel() == 0 {
            return Ok(());
        }
        let (lo, hi) = (t.f_min()?.int64_value(&[]), t.f_max()?.int64_value(&[]));
        if lo < 0 || hi >= limit {
            let bad = if lo < 0 { lo } else { hi };
            return Err(Error::Input(format!(
                "{what} {bad} is outside the model's {name} of {limit}"
            )));
        }
        Ok(())
    }
}

/// GPT-2 with its language-model head (transformers' `GPT2LMHeadModel`).
#[derive(Debug)]
pub struct GPT2LMHeadModel {
    /// Owns the parameters (the modules hold shallow copies).
    _vs: VarStore,
    /// `transformer`, the base model.
    pub transformer: GPT2Model,
    /// `lm_head`: the very tensor of `transformer.wte` when tied (until int8 quantizes a
    /// copy of it).
    pub lm_head: Linear,
    device: Device,
}

/// What GPT-2 carries from one generation step to the next.
#[derive(Debug)]
pub struct GPT2State {
    /// One self-attention KV cache per block.
    pub caches: Vec<LayerCache>,
    /// `[rows, seen]` 1/0: which of the tokens seen so far are real (the prompt's left padding
    /// is 0, every generated token 1).
    pub attention_mask: Tensor,
    /// `[rows, 1]`, the position of each row's last token; `None` before the first step.
    pub last_position: Option<Tensor>,
}

impl GPT2LMHeadModel {
    /// Load a GPT-2 checkpoint (`GPT2LMHeadModel` or a bare `GPT2Model` such as the original
    /// `gpt2` repository, with or without the `transformer.` prefix) on `device`.
    pub fn from_pretrained(files: &ModelFiles, device: Device, dtype: Dtype) -> Result<Self> {
        let config = GPT2Config::from_file(&files.get("config.json")?)?;
        Self::load(files, &config, device, dtype)
    }

    /// Load the weights of `files` for `config`, to compute in `dtype`.
    pub fn load(
        files: &ModelFiles,
        config: &GPT2Config,
        device: Device,
        dtype: Dtype,
    ) -> Result<Self> {
        let (mut vs, (mut transformer, lm_head)) = build_and_load(files, device, |root| {
            let transformer = GPT2Model::new(&(root / "transformer"), config)?;
            let lm_head = if config.tie_word_embeddings {
                None
            } else {
                Some(Linear::new(
                    &(root / "lm_head"),
                    config.n_embd,
                    config.vocab_size,
                    false,
                )?)
            };
            Ok((transformer, lm_head))
        })?;
        // Every released GPT-2 ties the head to the token embeddings: one tensor, stored once
        // (checkpoints omit `lm_head.weight` or repeat wte in it).
        let mut lm_head = lm_head.unwrap_or_else(|| Linear::tied(&transformer.wte.weight));
        let linears = transformer.h.iter_mut().flat_map(|b| b.linears_mut());
        prepare(&mut vs, linears.chain([&mut lm_head]), dtype)?;
        Ok(GPT2LMHeadModel {
            _vs: vs,
            transformer,
            lm_head,
            device,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GPT2Config {
        &self.transformer.config
    }

    /// Where the parameters live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Logits `[batch, seq, vocab]` for every position of `input_ids` `[batch, seq]`, without a
    /// cache; positions come from `attention_mask` `[batch, seq]` (see [`position_ids`]).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let input_ids = input_ids.f_to(self.device)?;
        let attention_mask = attention_mask.f_to(self.device)?;
        let positions = position_ids(&attention_mask)?;
        let hidden = self
            .transformer
            .forward(&input_ids, &positions, &attention_mask, None)?;
        Ok(self.lm_head.forward(&hidden).f_to_kind(Kind::Float)?)
    }

    /// A fresh generation state for `rows` sequences whose prompts have the 1/0 mask
    /// `attention_mask` `[rows, prompt]`.
    pub fn new_state(&self, attention_mask: &Tensor) -> Result<GPT2State> {
        Ok(GPT2State {
            caches: (0..self.transformer.h.len())
                .map(|_| LayerCache::default())
                .collect(),
            attention_mask: attention_mask.f_to(self.device)?.f_to_kind(Kind::Int64)?,
            last_position: None,
        })
    }
}

impl Decoder for GPT2LMHeadModel {
    type State = GPT2State;

    /// The left-padded prompts: a decoder-only model continues its input.
    fn initial_ids(&self, batch: &Batch) -> Result<Tensor> {
        if batch.input_ids.size().get(1).copied().unwrap_or(0) == 0 {
            return Err(Error::Input(
                "every prompt is empty: give GPT-2 at least one token to continue".into(),
            ));
        }
        Ok(batch.input_ids.f_to(self.device)?)
    }

    fn start(&self, batch: &Batch) -> Result<GPT2State> {
        self.new_state(&batch.attention_mask)
    }

    /// `ids` `[rows, n]`: the whole prompt on the first step, then the token chosen last step.
    fn step(&self, ids: &Tensor, state: &mut GPT2State) -> Result<Tensor> {
        let ids = ids.f_to(self.device)?;
        let (rows, n) = (ids.size()[0], ids.size()[1]);
        let positions = match &state.last_position {
            // The prompt: its mask is already in the state.
            None => {
                if state.attention_mask.size() != ids.size() {
                    return Err(Error::Input(format!(
                        "the first step takes the whole prompt {:?}, as its mask {:?}",
                        ids.size(),
                        state.attention_mask.size()
                    )));
                }
                position_ids(&state.attention_mask)?
            }
            // New tokens: real, and one position after the last one.
            Some(last) => {
                let ones = Tensor::f_ones([rows, n], (Kind::Int64, self.device))?;
                state.attention_mask = Tensor::f_cat(&[&state.attention_mask, &ones], 1)?;
                last + Tensor::f_arange_start(1, n + 1, (Kind::Int64, self.device))?
                    .f_view([1, n])?
            }
        };
        let hidden = self.transformer.forward(
            &ids,
            &positions,
            &state.attention_mask,
            Some(&mut state.caches),
        )?; // [rows, n, n_embd]
        state.last_position = Some(positions.f_narrow(1, n - 1, 1)?);
        let last = hidden.f_select(1, n - 1)?; // [rows, n_embd]
        Ok(self.lm_head.forward(&last).f_to_kind(Kind::Float)?) // [rows, vocab], f32
    }

    fn reorder(&self, state: &mut GPT2State, beam_idx: &Tensor) -> Result<()> {
        let idx = beam_idx.f_to(self.device)?.f_to_kind(Kind::Int64)?;
        for cache in &mut state.caches {
            cache.reorder(&idx)?;
        }
        state.attention_mask = state.attention_mask.f_index_select(0, &idx)?;
        if let Some(last) = &state.last_position {
            state.last_position = Some(last.f_index_select(0, &idx)?);
        }
        Ok(())
    }
}
