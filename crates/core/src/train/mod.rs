//! Fine-tuning: what every trainable model shares. The models themselves are the inference
//! modules (a family crate builds them with [`crate::Weights::for_training`], so their weights
//! require grad and their projections take the library's differentiable product); this module
//! holds the rest:
//!
//! - [`data`]: labelled texts (CSV, JSON Lines) and tagged sentences (CoNLL, JSON Lines;
//!   IOB1, IOB2, BIOES), encoded with sub-word label alignment;
//! - [`optim`]: AdamW and gradient clipping, as PyTorch computes them;
//! - [`schedule`]: linear warm-up and decay;
//! - [`metrics`]: accuracy, macro-F1, seqeval's entity scores;
//! - [`trainer`]: the loop, evaluation, best-epoch selection and resumable checkpoints;
//! - [`checkpoint`]: named tensors to and from safetensors.

pub mod checkpoint;
pub mod data;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use data::{Example, LabelledText, TagScheme, TaggedSentence, IGNORE};
pub use optim::{AdamW, AdamWConfig};
pub use schedule::LinearSchedule;
pub use trainer::{
    train, EpochReport, EvalScores, Hooks, Optimization, Outcome, Step, StepReport, TaskKind,
    TrainConfig, TrainData, Trainable,
};
