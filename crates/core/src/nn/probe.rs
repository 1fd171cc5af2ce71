//! A probe on the shared blocks: what one call computed inside the model, for `trident
//! explain` and for tests against transformers' `output_attentions` / `output_hidden_states`.
//!
//! The probe is **per call and per thread**: [`record`] runs a closure (a model's forward, an
//! encoder pass, one decoding step) with a recording switched on for the calling thread only,
//! and hands back what the blocks saw. Models stay immutable and shared: nothing is stored in
//! a module, and a call on another thread (a server worker, a test running beside it) records
//! nothing and computes exactly as before.
//!
//! What is recorded, in the order the model computes it ([`Event`]):
//!
//! - the token and positional parts of the embeddings, where the family says which is which
//!   ([`embeddings`], one line in each family's embedding code);
//! - every attention's weights `softmax(q·kᵀ·scale + bias)` `[batch, heads, q, k]`,
//!   self-attention and cross-attention apart. While recording, attention computes them
//!   explicitly and multiplies them with the values, so the weights recorded are the ones the
//!   output was made from; otherwise it runs libtorch's fused kernel, unchanged;
//! - every [`TransformerLayer`](super::TransformerLayer)'s input and output hidden state (the
//!   residual stream) `[batch, seq, hidden]`.
//!
//! Off (the default), each block pays one thread-local flag read per call and allocates
//! nothing. Recorded tensors are kept as they are (shallow, on the model's device); they
//! are never written afterwards, because model code calls only out-of-place operations.

use crate::Result;
use std::cell::{Cell, RefCell};
use tch::Tensor;

/// One thing the model computed, in order.
#[derive(Debug)]
pub enum Event {
    /// The embeddings of a stack's input: the token part `[batch, seq, hidden]` (after any
    /// embedding scale) and the positional part added to it (learned or sinusoidal tables;
    /// `None` where positions act inside attention: relative buckets, rotary, ALiBi).
    Embeddings {
        /// Token embeddings.
        token: Tensor,
        /// Position embeddings, broadcastable to the token part.
        position: Option<Tensor>,
    },
    /// Self-attention weights `[batch, heads, q, k]` (each row sums to 1).
    SelfAttention(Tensor),
    /// Cross-attention weights `[batch, heads, q, src]`.
    CrossAttention(Tensor),
    /// A transformer layer: its input and output `[batch, seq, hidden]`.
    Layer {
        /// The hidden state the layer received.
        input: Tensor,
        /// The hidden state it returned.
        output: Tensor,
    },
}

/// What one [`record`]ed call computed: its [`Event`]s in order, with views by kind.
#[derive(Debug, Default)]
pub struct Recording {
    /// Every event, in the order the model computed them.
    pub events: Vec<Event>,
}

impl Recording {
    /// Self-attention weights, one `[batch, heads, q, k]` per layer in order.
    pub fn self_attentions(&self) -> Vec<&Tensor> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::SelfAttention(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    /// Cross-attention weights, one `[batch, heads, q, src]` per decoder layer in order.
    pub fn cross_attentions(&self) -> Vec<&Tensor> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::CrossAttention(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    /// The residual stream as transformers' `output_hidden_states` counts it, but without a
    /// final norm: the first layer's input (the embeddings), then each layer's output
    /// (`layers + 1` tensors `[batch, seq, hidden]`).
    pub fn hidden_states(&self) -> Vec<&Tensor> {
        let mut states = Vec::new();
        for event in &self.events {
            if let Event::Layer { input, output } = event {
                if states.is_empty() {
                    states.push(input);
                }
                states.push(output);
            }
        }
        states
    }

    /// The first embeddings recorded: `(token part, positional part)`.
    pub fn embeddings(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        self.events.iter().find_map(|e| match e {
            Event::Embeddings { token, position } => Some((token, position.as_ref())),
            _ => None,
        })
    }
}

thread_local! {
    /// Whether this thread records (read by every block: one flag, no borrow).
    static ON: Cell<bool> = const { Cell::new(false) };
    /// The events of the recording in progress on this thread.
    static EVENTS: RefCell<Vec<Event>> = const { RefCell::new(Vec::new()) };
}

/// Whether the calling thread is inside [`record`].
#[inline]
pub fn is_recording() -> bool {
    ON.with(Cell::get)
}

/// Ends a recording even when the closure panics, and gives back an enclosing one.
struct Scope {
    was_on: bool,
    outer: Vec<Event>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        ON.with(|on| on.set(self.was_on));
        EVENTS.with(|events| std::mem::swap(&mut *events.borrow_mut(), &mut self.outer));
    }
}

/// Run `f` with the probe on for this thread, and return its result with what the model's
/// blocks computed during it. Recordings nest: an inner one takes only its own events.
pub fn record<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Recording)> {
    let scope = Scope {
        was_on: ON.with(|on| on.replace(true)),
        outer: EVENTS.with(|events| std::mem::take(&mut *events.borrow_mut())),
    };
    let result = f();
    let events = EVENTS.with(|events| std::mem::take(&mut *events.borrow_mut()));
    drop(scope); // the flag and an enclosing recording's events come back
    Ok((result?, Recording { events }))
}

