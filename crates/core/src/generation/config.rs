//! What to generate and how: [`GenerationConfig`], built from a checkpoint's defaults
//! (generation_config.json, config.json, `task_specific_params`) with the caller's explicit
//! [`GenerationOptions`] on top, as transformers' `generate(**kwargs)` does.

use super::logits::{
    BadWords, LogitsProcessor, MinLength, MinNewTokens, NoRepeatNGram, RepetitionPenalty,
    Temperature, TopK, TopP,
};
use crate::config::GenerationDefaults;
use crate::text::TextEncoder;
use crate::{Error, Result};
use std::str::FromStr;

/// When beam search stops, with transformers' three meanings of `early_stopping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `false`: stop when no running beam can still beat the worst finished hypothesis,
    /// judged at the current length (transformers' default heuristic).
    #[default]
    Heuristic,
    /// `true`: stop as soon as `num_beams` hypotheses are finished.
    WhenBeamsFull,
    /// `"never"`: stop only when no running beam can still win, judged at the longest
    /// possible length when `length_penalty > 0` (canonical beam search).
    Never,
}

impl FromStr for EarlyStopping {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "false" => Ok(EarlyStopping::Heuristic),
            "true" => Ok(EarlyStopping::WhenBeamsFull),
            "never" => Ok(EarlyStopping::Never),
            other => Err(Error::Input(format!(
                "early_stopping '{other}': use true, false or never"
            ))),
        }
    }
}

impl EarlyStopping {
    /// From a config value: `true`, `false` or `"never"`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        match v {
            serde_json::Value::Bool(true) => Ok(EarlyStopping::WhenBeamsFull),
            serde_json::Value::Bool(false) => Ok(EarlyStopping::Heuristic),
            serde_json::Value::String(s) => s.parse(),
            other => Err(Error::Input(format!(
                "early_stopping {other}: use true, false or \"never\""
            ))),
        }
    }
}

/// Explicit choices of a caller (CLI flags, library users) that override a checkpoint's
/// defaults. `None` (or empty) leaves the default in place. Names follow transformers'
/// `generate` arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationOptions {
    /// Limit on new tokens (wins over `max_length`, as in transformers).
    pub max_new_tokens: Option<usize>,
    /// Limit on the whole output length (decoder start or prompt included).
    pub max_length: Option<usize>,
    /// Minimum number of new tokens before EOS may be generated.
    pub min_new_tokens: Option<usize>,
    /// Minimum whole output length before EOS may be generated.
    pub min_length: Option<usize>,
    /// Beam width; 1 means no beam search.
    pub num_beams: Option<usize>,
    /// Exponent on the length in beam scores (`> 0` favours longer outputs).
    pub length_penalty: Option<f64>,
    /// When beam search stops.
    pub early_stopping: Option<EarlyStopping>,
    /// Forbid repeating any n-gram of this size (0 = off).
    pub no_repeat_ngram_size: Option<usize>,
    /// Penalty on tokens already present (1.0 = off; > 1 discourages repeats).
    pub repetition_penalty: Option<f64>,
    /// Sample instead of taking the most probable token.
    pub do_sample: Option<bool>,
    /// Softmax temperature when sampling.
    pub temperature: Option<f64>,
    /// Keep only the k most probable tokens when sampling (0 = off).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p when sampling.
    pub top_p: Option<f64>,
    /// Sequences returned per input.
    pub num_return_sequences: Option<usize>,
    /// Seed of the sampler, for reproducible sampling.
    pub seed: Option<u64>,
    /// Stop a sequence once its generated text contains any of these strings.
    pub stop_strings: Vec<String>,
    /// Token sequences never to generate.
    pub bad_words_ids: Vec<Vec<i64>>,
    /// Words never to generate, as text; a pipeline turns them into ids with its tokenizer
    /// ([`bad_words_ids`]).
    pub bad_words: Vec<String>,
}

