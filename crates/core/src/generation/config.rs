//! What to generate and how: one [`GenerationConfig`] with optional fields, read from a
//! checkpoint in one place ([`GenerationConfig::from_checkpoint`]: config.json, then
//! generation_config.json, then a `task_specific_params` entry), layered with one
//! [`GenerationConfig::merge`] (checkpoint → pipeline defaults → caller), and read by the
//! engine through accessors that supply transformers' defaults for what nobody set.

use super::logits::{
    BadWords, ForcedToken, LogitsProcessor, MinLength, MinNewTokens, NoRepeatNGram, Renormalize,
    RepetitionPenalty, Temperature, TopK, TopP,
};
use crate::config::{read_json, TokenIds};
use crate::files::ModelFiles;
use crate::text::TextEncoder;
use crate::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
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

impl Serialize for EarlyStopping {
    /// As config files write it: `false`, `true` or `"never"`.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            EarlyStopping::Heuristic => s.serialize_bool(false),
            EarlyStopping::WhenBeamsFull => s.serialize_bool(true),
            EarlyStopping::Never => s.serialize_str("never"),
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

fn early_stopping_field<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<EarlyStopping>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    v.filter(|v| !v.is_null())
        .map(|v| EarlyStopping::from_json(&v).map_err(serde::de::Error::custom))
        .transpose()
}

fn strings_field<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

