//! BloomForCausalLM: token embeddings and a LayerNorm on them, a stack of pre-LN blocks whose
//! attention carries ALiBi biases, a final LayerNorm and a head tied to the embeddings.
//!
//! ```text
//! ids ─► word_embeddings(ids) ─► word_embeddings_layernorm
//!     ─► N × h.{i}: [ x = x + self_attention(input_layernorm(x), alibi);
//!                     x = x + mlp(post_attention_layernorm(x)) ]
//!         mlp(x) = dense_4h_to_h(gelu_tanh(dense_h_to_4h(x)))
//!     ─► ln_f ─► lm_head (= word_embeddingsᵀ) ─► next-token logits
//! ```
//!
//! No position is added anywhere: each head `h` adds `slope[h] · key_position` to its scores
//! (core's [`alibi_bias`]), which the softmax turns into a penalty on the query–key distance.
//! Key positions are counted over the real tokens of a row (`cumsum(mask) − 1`), so a left-padded
//! prompt is biased as it would be alone — transformers' `build_alibi_tensor`.
//!
//! BLOOM's quirks, each handled once here:
//! - `self_attention.query_key_value` is fused and laid out per head, `[heads, 3, head_dim]` rows
//!   (each head's q, k, v together), where core's fused attention splits `[q | k | v]`: its rows
//!   are reordered once, while loading ([`per_head_qkv_order`]);
//! - with `apply_residual_connection_post_layernorm` the residual of each sublayer is the
//!   normalised input, `norm(x) + f(norm(x))` (core's [`NormPosition::PreNormedResidual`]);
//! - the MLP's GELU is the tanh approximation (`bloom_gelu_forward`, the same function as
//!   torch's `gelu(approximate="tanh")` to within its 8-digit constant `0.79788456` ≈ √(2/π));
//! - the head is `word_embeddings` itself.

use crate::config::BloomConfig;
use tch::{Device, Kind, Tensor};
use trident_core::config::Activation;
use trident_core::generation::CausalLm;
use trident_core::nn::mask::causal_padding_mask;
use trident_core::nn::probe;
use trident_core::nn::{
    alibi_bias, forward_stack, AttentionContext, Embedding, FeedForward, LayerCache, LayerContext,
    Linear, MultiHeadAttention, Norm, NormPosition, Projections, TransformerLayer,
};
use trident_core::{Dtype, ModelFiles, Result, WeightPath, Weights};

/// The order `[3·hidden]` that takes BLOOM's fused q/k/v rows, stored per head as
/// `[heads, 3, head_dim]`, to core's `[q | k | v]` layout (`[3, heads, head_dim]`): entry
/// `t·hidden + i·head_dim + j` is the stored row `i·3·head_dim + t·head_dim + j`.
pub fn per_head_qkv_order(heads: i64, head_dim: i64) -> Result<Tensor> {
    Ok(
        Tensor::f_arange(3 * heads * head_dim, (Kind::Int64, Device::Cpu))?
            .f_view([heads, 3, head_dim])?
            .f_permute([1, 0, 2])?
            .f_reshape([-1])?,
    )
}

/// One block `h.{i}`, as core's pre-norm [`TransformerLayer`] with BLOOM's names.
fn block(p: &WeightPath, c: &BloomConfig) -> Result<TransformerLayer> {
    let (h, heads, d) = (c.hidden_size, c.n_head, c.head_dim());
    let attn = p / "self_attention";
    // [3h, h] stored per head ([heads, 3, head_dim] rows), reordered to [q | k | v].
    let query_key_value = Linear::new(&(&attn / "query_key_value"), h, 3 * h, true)?
        .select_outputs(&per_head_qkv_order(heads, d)?)?;
    let dense = Linear::new(&(&attn / "dense"), h, h, true)?;
    let mlp = p / "mlp";
    let eps = c.layer_norm_epsilon;
    Ok(TransformerLayer {
        self_attention_norm: Norm::layer_norm(&(p / "input_layernorm"), h, eps)?,
        self_attention: MultiHeadAttention::new(
            Projections::Fused(query_key_value),
            dense,
            heads,
            d,
        ),
        cross_attention: None,
        feed_forward_norm: Norm::layer_norm(&(p / "post_attention_layernorm"), h, eps)?,
        feed_forward: FeedForward::new(
            Linear::new(&(&mlp / "dense_h_to_4h"), h, 4 * h, true)?,
            Linear::new(&(&mlp / "dense_4h_to_h"), 4 * h, h, true)?,
            Activation::GeluTanh,
        ),
        norm_position: if c.apply_residual_connection_post_layernorm {
            NormPosition::PreNormedResidual
        } else {
            NormPosition::Pre
        },
    })
}

/// The base model `transformer` (transformers' `BloomModel`).
#[derive(Debug)]
pub struct BloomModel {
    /// `word_embeddings` `[vocab, hidden]` (also the head's weight).
    pub word_embeddings: Embedding,
    /// `word_embeddings_layernorm`, applied to the embeddings before the first block.
    pub word_embeddings_layernorm: Norm,
    /// `h.{i}`, the blocks.
    pub h: Vec<TransformerLayer>,
    /// `ln_f`, the final LayerNorm.
    pub ln_f: Norm,
    /// Attention heads, one ALiBi slope each.
    pub n_head: i64,
}

