//! trident-llama: the Llama family of decoder-only models ([`LlamaForCausalLM`]): RMSNorm,
//! SwiGLU feed-forward, rotary positions (with the `llama3`, `linear` and `dynamic` scalings)
//! and grouped-query attention, all from core's blocks. Generation goes through core's one
//! engine ([`trident_core::generation::CausalLm`]).

pub mod config;
pub mod model;

pub use config::LlamaConfig;
pub use model::{LlamaForCausalLM, LlamaModel};