/// The generation settings: what a checkpoint ships (generation_config.json, config.json,
/// `task_specific_params`), what a pipeline adds, and what a caller asks for, as one type.
/// Every field is optional: `None` means "not set here", so that [`merge`](Self::merge) can
/// layer them, and the accessors give transformers' default for what no layer sets. Field
/// names are transformers' `generate` arguments.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// Limit on the whole output length, decoder start or prompt included (default 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Limit on new tokens; wins over `max_length`. `Some(0)` returns the inputs unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// EOS is forbidden while the output (start or prompt included) is shorter than this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    /// EOS is forbidden until this many tokens are generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_new_tokens: Option<usize>,
    /// Beam width (1: greedy search or sampling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_beams: Option<usize>,
    /// When beam search stops (`true`, `false` or `"never"` in JSON).
    #[serde(deserialize_with = "early_stopping_field")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Beam scores are `sum log p / length^length_penalty` (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length_penalty: Option<f64>,
    /// Forbid repeating an n-gram of this size (0 = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_repeat_ngram_size: Option<usize>,
    /// Penalty on tokens already present (1 = off; > 1 discourages repeats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// Sample from the distribution instead of taking the most probable token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    /// Softmax temperature when sampling (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Sampling keeps the k most probable tokens (default 50; 0 = all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Sampling keeps the smallest set of tokens with probability ≥ p, in (0, 1] (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sequences returned per input (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_return_sequences: Option<usize>,
    /// Seed of the sampler; unset seeds from the clock.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop a sequence once its generated text contains one of these.
    #[serde(deserialize_with = "strings_field")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_strings: Option<Vec<String>>,
    /// Token sequences never to generate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bad_words_ids: Option<Vec<Vec<i64>>>,
    /// Words never to generate, as text; a pipeline adds their ids (with its tokenizer, see
    /// [`bad_words_ids`]) to `bad_words_ids`.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub bad_words: Option<Vec<String>>,
    /// Beginning-of-sequence id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<TokenIds>,
    /// Id(s) that end a sequence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// Id that fills finished sequences (EOS when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<TokenIds>,
    /// The token forced right after the decoder start (BART's `<s>`; the target language of
    /// M2M100 and NLLB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced_bos_token_id: Option<i64>,
    /// The token(s) forced when the output reaches its length limit (BART's `</s>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced_eos_token_id: Option<TokenIds>,
    /// Turn the processed scores back into log-probabilities, after every other processor
    /// (transformers' `renormalize_logits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renormalize_logits: Option<bool>,
    /// First decoder input of an encoder-decoder model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoder_start_token_id: Option<TokenIds>,
    /// Text a text-to-text pipeline puts before the input (`task_specific_params`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl GenerationConfig {
    /// `self` with every field that `over` sets replaced by `over`'s: the one merge, for
    /// checkpoint → pipeline defaults → caller. An explicit `max_length` without
    /// `max_new_tokens` also clears an earlier `max_new_tokens` (otherwise the earlier one
    /// would win over the caller's choice).
    pub fn merge(&self, over: &GenerationConfig) -> GenerationConfig {
        macro_rules! pick {
            ($($f:ident),*) => { GenerationConfig { $($f: over.$f.clone().or_else(|| self.$f.clone())),* } };
        }
        let mut merged = pick!(
            max_length,
            max_new_tokens,
            min_length,
            min_new_tokens,
            num_beams,
            early_stopping,
            length_penalty,
            no_repeat_ngram_size,
            repetition_penalty,
            do_sample,
            temperature,
            top_k,
            top_p,
            num_return_sequences,
            seed,
            stop_strings,
            bad_words_ids,
            bad_words,
            bos_token_id,
            eos_token_id,
            pad_token_id,
            forced_bos_token_id,
            forced_eos_token_id,
            renormalize_logits,
            decoder_start_token_id,
            prefix
        );
        if over.max_length.is_some() && over.max_new_tokens.is_none() {
            merged.max_new_tokens = None;
        }
        merged
    }

    /// Read generation settings from a JSON file (generation_config.json, or the same keys in
    /// config.json).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        read_json(path)
    }

    /// What a checkpoint ships, read in one place: config.json's keys, generation_config.json
    /// over them, then `task_specific_params[task]` over both (the prefix and generation
    /// defaults transformers 4.x's summarization and translation pipelines applied).
    pub fn from_checkpoint(files: &ModelFiles, task: Option<&str>) -> Result<Self> {
        let config_path = files.get("config.json")?;
        let mut config = Self::from_file(&config_path)?;
        if let Some(path) = files.get_optional("generation_config.json")? {
            config = config.merge(&Self::from_file(&path)?);
        }
        if let Some(task) = task {
            if let Some(params) = Self::task_params(files)?.remove(task) {
                config = config.merge(&params);
            }
        }
        Ok(config)
    }

    /// The per-task settings of config.json's `task_specific_params` (`summarization`,
    /// `translation_en_to_de`, …), each read as a generation config (prefix included).
    pub fn task_params(files: &ModelFiles) -> Result<std::collections::BTreeMap<String, Self>> {
        #[derive(Deserialize)]
        struct Tasks {
            #[serde(default)]
            task_specific_params: std::collections::BTreeMap<String, serde_json::Value>,
        }
        let config_path = files.get("config.json")?;
        let tasks: Tasks = read_json(&config_path)?;
        tasks
            .task_specific_params
            .into_iter()
            .map(|(task, v)| {
                let params = serde_json::from_value(v).map_err(|e| {
                    Error::config(&config_path, format!("task_specific_params.{task}: {e}"))
                })?;
                Ok((task, params))
            })
            .collect()
    }

    /// The longest output for inputs whose generation starts with `prompt_len` ids.
    pub fn max_total_length(&self, prompt_len: usize) -> usize {
        match self.max_new_tokens {
            Some(n) => prompt_len + n,
            None => self.max_length.unwrap_or(20),
        }
    }

    /// Minimum whole output length (default 0).
    pub fn min_length(&self) -> usize {
        self.min_length.unwrap_or(0)
    }

    /// Minimum number of new tokens (default 0).
    pub fn min_new_tokens(&self) -> usize {
        self.min_new_tokens.unwrap_or(0)
    }

    /// Beam width (default 1).
    pub fn num_beams(&self) -> usize {
        self.num_beams.unwrap_or(1)
    }

    /// When beam search stops (default: transformers' heuristic).
    pub fn early_stopping(&self) -> EarlyStopping {
        self.early_stopping.unwrap_or_default()
    }

    /// The length penalty (default 1).
    pub fn length_penalty(&self) -> f64 {
        self.length_penalty.unwrap_or(1.0)
    }

    /// Whether sampling is on (default: greedy or beam search).
    pub fn do_sample(&self) -> bool {
        self.do_sample.unwrap_or(false)
    }

    /// Sequences per input (default 1).
    pub fn num_return_sequences(&self) -> usize {
        self.num_return_sequences.unwrap_or(1)
    }

    /// The ids that end a sequence.
    pub fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_id
            .as_ref()
            .map_or_else(Vec::new, TokenIds::to_vec)
    }

    /// The padding id, if the checkpoint has one.
    pub fn pad_token_id(&self) -> Option<i64> {
        self.pad_token_id
            .as_ref()
            .and_then(|p| p.to_vec().first().copied())
    }

    /// The id that fills finished greedy/sampled sequences: the pad id, or the first EOS
    /// when the checkpoint has no pad id (as transformers does).
    pub fn fill_token_id(&self) -> i64 {
        self.pad_token_id()
            .or_else(|| self.eos_token_ids().first().copied())
            .unwrap_or(0)
    }

    /// Check the settings, with an error that names the field and the accepted values.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(m));
        let (beams, copies) = (self.num_beams(), self.num_return_sequences());
        if beams == 0 {
            return bad("num_beams must be at least 1 (1 = no beam search)".into());
        }
        if copies == 0 {
            return bad("num_return_sequences must be at least 1".into());
        }
        if beams > 1 && copies > beams {
            return bad(format!(
                "num_return_sequences ({copies}) cannot exceed num_beams ({beams}): beam search returns its best beams"
            ));
        }
        if beams == 1 && !self.do_sample() && copies > 1 {
            return bad(format!(
                "greedy search gives one sequence per input, not num_return_sequences={copies}: \
                 use beam search (num_beams ≥ {copies}) or sampling (do_sample)"
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {top_p} (1 = off)"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if self.do_sample() && !(temperature > 0.0 && temperature.is_finite()) {
            return bad(format!(
                "temperature must be a positive number when sampling, got {temperature}; for the single most \
                 likely output use greedy search (no do_sample) instead of temperature 0"
            ));
        }
        let penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(penalty > 0.0 && penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be a positive number, got {penalty} (1 = off)"
            ));
        }
        if !self.length_penalty().is_finite() {
            return bad(format!(
                "length_penalty must be a finite number, got {}",
                self.length_penalty()
            ));
        }
        if self.stop_strings.iter().flatten().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        if self.bad_words_ids.iter().flatten().any(Vec::is_empty) {
            return bad("bad_words_ids must not contain an empty sequence".into());
        }
        Ok(())
    }

    /// The logits processors these settings ask for, in transformers' order: penalties and
    /// bans first, then (when sampling) temperature, top-k and top-p.
    pub fn processors(&self, prompt_len: usize) -> Vec<Box<dyn LogitsProcessor>> {
        let mut list: Vec<Box<dyn LogitsProcessor>> = Vec::new();
        let eos = self.eos_token_ids();
        let penalty = self.repetition_penalty.unwrap_or(1.0);
        if penalty != 1.0 {
            list.push(Box::new(RepetitionPenalty::new(penalty)));
        }
        let ngram = self.no_repeat_ngram_size.unwrap_or(0);
        if ngram > 0 {
            list.push(Box::new(NoRepeatNGram::new(ngram)));
        }
        if let Some(bad) = self.bad_words_ids.as_ref().filter(|b| !b.is_empty()) {
            list.push(Box::new(BadWords::new(bad.clone(), &eos)));
        }
        if self.min_length() > 0 && !eos.is_empty() {
            list.push(Box::new(MinLength::new(self.min_length(), eos.clone())));
        }
        if self.min_new_tokens() > 0 && !eos.is_empty() {
            list.push(Box::new(MinNewTokens::new(
                prompt_len,
                self.min_new_tokens(),
                eos.clone(),
            )));
        }
        if let Some(bos) = self.forced_bos_token_id {
            // Right after the decoder start token, as transformers does (length 1 only: a
            // decoder-only prompt is never followed by a forced token).
            list.push(Box::new(ForcedToken::new(1, vec![bos])));
        }
        if let Some(eos) = &self.forced_eos_token_id {
            let limit = self.max_total_length(prompt_len);
            list.push(Box::new(ForcedToken::new(
                limit.saturating_sub(1),
                eos.to_vec(),
            )));
        }
        if self.do_sample() {
            // Beam sampling keeps at least two candidates so that beams can diverge.
            let min_keep = if self.num_beams() > 1 { 2 } else { 1 };
            let temperature = self.temperature.unwrap_or(1.0);
            if temperature != 1.0 {
                list.push(Box::new(Temperature::new(temperature)));
            }
            let top_k = self.top_k.unwrap_or(50);
            if top_k != 0 {
                list.push(Box::new(TopK::new(top_k, min_keep)));
            }
            let top_p = self.top_p.unwrap_or(1.0);
            if top_p < 1.0 {
                list.push(Box::new(TopP::new(top_p, min_keep)));
            }
        }
        if self.renormalize_logits == Some(true) {
            list.push(Box::new(Renormalize));
        }
        list
    }
}

