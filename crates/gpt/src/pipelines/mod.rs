//! Text in, text out: the pipelines built on GPT-2.

pub mod generate;
