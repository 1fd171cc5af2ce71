//! trident-serve: `trident serve`, one HTTP server for every Trident task.
//!
//! Each model is loaded once and served by one worker thread that batches the requests
//! arriving together ([`worker`]). The routes speak three dialects ([`api`]): per-task routes
//! with transformers' pipeline names and shapes, text-embeddings-inference's (`/embed`,
//! `/predict`, `/tokenize`, `/info`, `/health`, `/metrics`) and OpenAI's (`/v1/models`,
//! `/v1/embeddings`, `/v1/completions`, `/v1/chat/completions`, streaming included). Limits
//! (payload, inputs, tokens, requests in flight, time) answer 4xx/5xx JSON errors
//! ([`error`]), never a crash; SIGTERM drains ([`server`]).
//!
//! The crate knows the pipelines, not the model families: the `trident` binary loads each
//! model and hands the pipelines over ([`AppState::set_models`]), so that a library user who
//! never serves compiles none of this.

pub mod api;
pub mod config;
pub mod error;
pub mod models;
pub mod server;
pub mod worker;

pub use config::{ModelSpec, ServeConfig};
pub use error::ApiError;
pub use models::{LoadedModel, Pipeline, Task};
pub use server::{router, serve, shutdown_signal, AppState};