impl BloomModel {
    /// Declare the base model's weights under `p` (`transformer`; the loader also finds them
    /// without the prefix, as bigscience's checkpoints store them).
    pub fn new(p: &WeightPath, c: &BloomConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(BloomModel {
            word_embeddings: Embedding::vocabulary(&(p / "word_embeddings"), c.vocab_size, h)?
                .indexed_by("token id", "vocab_size"),
            word_embeddings_layernorm: Norm::layer_norm(
                &(p / "word_embeddings_layernorm"),
                h,
                c.layer_norm_epsilon,
            )?,
            h: (0..c.n_layer)
                .map(|i| block(&(p / "h" / i), c))
                .collect::<Result<_>>()?,
            ln_f: Norm::layer_norm(&(p / "ln_f"), h, c.layer_norm_epsilon)?,
            n_head: c.n_head,
        })
    }

    /// The last hidden state `[batch, seq, hidden]` (after `ln_f`).
    ///
    /// - `input_ids`: `[batch, seq]`, the new tokens;
    /// - `attention_mask`: `[batch, past + seq]` 1/0, every key the new tokens may see (the
    ///   cached ones first); it also gives the ALiBi key positions (no position ids: ALiBi
    ///   counts the real tokens of each row);
    /// - `caches`: one per block, holding the `past` keys/values and receiving the new ones;
    ///   `None` to run without a cache (then `past` is 0).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        caches: Option<&mut [LayerCache]>,
    ) -> Result<Tensor> {
        let q_len = input_ids.size().get(1).copied().unwrap_or(0);
        let x = self.word_embeddings.forward(input_ids)?; // [batch, seq, hidden]
        probe::embeddings(&x, None); // positions act in attention, as the ALiBi bias
        let x = self.word_embeddings_layernorm.forward(&x)?;
        // Built once for every block: causal + padding mask [batch, 1, seq, past + seq] and the
        // ALiBi bias [batch, heads, 1, past + seq] (broadcast over the queries).
        let mask = causal_padding_mask(attention_mask, q_len, x.kind())?;
        let alibi = alibi_bias(attention_mask, self.n_head, x.kind())?;
        let ctx = LayerContext {
            self_attention: AttentionContext {
                mask: Some(&mask),
                position_bias: Some(&alibi),
                ..Default::default()
            },
            ..Default::default()
        };
        let x = forward_stack(&self.h, x, &ctx, caches)?;
        self.ln_f.forward(&x)
    }
}

/// BLOOM with its language-model head (transformers' `BloomForCausalLM`).
#[derive(Debug)]
pub struct BloomForCausalLM {
    /// `transformer`, the base model.
    pub transformer: BloomModel,
    /// `lm_head`: the very tensor of `transformer.word_embeddings` when tied.
    pub lm_head: Linear,
    /// The configuration.
    pub config: BloomConfig,
    device: Device,
}

impl BloomForCausalLM {
    /// Load a checkpoint (config.json, safetensors) onto `device`, computing in `dtype`.
    pub fn from_pretrained(files: &ModelFiles, device: Device, dtype: Dtype) -> Result<Self> {
        let config = BloomConfig::from_file(&files.get("config.json")?)?;
        Self::load(files, config, device, dtype)
    }

    /// Load the weights of `files` for `config` (which may differ from the checkpoint's own
    /// config.json, e.g. in its residual variant).
    pub fn load(
        files: &ModelFiles,
        config: BloomConfig,
        device: Device,
        dtype: Dtype,
    ) -> Result<Self> {
        let weights = Weights::open(files, device, dtype)?;
        let root = weights.root();
        let transformer = BloomModel::new(&(&root / "transformer"), &config)?;
        let lm_head = Linear::lm_head(
            &(&root / "lm_head"),
            &transformer.word_embeddings,
            config.tie_word_embeddings,
            config.hidden_size,
            config.vocab_size,
            dtype,
        )?;
        weights.finish()?;
        Ok(BloomForCausalLM {
            transformer,
            lm_head,
            config,
            device,
        })
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Logits `[batch, seq, vocab]` (f32) for every position of `input_ids` `[batch, seq]`,
    /// without a cache; `attention_mask` `[batch, seq]` marks the real tokens (left padding
    /// allowed).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let input_ids = input_ids.f_to(self.device)?;
        let attention_mask = attention_mask.f_to(self.device)?;
        let hidden = self
            .transformer
            .forward(&input_ids, &attention_mask, None)?;
        Ok(self.lm_head.forward(&hidden)?.f_to_kind(Kind::Float)?)
    }
}

impl CausalLm for BloomForCausalLM {
    fn device(&self) -> Device {
        self.device
    }

    fn num_layers(&self) -> usize {
        self.transformer.h.len()
    }

    /// `positions` are not used: ALiBi reads the key positions from `attention_mask`.
    fn next_logits(
        &self,
        ids: &Tensor,
        _positions: &Tensor,
        attention_mask: &Tensor,
        caches: &mut [LayerCache],
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let hidden = self
            .transformer
            .forward(ids, attention_mask, Some(caches))?; // [rows, n, hidden]
        let last = hidden.f_select(1, hidden.size()[1] - 1)?; // [rows, hidden]
        Ok(self.lm_head.forward(&last)?.f_to_kind(Kind::Float)?) // [rows, vocab], f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_rows_go_from_per_head_to_q_k_v_blocks() {
        // 2 heads of width 2: stored rows q0 q0 k0 k0 v0 v0 q1 q1 k1 k1 v1 v1.
        let order = Vec::<i64>::try_from(per_head_qkv_order(2, 2).unwrap()).unwrap();
        assert_eq!(order, [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]);
    }
}
