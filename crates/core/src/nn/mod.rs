//! The building blocks every model is made of, each implemented once.
//!
//! Reading order follows the data: [`linear`] projections (their CPU [`kernels`] chosen by
//! measurement) and embeddings, [`position`]al encodings, [`mask`]s and the [`packing`] of a
//! padded batch's real tokens, multi-head [`attention`] with its KV [`cache`], the
//! [`feed_forward`] network, [`norm`]alisation, and the [`layer`] that wires them together. A
//! [`probe`] records what they compute, per call; [`dropout`](mod@dropout) serves models being trained.

pub mod attention;
pub mod cache;
pub mod dropout;
pub mod feed_forward;
pub mod fused;
pub mod kernels;
pub mod layer;
pub mod linear;
pub mod mask;
pub mod norm;
pub mod packing;
pub mod panels;
pub mod parallel;
pub mod position;
pub mod probe;
pub mod streamed;
pub mod streamed_int8;

pub use attention::{AttentionContext, MultiHeadAttention, Projections};
pub use cache::{KvCache, LayerCache, RowOrder};
pub use dropout::{dropout, SublayerDropout};
pub use feed_forward::FeedForward;
pub use layer::{forward_stack, LayerContext, NormPosition, TransformerLayer};
pub use linear::{Embedding, Linear};
pub use norm::Norm;
pub use packing::Packing;
pub use position::{
    alibi_bias, alibi_slopes, relative_position_bucket, sinusoidal_table, RelativePositionBias,
    RopeScaling, Rotary, RotaryAngles,
};