/// Token ids of `words` as transformers' docs build `bad_words_ids`: each word tokenized on
/// its own, without special tokens.
pub fn bad_words_ids(words: &[String], encoder: &TextEncoder) -> Result<Vec<Vec<i64>>> {
    words
        .iter()
        .map(|w| {
            let ids = encoder
                .tokenizer()
                .encode(w.as_str(), false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .get_ids()
                .iter()
                .map(|&i| i64::from(i))
                .collect::<Vec<_>>();
            if ids.is_empty() {
                return Err(Error::Input(format!(
                    "bad word '{w}' has no tokens: give a non-empty word"
                )));
            }
            Ok(ids)
        })
        .collect()
}

/// Everything the engine needs to generate. Defaults are transformers' (`max_length` 20,
/// greedy, `top_k` 50 when sampling, …).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Longest output, start token or prompt included (used when `max_new_tokens` is None).
    pub max_length: usize,
    /// Longest continuation; wins over `max_length`. `Some(0)` returns the inputs unchanged.
    pub max_new_tokens: Option<usize>,
    /// EOS is forbidden while the output (start or prompt included) is shorter than this.
    pub min_length: usize,
    /// EOS is forbidden until this many tokens are generated.
    pub min_new_tokens: usize,
    /// Beam width (1: greedy or sampling).
    pub num_beams: usize,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// Beam scores are `sum log p / length^length_penalty`.
    pub length_penalty: f64,
    /// Forbid repeating an n-gram of this size (0 = off).
    pub no_repeat_ngram_size: usize,
    /// Repetition penalty (1.0 = off).
    pub repetition_penalty: f64,
    /// Token sequences never to generate.
    pub bad_words_ids: Vec<Vec<i64>>,
    /// Sample from the distribution instead of taking the maximum.
    pub do_sample: bool,
    /// Sampling temperature (must be > 0 when sampling; ignored otherwise).
    pub temperature: f64,
    /// Sampling keeps the k most probable tokens (0 = all).
    pub top_k: usize,
    /// Sampling keeps the smallest set of tokens with probability ≥ p; in (0, 1].
    pub top_p: f64,
    /// Seed of the sampler; `None` seeds from the clock.
    pub seed: Option<u64>,
    /// Sequences returned per input.
    pub num_return_sequences: usize,
    /// Ids that end a sequence.
    pub eos_token_ids: Vec<i64>,
    /// Id that fills finished sequences; EOS when the checkpoint has none.
    pub pad_token_id: Option<i64>,
    /// Stop a sequence once its generated text contains one of these.
    pub stop_strings: Vec<String>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_length: 20,
            max_new_tokens: None,
            min_length: 0,
            min_new_tokens: 0,
            num_beams: 1,
            early_stopping: EarlyStopping::Heuristic,
            length_penalty: 1.0,
            no_repeat_ngram_size: 0,
            repetition_penalty: 1.0,
            bad_words_ids: Vec::new(),
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            seed: None,
            num_return_sequences: 1,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
            stop_strings: Vec::new(),
        }
    }
}

impl GenerationConfig {
    /// transformers' defaults with a checkpoint's values on top (merge generation_config.json,
    /// config.json and `task_specific_params` first with [`GenerationDefaults::or`]).
    pub fn from_defaults(d: &GenerationDefaults) -> Result<Self> {
        let mut c = GenerationConfig::default();
        if let Some(v) = d.max_length {
            c.max_length = v;
        }
        c.max_new_tokens = d.max_new_tokens.or(c.max_new_tokens);
        if let Some(v) = d.min_length {
            c.min_length = v;
        }
        if let Some(v) = d.min_new_tokens {
            c.min_new_tokens = v;
        }
        if let Some(v) = d.num_beams {
            c.num_beams = v;
        }
        if let Some(v) = &d.early_stopping {
            c.early_stopping = EarlyStopping::from_json(v)?;
        }
        if let Some(v) = d.length_penalty {
            c.length_penalty = v;
        }
        if let Some(v) = d.no_repeat_ngram_size {
            c.no_repeat_ngram_size = v;
        }
        if let Some(v) = d.repetition_penalty {
            c.repetition_penalty = v;
        }
        if let Some(v) = d.do_sample {
            c.do_sample = v;
        }
        if let Some(v) = d.temperature {
            c.temperature = v;
        }
        if let Some(v) = d.top_k {
            c.top_k = v;
        }
        if let Some(v) = d.top_p {
            c.top_p = v;
        }
        if let Some(v) = d.num_return_sequences {
            c.num_return_sequences = v;
        }
        if let Some(v) = &d.eos_token_id {
            c.eos_token_ids = v.to_vec();
        }
        c.pad_token_id = d
            .pad_token_id
            .as_ref()
            .and_then(|p| p.to_vec().first().copied());
        Ok(c)
    }

