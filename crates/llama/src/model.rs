//! LlamaForCausalLM: token embeddings, a stack of pre-norm blocks with rotary positions and
//! grouped-query attention, a final RMSNorm and a language-model head (tied to the
//! embeddings in Llama 3.2, SmolLM2 and Qwen2.5-0.5B).
//!
//! The same code runs `MistralForCausalLM` and `Qwen2ForCausalLM`: what they change is read
//! from their config ([`crate::config::Family`]): Qwen2's q/k/v biases, and a sliding window
//! over the keys (Mistral on every layer, Qwen2 on some), which only changes a layer's mask.
//!
//! ```text
//! ids ─► embed_tokens(ids)
//!     ─► N × layers.{i}: [ x = x + self_attn(input_layernorm(x), rotary(positions));
//!                          x = x + mlp(post_attention_layernorm(x)) ]
//!         mlp(x) = down_proj(silu(gate_proj(x)) ⊙ up_proj(x))          (SwiGLU)
//!     ─► norm ─► lm_head ─► next-token logits
//! ```
//!
//! No position is added to the embeddings: queries and keys are turned by angles that grow
//! with the position (core's [`Rotary`]), so their dot product depends on the distance.
//! Grouped-query attention keeps `num_key_value_heads` key/value heads, each serving several
//! query heads; the caches hold only those.

use crate::config::LlamaConfig;
use tch::{Device, Kind, Tensor};
use trident_core::generation::CausalLm;
use trident_core::nn::mask::{causal_padding_mask, sliding_window_mask};
use trident_core::nn::probe;
use trident_core::nn::{
    forward_stack, AttentionContext, Embedding, FeedForward, LayerCache, LayerContext, Linear,
    MultiHeadAttention, Norm, NormPosition, Projections, Rotary, TransformerLayer,
};
use trident_core::{Dtype, Error, ModelFiles, Result, WeightPath, Weights};

/// One block `layers.{i}`, as core's pre-norm [`TransformerLayer`] with Llama's names.
fn block(p: &WeightPath, c: &LlamaConfig) -> Result<TransformerLayer> {
    let (h, d) = (c.hidden_size, c.head_width());
    let (heads, kv) = (c.num_attention_heads, c.kv_heads());
    let attn = p / "self_attn";
    let projections = Projections::Separate {
        q: Linear::new(&(&attn / "q_proj"), h, heads * d, c.qkv_bias())?,
        k: Linear::new(&(&attn / "k_proj"), h, kv * d, c.qkv_bias())?,
        v: Linear::new(&(&attn / "v_proj"), h, kv * d, c.qkv_bias())?,
    };
    let out = Linear::new(&(&attn / "o_proj"), heads * d, h, c.o_proj_bias())?;
    let mlp = p / "mlp";
    let bias = c.mlp_has_bias();
    Ok(TransformerLayer {
        self_attention_norm: Norm::rms_norm(&(p / "input_layernorm"), h, c.rms_norm_eps)?,
        self_attention: MultiHeadAttention::new(projections, out, heads, d).with_kv_heads(kv)?,
        cross_attention: None,
        feed_forward_norm: Norm::rms_norm(&(p / "post_attention_layernorm"), h, c.rms_norm_eps)?,
        // SwiGLU: the activation goes on gate_proj, whose output multiplies up_proj's.
        feed_forward: FeedForward::gated(
            Linear::new(&(&mlp / "gate_proj"), h, c.intermediate_size, bias)?,
            Linear::new(&(&mlp / "up_proj"), h, c.intermediate_size, bias)?,
            Linear::new(&(&mlp / "down_proj"), c.intermediate_size, h, bias)?,
            c.activation()?,
        ),
        norm_position: NormPosition::Pre,
    })
}

/// The base model `model` (transformers' `LlamaModel`, `MistralModel`, `Qwen2Model`).
#[derive(Debug)]
pub struct LlamaModel {
    /// `embed_tokens` `[vocab, hidden]`.
    pub embed_tokens: Embedding,
    /// `layers.{i}`.
    pub layers: Vec<TransformerLayer>,
    /// `norm`, the final RMSNorm.
    pub norm: Norm,
    /// The rotary positions every layer uses.
    pub rotary: Rotary,
    /// How many keys each layer sees (`None`: every earlier one; Mistral's and Qwen2's
    /// sliding windows), from [`LlamaConfig::layer_windows`].
    pub windows: Vec<Option<i64>>,
}

impl LlamaModel {
    /// Declare the base model's weights under `p` (`model`).
    pub fn new(p: &WeightPath, c: &LlamaConfig) -> Result<Self> {
        Ok(LlamaModel {
            embed_tokens: Embedding::vocabulary(
                &(p / "embed_tokens"),
                c.vocab_size,
                c.hidden_size,
            )?
            .indexed_by("token id", "vocab_size"),
            layers: (0..c.num_hidden_layers)
                .map(|i| block(&(p / "layers" / i), c))
                .collect::<Result<_>>()?,
            norm: Norm::rms_norm(&(p / "norm"), c.hidden_size, c.rms_norm_eps)?,
            rotary: c.rotary()?,
            windows: c.layer_windows()?,
        })
    }