/// Token ids of `words` as transformers' docs build `bad_words_ids`: each word tokenized on
/// its own, without special tokens.
pub fn bad_words_ids(words: &[String], encoder: &TextEncoder) -> Result<Vec<Vec<i64>>> {
    words
        .iter()
        .map(|w| {
            // The model's ids (vocab.json's for SentencePiece-only checkpoints).
            let ids = encoder.encode_plain(w.as_str())?.ids;
            if ids.is_empty() {
                return Err(Error::Input(format!(
                    "bad word '{w}' has no tokens: give a non-empty word"
                )));
            }
            Ok(ids)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_then_caller_with_transformers_precedence() {
        let checkpoint: GenerationConfig = serde_json::from_str(
            r#"{"max_length": 20, "min_length": 5, "num_beams": 4, "early_stopping": true,
                "eos_token_id": 1, "pad_token_id": 0, "length_penalty": 2.0, "unknown": 3}"#,
        )
        .unwrap();
        assert_eq!(checkpoint.num_beams(), 4);
        assert_eq!(checkpoint.early_stopping(), EarlyStopping::WhenBeamsFull);
        assert_eq!(checkpoint.max_total_length(1), 20);
        let c = checkpoint.merge(&GenerationConfig {
            max_new_tokens: Some(7),
            num_beams: Some(2),
            ..Default::default()
        });
        assert_eq!(c.max_total_length(1), 8);
        assert_eq!(c.num_beams(), 2);
        assert_eq!(c.length_penalty(), 2.0);
        assert_eq!(c.fill_token_id(), 0);
        // A caller's max_length wins over an earlier max_new_tokens.
        let c = c.merge(&GenerationConfig {
            max_length: Some(12),
            ..Default::default()
        });
        assert_eq!(c.max_total_length(1), 12);
        let never: GenerationConfig =
            serde_json::from_str(r#"{"early_stopping": "never", "eos_token_id": [1, 2]}"#).unwrap();
        assert_eq!(never.early_stopping(), EarlyStopping::Never);
        assert_eq!(never.eos_token_ids(), vec![1, 2]);
        assert_eq!(GenerationConfig::default().max_total_length(3), 20);
    }

    #[test]
    fn invalid_settings_are_named() {
        let check = |o: GenerationConfig| o.validate().unwrap_err().to_string();
        assert!(check(GenerationConfig {
            num_beams: Some(0),
            ..Default::default()
        })
        .contains("num_beams"));
        assert!(check(GenerationConfig {
            top_p: Some(1.5),
            ..Default::default()
        })
        .contains("top_p"));
        assert!(check(GenerationConfig {
            do_sample: Some(true),
            temperature: Some(0.0),
            ..Default::default()
        })
        .contains("greedy"));
        assert!(check(GenerationConfig {
            num_return_sequences: Some(3),
            ..Default::default()
        })
        .contains("num_return_sequences"));
        // Temperature 0 without sampling is simply unused, as in transformers.
        GenerationConfig {
            temperature: Some(0.0),
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}
