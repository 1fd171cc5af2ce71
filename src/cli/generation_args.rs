//! The generation flags shared by every command that generates text (`summarize`,
//! `translate`, `generate`), named as transformers' `generate` arguments. A flag left out
//! keeps the model's default (generation_config.json, then the task's defaults in
//! config.json, then transformers' defaults).

use clap::Args;
use trident_core::generation::{EarlyStopping, GenerationConfig};

/// Parse `--early-stopping` values: true, false or never.
fn early_stopping(s: &str) -> Result<EarlyStopping, String> {
    s.parse().map_err(|e: trident_core::Error| e.to_string())
}

/// How to generate.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Generation (defaults come from the model)")]
pub struct GenerationArgs {
    /// Generate at most N new tokens (0: empty output).
    #[arg(short = 'n', long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Generate at least N new tokens before the end-of-sequence token is allowed.
    #[arg(long, value_name = "N")]
    pub min_new_tokens: Option<usize>,
    /// Beam search with N beams (1: no beam search).
    #[arg(long, value_name = "N")]
    pub num_beams: Option<usize>,
    /// Beam scores are log-probability / length^F: above 0 favours longer outputs, below 0
    /// shorter ones.
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub length_penalty: Option<f64>,
    /// Never repeat an n-gram of N tokens (0: off).
    #[arg(long, value_name = "N")]
    pub no_repeat_ngram_size: Option<usize>,
    /// Penalise tokens already present: 1 is off, above 1 discourages repetition.
    #[arg(long, value_name = "F")]
    pub repetition_penalty: Option<f64>,
    /// When beam search stops (`--early-stopping` alone means true): true (as soon as N beams are finished), false (when no beam
    /// can improve, judged at the current length) or never (judged at the longest length).
    #[arg(long, value_name = "WHEN", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = early_stopping)]
    pub early_stopping: Option<EarlyStopping>,
    /// Sample the next token instead of taking the most probable one (`--do-sample=false`
    /// turns off a model's default sampling).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub do_sample: Option<bool>,
    /// Sampling temperature, above 0: below 1 is more conservative, above 1 more random.
    #[arg(long, visible_alias = "temp", value_name = "F")]
    pub temperature: Option<f64>,
    /// Sample only among the K most probable tokens (0: all; default 50).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample only among the most probable tokens whose probabilities add up to P, in (0, 1].
    #[arg(long, value_name = "P")]
    pub top_p: Option<f64>,
    /// Seed for sampling: the same seed gives the same output.
    #[arg(short = 's', long, value_name = "N")]
    pub seed: Option<u64>,
    /// Outputs per input (at most --num-beams with beam search; needs beams or sampling).
    #[arg(long, value_name = "N")]
    pub num_return_sequences: Option<usize>,
    /// Stop an output once its text contains S (repeat the flag for several; `--stop` for short).
    #[arg(long = "stop-strings", visible_alias = "stop", value_name = "S")]
    pub stop_strings: Vec<String>,
    /// Never generate WORD (repeat the flag for several).
    #[arg(long = "bad-words", value_name = "WORD")]
    pub bad_words: Vec<String>,
}

impl GenerationArgs {
    /// The generation settings these flags set, over the model's; the pipeline validates
    /// them against the model.
    pub fn options(&self) -> GenerationConfig {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            repetition_penalty: self.repetition_penalty,
            do_sample: self.do_sample,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            num_return_sequences: self.num_return_sequences,
            stop_strings: list(&self.stop_strings),
            bad_words: list(&self.bad_words),
            ..Default::default()
        }
    }
}