    /// The last hidden state `[batch, seq, hidden]` (after `norm`) of `input_ids` at
    /// `position_ids` (`[batch, seq]`), seeing the keys `attention_mask` `[batch, past + seq]`
    /// allows; with `caches`, the new keys/values are appended to them.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        caches: Option<&mut [LayerCache]>,
    ) -> Result<Tensor> {
        let q_len = input_ids.size().get(1).copied().unwrap_or(0);
        let mut x = self.embed_tokens.forward(input_ids)?; // [batch, seq, hidden]
        probe::embeddings(&x, None); // positions act in attention, as rotary angles
        let angles = self.rotary.angles(position_ids, x.kind())?; // cos/sin, once for every layer
        let n = self.layers.len();
        if self.windows.len() != n || caches.as_ref().is_some_and(|c| c.len() != n) {
            return Err(Error::Input(format!(
                "{n} layers, {} layer windows and {:?} KV caches",
                self.windows.len(),
                caches.as_ref().map(|c| c.len())
            )));
        }
        let mut caches = caches;
        // One mask [batch, 1, seq, past + seq] per distinct window, then the layers that share
        // it in a row (one run for Llama and Mistral, at most two for Qwen2).
        let mut masks: Vec<(Option<i64>, Tensor)> = Vec::new();
        let mut start = 0;
        for run in self.windows.chunk_by(|a, b| a == b) {
            let window = run[0];
            let i = match masks.iter().position(|(w, _)| *w == window) {
                Some(i) => i,
                None => {
                    let mask = match window {
                        None => causal_padding_mask(attention_mask, q_len, x.kind())?,
                        Some(w) => sliding_window_mask(attention_mask, q_len, w, x.kind())?,
                    };
                    masks.push((window, mask));
                    masks.len() - 1
                }
            };
            let mask = &masks[i].1;
            let ctx = LayerContext {
                self_attention: AttentionContext {
                    mask: Some(mask),
                    rotary: Some(&angles),
                    ..Default::default()
                },
                ..Default::default()
            };
            let end = start + run.len();
            let run_caches = caches.as_deref_mut().map(|c| &mut c[start..end]);
            x = forward_stack(&self.layers[start..end], x, &ctx, run_caches)?;
            start = end;
        }
        self.norm.forward(&x)
    }
}

/// Llama with its language-model head (transformers' `LlamaForCausalLM`, and
/// `MistralForCausalLM` / `Qwen2ForCausalLM` by their config).
#[derive(Debug)]
pub struct LlamaForCausalLM {
    /// `model`.
    pub model: LlamaModel,
    /// `lm_head`, or the token embedding itself when tied.
    pub lm_head: Linear,
    /// The configuration.
    pub config: LlamaConfig,
    device: Device,
}

impl LlamaForCausalLM {
    /// Load a checkpoint (config.json, safetensors: one file or the shards
    /// `model.safetensors.index.json` lists, in any float dtype) onto `device`, computing in
    /// `dtype`.
    pub fn from_pretrained(files: &ModelFiles, device: Device, dtype: Dtype) -> Result<Self> {
        let config = LlamaConfig::from_file(&files.get("config.json")?)?;
        Self::from_config(files, config, device, dtype)
    }

    /// Load a checkpoint's weights with the given `config` in place of its config.json.
    pub fn from_config(
        files: &ModelFiles,
        config: LlamaConfig,
        device: Device,
        dtype: Dtype,
    ) -> Result<Self> {
        let weights = Weights::open(files, device, dtype)?;
        let root = weights.root();
        let model = LlamaModel::new(&(&root / "model"), &config)?;
        let lm_head = Linear::lm_head(
            &(&root / "lm_head"),
            &model.embed_tokens,
            config.tie_word_embeddings,
            config.hidden_size,
            config.vocab_size,
            dtype,
        )?;
        weights.finish()?;
        Ok(LlamaForCausalLM {
            model,
            lm_head,
            config,
            device,
        })
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Logits `[batch, seq, vocab]` (f32) for every position of `input_ids`, without a cache;
    /// positions come from `attention_mask` (left padding allowed).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let input_ids = input_ids.f_to(self.device)?;
        let attention_mask = attention_mask.f_to(self.device)?;
        let positions = trident_core::generation::state::position_ids(&attention_mask)?;
        let hidden = self
            .model
            .forward(&input_ids, &positions, &attention_mask, None)?;
        Ok(self.lm_head.forward(&hidden)?.f_to_kind(Kind::Float)?)
    }
}

impl CausalLm for LlamaForCausalLM {
    fn device(&self) -> Device {
        self.device
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn next_logits(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        attention_mask: &Tensor,
        caches: &mut [LayerCache],
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let hidden = self
            .model
            .forward(ids, positions, attention_mask, Some(caches))?; // [rows, n, hidden]
        let last = hidden.f_select(1, hidden.size()[1] - 1)?; // [rows, hidden]
        Ok(self.lm_head.forward(&last)?.f_to_kind(Kind::Float)?) // [rows, vocab], f32
    }
}