fn push(event: impl FnOnce() -> Event) {
    if is_recording() {
        let event = event();
        EVENTS.with(|events| events.borrow_mut().push(event));
    }
}

/// Record a stack's embeddings, split into the token part and the positional part added to
/// it (`None` when positions act inside attention). A family calls this where it sums them;
/// it does nothing unless the thread is recording.
pub fn embeddings(token: &Tensor, position: Option<&Tensor>) {
    push(|| Event::Embeddings {
        token: token.shallow_clone(),
        position: position.map(Tensor::shallow_clone),
    });
}

/// Record attention weights `[batch, heads, q, k]` (attention calls this while recording).
pub(crate) fn attention(cross: bool, weights: &Tensor) {
    let weights = weights.shallow_clone();
    push(|| match cross {
        true => Event::CrossAttention(weights),
        false => Event::SelfAttention(weights),
    });
}

/// Record a layer's input and output `[batch, seq, hidden]` (the layer calls this).
pub(crate) fn layer(input: &Tensor, output: &Tensor) {
    push(|| Event::Layer {
        input: input.shallow_clone(),
        output: output.shallow_clone(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_inside_and_nests() {
        assert!(!is_recording());
        let x = Tensor::from_slice(&[1.0f32, 2.0]);
        let ((), outer) = record(|| {
            layer(&x, &x);
            let ((), inner) = record(|| {
                attention(true, &x);
                Ok(())
            })?;
            assert_eq!(inner.events.len(), 1);
            assert_eq!(inner.cross_attentions().len(), 1);
            assert!(is_recording());
            attention(false, &x);
            Ok(())
        })
        .unwrap();
        assert!(!is_recording());
        assert_eq!(outer.events.len(), 2);
        assert_eq!(outer.self_attentions().len(), 1);
        assert_eq!(outer.hidden_states().len(), 2);
        // Outside a recording nothing is kept.
        layer(&x, &x);
        let ((), empty) = record(|| Ok(())).unwrap();
        assert!(empty.events.is_empty());
    }

    /// A small attention with random weights: 4 query heads sharing 2 key/value heads.
    fn small_attention() -> crate::nn::MultiHeadAttention {
        use crate::nn::{Linear, MultiHeadAttention, Projections};
        tch::manual_seed(7);
        let linear = |o: i64, i: i64| {
            Linear::from_tensors(
                Tensor::randn([o, i], (tch::Kind::Float, tch::Device::Cpu)) * 0.25,
                None,
            )
        };
        MultiHeadAttention::new(
            Projections::Separate {
                q: linear(16, 16),
                k: linear(8, 16),
                v: linear(8, 16),
            },
            linear(16, 16),
            4,
            4,
        )
        .with_kv_heads(2)
        .unwrap()
    }

    /// Attention-probability dropout (training): 0 is the inference forward bit for bit, and
    /// a positive probability changes the output, on the fused path and the probe's stepwise
    /// one. (That the same seed draws the same mask is libtorch's generator, and a whole
    /// resumed training run checks it in `tests/train_cli.rs`: here other tests draw from the
    /// same global generator in parallel.)
    #[test]
    fn attention_dropout_is_off_at_zero_and_applied_above() {
        use crate::nn::AttentionContext;
        let attention = small_attention();
        let x = Tensor::randn([2, 5, 16], (tch::Kind::Float, tch::Device::Cpu));
        let ctx = AttentionContext::default();
        let plain = attention.forward(&x, None, &ctx, None).unwrap();
        let zero = attention
            .forward_with_dropout(&x, None, &ctx, None, 0.0)
            .unwrap();
        // (Equal up to the projections' kernels: while a shape's kernels are being measured,
        // successive calls run different ones, which round differently.)
        assert!(plain.allclose(&zero, 1e-6, 1e-6, false));
        let dropped = attention
            .forward_with_dropout(&x, None, &ctx, None, 0.5)
            .unwrap();
        assert!(!dropped.equal(&plain), "dropout 0.5 changed nothing");
        let (probed, _) =
            record(|| attention.forward_with_dropout(&x, None, &ctx, None, 0.5)).unwrap();
        assert!(!probed.equal(&plain), "the stepwise path ignored dropout");
    }

    #[test]
    fn recorded_attention_is_the_fused_kernels_and_off_changes_nothing() {
        use crate::nn::{mask, AttentionContext};
        let attention = small_attention();
        let x = Tensor::randn([2, 5, 16], (tch::Kind::Float, tch::Device::Cpu)); // [batch, seq, hidden]
        let m = mask::causal_padding_mask(
            &Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0, 1, 1, 1, 1]).view([2, 5]),
            5,
            tch::Kind::Float,
        )
        .unwrap();
        let ctx = AttentionContext {
            mask: Some(&m),
            ..Default::default()
        };
        let fused = attention.forward(&x, None, &ctx, None).unwrap();
        let again = attention.forward(&x, None, &ctx, None).unwrap();
        // Off: the same computation (up to the projections' kernels, which differ between
        // calls while they are being measured, and round differently).
        assert!(
            fused.allclose(&again, 1e-6, 1e-6, false),
            "off changed the output"
        );
        let (probed, recording) = record(|| attention.forward(&x, None, &ctx, None)).unwrap();
        let diff = (&probed - &fused).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5,
            "recorded path differs from the fused kernel by {diff}"
        );
        let weights = recording.self_attentions();
        assert_eq!(weights.len(), 1);
        assert_eq!(weights[0].size(), [2, 4, 5, 5]); // [batch, heads, q, k]
        let sums = weights[0].sum_dim_intlist(-1, false, tch::Kind::Float);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
        // Causal: no weight on a later key; padding: none on the masked key.
        assert!(weights[0].double_value(&[0, 0, 1, 2]) == 0.0);
        assert!(weights[0].double_value(&[1, 3, 4, 0]) == 0.0);
    }

    #[test]
    fn grouped_cross_attention_records_per_query_row() {
        use crate::nn::AttentionContext;
        let attention = small_attention();
        let x = Tensor::randn([4, 3, 16], (tch::Kind::Float, tch::Device::Cpu)); // 2 beams × 2 inputs
        let encoder = Tensor::randn([2, 6, 16], (tch::Kind::Float, tch::Device::Cpu));
        let ctx = AttentionContext {
            groups: 2,
            ..Default::default()
        };
        let fused = attention.forward(&x, Some(&encoder), &ctx, None).unwrap();
        let (probed, recording) =
            record(|| attention.forward(&x, Some(&encoder), &ctx, None)).unwrap();
        assert!((&probed - &fused).abs().max().double_value(&[]) < 1e-5);
        let weights = recording.cross_attentions();
        assert_eq!(weights[0].size(), [4, 4, 3, 6]);
        // Row 1 is the second beam of input 0: alone against input 0's encoder output.
        let alone = AttentionContext::default();
        let (_, single) = record(|| {
            attention.forward(
                &x.narrow(0, 1, 1),
                Some(&encoder.narrow(0, 0, 1)),
                &alone,
                None,
            )
        })
        .unwrap();
        let d = (weights[0].narrow(0, 1, 1) - single.cross_attentions()[0])
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-6);
    }

    #[test]
    fn an_error_ends_the_recording() {
        let r: Result<((), Recording)> = record(|| Err(crate::Error::Input("stop".into())));
        assert!(r.is_err());
        assert!(!is_recording());
    }
}
