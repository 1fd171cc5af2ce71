//! Running a model under core's probe ([`trident_core::nn::probe`]) and putting what one
//! input went through back together: per stack, the attention maps of every layer, the
//! residual stream and the embeddings, whether the stack ran once (an encoder) or step by
//! step with its cache (a decoder, one token after another).

use tch::{Device, Kind, Tensor};
use trident_core::generation::Decoder;
use trident_core::nn::probe::{self, Recording};
use trident_core::{Batch, Error, Result};

/// What one stack computed for the first input of its batch, over every call that ran it.
#[derive(Debug)]
pub struct StackTrace {
    /// Self-attention per layer, `[heads, n, n]` (queries × keys, f32 on the CPU). A decoder
    /// that ran step by step has zeros where a query did not see a key yet.
    pub self_attention: Vec<Tensor>,
    /// Cross-attention per layer, `[heads, n, src]` (decoders of encoder-decoders; empty
    /// otherwise).
    pub cross_attention: Vec<Tensor>,
    /// The residual stream `[n, hidden]`: the first layer's input, then each layer's output.
    pub hidden_states: Vec<Tensor>,
    /// The token part of the embeddings `[n, hidden]`, when the family marks it.
    pub token_embeddings: Option<Tensor>,
    /// The position vectors added to it `[n, hidden]` (learned or sinusoidal tables).
    pub position_embeddings: Option<Tensor>,
}

/// `[batch, …]` → the first row, f32 on the CPU.
fn first_row(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_select(0, 0)?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?)
}

impl StackTrace {
    /// The stack as one call ran it (an encoder, or a decoder fed its whole input at once).
    pub fn from_recording(recording: &Recording) -> Result<Self> {
        Self::from_steps(std::slice::from_ref(recording))
    }

    /// The stack as successive cached calls ran it: each step's queries are the next rows,
    /// and its keys the ones seen so far (a step of `q` tokens after `past` ones attends to
    /// `past + q` keys), so the maps are stitched into one `[heads, n, n]` per layer.
    pub fn from_steps(steps: &[Recording]) -> Result<Self> {
        let layers = steps.first().map_or(0, |s| s.self_attentions().len());
        let cross_layers = steps.first().map_or(0, |s| s.cross_attentions().len());
        for (i, s) in steps.iter().enumerate() {
            if s.self_attentions().len() != layers || s.cross_attentions().len() != cross_layers {
                return Err(Error::Input(format!(
                    "step {i} ran {} attention layers, the first {layers}",
                    s.self_attentions().len()
                )));
            }
        }
        // Rows per step and in all.
        let q: Vec<i64> = steps
            .iter()
            .map(|s| s.self_attentions().first().map_or(0, |w| w.size()[2]))
            .collect();
        let n: i64 = q.iter().sum();
        let mut self_attention = Vec::with_capacity(layers);
        for l in 0..layers {
            let mut rows = Vec::with_capacity(steps.len());
            for s in steps {
                let w = first_row(s.self_attentions()[l])?; // [heads, q, k]
                let k = w.size()[2];
                if k > n {
                    return Err(Error::Input(format!(
                        "a step attends to {k} keys of {n} tokens: the steps do not follow one sequence"
                    )));
                }
                rows.push(w.f_constant_pad_nd([0, n - k])?); // [heads, q, n]
            }
            self_attention.push(Tensor::f_cat(&rows, 1)?); // [heads, n, n]
        }
        let mut cross_attention = Vec::with_capacity(cross_layers);
        for l in 0..cross_layers {
            let rows = steps
                .iter()
                .map(|s| first_row(s.cross_attentions()[l]))
                .collect::<Result<Vec<_>>>()?; // [heads, q, src] each
            cross_attention.push(Tensor::f_cat(&rows, 1)?); // [heads, n, src]
        }
        let states = steps.first().map_or(0, |s| s.hidden_states().len());
        let mut hidden_states = Vec::with_capacity(states);
        for i in 0..states {
            let rows = steps
                .iter()
                .map(|s| {
                    let h = s.hidden_states();
                    h.get(i).map(|t| first_row(t)).unwrap_or_else(|| {
                        Err(Error::Input("steps recorded unequal layers".into()))
                    })
                })
                .collect::<Result<Vec<_>>>()?; // [q, hidden] each
            hidden_states.push(Tensor::f_cat(&rows, 0)?); // [n, hidden]
        }
        let (mut tokens, mut positions) = (Vec::new(), Vec::new());
        for s in steps {
            if let Some((token, position)) = s.embeddings() {
                if let Some(p) = position {
                    positions.push(first_row(&p.f_expand_as(token)?)?);
                }
                tokens.push(first_row(token)?); // [q, hidden]
            }
        }
        let whole = |parts: Vec<Tensor>| -> Result<Option<Tensor>> {
            Ok(match parts.len() {
                0 => None,
                m if m == steps.len() => Some(Tensor::f_cat(&parts, 0)?),
                _ => None, // marked on some steps only: not one sequence
            })
        };
        Ok(StackTrace {
            self_attention,
            cross_attention,
            hidden_states,
            token_embeddings: whole(tokens)?,
            position_embeddings: whole(positions)?,
        })
    }