    /// Apply the caller's explicit options. An explicit `max_length` clears a default
    /// `max_new_tokens` (the caller's choice should win, and `max_new_tokens` would otherwise).
    pub fn with_options(mut self, o: &GenerationOptions) -> Self {
        if let Some(v) = o.max_length {
            self.max_length = v;
            self.max_new_tokens = None;
        }
        if o.max_new_tokens.is_some() {
            self.max_new_tokens = o.max_new_tokens;
        }
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = o.$f { self.$f = v; } )* };
        }
        take!(
            min_length,
            min_new_tokens,
            num_beams,
            length_penalty,
            early_stopping,
            no_repeat_ngram_size,
            repetition_penalty,
            do_sample,
            temperature,
            top_k,
            top_p,
            num_return_sequences
        );
        if o.seed.is_some() {
            self.seed = o.seed;
        }
        if !o.stop_strings.is_empty() {
            self.stop_strings = o.stop_strings.clone();
        }
        if !o.bad_words_ids.is_empty() {
            self.bad_words_ids = o.bad_words_ids.clone();
        }
        self
    }

    /// The longest output for inputs whose generation starts with `prompt_len` ids.
    pub fn max_total_length(&self, prompt_len: usize) -> usize {
        match self.max_new_tokens {
            Some(n) => prompt_len + n,
            None => self.max_length,
        }
    }

    /// The id that fills finished greedy/sampled sequences: the pad id, or the first EOS
    /// when the checkpoint has no pad id (as transformers does).
    pub fn fill_token_id(&self) -> i64 {
        self.pad_token_id
            .or_else(|| self.eos_token_ids.first().copied())
            .unwrap_or(0)
    }

    /// Check the options, with an error that names the option and the accepted values.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(m));
        if self.num_beams == 0 {
            return bad("num_beams must be at least 1 (1 = no beam search)".into());
        }
        if self.num_return_sequences == 0 {
            return bad("num_return_sequences must be at least 1".into());
        }
        if self.num_beams > 1 && self.num_return_sequences > self.num_beams {
            return bad(format!(
                "num_return_sequences ({}) cannot exceed num_beams ({}): beam search returns its best beams",
                self.num_return_sequences, self.num_beams
            ));
        }
        if self.num_beams == 1 && !self.do_sample && self.num_return_sequences > 1 {
            return bad(format!(
                "greedy search gives one sequence per input, not num_return_sequences={}: \
                 use beam search (num_beams ≥ {}) or sampling (do_sample)",
                self.num_return_sequences, self.num_return_sequences
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!(
                "top_p must be in (0, 1], got {} (1 = off)",
                self.top_p
            ));
        }
        if self.do_sample && !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be a positive number when sampling, got {}; for the single most \
                 likely output use greedy search (no do_sample) instead of temperature 0",
                self.temperature
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be a positive number, got {} (1 = off)",
                self.repetition_penalty
            ));
        }
        if !self.length_penalty.is_finite() {
            return bad(format!(
                "length_penalty must be a finite number, got {}",
                self.length_penalty
            ));
        }
        if !self.stop_strings.is_empty() && self.stop_strings.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        if self.bad_words_ids.iter().any(Vec::is_empty) {
            return bad("bad_words_ids must not contain an empty sequence".into());
        }
        Ok(())
    }

    /// The logits processors this config asks for, in transformers' order: penalties and
    /// bans first, then (when sampling) temperature, top-k and top-p.
    pub fn processors(&self, prompt_len: usize) -> Vec<Box<dyn LogitsProcessor>> {
        let mut list: Vec<Box<dyn LogitsProcessor>> = Vec::new();
        if self.repetition_penalty != 1.0 {
            list.push(Box::new(RepetitionPenalty::new(self.repetition_penalty)));
        }
        if self.no_repeat_ngram_size > 0 {
            list.push(Box::new(NoRepeatNGram::new(self.no_repeat_ngram_size)));
        }
        if !self.bad_words_ids.is_empty() {
            list.push(Box::new(BadWords::new(
                self.bad_words_ids.clone(),
                &self.eos_token_ids,
            )));
        }
        if self.min_length > 0 && !self.eos_token_ids.is_empty() {
            list.push(Box::new(MinLength::new(
                self.min_length,
                self.eos_token_ids.clone(),
            )));
        }
        if self.min_new_tokens > 0 && !self.eos_token_ids.is_empty() {
            list.push(Box::new(MinNewTokens::new(
                prompt_len,
                self.min_new_tokens,
                self.eos_token_ids.clone(),
            )));
        }
        if self.do_sample {
            // Beam sampling keeps at least two candidates so that beams can diverge.
            let min_keep = if self.num_beams > 1 { 2 } else { 1 };
            if self.temperature != 1.0 {
                list.push(Box::new(Temperature::new(self.temperature)));
            }
            if self.top_k != 0 {
                list.push(Box::new(TopK::new(self.top_k, min_keep)));
            }
            if self.top_p < 1.0 {
                list.push(Box::new(TopP::new(self.top_p, min_keep)));
            }
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_options_with_transformers_precedence() {
        let d: GenerationDefaults = serde_json::from_str(
            r#"{"max_length": 20, "min_length": 5, "num_beams": 4, "early_stopping": true,
                "eos_token_id": 1, "pad_token_id": 0, "length_penalty": 2.0}"#,
        )
        .unwrap();
        let c = GenerationConfig::from_defaults(&d).unwrap();
        assert_eq!(c.num_beams, 4);
        assert_eq!(c.early_stopping, EarlyStopping::WhenBeamsFull);
        assert_eq!(c.max_total_length(1), 20);
        let c = c.with_options(&GenerationOptions {
            max_new_tokens: Some(7),
            num_beams: Some(2),
            ..Default::default()
        });
        assert_eq!(c.max_total_length(1), 8);
        assert_eq!(c.num_beams, 2);
        assert_eq!(c.length_penalty, 2.0);
        assert_eq!(c.fill_token_id(), 0);
        let never: GenerationDefaults =
            serde_json::from_str(r#"{"early_stopping": "never"}"#).unwrap();
        assert_eq!(
            GenerationConfig::from_defaults(&never)
                .unwrap()
                .early_stopping,
            EarlyStopping::Never
        );
    }

    #[test]
    fn invalid_options_are_named() {
        let check = |o: GenerationOptions| {
            GenerationConfig::default()
                .with_options(&o)
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(check(GenerationOptions {
            num_beams: Some(0),
            ..Default::default()
        })
        .contains("num_beams"));
        assert!(check(GenerationOptions {
            top_p: Some(1.5),
            ..Default::default()
        })
        .contains("top_p"));
        assert!(check(GenerationOptions {
            do_sample: Some(true),
            temperature: Some(0.0),
            ..Default::default()
        })
        .contains("greedy"));
        assert!(check(GenerationOptions {
            num_return_sequences: Some(3),
            ..Default::default()
        })
        .contains("num_return_sequences"));
        // Temperature 0 without sampling is simply unused, as in transformers.
        GenerationConfig::default()
            .with_options(&GenerationOptions {
                temperature: Some(0.0),
                ..Default::default()
            })
            .validate()
            .unwrap();
    }
}
