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
//! `Conv1D`s, stored `[in, out]`; core's [`Linear::conv1d`] reads them into the `[out, in]`
//! layout of every other projection.
//!
//! For generation the model implements core's [`CausalLm`] ("next-token logits for these
//! ids, positions and caches"); core's decode state does the rest (positions under left
//! padding, the growing mask, caches, beam reorders).

use crate::config::GPT2Config;
use tch::{Device, Kind, Tensor};
use trident_core::generation::CausalLm;
use trident_core::nn::mask::causal_padding_mask;
use trident_core::nn::probe;
use trident_core::nn::{
    forward_stack, AttentionContext, Embedding, FeedForward, LayerCache, LayerContext, Linear,
    MultiHeadAttention, Norm, NormPosition, Projections, TransformerLayer,
};
use trident_core::{Dtype, ModelFiles, Result, WeightPath, Weights};

pub use trident_core::generation::state::position_ids;

/// One block `h.{i}`: `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`, built from core's
/// pre-LN [`TransformerLayer`] with GPT-2's weight names.
fn block(p: &WeightPath, c: &GPT2Config, layer: i64) -> Result<TransformerLayer> {
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
    pub fn new(p: &WeightPath, config: &GPT2Config) -> Result<Self> {
        let h = (0..config.n_layer)
            .map(|i| block(&(p / "h" / i), config, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(GPT2Model {
            config: config.clone(),
            wte: Embedding::vocabulary(&(p / "wte"), config.vocab_size, config.n_embd)?
                .indexed_by("token id", "vocab_size"),
            wpe: Embedding::new(&(p / "wpe"), config.n_positions, config.n_embd)?
                .indexed_by("position", "n_positions"),
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
        let q_len = input_ids.size().get(1).copied().unwrap_or(0);
        let tokens = self.wte.forward(input_ids)?; // [batch, seq, n_embd]
        let positions = self.wpe.forward(position_ids)?; // [batch, seq, n_embd]
        probe::embeddings(&tokens, Some(&positions));
        let x = tokens.f_add(&positions)?;
        // Causal and padding masks together, [batch, 1, seq, past + seq], built once for all
        // blocks. One new token per row with no padding anywhere may see every key: no mask
        // (decoding one prompt token by token, where a dozen small ops per step matter). The
        // check reads the mask, so only where that costs no device sync (the CPU).
        let unpadded = attention_mask.device() == Device::Cpu
            && (attention_mask.numel() == 0 || attention_mask.f_min()?.int64_value(&[]) == 1);
        let mask = if q_len == 1 && unpadded {
            None
        } else {
            Some(causal_padding_mask(attention_mask, q_len, x.kind())?)
        };
        let ctx = LayerContext {
            self_attention: AttentionContext {
                mask: mask.as_ref(),
                ..Default::default()
            },
            ..Default::default()
        };
        let x = forward_stack(&self.h, x, &ctx, caches)?;
        self.ln_f.forward(&x)
    }
}

/// GPT-2 with its language-model head (transformers' `GPT2LMHeadModel`).
#[derive(Debug)]
pub struct GPT2LMHeadModel {
    /// `transformer`, the base model.
    pub transformer: GPT2Model,
    /// `lm_head`: the very tensor of `transformer.wte` when tied (int8 quantizes a copy).
    pub lm_head: Linear,
    device: Device,
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
        let weights = Weights::open(files, device, dtype)?;
        let root = weights.root();
        let transformer = GPT2Model::new(&(&root / "transformer"), config)?;
        // Every released GPT-2 ties the head to the token embeddings: one tensor, stored once.
        let lm_head = Linear::lm_head(
            &(&root / "lm_head"),
            &transformer.wte,
            config.tie_word_embeddings,
            config.n_embd,
            config.vocab_size,
            dtype,
        )?;
        weights.finish()?;
        Ok(GPT2LMHeadModel {
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
        Ok(self.lm_head.forward(&hidden)?.f_to_kind(Kind::Float)?)
    }
}

impl CausalLm for GPT2LMHeadModel {
    fn device(&self) -> Device {
        self.device
    }

    fn num_layers(&self) -> usize {
        self.transformer.h.len()
    }

    fn next_logits(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        attention_mask: &Tensor,
        caches: &mut [LayerCache],
    ) -> Result<Tensor> {
        let hidden = self
            .transformer
            .forward(ids, positions, attention_mask, Some(caches))?; // [rows, n, n_embd]
        let last = hidden.f_select(1, hidden.size()[1] - 1)?; // [rows, n_embd]
        Ok(self.lm_head.forward(&last)?.f_to_kind(Kind::Float)?) // [rows, vocab], f32
    }
}