    /// Layers of the stack.
    pub fn layers(&self) -> usize {
        self.self_attention.len()
    }

    /// Attention heads per layer.
    pub fn heads(&self) -> usize {
        self.self_attention
            .first()
            .map_or(0, |w| w.size()[0] as usize)
    }
}

/// One decoding path followed with the model's own cache, every step recorded.
#[derive(Debug)]
pub struct DecodeTrace {
    /// What the decoder's `start` ran (an encoder-decoder's encoder); `None` when it ran no
    /// layer (a decoder-only model).
    pub encoder: Option<StackTrace>,
    /// The decoder over every token it read: the initial ids (the prompt, or the decoder
    /// start token), then the path but its last token.
    pub decoder: StackTrace,
    /// The ids the decoder read, in order.
    pub read: Vec<i64>,
    /// Next-token logits after each step, `[vocab]` f32 on the CPU: step `i` predicted
    /// `path[i]`.
    pub logits: Vec<Tensor>,
}

/// Follow `path` (the tokens a generation chose for the first input of `batch`) with
/// `decoder`: `start`, then one step on the initial ids and one on each chosen token but the
/// last, each under the probe. The logits are the model's before any generation setting
/// (beams, penalties, forced tokens) acted on them. At least one step runs, so an empty path
/// still shows the prompt and the first prediction.
pub fn follow<D: Decoder + ?Sized>(
    decoder: &D,
    batch: &Batch,
    path: &[i64],
) -> Result<DecodeTrace> {
    tch::no_grad(|| {
        let (mut state, start) = probe::record(|| decoder.start(batch))?;
        let encoder = match start.events.is_empty() {
            true => None,
            false => Some(StackTrace::from_recording(&start)?),
        };
        let first = decoder.initial_ids(batch)?.f_narrow(0, 0, 1)?; // [1, n]
        let mut read: Vec<i64> = Vec::<i64>::try_from(first.f_flatten(0, -1)?)?;
        let mut ids = first;
        let (mut steps, mut logits) = (Vec::new(), Vec::new());
        for i in 0..path.len().max(1) {
            let (next, recording) = probe::record(|| decoder.step(&ids, &mut state))?;
            logits.push(first_row(&next)?);
            steps.push(recording);
            if i + 1 < path.len() {
                read.push(path[i]);
                ids = Tensor::f_from_slice(&[path[i]])?
                    .f_view([1, 1])?
                    .f_to(batch.input_ids.device())?;
            }
        }
        Ok(DecodeTrace {
            encoder,
            decoder: StackTrace::from_steps(&steps)?,
            read,
            logits,
        })
    })
}
