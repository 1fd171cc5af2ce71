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
    /// Sample the next token instead of taking the most probable one. --temperature (above 0),
    /// --top-k and --top-p turn sampling on by themselves; `--do-sample=false` keeps it off
    /// (and turns off a model's default sampling).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub do_sample: Option<bool>,
    /// Sampling temperature: below 1 is more conservative, above 1 more random; 0 means greedy
    /// search (the single most likely output). Turns sampling on.
    #[arg(long, visible_alias = "temp", value_name = "F")]
    pub temperature: Option<f64>,
    /// Sample only among the K most probable tokens (0: all; default 50). Turns sampling on.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample only among the most probable tokens whose probabilities add up to P, in (0, 1].
    /// Turns sampling on.
    #[arg(long, value_name = "P")]
    pub top_p: Option<f64>,
    /// Seed for sampling: the same seed gives the same output (a warning says when nothing is
    /// sampled).
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
    /// Print the generation settings in effect (the model's, the task's and these flags, as
    /// JSON; what is not listed takes transformers' default) and exit without reading input.
    #[arg(long)]
    pub show_config: bool,
}

impl GenerationArgs {
    /// The generation settings these flags set, over the model's; the pipeline validates
    /// them against the model.
    pub fn options(&self) -> GenerationConfig {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        // As llama.cpp and ollama read them: temperature 0 is greedy search, and a sampling
        // setting asks for sampling unless --do-sample=false says otherwise.
        let greedy = self.temperature == Some(0.0);
        let asks_sampling =
            self.temperature.is_some() || self.top_k.is_some() || self.top_p.is_some();
        let do_sample = if greedy {
            Some(false)
        } else {
            self.do_sample.or(asks_sampling.then_some(true))
        };
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            repetition_penalty: self.repetition_penalty,
            do_sample,
            temperature: self.temperature.filter(|_| !greedy),
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

impl GenerationArgs {
    /// With `--show-config`, print `settled` and return true (the command then ends).
    pub fn show(&self, settled: &GenerationConfig) -> anyhow::Result<bool> {
        if self.show_config {
            println!("{}", serde_json::to_string_pretty(settled)?);
        }
        Ok(self.show_config)
    }

    /// A one-line warning for a flag that the settled settings leave without effect.
    pub fn warn_unused(&self, settled: &GenerationConfig) {
        if self.seed.is_some() && !settled.do_sample() {
            eprintln!(
                "warning: --seed has no effect: nothing is sampled (add --do-sample, \
                 --temperature, --top-k or --top-p to sample)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        generation: GenerationArgs,
    }

    fn options(args: &[&str]) -> GenerationConfig {
        let mut all = vec!["trident"];
        all.extend_from_slice(args);
        Flags::parse_from(all).generation.options()
    }

    #[test]
    fn sampling_flags_turn_sampling_on_and_temperature_zero_is_greedy() {
        assert_eq!(options(&[]).do_sample, None);
        assert_eq!(options(&["--top-p", "0.9"]).do_sample, Some(true));
        assert_eq!(options(&["--temperature", "1.5"]).do_sample, Some(true));
        assert_eq!(options(&["--top-k", "5"]).do_sample, Some(true));
        assert_eq!(
            options(&["--do-sample=false", "--top-p", "0.9"]).do_sample,
            Some(false)
        );
        let zero = options(&["--do-sample", "--temperature", "0"]);
        assert_eq!((zero.do_sample, zero.temperature), (Some(false), None));
        assert_eq!(
            options(&["--seed", "3"]).do_sample,
            None,
            "a seed alone samples nothing"
        );
    }
}
